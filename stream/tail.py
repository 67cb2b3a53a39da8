"""``python -m stream tail TOPIC``: print the records of a topic, decoded and readable.

Each record is one line: where it is (``topic[partition]@offset``), when it was written, its
key, and what it says. Recommendations, metrics, dead letters (with their original bytes) and
events are recognised by the topic they are on (the ``STREAM_*_TOPIC`` settings) or, on any
other topic, by their shape; anything else is shown as JSON or as escaped bytes. Nothing read
from a topic reaches the terminal unescaped (control characters are shown as escapes).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from stream.events import DeadLetter, MetricsRecord, Recommendation, Rejected, decode_one
from stream.kafka import RawRecord
from stream.settings import StreamSettings

__all__ = [
    "Kind",
    "add_arguments",
    "describe_one",
    "guess_kind",
    "json_one",
    "register",
    "run_tail",
    "topic_kinds",
]

logger = logging.getLogger(__name__)

Kind = Literal["recommendation", "metrics", "dead_letter", "event", "unknown"]

# Longest rendering of raw bytes (a dead letter's original value, an unknown payload).
_SHOWN_BYTES = 1_000


def register(sub: Any) -> None:
    """Add the ``tail`` subcommand to ``sub`` (an ``add_subparsers()`` result)."""
    parser = sub.add_parser(
        "tail",
        help="print the records of a topic, decoded (recommendations, metrics, dead letters)",
        description="Print the records of TOPIC, one readable line each: recommendations, "
        "metrics, dead letters (with their original bytes), events; anything else as JSON or "
        "escaped bytes. Follows new records until --limit or Ctrl-C.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=_command)


def _command(ns: argparse.Namespace) -> int:
    from stream.kafka.reader import TopicNotFoundError
    from stream.settings import load_settings

    settings = load_settings(bootstrap_servers=ns.bootstrap_servers)
    try:
        return run_tail(ns, settings)
    except TopicNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tail`` subcommand's arguments."""
    parser.add_argument("topic", metavar="TOPIC", help="topic to read (any of ours, or another)")
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the first record (default: print only records written from now on)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="stop after printing N records"
    )
    parser.add_argument(
        "--key", default=None, metavar="K", help="print only records whose key is K (a user id)"
    )
    parser.add_argument(
        "--no-follow",
        action="store_true",
        help="stop at the end of the topic (as it was at the start) instead of waiting for more",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per record (where, key, kind, decoded value) instead of text",
    )
    parser.add_argument("--bootstrap-servers", default=None, help="[env STREAM_BOOTSTRAP_SERVERS]")


def _text(value: str) -> str:
    """``value`` as is when printable, else its escaped ``repr``."""
    return value if value.isprintable() else repr(value)


def _raw(data: bytes | None, limit: int = _SHOWN_BYTES) -> str:
    """Bytes as a quoted, escaped string (text if UTF-8), cut at ``limit`` characters."""
    if data is None:
        return "null"
    try:
        shown = repr(data.decode("utf-8"))
    except UnicodeDecodeError:
        shown = repr(data)
    if len(shown) > limit:
        shown = f"{shown[:limit]}... ({len(data)} bytes)"
    return shown


def _key(key: bytes | None) -> str:
    if key is None:
        return "-"
    try:
        return _text(key.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(key)


def guess_kind(value: Any, hint: Kind | None = None) -> Kind:
    """What a decoded JSON value is: the topic's ``hint`` if given, else judged by its fields."""
    if hint is not None:
        return hint
    if not isinstance(value, dict):
        return "unknown"
    if value.get("kind") == "metrics":
        return "metrics"
    if "reason" in value and "source_offset" in value and "value_b64" in value:
        return "dead_letter"
    if "items" in value and "user_id" in value:
        return "recommendation"
    if "event_type" in value:
        return "event"
    return "unknown"


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _b64(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return text.encode()


def _recommendation(data: bytes) -> str:
    r = Recommendation.model_validate_json(data)
    items = ", ".join(f"{_text(i.item_id)} ({i.score:.3g})" for i in r.items)
    source = f"{_text(r.source_topic)}[{r.source_partition}]@{r.source_offset}"
    return (
        f"recommendation user={_text(r.user_id)} model={_text(r.model)} "
        f"({len(r.items)} item(s), after {source}): {items or 'none'}"
    )


def _metrics(data: bytes) -> str:
    m = MetricsRecord.model_validate_json(data)
    rates = []
    for name, window in m.window_metrics.items():
        cumulative = m.cumulative_metrics.get(name)
        w = "-" if window.hit_rate is None else f"{window.hit_rate:.3f}"
        c = (
            "-"
            if cumulative is None or cumulative.hit_rate is None
            else f"{cumulative.hit_rate:.3f}"
        )
        rates.append(f"{_text(name)} {w}/{c}")
    drifts = ", ".join(f"{_text(d.model)}:{_text(d.metric)}@{d.event}" for d in m.drifts)
    return (
        f"metrics events={m.events} evaluated={m.evaluated} users={m.users} items={m.items} "
        f"| HR@{m.k} window/cumulative: {'; '.join(rates) or '-'} "
        f"| drifts: {drifts or 'none'}"
    )


def _dead_letter(data: bytes) -> str:
    d = DeadLetter.model_validate_json(data)
    source = f"{_text(d.source_topic)}[{d.source_partition}]@{d.source_offset}"
    return (
        f"dead letter reason={_text(d.reason)} from {source}: {_text(d.detail)} "
        f"| original key={_raw(_b64(d.key_b64))} value={_raw(_b64(d.value_b64))}"
    )


def _event(data: bytes) -> str:
    decoded = decode_one(None, data, max_bytes=max(len(data), 1))
    if isinstance(decoded, Rejected):
        return f"invalid event ({decoded.reason}: {_text(decoded.detail)}): {_raw(data)}"
    e = decoded
    when = datetime.fromtimestamp(e.timestamp, UTC).isoformat(timespec="seconds")
    parts = [f"event {e.event_type} user={_text(e.user_id)}"]
    if e.item_id is not None:
        parts.append(f"item={_text(e.item_id)}")
    if e.rating is not None:
        parts.append(f"rating={e.rating:g}")
    parts.append(f"at {when}")
    return " ".join(parts)


_DESCRIBE: dict[Kind, Callable[[bytes], str]] = {
    "recommendation": _recommendation,
    "metrics": _metrics,
    "dead_letter": _dead_letter,
    "event": _event,
}


def _when(timestamp_ms: int) -> str:
    if timestamp_ms < 0:
        return "-"
    try:
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return str(timestamp_ms)


def describe_one(record: RawRecord, hint: Kind | None = None) -> str:
    """One readable line for ``record``; never raises on what the record holds.

    >>> describe_one(RawRecord("recs", 0, 5, b"u1", None, 0), "recommendation")
    'recs[0]@5 1970-01-01T00:00:00.000+00:00 key=u1 tombstone (the key is deleted)'
    """
    head = f"{_text(record.topic)}[{record.partition}]@{record.offset} {_when(record.timestamp_ms)}"
    head += f" key={_key(record.key)}"
    value = record.value
    if value is None:
        return f"{head} tombstone (the key is deleted)"
    decoded = _json(value)
    kind = guess_kind(decoded, hint)
    describe = _DESCRIBE.get(kind)
    if describe is not None and (decoded is not None or kind == "event"):
        try:
            return f"{head} {describe(value)}"
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(p) for p in problem["loc"]) or kind
            why = f"{_text(where)}: {problem['msg']}"
            return f"{head} not a valid {kind} record ({why}): {_raw(value)}"
    if decoded is not None:
        return f"{head} json {_raw(json.dumps(decoded, ensure_ascii=False).encode())}"
    return f"{head} {len(value)} bytes: {_raw(value)}"


def json_one(record: RawRecord, hint: Kind | None = None) -> str:
    """One JSON line for ``record``: where it is, its key, its kind and its decoded value.

    A dead letter also carries its original key and value as text (``original``).
    """
    decoded = None if record.value is None else _json(record.value)
    kind: str = "tombstone" if record.value is None else guess_kind(decoded, hint)
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": None if record.key is None else record.key.decode("utf-8", "backslashreplace"),
        "kind": kind,
        "value": decoded,
    }
    if record.value is not None and decoded is None:
        out["value_b64"] = base64.b64encode(record.value).decode("ascii")
    if kind == "dead_letter" and isinstance(decoded, dict):
        original = {}
        for field in ("key", "value"):
            raw = decoded.get(f"{field}_b64")
            data = _b64(raw) if isinstance(raw, str) else None
            original[field] = None if data is None else data.decode("utf-8", "backslashreplace")
        out["original"] = original
    return json.dumps(out, ensure_ascii=True)


def topic_kinds(settings: StreamSettings) -> dict[str, Kind]:
    """The kind of record on each of our topics, by the settings' topic names."""
    return {
        settings.recommendations_topic: "recommendation",
        settings.metrics_topic: "metrics",
        settings.dead_letter_topic: "dead_letter",
        settings.events_topic: "event",
    }


def _silence_stdout() -> None:
    # The reader went away (``| head``): later writes, and the flush at exit, go nowhere.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def run_tail(ns: argparse.Namespace, settings: StreamSettings) -> int:
    """Print records of ``ns.topic`` until ``--limit``, the end (``--no-follow``) or Ctrl-C."""
    from stream.kafka.reader import TopicReader

    if ns.limit is not None and ns.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    hint = topic_kinds(settings).get(ns.topic)
    key = None if ns.key is None else ns.key.encode("utf-8")
    render = json_one if ns.json else describe_one
    reader = TopicReader(settings, ns.topic, from_beginning=ns.from_beginning)
    printed = 0
    announced = False
    try:
        while True:
            records = reader.poll()
            if not announced and reader.positioned():
                announced = True
                where = "the beginning" if ns.from_beginning else f"offsets {reader.start_marks}"
                logger.info("reading %s from %s", ns.topic, where)
            for record in records:
                if key is not None and record.key != key:
                    continue
                print(render(record, hint))
                printed += 1
                if ns.limit is not None and printed >= ns.limit:
                    sys.stdout.flush()
                    return 0
            if records:
                sys.stdout.flush()
            if ns.no_follow and reader.caught_up():
                return 0
    except BrokenPipeError:
        _silence_stdout()
        return 0
    finally:
        reader.close()
