"""Command line: ``python -m producers {replay,synthetic}``.

``replay PATH`` sends an event log (JSONL, CSV, MovieLens; gzip ok) to the events topic in
event-time order, paced or as fast as possible; ``synthetic`` sends a seeded stream with known
structure and optional drift. Both write to Kafka (keyed by user id, ``acks=all``) or, with
``--output``, to a JSONL file. Exit status: 0 all sent, 1 records not delivered or the
destination failed, 2 bad input or options, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from producers.emitter import emit, format_summary, with_progress
from producers.formats import (
    FORMATS,
    EventReader,
    FormatError,
    ReadOptions,
    nothing_read,
    parse_column_map,
)
from producers.pacing import Pacer
from producers.records import Record, RejectedLine, parse_time
from producers.sinks import JsonlSink, KafkaSink, NullSink, Sink, SinkError
from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.cli_help import finish_parser, stdout_may_close
from stream.settings import EVENT_TYPES, SettingsError, StreamSettings, load_settings

__all__ = ["build_parser", "guess_format", "main"]

logger = logging.getLogger(__name__)

_ENV_EPILOG = (
    "Unset flags default from the environment (or .env): STREAM_BOOTSTRAP_SERVERS, "
    "STREAM_EVENTS_TOPIC, STREAM_EVENTS_PARTITIONS (when the topic is created), "
    "STREAM_PRODUCER_LINGER_MS, STREAM_COMPRESSION_TYPE, and for secured clusters "
    "STREAM_SECURITY_PROTOCOL, STREAM_SASL_MECHANISM, STREAM_SASL_PLAIN_USERNAME, "
    "STREAM_SASL_PLAIN_PASSWORD, STREAM_SSL_CAFILE, STREAM_SSL_CERTFILE, STREAM_SSL_KEYFILE. "
    "Validation follows STREAM_MAX_EVENT_BYTES, STREAM_RATING_MIN and STREAM_RATING_MAX."
)


class UsageError(ValueError):
    """Bad options or input: reported in one line, exit status 2."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _time(text: str) -> float:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_destination_flags(p: argparse.ArgumentParser) -> None:
    dest = p.add_argument_group("destination")
    dest.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers (default: $STREAM_BOOTSTRAP_SERVERS, else localhost:9092)",
    )
    dest.add_argument(
        "--topic", help="topic to produce to (default: $STREAM_EVENTS_TOPIC, else events)"
    )
    where = dest.add_mutually_exclusive_group()
    where.add_argument(
        "--output",
        metavar="FILE.jsonl",
        help="write JSON lines to FILE instead of Kafka (- = stdout)",
    )
    where.add_argument(
        "--dry-run", action="store_true", help="read, validate and count; send nothing"
    )
    dest.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="give up if no broker answers within this time (default 10)",
    )
    pace = p.add_argument_group("pacing (default: as fast as possible)")
    how = pace.add_mutually_exclusive_group()
    how.add_argument("--rate", type=_positive_float, metavar="N", help="send N events per second")
    how.add_argument(
        "--speed",
        type=_positive_float,
        metavar="X",
        help="follow the event timestamps at X times real time (2 = twice as fast)",
    )
    pace.add_argument(
        "--max-gap",
        type=float,
        metavar="SECONDS",
        help="with --speed, cap any single wait (cuts quiet periods of the log)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    out.add_argument("--verbose", "-v", action="store_true", help="log progress details")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m producers`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m producers",
        description="Send events to the events topic: replay a log file or a synthetic stream.",
        epilog=_ENV_EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="{replay,synthetic}")

    r = sub.add_parser(
        "replay",
        help="replay an event log (JSONL, CSV, MovieLens) in time order",
        description="Replay an event log into Kafka, ordered by event time (stable).",
        epilog=_ENV_EPILOG,
    )
    r.add_argument("path", help="the log (gzip is detected by its magic bytes; - = stdin)")
    r.add_argument(
        "--format",
        metavar="FORMAT",
        help=f"one of {', '.join(FORMATS)} (default: guessed from the file name: u.data, "
        "ratings.dat, ratings.csv, *.jsonl, *.csv)",
    )
    r.add_argument(
        "--columns",
        metavar="FIELD=COLUMN,...",
        help="csv: map event fields to header columns, e.g. "
        "user_id=uid,item_id=sku,timestamp=ts,rating=stars,event_type=kind",
    )
    r.add_argument("--event-type", help="csv: event type when there is no event_type column")
    r.add_argument("--delimiter", default=",", help="csv: field delimiter (default ,; 'tab' ok)")
    r.add_argument("--start", type=_time, metavar="TIME", help="skip events before (epoch/ISO)")
    r.add_argument("--end", type=_time, metavar="TIME", help="skip events at or after this time")
    r.add_argument("--limit", type=_non_negative_int, metavar="N", help="send at most N events")
    r.add_argument("--no-sort", action="store_true", help="keep file order (no time sort)")
    r.add_argument(
        "--sort-buffer",
        type=_positive_int,
        default=200_000,
        metavar="N",
        help="events per sorted run held in memory; larger logs spill runs to disk "
        "(default 200000)",
    )
    r.add_argument("--tmp-dir", type=Path, metavar="DIR", help="where sorted runs are spilled")
    r.add_argument(
        "--rejects", metavar="FILE", help="write rejected lines here as JSON lines (line, reason)"
    )
    r.add_argument(
        "--no-validate",
        action="store_true",
        help="send lines the worker would reject too (e.g. to exercise its dead-letter topic)",
    )
    _add_destination_flags(r)

    s = sub.add_parser(
        "synthetic",
        help="a seeded synthetic stream with known structure and optional drift",
        description="Generate a deterministic synthetic stream (same seed, same events).",
        epilog=_ENV_EPILOG,
    )
    d = SyntheticConfig()
    s.add_argument("--events", type=_non_negative_int, default=d.n_events, help="events to send")
    s.add_argument("--users", type=_positive_int, default=d.n_users, help="distinct users")
    s.add_argument("--items", type=_positive_int, default=d.n_items, help="distinct items")
    s.add_argument("--clusters", type=_positive_int, help="item clusters (default: items/75)")
    s.add_argument("--seed", type=int, default=d.seed, help="seed: same seed, same events")
    s.add_argument(
        "--start-time", type=_time, default=d.start_time, help="first event time (epoch or ISO)"
    )
    s.add_argument(
        "--events-per-second",
        type=_positive_float,
        default=d.events_per_second,
        help="event-time spacing of the generated events",
    )
    s.add_argument("--drift-at", type=_non_negative_int, metavar="N", help="drift at event N")
    s.add_argument(
        "--drift-kind",
        choices=("abrupt", "gradual"),
        default=d.drift_kind,
        help="abrupt: preferences change at once; gradual: over --drift-width events",
    )
    s.add_argument(
        "--drift-width", type=_positive_int, help="gradual drift: events of the transition"
    )
    s.add_argument(
        "--ratings-fraction",
        type=float,
        default=d.ratings_fraction,
        help="share of events that are explicit ratings",
    )
    s.add_argument(
        "--new-items-fraction",
        type=float,
        default=d.new_items_fraction,
        help="share of the catalogue that appears only as the stream goes on",
    )
    s.add_argument(
        "--in-cluster-prob",
        type=float,
        default=d.in_cluster_prob,
        help="probability a user's next item is from their preferred clusters",
    )
    _add_destination_flags(s)
    finish_parser(parser)
    return parser


def guess_format(path: str) -> str | None:
    """The format a file name suggests (``None`` if it does not say).

    >>> guess_format("ml-1m/ratings.dat.gz"), guess_format("log.jsonl"), guess_format("x.bin")
    ('movielens-1m', 'jsonl', None)
    """
    name = Path(path).name.lower().removesuffix(".gz")
    known = {"u.data": "movielens-100k", "ratings.dat": "movielens-1m"}
    if name in known:
        return known[name]
    if name == "ratings.csv":
        return "movielens-csv"
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    return None


def _settings(ns: argparse.Namespace) -> StreamSettings:
    try:
        return load_settings(bootstrap_servers=ns.bootstrap_servers, events_topic=ns.topic)
    except SettingsError as exc:
        raise UsageError(str(exc)) from None


def _pacer(ns: argparse.Namespace) -> Pacer | None:
    if ns.max_gap is not None and ns.speed is None:
        raise UsageError("--max-gap only applies with --speed")
    if ns.rate is None and ns.speed is None:
        return None
    try:
        return Pacer(rate=ns.rate, speed=ns.speed, max_gap_s=ns.max_gap)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _sink(ns: argparse.Namespace, settings: StreamSettings) -> Sink:
    if ns.dry_run:
        return NullSink()
    if ns.output is not None:
        return JsonlSink(ns.output)
    return KafkaSink(
        settings,
        settings.events_topic,
        connect_timeout_s=ns.connect_timeout,
        partitions=settings.events_partitions,
    )


def _progress_enabled(ns: argparse.Namespace) -> bool:
    return not ns.quiet and sys.stderr.isatty()


def _count(n: int) -> str:
    return f"{n:,}"


def _delivery_rows(sink: Sink, elapsed_s: float) -> list[tuple[str, str]]:
    rate = sink.delivered / elapsed_s if elapsed_s > 0 else 0.0
    return [
        ("sent", _count(sink.delivered)),
        ("failed", _count(sink.failed)),
        ("time", f"{elapsed_s:.1f} s ({rate:,.0f} events/s)"),
    ]


def _replay(ns: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    settings = _settings(ns)
    fmt = ns.format or guess_format(ns.path)
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of {ns.path}: give --format ({', '.join(FORMATS)})"
        )
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
    if ns.path != "-" and not Path(ns.path).is_file():
        raise UsageError(
            f"no such file: {ns.path}" if not Path(ns.path).exists() else f"not a file: {ns.path}"
        )
    if ns.start is not None and ns.end is not None and ns.start >= ns.end:
        raise UsageError("--start must be before --end")
    if ns.event_type is not None and ns.event_type not in EVENT_TYPES:
        raise UsageError(f"--event-type must be one of {', '.join(EVENT_TYPES)}")
    pacer = _pacer(ns)
    delimiter = "\t" if ns.delimiter.lower() in ("tab", "\\t") else ns.delimiter
    if len(delimiter) != 1:
        raise UsageError("--delimiter must be one character (or 'tab')")
    try:
        options = ReadOptions(
            columns=parse_column_map(ns.columns),
            event_type=ns.event_type,
            delimiter=delimiter,
            start=ns.start,
            end=ns.end,
            limit=ns.limit,
            sort=not ns.no_sort,
            sort_buffer=ns.sort_buffer,
            validate=not ns.no_validate,
            needs_time=ns.speed is not None,
            max_event_bytes=settings.max_event_bytes,
            rating_range=(settings.rating_min, settings.rating_max),
            tmp_dir=ns.tmp_dir,
        )
    except FormatError as exc:
        raise UsageError(str(exc)) from None
    rejects: IO[str] | None = None
    if ns.rejects is not None:
        try:
            rejects = stack.enter_context(open(ns.rejects, "w", encoding="utf-8"))  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot write {ns.rejects}: {exc.strerror or exc}") from None

    def on_reject(bad: RejectedLine) -> None:
        if rejects is not None:
            rejects.write(json.dumps(bad.to_json(), ensure_ascii=False) + "\n")

    reading = _ReadingBar(_progress_enabled(ns) and options.sort)
    reader = EventReader(ns.path, fmt, options, on_reject=on_reject, on_progress=reading.update)
    stack.callback(reading.close)

    def total() -> int | None:
        reading.close()  # the sort has read everything: the sending bar takes over
        return reader.expected

    sink = _sink(ns, settings)
    stack.callback(sink.close)
    status = _run(
        f"replay {ns.path} ({fmt}) -> {sink.description}",
        reader.records(),
        sink,
        pacer,
        ns,
        total=total,
        rows=lambda: _replay_rows(reader),
    )
    empty = nothing_read(reader, sink.delivered + sink.failed) if status == 0 else None
    if empty is not None:
        print(f"error: {empty}", file=sys.stderr)
        return 2
    return status


class _ReadingBar:
    """Lines read so far while a log is being sorted (nothing can be sent before the end)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def update(self, lines: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(desc="reading and sorting", unit="line", unit_scale=True)
        self._bar.update(lines - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _replay_rows(reader: EventReader) -> list[tuple[str, str]]:
    header = f" ({reader.header_lines} header)" if reader.header_lines else ""
    skipped = []
    if reader.skipped_time:
        skipped.append(f"{reader.skipped_time:,} outside --start/--end")
    if reader.skipped_limit:
        skipped.append(f"{reader.skipped_limit:,} over --limit")
    elif reader.limit_reached and not reader.options.sort:
        skipped.append(f"stopped reading at --limit, line {reader.lines:,}")
    reasons = ", ".join(f"{r} {n:,}" for r, n in reader.reasons.most_common())
    return [
        ("lines", f"{reader.lines:,}{header}"),
        ("skipped", f"{reader.skipped:,}" + (f" ({'; '.join(skipped)})" if skipped else "")),
        ("rejected", f"{reader.rejected:,}" + (f" ({reasons})" if reasons else "")),
    ]


def _synthetic(ns: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    settings = _settings(ns)
    pacer = _pacer(ns)
    try:
        config = SyntheticConfig(
            n_events=ns.events,
            n_users=ns.users,
            n_items=ns.items,
            n_clusters=ns.clusters,
            seed=ns.seed,
            start_time=ns.start_time,
            events_per_second=ns.events_per_second,
            drift_at=ns.drift_at,
            drift_kind=ns.drift_kind,
            drift_width=ns.drift_width,
            ratings_fraction=ns.ratings_fraction,
            new_items_fraction=ns.new_items_fraction,
            in_cluster_prob=ns.in_cluster_prob,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stream = SyntheticStream(config)
    sink = _sink(ns, settings)
    stack.callback(sink.close)
    drift = "" if config.drift_at is None else f", {config.drift_kind} drift at {config.drift_at:,}"
    title = (
        f"synthetic {config.n_events:,} events (seed {config.seed}, {config.n_users:,} users, "
        f"{config.n_items:,} items, {config.clusters} clusters{drift}) -> {sink.description}"
    )
    return _run(title, stream.records(), sink, pacer, ns, total=lambda: config.n_events, rows=list)


def _run(
    title: str,
    records: Iterator[Record],
    sink: Sink,
    pacer: Pacer | None,
    ns: argparse.Namespace,
    *,
    total: Callable[[], int | None],
    rows: Callable[[], list[tuple[str, str]]],
) -> int:
    """Emit, then print one summary block; the exit status says whether everything arrived."""
    started = time.monotonic()
    progress = _progress_enabled(ns)
    error: str | None = None
    status = 0
    redirect: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if progress:
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm()
    try:
        with redirect:
            result = emit(with_progress(records, enabled=progress, total=total), sink, pacer)
        if result.interrupted:
            status = 130
    except FormatError as exc:  # e.g. a gzip stream corrupt half-way, a csv header without ids
        error, status = str(exc), 2
    except SinkError as exc:
        error, status = str(exc), 1
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()  # a generator: removes the sort's temporary files now
    summary = [*rows(), *_delivery_rows(sink, time.monotonic() - started)]
    if status == 130:
        summary.append(("stopped", "interrupted (Ctrl-C)"))
    print(format_summary(title, summary), file=sys.stderr)
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
    if status == 0 and sink.failed:
        status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (no traceback for expected failures)."""
    return stdout_may_close(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if ns.command is None:
        parser.print_help(sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO if ns.verbose else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
        )
        # kafka-python logs every refused connection as an error; the outcome is reported
        # here in one line (and per record through the send callbacks) instead.
        logging.getLogger("kafka").setLevel(logging.WARNING if ns.verbose else logging.CRITICAL)
    try:
        with contextlib.ExitStack() as stack:
            if ns.command == "replay":
                return _replay(ns, stack)
            return _synthetic(ns, stack)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
