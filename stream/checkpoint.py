"""Durable shard state: signed, atomic, rotated checkpoints of one Pipeline per topic-partition.

A checkpoint holds *all* learning state of one shard (the :class:`~stream.core.Pipeline`:
models, evaluators, drift detectors, popularity, per-user history, counters) together with
the exact next offset of the partition it covers, so the worker commits to Kafka only what a
checkpoint holds and resumes from that offset after a restart or a rebalance.

Layout: ``<directory>/<topic>/<partition>/<seq>-<next_offset>.ckpt``; ``seq`` grows by one
per write in that partition (so "newest" never depends on clocks of the workers that share
the directory). The newest ``keep`` files per partition are kept.

File format (version 1; integers big-endian)::

    magic        8 bytes   b"STRMCKPT"
    version      2 bytes   FORMAT_VERSION
    header_len   4 bytes
    header       UTF-8 JSON: created_at, topic, partition, next_offset, events_learned,
                 users, items, models, metrics, run_count, settings (what the state was
                 learned with, see stream.restore), ... (readable without unpickling)
    payload      pickle (protocol 5) of the Pipeline
    payload_len  8 bytes
    mac         32 bytes   HMAC-SHA256 of everything before it, key STREAM_CHECKPOINT_KEY

Loading never unpickles a file whose HMAC does not verify (and even then only classes from
an allow-list are resolved), so a checkpoint directory writable by others cannot run code.

Privacy: a ``forget`` event removes the user from the live Pipeline, so every checkpoint
written *after* it no longer holds them; older checkpoints do until they rotate out. To erase
them at once, wait for the next checkpoint (the committed offset of the partition passes the
``forget`` event) and run ``python -m stream checkpoint prune --keep-latest 1``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import hmac
import io
import json
import logging
import math
import os
import pickle
import re
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import SecretStr

from stream.core import Pipeline
from stream.settings import SettingsError, StreamSettings
from stream.updates import model_versions

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointStore",
    "CheckpointUnavailableError",
    "CheckpointVersionError",
    "CorruptCheckpointError",
    "TopicPartition",
    "read_info",
]

logger = logging.getLogger(__name__)

TopicPartition = tuple[str, int]

MAGIC = b"STRMCKPT"
FORMAT_VERSION = 1
PICKLE_PROTOCOL = 5
SUFFIX = ".ckpt"
MAX_HEADER_BYTES = 16 * 2**20

_PREFIX = struct.Struct(">8sHI")  # magic, version, header_len
_LEN = struct.Struct(">Q")  # payload_len
_MAC_SIZE = hashlib.sha256().digest_size
_TRAILER = _LEN.size + _MAC_SIZE
_NAME = re.compile(r"^(\d{12})-(\d+)\.ckpt$")
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 3_600.0
_CHUNK = 2**20
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class CheckpointError(Exception):
    """A checkpoint cannot be written or restored; the message says which and why."""


class CorruptCheckpointError(CheckpointError):
    """One file is unusable (bad magic, truncated, bad HMAC, bad JSON, unrestorable)."""


class CheckpointVersionError(CheckpointError):
    """A file was written in a format version this code does not read (never skipped)."""


class CheckpointUnavailableError(CheckpointError):
    """Checkpoints exist for a partition but none of them can be loaded."""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What a checkpoint file says about itself, read without unpickling.

    ``verified`` is True when the HMAC was checked with the key, False when no key was given
    (the header is then *unverified*: anyone could have written it).
    """

    path: Path
    size: int
    version: int
    header: dict[str, Any]
    verified: bool

    @property
    def topic(self) -> str:
        return str(self.header["topic"])

    @property
    def partition(self) -> int:
        return int(self.header["partition"])

    @property
    def next_offset(self) -> int:
        return int(self.header["next_offset"])

    @property
    def created_at(self) -> str:
        return str(self.header["created_at"])


# --- reading ----------------------------------------------------------------------------


def _key_bytes(key: SecretStr | str | bytes | None) -> bytes | None:
    if key is None:
        return None
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def _check_prefix(path: Path, prefix: bytes, size: int) -> tuple[int, int]:
    """(version, header_len) of a file, or the reason it is not a checkpoint."""
    if len(prefix) < _PREFIX.size:
        raise CorruptCheckpointError(f"{path}: truncated ({size} bytes, not even a header)")
    magic, version, header_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise CorruptCheckpointError(f"{path}: bad magic bytes (not a checkpoint, or damaged)")
    if version != FORMAT_VERSION:
        raise CheckpointVersionError(
            f"{path}: written in checkpoint format version {version}, this code reads version "
            f"{FORMAT_VERSION}; run a release that reads version {version}, or move the "
            "checkpoint directory away to start this partition over"
        )
    if header_len > MAX_HEADER_BYTES:
        raise CorruptCheckpointError(f"{path}: header length {header_len} is implausible")
    if size < _PREFIX.size + header_len + _TRAILER:
        raise CorruptCheckpointError(f"{path}: truncated ({size} bytes)")
    return version, header_len


def _check_length(path: Path, size: int, header_len: int, payload_len: int) -> None:
    expected = _PREFIX.size + header_len + payload_len + _TRAILER
    if expected != size:
        raise CorruptCheckpointError(
            f"{path}: truncated or padded ({size} bytes, its framing says {expected})"
        )


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptCheckpointError(f"{path}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: header is not a JSON object")
    for name, kind in (("topic", str), ("partition", int), ("next_offset", int)):
        if not isinstance(header.get(name), kind) or isinstance(header.get(name), bool):
            raise CorruptCheckpointError(f"{path}: header field {name!r} missing or wrong type")
    if not isinstance(header.get("created_at"), str):
        raise CorruptCheckpointError(f"{path}: header field 'created_at' missing or wrong type")
    return header


def _mac_mismatch(path: Path) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{path}: HMAC mismatch (altered, damaged, or signed with another STREAM_CHECKPOINT_KEY)"
    )


def read_info(path: Path | str, key: SecretStr | str | bytes | None = None) -> CheckpointInfo:
    """Read a checkpoint's header without unpickling anything.

    With ``key`` the whole file is checked against its HMAC first (streamed, constant
    memory); without it the framing and JSON are checked and the result is ``verified=False``.

    Raises
    ------
    CorruptCheckpointError
        Bad magic, truncated, HMAC mismatch, invalid JSON header.
    CheckpointVersionError
        Another format version.
    """
    path = Path(path)
    secret = _key_bytes(key)
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(_PREFIX.size)
        version, header_len = _check_prefix(path, prefix, size)
        raw_header = f.read(header_len)
        f.seek(size - _TRAILER)
        trailer = f.read(_TRAILER)
        (payload_len,) = _LEN.unpack(trailer[: _LEN.size])
        _check_length(path, size, header_len, payload_len)
        if secret is not None:
            mac = hmac.new(secret, prefix, hashlib.sha256)
            mac.update(raw_header)
            f.seek(_PREFIX.size + header_len)
            left = payload_len
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise CorruptCheckpointError(f"{path}: truncated while reading")
                mac.update(chunk)
                left -= len(chunk)
            mac.update(trailer[: _LEN.size])
            if not hmac.compare_digest(mac.digest(), trailer[_LEN.size :]):
                raise _mac_mismatch(path)
    header = _parse_header(path, raw_header)
    return CheckpointInfo(path, size, version, header, verified=secret is not None)


# Defence in depth behind the HMAC (not a sandbox): a verified payload may resolve only
# classes of the core, River and NumPy (minus those touching files or the network), a few
# reconstructor functions, and a ``getattr`` limited to public-ish attributes of core/River
# objects (River pickles bound methods that way). So a leaked key is not at once arbitrary
# code; the error names anything refused, for a new model to be added here deliberately.
_CLASS_MODULES = (
    "stream.core", "stream.models", "stream.evaluation", "stream.drift", "stream.events",
    "stream.updates", "stream.retention", "stream.sync", "river", "numpy", "collections",
    "random", "datetime",
)  # fmt: skip
_DENIED_MODULES = (
    "river.datasets", "river.stream", "river.compat", "river.evaluate",
    "numpy.lib._datasource", "numpy.lib._npyio_impl", "numpy.f2py", "numpy.distutils",
    "numpy.testing",
)  # fmt: skip
_DENIED_CLASSES = frozenset({"numpy.memmap"})
_ALLOWED_BUILTINS = frozenset(
    {
        "bool", "bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list",
        "object", "range", "set", "slice", "str", "tuple",
    }
)  # fmt: skip
_ALLOWED_FUNCTIONS = frozenset(
    {
        ("copyreg", "_reconstructor"),
        ("functools", "partial"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("numpy.random._pickle", "__randomstate_ctor"),
        ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    }
)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _guarded_getattr(obj: Any, name: str, *default: Any) -> Any:
    owner = type(obj).__module__
    if name.startswith("__") or not _within(owner, ("stream", "river")):
        raise pickle.UnpicklingError(
            f"getattr({type(obj).__qualname__}, {name!r}) is not allowed in a checkpoint"
        )
    return getattr(obj, name, *default)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return _guarded_getattr
        if (module, name) in _ALLOWED_FUNCTIONS:
            return super().find_class(module, name)
        if module == "builtins":
            if name in _ALLOWED_BUILTINS:
                return super().find_class(module, name)
        elif _within(module, _CLASS_MODULES) and not _within(module, _DENIED_MODULES):
            found = super().find_class(module, name)
            # Dotted names could reach through a module's imports (``x.os.system``): the
            # object itself must be a class defined where classes are allowed.
            home = getattr(found, "__module__", None) or ""
            qualified = f"{home}.{getattr(found, '__qualname__', '')}"
            if (
                isinstance(found, type)
                and _within(home, _CLASS_MODULES)
                and not _within(home, _DENIED_MODULES)
                and qualified not in _DENIED_CLASSES
            ):
                return found
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a checkpoint")


@contextlib.contextmanager
def without_gc() -> Iterator[None]:
    """The cyclic garbage collector off for the block (restored as it was after).

    Pickling or unpickling a shard allocates millions of objects, and every few thousand
    allocations the collector ran, each full collection walking the whole heap: at 150k users
    pickling took 5.6 s with it and 1.7 s without (``benchmarks/checkpoint.py``). Nothing in a
    pickle round trip makes cycles that must be freed meanwhile.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _restore(path: Path, data: bytes, secret: bytes) -> tuple[Pipeline, CheckpointInfo]:
    size = len(data)
    prefix = data[: _PREFIX.size]
    version, header_len = _check_prefix(path, prefix, size)
    (payload_len,) = _LEN.unpack_from(data, size - _TRAILER)
    _check_length(path, size, header_len, payload_len)
    expected = hmac.new(secret, memoryview(data)[: size - _MAC_SIZE], hashlib.sha256).digest()
    if not hmac.compare_digest(expected, data[size - _MAC_SIZE :]):
        raise _mac_mismatch(path)
    # Verified: from here on the bytes are ours.
    header = _parse_header(path, data[_PREFIX.size : _PREFIX.size + header_len])
    start = _PREFIX.size + header_len
    try:
        with memoryview(data)[start : start + payload_len] as view, without_gc():
            pipeline = _RestrictedUnpickler(io.BytesIO(view)).load()
    except Exception as exc:
        raise CorruptCheckpointError(
            f"{path}: signed but cannot be restored ({type(exc).__name__}: {exc}); "
            "was it written by an incompatible version of the code?"
        ) from exc
    if not isinstance(pipeline, Pipeline):
        raise CorruptCheckpointError(f"{path}: payload is a {type(pipeline).__name__}")
    return pipeline, CheckpointInfo(path, size, version, header, verified=True)


# --- writing ----------------------------------------------------------------------------


class _SigningWriter:
    """A binary sink for :func:`pickle.dump` that signs and counts what passes through."""

    def __init__(self, file: IO[bytes], mac: hmac.HMAC) -> None:
        self.file, self.mac, self.written = file, mac, 0

    def write(self, data: bytes | pickle.PickleBuffer) -> int:
        # Protocol 5 hands large buffers (numpy arrays) over as PickleBuffer, not bytes.
        with memoryview(data) as view:
            self.mac.update(view)
            self.written += view.nbytes
            return self.file.write(view)


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _header(tp: TopicPartition, pipeline: Pipeline, next_offset: int) -> dict[str, Any]:
    record = pipeline.metrics_record()
    header: dict[str, Any] = _finite(
        {
            "format_version": FORMAT_VERSION,
            "created_at": _utc_now_iso(),
            "topic": tp[0],
            "partition": tp[1],
            "next_offset": next_offset,
            "run_count": pipeline.run_count,
            "evaluated": pipeline.evaluated_count,
            "events_learned": dict(pipeline.learned),
            "users": pipeline.n_users,
            "items": pipeline.n_items,
            "models": list(pipeline.models),
            "recommender": pipeline.config.recommender,
            # What the state is tied to: a restore compares it with the current settings.
            "settings": getattr(pipeline, "built_with", None) or None,
            "served": pipeline.served,
            "updates": pipeline.updates.state(),
            "model_versions": model_versions(pipeline.models),
            "metrics": record.model_dump(mode="json", exclude={"drifts", "created_at"}),
            "payload": {"format": "pickle", "protocol": PICKLE_PROTOCOL},
        }
    )
    return header


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the store ----------------------------------------------------------------------------


class CheckpointStore:
    """Signed, atomic, rotated checkpoints of one Pipeline per topic-partition.

    Parameters
    ----------
    directory
        Root directory (``STREAM_CHECKPOINT_DIR``); several workers of a group may share it,
        each writing only the partitions it owns.
    key
        HMAC key (``STREAM_CHECKPOINT_KEY``); files not signed with it are never unpickled.
        None gives a read-only store that can list files and read their headers, unverified
        (for ``python -m stream checkpoint ls/inspect`` without the key).
    keep
        Files kept per partition (``STREAM_CHECKPOINT_KEEP``).

    Examples
    --------
    >>> import tempfile
    >>> from stream.events import Event
    >>> from stream.settings import StreamSettings
    >>> pipeline = Pipeline.from_settings(
    ...     StreamSettings(models=("popularity",), recommender="popularity", seed=1))
    >>> events = [Event(user_id="u", item_id=i, event_type="view", timestamp=0) for i in "abca"]
    >>> _ = list(pipeline.run(events))
    >>> with tempfile.TemporaryDirectory() as root:
    ...     store = CheckpointStore(root, key="not-a-real-secret", keep=2)
    ...     _ = store.save(("events", 0), pipeline, next_offset=4)
    ...     restored, offset = store.load(("events", 0))
    >>> offset, restored.learned, restored.history == pipeline.history
    (4, {'popularity': 4}, True)
    """

    def __init__(
        self, directory: Path | str, key: SecretStr | str | bytes | None, keep: int = 3
    ) -> None:
        secret = _key_bytes(key)
        if secret is not None and not secret:
            raise ValueError("the HMAC key must not be empty")
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.directory = Path(directory)
        self.keep = keep
        self._key = secret

    def __repr__(self) -> str:
        mode = "" if self._key else ", read-only"
        return f"CheckpointStore({str(self.directory)!r}, keep={self.keep}{mode})"

    @property
    def verifies(self) -> bool:
        """True when the store has a key (signs, verifies, restores)."""
        return self._key is not None

    def _secret(self, action: str) -> bytes:
        if self._key is None:
            raise CheckpointError(f"{action} needs the HMAC key (STREAM_CHECKPOINT_KEY)")
        return self._key

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> CheckpointStore | None:
        """The store configured by ``STREAM_CHECKPOINT_*``, or None when checkpoints are off.

        Raises :class:`~stream.settings.SettingsError` when a directory is set without a key.
        """
        if settings.checkpoint_dir is None:
            return None
        key = settings.checkpoint_key
        if key is None or not key.get_secret_value():
            raise SettingsError(
                "STREAM_CHECKPOINT_KEY is required when STREAM_CHECKPOINT_DIR is set: "
                "checkpoints are pickles and only files signed with this key are loaded. Set "
                "it to a long random secret shared by every worker of the group, e.g. "
                "`python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        return cls(settings.checkpoint_dir, key, settings.checkpoint_keep)

    def check_writable(self) -> None:
        """Create the root directory if needed and prove a file can be written in it.

        Raises :class:`~stream.settings.SettingsError` naming ``STREAM_CHECKPOINT_DIR`` when
        it is a regular file, cannot be created or is not writable: a worker that could never
        checkpoint must not start (it would never commit either).
        """
        root = self.directory
        if root.exists() and not root.is_dir():
            raise SettingsError(
                f"STREAM_CHECKPOINT_DIR={root} is not a directory (it is a file); point it at "
                "a directory on durable storage (it is created if missing)"
            )
        try:
            missing = [p for p in (root, *root.parents) if not p.exists()]
            root.mkdir(parents=True, exist_ok=True)
            for created in reversed(missing):
                _fsync_dir(created.parent)
            fd, probe = tempfile.mkstemp(prefix=".probe-", dir=root)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            raise SettingsError(
                f"STREAM_CHECKPOINT_DIR={root} cannot be used: {exc.strerror or exc}"
                f"{f' ({exc.filename})' if exc.filename else ''}; make it a writable directory "
                "(or unset STREAM_CHECKPOINT_DIR to run without checkpoints)"
            ) from None

    # --- layout ---------------------------------------------------------------------------

    def partition_dir(self, tp: TopicPartition) -> Path:
        topic, partition = tp
        if not _TOPIC.match(topic) or topic in (".", ".."):
            raise ValueError(f"invalid topic name {topic!r}")
        if isinstance(partition, bool) or not isinstance(partition, int) or partition < 0:
            raise ValueError(f"invalid partition {partition!r}")
        return self.directory / topic / str(partition)

    def files(self, tp: TopicPartition) -> list[Path]:
        """Checkpoint files of a partition, newest first (temporary files excluded)."""
        return [path for _, path in self._numbered(self.partition_dir(tp))]

    def partitions(self) -> list[TopicPartition]:
        """Topic-partitions that have a checkpoint directory, sorted."""
        found: list[TopicPartition] = []
        if not self.directory.is_dir():
            return found
        for topic_dir in self.directory.iterdir():
            if not topic_dir.is_dir() or not _TOPIC.match(topic_dir.name):
                continue
            for part_dir in topic_dir.iterdir():
                if part_dir.is_dir() and part_dir.name.isdigit():
                    found.append((topic_dir.name, int(part_dir.name)))
        return sorted(found)

    @staticmethod
    def _numbered(directory: Path) -> list[tuple[int, Path]]:
        if not directory.is_dir():
            return []
        numbered = []
        for path in directory.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_file():
                numbered.append((int(match.group(1)), path))
        return sorted(numbered, reverse=True)

    def _ensure_dir(self, directory: Path) -> None:
        missing = [p for p in (directory, directory.parent, self.directory) if not p.exists()]
        directory.mkdir(parents=True, exist_ok=True)
        # A new directory entry is durable only once its parent is synced.
        for created in missing:
            _fsync_dir(created.parent)

    # --- writing --------------------------------------------------------------------------

    def save(self, tp: TopicPartition, pipeline: Pipeline, next_offset: int) -> Path:
        """Write a checkpoint of ``pipeline`` covering ``tp`` up to ``next_offset`` (exclusive).

        Atomic: a temporary file in the same directory is written, flushed, fsynced and
        renamed, then the directory is fsynced; older files beyond ``keep`` are deleted.

        Raises
        ------
        OSError
            The disk refused (full, read-only, ...); no partial file is left behind.
        CheckpointError
            The pipeline cannot be pickled (a bug); no partial file is left behind.
        """
        final = self.write(tp, pipeline, next_offset)
        logger.debug("checkpoint %s written (next offset %d)", final, next_offset)
        return final

    def write(
        self,
        tp: TopicPartition,
        pipeline: Pipeline,
        next_offset: int,
        still_wanted: Callable[[], bool] | None = None,
    ) -> Path:
        """:meth:`save` without logging (a forked child must not take logging's locks).

        ``still_wanted`` is asked just before the rename: when it returns False the file is
        not published (``CheckpointError``), e.g. a forked writer whose worker has died.
        """
        if isinstance(next_offset, bool) or not isinstance(next_offset, int) or next_offset < 0:
            raise ValueError(f"next_offset must be a non-negative int, not {next_offset!r}")
        secret = self._secret("writing a checkpoint")
        directory = self.partition_dir(tp)
        self._ensure_dir(directory)
        numbered = self._numbered(directory)
        seq = numbered[0][0] + 1 if numbered else 1
        final = directory / f"{seq:012d}-{next_offset}{SUFFIX}"
        header = json.dumps(_header(tp, pipeline, next_offset), allow_nan=False).encode()
        prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header))
        mac = hmac.new(secret, prefix, hashlib.sha256)
        mac.update(header)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=SUFFIX, dir=directory)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb", buffering=_CHUNK) as f:
                f.write(prefix)
                f.write(header)
                writer = _SigningWriter(f, mac)
                try:
                    with without_gc():
                        pickle.dump(pipeline, writer, protocol=PICKLE_PROTOCOL)
                except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
                    raise CheckpointError(
                        f"cannot serialise the state of {tp[0]}[{tp[1]}]: {exc}"
                    ) from exc
                length = _LEN.pack(writer.written)
                mac.update(length)
                f.write(length)
                f.write(mac.digest())
                f.flush()
                os.fsync(f.fileno())
            if still_wanted is not None and not still_wanted():
                raise CheckpointError(f"checkpoint of {tp[0]}[{tp[1]}] no longer wanted")
            os.replace(tmp, final)
            _fsync_dir(directory)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._rotate(directory)
        return final

    def _rotate(self, directory: Path) -> None:
        removed = False
        for _, old in self._numbered(directory)[self.keep :]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
                removed = True
        # Temporary files of a writer that died mid-write (a live writer is far younger).
        cutoff = time.time() - _STALE_TMP_SECONDS
        for tmp in directory.glob(f"{_TMP_PREFIX}*{SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed = True
        if removed:
            _fsync_dir(directory)

    # --- reading --------------------------------------------------------------------------

    def read(self, path: Path | str) -> tuple[Pipeline, CheckpointInfo]:
        """Restore one file, verifying its HMAC before anything is unpickled."""
        path = Path(path)
        secret = self._secret("restoring a checkpoint")
        return _restore(path, path.read_bytes(), secret)

    def info(self, path: Path | str) -> CheckpointInfo:
        """The header of one file, verified when the store has a key (no unpickling)."""
        return read_info(path, self._key)

    def _newest(
        self, tp: TopicPartition, restore: bool
    ) -> tuple[Pipeline | None, CheckpointInfo] | None:
        files = self.files(tp)
        problems: list[str] = []
        for path in files:
            try:
                if restore:
                    pipeline, info = self.read(path)
                else:
                    pipeline, info = None, self.info(path)
                if (info.topic, info.partition) != tp:
                    raise CorruptCheckpointError(
                        f"{path}: holds {info.topic}[{info.partition}], not {tp[0]}[{tp[1]}]"
                    )
            except CorruptCheckpointError as exc:
                logger.warning("skipping unusable checkpoint: %s", exc)
                problems.append(str(exc))
                continue
            if problems:
                logger.warning(
                    "%s[%d]: using older checkpoint %s after %d unusable newer one(s)",
                    tp[0], tp[1], path, len(problems),
                )  # fmt: skip
            return pipeline, info
        if not files:
            return None
        raise CheckpointUnavailableError(
            f"{tp[0]}[{tp[1]}]: {len(files)} checkpoint file(s) in {self.partition_dir(tp)} and "
            "none is usable: " + "; ".join(problems) + ". Refusing to start this partition "
            "empty, because its committed Kafka offsets follow these checkpoints and the "
            "learned state would be silently lost. To start the partition over, move that "
            "directory away (and reset the group's offsets if its events should be re-learned)."
        )

    def load(self, tp: TopicPartition) -> tuple[Pipeline, int] | None:
        """The newest usable checkpoint of ``tp`` as ``(pipeline, next_offset)``.

        None when the partition has no checkpoint. A corrupt newest file is skipped (with a
        warning naming it and why) in favour of the previous one.

        Raises
        ------
        CheckpointVersionError
            A file is in another format version (never skipped silently).
        CheckpointUnavailableError
            Files exist but none is usable.
        """
        found = self._newest(tp, restore=True)
        if found is None:
            return None
        pipeline, info = found
        assert pipeline is not None
        logger.info(
            "loaded checkpoint %s (%s[%d] next offset %d, created %s)",
            info.path, tp[0], tp[1], info.next_offset, info.created_at,
        )  # fmt: skip
        return pipeline, info.next_offset

    def newest_info(self, tp: TopicPartition) -> CheckpointInfo | None:
        """Header of the newest file that verifies (what :meth:`load` would pick, minus
        unpickling); same errors as :meth:`load`. Without a key: the newest well-formed
        file, unverified."""
        found = self._newest(tp, restore=False)
        return None if found is None else found[1]

    def prune(
        self, tp: TopicPartition, dry_run: bool = False, keep: int = 1
    ) -> tuple[CheckpointInfo, list[Path]]:
        """Delete every file of ``tp`` but the newest ``keep`` that verify (privacy requests).

        Files that fail verification are deleted too (they may hold personal data and would
        never be loaded). Returns the newest kept file's header and the deleted paths.
        """
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self._secret("pruning")
        kept = self.newest_info(tp)
        if kept is None:
            raise CheckpointUnavailableError(f"{tp[0]}[{tp[1]}]: no checkpoint to keep")
        files = self.files(tp)
        keeping = [kept.path]
        for path in files[files.index(kept.path) + 1 :]:
            if len(keeping) >= keep:
                break
            try:
                info = self.info(path)
            except CheckpointError:
                continue
            if (info.topic, info.partition) == tp:
                keeping.append(path)
        doomed = [p for p in files if p not in keeping]
        if not dry_run:
            for path in doomed:
                path.unlink(missing_ok=True)
            if doomed:
                _fsync_dir(self.partition_dir(tp))
        return kept, doomed

    def iter_newest(
        self, partitions: list[TopicPartition] | None = None
    ) -> Iterator[tuple[TopicPartition, tuple[Pipeline, CheckpointInfo] | CheckpointError]]:
        """Per partition, the restored newest usable checkpoint or the error that prevents it."""
        for tp in self.partitions() if partitions is None else partitions:
            try:
                found = self._newest(tp, restore=True)
            except CheckpointError as exc:
                yield tp, exc
                continue
            if found is not None and found[0] is not None:
                yield tp, (found[0], found[1])
