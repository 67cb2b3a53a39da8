"""Event logs on disk: read, parse, validate, filter by time, order by time, limit.

Formats (parsed by :mod:`producers.parsers`): ``jsonl``, ``csv``, and MovieLens
``movielens-100k`` (``u.data``), ``movielens-1m`` (``ratings.dat``) and ``movielens-csv``
(``ratings.csv``), whose rows become ``rating`` events. Each event is validated with the
worker's own decoder (:func:`stream.events.decode_one`). Gzip input is recognised by its
magic bytes. Files are streamed line by line (bounded line length) and ordered with an external
merge sort, so a log larger than memory replays. A bad line never stops a read: it becomes
a :class:`~producers.records.RejectedLine` with its line number and a reason.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from producers.ordering import ExternalSorter
from producers.parsers import CSV_FIELDS, FORMATS, Bad, FormatError, make_parser, parse_column_map
from producers.records import Record, RejectedLine, encode_event, parse_time
from stream.events import Event, Rejected, decode_one

__all__ = [
    "CSV_FIELDS",
    "FORMATS",
    "EventReader",
    "FormatError",
    "ReadOptions",
    "nothing_read",
    "open_lines",
    "parse_column_map",
    "read_events",
]

logger = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20
_GZIP_MAGIC = b"\x1f\x8b"


# --- reading lines --------------------------------------------------------------------------


@contextlib.contextmanager
def open_lines(
    path: str | Path, max_bytes: int = MAX_LINE_BYTES
) -> Iterator[Iterator[tuple[int, bytes | None]]]:
    """Stream ``(line_number, bytes)`` from ``path`` (``-`` = stdin), gunzipping by magic bytes.

    Line endings are stripped; a line longer than ``max_bytes`` comes out as ``None`` (and is
    skipped without being held in memory). Raises ``OSError`` if the file cannot be opened and
    :class:`FormatError` if gzip data turns out to be corrupt.
    """
    with contextlib.ExitStack() as stack:
        if str(path) == "-":
            raw: IO[bytes] = sys.stdin.buffer
        else:
            raw = stack.enter_context(open(path, "rb"))
        head = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
        stream: IO[bytes] = raw
        if head == _GZIP_MAGIC:
            gz = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            stream = gz  # type: ignore[assignment]  # GzipFile is a binary file object
        yield _lines(stream, max_bytes, str(path))


def _lines(stream: IO[bytes], max_bytes: int, name: str) -> Iterator[tuple[int, bytes | None]]:
    number = 0
    try:
        while line := stream.readline(max_bytes + 1):
            number += 1
            if len(line) > max_bytes and not line.endswith(b"\n"):
                while (more := stream.readline(max_bytes + 1)) and not more.endswith(b"\n"):
                    pass
                yield number, None
                continue
            yield number, line.rstrip(b"\r\n")
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise FormatError(
            f"{name}: corrupt or truncated gzip data after line {number}: {exc}"
        ) from None


# --- the reader -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadOptions:
    """How to read a log: format options, validation, time window, order, limit.

    ``start`` is inclusive and ``end`` exclusive (epoch seconds). ``needs_time`` rejects events
    without a usable timestamp even when unsorted and unfiltered (e.g. when paced by ``--speed``).
    """

    columns: Mapping[str, str] | None = None
    event_type: str | None = None
    delimiter: str = ","
    start: float | None = None
    end: float | None = None
    limit: int | None = None
    sort: bool = True
    sort_buffer: int = 200_000
    validate: bool = True
    needs_time: bool = False
    max_event_bytes: int = 65_536
    rating_range: tuple[float, float] = (0.5, 5.0)
    tmp_dir: Path | None = None
    max_logged_rejects: int = 100


class EventReader:
    """Read an event log as :class:`Record` objects (:meth:`records`) or :class:`Event` objects.

    Counters (``lines``, ``rejected``, ``skipped_time``, ``skipped_limit``, ``reasons``) are
    final once iteration ends. ``on_reject`` receives every rejected line; each is also logged
    as a warning with its line number (the first ``max_logged_rejects`` of them).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "u.data"
    >>> _ = path.write_text("1\\t10\\t4\\t300\\n2\\t20\\t5\\t100\\nbad line\\n")
    >>> reader = EventReader(path, "movielens-100k")
    >>> [(e.user_id, e.item_id, e.timestamp) for e in reader]
    [('2', '20', 100.0), ('1', '10', 300.0)]
    >>> reader.rejected, dict(reader.reasons)
    (1, {'wrong_column_count': 1})
    """

    def __init__(
        self,
        path: str | Path,
        fmt: str,
        options: ReadOptions | None = None,
        *,
        on_reject: Callable[[RejectedLine], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.options = options or ReadOptions()
        if self.options.limit is not None and self.options.limit < 0:
            raise FormatError("limit must not be negative")
        make_parser(
            fmt, self.options.columns, self.options.event_type, self.options.delimiter
        )  # fail now on an unknown format or bad options
        self.on_reject = on_reject
        self.on_progress = on_progress
        self.lines = 0
        self.header_lines = 0
        self.rejected = 0
        self.reasons: Counter[str] = Counter()
        self.skipped_time = 0
        self.skipped_limit = 0
        self.limit_reached = False
        self.sort_runs = 0
        self.expected: int | None = None  # records that will come out, once known

    @property
    def skipped(self) -> int:
        """Valid events left out by the time window or the limit."""
        return self.skipped_time + self.skipped_limit

    def records(self) -> Generator[Record, None, None]:
        """Valid, in-window records, ordered by time (unless ``sort=False``), up to the limit."""
        opts = self.options
        limit = opts.limit
        if not opts.sort:
            self.expected = limit
            if limit == 0:
                self.limit_reached = True
                return
            for sent, record in enumerate(self._read(), start=1):
                yield record
                if sent == limit:
                    self.limit_reached = True  # stop reading: the rest is not even parsed
                    return
            return
        sorter: ExternalSorter[Record] = ExternalSorter(
            key=_time_key, buffer_size=opts.sort_buffer, tmp_dir=opts.tmp_dir
        )
        ordered = sorter.sort(self._read())
        try:
            first = next(ordered, None)
            self.sort_runs = sorter.runs
            self.expected = sorter.count if limit is None else min(limit, sorter.count)
            if limit is not None and sorter.count > limit:
                self.skipped_limit = sorter.count - limit
                self.limit_reached = True
            if first is None or limit == 0:
                return
            yield first
            sent = 1
            for record in ordered:
                if limit is not None and sent >= limit:
                    return
                sent += 1
                yield record
        finally:
            ordered.close()

    def __iter__(self) -> Iterator[Event]:
        """Validated :class:`~stream.events.Event` objects in replay order."""
        lo, hi = self.options.rating_range
        for record in self.records():
            event = decode_one(
                record.key,
                record.value,
                max_bytes=self.options.max_event_bytes,
                rating_range=(lo, hi),
            )
            if isinstance(event, Rejected):  # only possible with validate=False
                self._reject(RejectedLine(record.line, event.reason, event.detail, record.value))
                continue
            yield event

    # --- internals ---------------------------------------------------------------------------

    def _reject(self, bad: RejectedLine) -> None:
        self.rejected += 1
        self.reasons[bad.reason] += 1
        if self.rejected <= self.options.max_logged_rejects:
            logger.warning("%s:%d: rejected (%s): %s", self.path, bad.line, bad.reason, bad.detail)
            if self.rejected == self.options.max_logged_rejects:
                logger.warning(
                    "%s: further rejected lines are counted but not logged one by one "
                    "(--rejects FILE keeps them all)",
                    self.path,
                )
        if self.on_reject is not None:
            self.on_reject(bad)

    def _read(self) -> Iterator[Record]:
        opts = self.options
        parser = make_parser(self.fmt, opts.columns, opts.event_type, opts.delimiter)
        needs_time = opts.sort or opts.needs_time or opts.start is not None or opts.end is not None
        start = -math.inf if opts.start is None else opts.start
        end = math.inf if opts.end is None else opts.end
        progress = self.on_progress
        with open_lines(self.path) as lines:
            for number, raw in lines:
                self.lines = number
                if progress is not None and number % 65_536 == 0:
                    progress(number)
                if raw is None:
                    self._reject(
                        RejectedLine(number, "line_too_long", f"over {MAX_LINE_BYTES} bytes", b"")
                    )
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self._reject(RejectedLine(number, "not_utf8", str(exc), raw))
                    continue
                if number == 1:
                    text = text.removeprefix("\ufeff")
                if not text.strip():
                    self._reject(RejectedLine(number, "empty", "blank line", raw))
                    continue
                parsed = parser.parse_one(text)
                if parsed is None:
                    self.header_lines += 1
                    continue
                result = (
                    parsed if isinstance(parsed, Bad) else self._record(number, parsed, needs_time)
                )
                if isinstance(result, Bad):
                    self._reject(RejectedLine(number, result.reason, result.detail, raw))
                    continue
                ts = result.timestamp
                if ts is not None and not start <= ts < end:
                    self.skipped_time += 1
                    continue
                yield result
        if progress is not None:
            progress(self.lines)

    def _record(self, number: int, data: dict[str, Any], needs_time: bool) -> Record | Bad:
        try:
            value = encode_event(data)
        except ValueError as exc:  # NaN/inf from a number column
            return Bad("invalid_field", str(exc)[:200])
        if self.options.validate:
            event = decode_one(
                None,
                value,
                max_bytes=self.options.max_event_bytes,
                rating_range=self.options.rating_range,
            )
            if isinstance(event, Rejected):
                return Bad(event.reason, event.detail)
            return Record(number, event.timestamp, event.user_id.encode("utf-8"), value)
        user = data.get("user_id")
        key = None if isinstance(user, bool) or not isinstance(user, str | int) else str(user)
        try:
            ts: float | None = parse_time(data.get("timestamp"))
        except ValueError as exc:
            if needs_time:
                return Bad("invalid_timestamp", str(exc))
            ts = None
        return Record(number, ts, None if key is None else key.encode("utf-8"), value)


def _time_key(record: Record) -> float:
    # Records without a time only reach the sorter when unvalidated and unsorted: never here.
    return record.timestamp if record.timestamp is not None else math.inf


def read_events(
    path: str | Path, fmt: str, *, limit: int | None = None, **options: Any
) -> EventReader:
    """An :class:`EventReader` over ``path`` in time order (iterate it for ``Event`` objects).

    ``options`` are :class:`ReadOptions` fields. Raises :class:`FormatError` for an unknown
    format at once; the reader's ``rejected`` counts malformed lines once iterated.
    """
    return EventReader(path, fmt, ReadOptions(limit=limit, **options))


def nothing_read(reader: EventReader, delivered: int) -> str | None:
    """Why a read that yielded ``delivered`` events found nothing valid, or None if it did.

    A wrong ``--format`` rejects every line; this names the format, what was rejected and
    what to check, for a non-zero exit instead of a run that "succeeds" with nothing.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.jsonl"
    >>> _ = path.write_text('{"user_id": "u", "item_id": "i", "timestamp": 1}\\n')
    >>> reader = EventReader(path, "movielens-100k")
    >>> list(reader)
    []
    >>> print(nothing_read(reader, 0))  # doctest: +NORMALIZE_WHITESPACE
    no valid event in .../log.jsonl read as movielens-100k: 1 of 1 line(s) rejected
    (wrong_column_count 1); check --format (one of jsonl, csv, movielens-100k, ...)
    """
    if delivered or reader.skipped or reader.options.limit == 0:
        return None
    lines = max(0, reader.lines - reader.header_lines)
    if not lines:
        return f"no event in {reader.path}: it has no data lines"
    reasons = ", ".join(f"{r} {n:,}" for r, n in reader.reasons.most_common(3))
    hint = f"check --format (one of {', '.join(FORMATS)})"
    if reader.fmt == "csv":
        hint += " and --columns / --delimiter"
    return (
        f"no valid event in {reader.path} read as {reader.fmt}: {reader.rejected:,} of "
        f"{lines:,} line(s) rejected ({reasons}); {hint}"
    )
