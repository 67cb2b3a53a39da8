"""The delta record: what one shard changed in the item state over an interval.

A delta is plain data, never a pickle: a model-updates record from the broker is input, and
decoding it must not run code. Version 3 (written now) is a magic, then one zlib stream
compressed with a preset dictionary (:data:`_ZDICT`: the header's keys and model names, so a
light delta of a few dozen bytes of content does not pay for them in every frame) holding
the length of a JSON header, the header (offsets, and each model's part with every numpy
array replaced by ``{"$a": n}`` and every list of strings by ``{"$s": n}``, ``n`` an array of
places in the frame's one string table), then the arrays' raw little-endian bytes, each
byte-shuffled (its values' first bytes, then their second bytes, ...: float exponents and
small integers' high bytes line up and compress). The string table (``"strings"``) holds
each string once per frame, whichever models name it: strings of the form ``prefix`` +
decimal number (``"i892"``) as per-prefix sorted numbers coded as differences, the others as
JSON. Numbers travel as binary columns (float64 for additive counts that do not decay, so
they merge exactly, float32 for decayed ones, see ``stream.models.base.wire_floats``;
int8 steps and float16 for factor changes). Versions 2 (the same frame without the
dictionary, the shuffle and the table: item ids as JSON lists per model) and 1
(zlib-compressed JSON, rows of ``[item, value]`` lists) still decode, and the models still
apply them, so a topic written by an older worker can be read.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DELTA_VERSION", "DeltaError", "ShardDelta"]

logger = logging.getLogger(__name__)

DELTA_VERSION = 3
# Version 3: this magic, then zlib with _ZDICT. Version 2: zlib of _MAGIC_2 + the frame.
# Neither starts like zlib's own header (0x78) nor like JSON: tells the versions apart.
_MAGIC = b"\x00SD3"
_MAGIC_2 = b"\x00SD2"
_HEADER = struct.Struct("<I")
# Arrays a delta may carry (no object arrays: decoding must not build objects).
_DTYPES = {"<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "<u8", "<u4", "<u2", "|u1", "|i1"}
_UNSIGNED = ("|u1", "<u2", "<u4", "<u8")
# The most a delta record may inflate to, in all and as a multiple of its own size: a real
# frame inflates by under 3x (measured: 2,403 deltas of evaluate --partitions 8, at most 2.9x);
# a zip bomb by 1,000x, and what it inflates to is then unpacked into Python objects.
MAX_INFLATED = 64 * 2**20
MAX_INFLATION = 32
# zlib level: 1 costs a third of 6's CPU for ~5 % more bytes on these frames.
_LEVEL = 1
# The preset dictionary of version 3: what most frames repeat (keys, model names, array
# specs), latest first. Part of the format: never edit it; another dictionary is another
# version (a frame names its dictionary by checksum, so a wrong one is a DeltaError).
_ZDICT = (
    b'{"prefix":"item","text":["popularity","knn","knn_classic","sequence","biased_mf",'
    b'"funk_mf","bpr","userknn","blend"]},"gains":{"$a":},"names":{"$s":},"blend":{"ticks":'
    b',"mean":[0.0,0.0]},"biases":{"$a":},"step":{"$a":},"steps":{"$a":},"biased_mf":{"items"'
    b':{"$s":},"co":{"$a":},"co_at":{"$a":},"norms":{"$a":},"norms_at":{"$a":},"sequence":'
    b'{"ticks":,"knn_classic":{"ticks":,"knn":{"ticks":,"counts":{"$a":}},"_fallback_popularity'
    b'":{"ticks":,"popularity":{"ticks":10,"items":{"$s":0},"t":0.0,"full":true,"strings":'
    b'[{"prefix":"i","first":,"ids":{"$a":}}],"arrays":[["<f8",[]],["<f4",[]],["<f2",[]],'
    b'["|i1",[,16]],["<u2",[,2]],["|u1",[,2]],["|u1",[]],["<f8",[]],["<f2",[]]]}'
    b'{"v":3,"topic":"events","partition":0,"first_offset":0,"last_offset":9,"events":10,'
    b'"models":{"popularity":{"ticks":10,"items":{"$s":0},"counts":{"$a":1}},"biased_mf":'
    b'{"items":{"$s":2},"biases":{"$a":3}}},"t":0.0,"full":false,"strings":[{"prefix":"i",'
    b'"first":0,"ids":{"$a":0}}],"arrays":[["|u1",[]],["<f8",[]],["|u1",[]],["<f2",[]]]}'
)
# A string of the table coded as a number: a prefix not ending in an ASCII digit (may be
# empty), then a decimal number as str(int) writes it (no leading zero, no sign), at most 18
# digits (an int64).
_DIGITS = "0123456789"
_STRIP = operator.methodcaller("rstrip", _DIGITS)
_MAX_DIGITS = 18
_LIMIT = 10**_MAX_DIGITS


class DeltaError(ValueError):
    """A delta that cannot be decoded (corrupt, another version, missing fields)."""


@dataclass(frozen=True, slots=True)
class ShardDelta:
    """One shard's item-state changes over the source offsets ``first_offset..last_offset``.

    ``models`` maps a model name to that model's ``item_delta()``; ``events`` counts the
    events learned in the interval. ``(source_topic, source_partition, last_offset)``
    identifies the delta: a receiver that applied a delta of that source up to an offset
    drops any delta ending at or before it (a re-publication after a restart).

    >>> d = ShardDelta("events", 3, 10, 19, 10, {"popularity": {"ticks": 10, "counts": []}})
    >>> ShardDelta.decode(d.encode()) == d
    True
    """

    source_topic: str
    source_partition: int
    first_offset: int
    last_offset: int
    events: int
    models: dict[str, dict[str, Any]]
    created: float = 0.0  # the sender's wall clock when it collected the delta (sync lag)
    # False: a light delta (STREAM_MODEL_SYNC_FULL_EVERY), only the models' fast-moving part;
    # the rest stays pending at the sender for its next full delta.
    full: bool = True
    # The sender's consumer group (STREAM_GROUP_ID): two groups reading one events topic
    # learn the same events, so a receiver skips another group's deltas ("": unknown, as in
    # records written before the field existed, which are applied).
    group: str = ""

    @property
    def source(self) -> tuple[str, int]:
        return self.source_topic, self.source_partition

    def encode(self) -> bytes:
        frame = _Frame()
        body = {
            "v": DELTA_VERSION,
            "topic": self.source_topic,
            "partition": self.source_partition,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "events": self.events,
            "models": frame.pack(self.models),
            "t": self.created,
            "full": self.full,
            **({"group": self.group} if self.group else {}),
        }
        body["strings"] = frame.pack_strings()
        arrays = frame.arrays
        body["arrays"] = [[a.dtype.str, list(a.shape)] for a in arrays]
        header = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
        parts = [_HEADER.pack(len(header)), header]
        parts += [_shuffled(a) for a in arrays]
        compressor = zlib.compressobj(_LEVEL, zdict=_ZDICT)
        return _MAGIC + compressor.compress(b"".join(parts)) + compressor.flush()

    @classmethod
    def decode(cls, data: bytes) -> ShardDelta:
        try:
            if data.startswith(_MAGIC):
                body = _unframe_3(data)
            else:
                raw = _inflate(zlib.decompressobj(), data)
                # Version 1: the whole record is JSON.
                body = _unframe(raw) if raw.startswith(_MAGIC_2) else json.loads(raw)
        except (
            zlib.error,
            ValueError,
            struct.error,
            TypeError,
            KeyError,
            IndexError,
            RecursionError,  # a header nested deeper than the parser goes
            MemoryError,
        ) as exc:
            raise DeltaError(f"not a model-updates delta: {exc!r:.200}") from exc
        if not isinstance(body, dict) or body.get("v") not in (1, 2, DELTA_VERSION):
            version = body.get("v") if isinstance(body, dict) else None
            raise DeltaError(f"delta version {version!r}, expected 1 to {DELTA_VERSION}")
        try:
            delta = cls(
                str(body["topic"]),
                int(body["partition"]),
                int(body["first_offset"]),
                int(body["last_offset"]),
                int(body["events"]),
                dict(body["models"]),
                float(body.get("t", 0.0)),
                bool(body.get("full", True)),
                str(body.get("group", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DeltaError(f"delta without a valid {exc}") from exc
        return delta


class _Frame:
    """What a version-3 frame collects while its header is written: the arrays, and the
    strings of every list of strings (each once)."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self._strings: dict[str, None] = {}  # each string once, first seen first
        self._lists: list[tuple[int, list[str]]] = []  # (array slot of its places, the list)

    def pack(self, value: Any) -> Any:
        """``value`` with each numpy array replaced by ``{"$a": its slot}`` and each
        non-empty list of strings by ``{"$s": the slot of its places in the table}``."""
        if isinstance(value, np.ndarray):
            return {"$a": self._add(value)}
        if isinstance(value, dict):
            return {k: self.pack(v) for k, v in value.items()}
        if isinstance(value, list) and value and set(map(type, value)) == {str}:
            self._strings.update(dict.fromkeys(value))
            self.arrays.append(_EMPTY)  # filled by pack_strings, once the table is ordered
            self._lists.append((len(self.arrays) - 1, value))
            return {"$s": len(self.arrays) - 1}
        return value

    def _add(self, value: np.ndarray) -> int:
        array = (
            value if value.dtype.byteorder != ">" else value.astype(value.dtype.newbyteorder("<"))
        )
        if array.dtype.str not in _DTYPES:
            raise TypeError(f"a delta cannot carry a {array.dtype} array")
        self.arrays.append(np.ascontiguousarray(array))
        return len(self.arrays) - 1

    def pack_strings(self) -> list[dict[str, Any]]:
        """The string table: per prefix, its numbered strings sorted by number (``first``
        and the differences), then the others as JSON; fills the lists' arrays of places."""
        numbered, text = _numbered(list(self._strings))
        table: list[str] = []
        groups: list[dict[str, Any]] = []
        for prefix, (strings, values) in numbered.items():
            numbers = np.array(values, dtype=np.int64)
            order = numbers.argsort(kind="stable")
            numbers = numbers[order]
            table += [strings[i] for i in order.tolist()]
            steps = numbers.copy()
            steps[1:] -= numbers[:-1]
            steps[0] = 0
            groups.append(
                {"prefix": prefix, "first": int(numbers[0]), "ids": {"$a": self._add(_fit(steps))}}
            )
        if text:
            table += text
            groups.append({"text": text})
        place = dict(zip(table, range(len(table)), strict=True)).__getitem__
        dtype = _fit(np.array([len(table)])).dtype
        for slot, strings in self._lists:
            self.arrays[slot] = np.fromiter(map(place, strings), dtype, len(strings))
        return groups


def _numbered(
    strings: list[str],
) -> tuple[dict[str, tuple[list[str], list[int]]], list[str]]:
    """``strings`` split into numbered ones per prefix (with their numbers) and the rest."""
    heads = list(map(_STRIP, strings))
    if heads and heads.count(heads[0]) == len(heads):  # (the usual: one prefix for all)
        size = len(heads[0])
        tails = [string[size:] for string in strings]
        if all(tails) and max(map(len, tails)) <= _MAX_DIGITS:
            numbers = list(map(int, tails))
            if list(map(str, numbers)) == tails:  # no leading zero
                return {heads[0]: (strings, numbers)}, []
    numbered: dict[str, tuple[list[str], list[int]]] = {}
    text: list[str] = []
    for string, head in zip(strings, heads, strict=True):
        tail = string[len(head) :]
        if 0 < len(tail) <= _MAX_DIGITS and (tail[0] != "0" or len(tail) == 1):
            group = numbered.get(head)
            if group is None:
                group = numbered[head] = ([], [])
            group[0].append(string)
            group[1].append(int(tail))
        else:
            text.append(string)
    return numbered, text


_EMPTY = np.zeros(0, dtype=np.uint8)


def _fit(values: np.ndarray) -> np.ndarray:
    """Non-negative integers in the smallest unsigned type that holds them."""
    top = int(values.max()) if len(values) else 0
    for dtype in _UNSIGNED:
        if top <= np.iinfo(np.dtype(dtype)).max:
            return values.astype(dtype)
    raise ValueError(f"no unsigned type holds {top}")  # (numbers have at most 18 digits)


def _shuffled(array: np.ndarray) -> bytes:
    """An array's bytes, byte-shuffled: every value's first byte, then every second byte..."""
    size = array.dtype.itemsize
    if size == 1 or array.size < 2:
        return array.tobytes()
    return array.reshape(-1).view(np.uint8).reshape(-1, size).T.tobytes()


def _unshuffled(raw: bytes, at: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    kind = np.dtype(dtype)
    count = math.prod(shape)
    if min(shape, default=0) < 0 or at + count * kind.itemsize > len(raw):
        raise ValueError("delta arrays shorter than their header says")
    data = np.frombuffer(raw, dtype=np.uint8, count=count * kind.itemsize, offset=at)
    if kind.itemsize > 1 and count > 1:
        data = data.reshape(kind.itemsize, count).T.copy()
    return data.view(kind).reshape(shape)


def _inflate(decompressor: Any, data: bytes | memoryview) -> bytes:
    """The whole zlib stream ``data``, at most :data:`MAX_INFLATION` times its size and
    :data:`MAX_INFLATED` bytes (a record that inflates past that, a zip bomb or a corrupt
    writer, is refused before it takes the memory)."""
    limit = min(MAX_INFLATED, MAX_INFLATION * max(len(data), 1))
    raw: bytes = decompressor.decompress(data, limit + 1)
    if len(raw) > limit:
        raise ValueError(f"a delta of {len(data)} bytes inflates past {limit} bytes")
    if not decompressor.eof or decompressor.unused_data:
        raise ValueError("a delta's zlib stream is truncated or followed by bytes")
    return raw


def _unframe_3(data: bytes) -> dict[str, Any]:
    """The header of a version-3 frame with its arrays and strings put back in place."""
    raw = _inflate(zlib.decompressobj(zdict=_ZDICT), memoryview(data)[len(_MAGIC) :])
    (length,) = _HEADER.unpack_from(raw, 0)
    body = json.loads(raw[_HEADER.size : _HEADER.size + length])
    if not isinstance(body, dict):
        raise ValueError("delta header is not an object")
    at = _HEADER.size + length
    arrays: list[np.ndarray] = []
    for spec in body.pop("arrays", []):
        dtype, shape = str(spec[0]), tuple(int(n) for n in spec[1])
        if dtype not in _DTYPES:
            raise ValueError(f"delta array of type {dtype!r}")
        arrays.append(_unshuffled(raw, at, dtype, shape))
        at += arrays[-1].nbytes
    if at != len(raw):
        raise ValueError("bytes after a delta's arrays")
    strings = _strings(body.pop("strings", []), arrays)
    body["models"] = _unpack(body.get("models"), arrays, strings)
    return body


def _strings(groups: Any, arrays: list[np.ndarray]) -> list[str]:
    """A version-3 frame's string table."""
    if not isinstance(groups, list):
        raise ValueError("a delta's string table is not a list")
    table: list[str] = []
    for group in groups:
        if not isinstance(group, dict):
            raise ValueError("a delta's string group is not an object")
        if "text" in group:
            text = group["text"]
            if not isinstance(text, list) or not all(isinstance(s, str) for s in text):
                raise ValueError("a delta's strings are not strings")
            table += text
            continue
        prefix, steps = group["prefix"], _unpack(group["ids"], arrays, [])
        if not isinstance(prefix, str) or not isinstance(steps, np.ndarray):
            raise ValueError("a delta's numbered strings without prefix or numbers")
        if steps.dtype.str not in _UNSIGNED or steps.ndim != 1:
            raise ValueError(f"a delta's numbered strings as {steps.dtype}")
        first, numbers = int(group["first"]), np.cumsum(steps, dtype=np.uint64)
        # (a sum of uint64 past 2 ** 64 wraps round: it shows as a fall; narrower types in a
        # frame cannot add up that far)
        if numbers.size and not (
            0 <= first < _LIMIT
            and int(numbers[-1]) < _LIMIT - first
            and (steps.dtype.itemsize < 8 or bool(np.all(numbers[1:] >= numbers[:-1])))
        ):
            raise ValueError("a delta's numbered strings out of range")
        table += [f"{prefix}{first + n}" for n in numbers.tolist()]
    return table


def _unframe(raw: bytes) -> dict[str, Any]:
    """The header of a version-2 frame with its arrays put back in place."""
    start = len(_MAGIC) + _HEADER.size
    (length,) = _HEADER.unpack_from(raw, len(_MAGIC))
    body = json.loads(raw[start : start + length])
    if not isinstance(body, dict):
        raise ValueError("delta header is not an object")
    at = start + length
    arrays: list[np.ndarray] = []
    for spec in body.pop("arrays", []):
        dtype, shape = str(spec[0]), tuple(int(n) for n in spec[1])
        if dtype not in _DTYPES:
            raise ValueError(f"delta array of type {dtype!r}")
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if size < 0 or at + size > len(raw):
            raise ValueError("delta arrays shorter than their header says")
        arrays.append(
            np.frombuffer(
                raw, dtype=dtype, count=size // np.dtype(dtype).itemsize, offset=at
            ).reshape(shape)
        )
        at += size
    if at != len(raw):
        raise ValueError("bytes after a delta's arrays")
    body["models"] = _unpack(body.get("models"), arrays)
    return body


def _unpack(value: Any, arrays: list[np.ndarray], strings: list[str] | None = None) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"$a"}:
            index = value["$a"]
            if not isinstance(index, int) or not 0 <= index < len(arrays):
                raise ValueError(f"delta array reference {index!r}")
            return arrays[index]
        if strings is not None and value.keys() == {"$s"}:
            places = _unpack({"$a": value["$s"]}, arrays)
            if places.dtype.str not in _UNSIGNED or places.ndim != 1:
                raise ValueError(f"delta string places as {places.dtype}")
            at = places.tolist()
            if at and max(at) >= len(strings):
                raise ValueError("delta string places past its table")
            return list(map(strings.__getitem__, at))
        return {k: _unpack(v, arrays, strings) for k, v in value.items()}
    return value
