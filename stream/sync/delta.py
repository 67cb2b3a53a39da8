"""The delta record: what one shard changed in the item state over an interval.

A delta is plain data, never a pickle: a model-updates record from the broker is input, and
decoding it must not run code. Version 2 (written now) is one zlib-compressed frame: a magic,
the length of a JSON header, the header (offsets, and each model's part with every numpy
array replaced by ``{"$a": n}``), then the arrays' raw little-endian bytes. Numbers travel as
binary columns (float64 for additive counts, so they merge exactly; float16 for factor
changes), item ids once per model in the header. Version 1 (zlib-compressed JSON, rows of
``[item, value]`` lists) still decodes, and the models still apply it, so a topic written by
an older worker can be read.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DELTA_VERSION", "DeltaError", "ShardDelta"]

logger = logging.getLogger(__name__)

DELTA_VERSION = 2
_MAGIC = b"\x00SD2"  # never the first byte of JSON: tells version 2 from version 1
_HEADER = struct.Struct("<I")
# Arrays a delta may carry (no object arrays: decoding must not build objects).
_DTYPES = {"<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "<u4", "<u2", "|u1", "|i1"}
# zlib level: 1 costs a third of 6's CPU for ~5 % more bytes on these frames.
_LEVEL = 1


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
        arrays: list[np.ndarray] = []
        body = {
            "v": DELTA_VERSION,
            "topic": self.source_topic,
            "partition": self.source_partition,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "events": self.events,
            "models": _pack(self.models, arrays),
            "t": self.created,
            "full": self.full,
            **({"group": self.group} if self.group else {}),
            "arrays": [[a.dtype.str, list(a.shape)] for a in arrays],
        }
        header = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
        frame = [_MAGIC, _HEADER.pack(len(header)), header]
        frame += [a.tobytes() for a in arrays]
        return zlib.compress(b"".join(frame), _LEVEL)

    @classmethod
    def decode(cls, data: bytes) -> ShardDelta:
        try:
            raw = zlib.decompress(data)
            # Version 1: the whole record is JSON.
            body = _unframe(raw) if raw.startswith(_MAGIC) else json.loads(raw)
        except (zlib.error, ValueError, struct.error, TypeError, KeyError, IndexError) as exc:
            raise DeltaError(f"not a model-updates delta: {exc!r}") from exc
        if not isinstance(body, dict) or body.get("v") not in (1, DELTA_VERSION):
            version = body.get("v") if isinstance(body, dict) else None
            raise DeltaError(f"delta version {version!r}, expected 1 or {DELTA_VERSION}")
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


def _pack(value: Any, arrays: list[np.ndarray]) -> Any:
    """``value`` with each numpy array replaced by ``{"$a": its index in arrays}``."""
    if isinstance(value, np.ndarray):
        array = (
            value if value.dtype.byteorder != ">" else value.astype(value.dtype.newbyteorder("<"))
        )
        if array.dtype.str not in _DTYPES:
            raise TypeError(f"a delta cannot carry a {array.dtype} array")
        arrays.append(np.ascontiguousarray(array))
        return {"$a": len(arrays) - 1}
    if isinstance(value, dict):
        return {k: _pack(v, arrays) for k, v in value.items()}
    return value


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


def _unpack(value: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"$a"}:
            index = value["$a"]
            if not isinstance(index, int) or not 0 <= index < len(arrays):
                raise ValueError(f"delta array reference {index!r}")
            return arrays[index]
        return {k: _unpack(v, arrays) for k, v in value.items()}
    return value
