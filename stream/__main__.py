"""Command line: ``python -m stream {worker,broker,demo,evaluate,checkpoint,schema,tail,serve}``.

Every flag that mirrors a setting defaults from its ``STREAM_*`` environment variable (and
``.env``); ``--help`` names the variable. Flags override the environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stream.checkpoint_cli import add_arguments as checkpoint_arguments
from stream.cli_help import LOG_LEVELS, finish_parser, parse_log_level, stdout_may_close

__all__ = ["main"]

logger = logging.getLogger("stream")


def _setting_flag(parser: argparse.ArgumentParser, flag: str, type_: Any, help_: str) -> None:
    from stream.settings import StreamSettings

    dest = flag.lstrip("-").replace("-", "_")
    env = f"STREAM_{dest.upper()}"
    default = StreamSettings.model_fields[dest].default
    shown = "unset" if default is None else str(default)
    parser.add_argument(
        flag, dest=dest, type=type_, default=None, help=f"{help_} [env {env}, default {shown}]"
    )


def _kafka_flags(parser: argparse.ArgumentParser) -> None:
    _setting_flag(parser, "--bootstrap-servers", str, "Kafka bootstrap servers")
    _setting_flag(parser, "--events-topic", str, "topic to consume events from")
    _setting_flag(parser, "--recommendations-topic", str, "topic for top-K recommendations")
    _setting_flag(parser, "--metrics-topic", str, "topic for metrics records")
    _setting_flag(parser, "--dead-letter-topic", str, "topic for dead letters")
    _setting_flag(parser, "--group-id", str, "consumer group id")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stream",
        description="Streaming online-learning recommender (Kafka in, River models, top-K out).",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)}; also accepted after the command "
        "[env STREAM_LOG_LEVEL, else INFO]",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    w = sub.add_parser("worker", help="consume events, learn, publish recommendations and metrics")
    w.add_argument("--max-events", type=int, default=None, help="stop after N records consumed")
    w.add_argument(
        "--idle-timeout", type=float, default=None, help="stop after SECONDS without a new record"
    )
    _kafka_flags(w)
    _setting_flag(w, "--metrics-port", int, "Prometheus /metrics port (0 = off)")
    _setting_flag(w, "--checkpoint-dir", Path, "directory for checkpoints (off when unset)")

    b = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu)")
    b.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092)")
    b.add_argument("--host", default="127.0.0.1", help="address to listen on")

    d = sub.add_parser("demo", help="broker + synthetic producer + worker on the embedded default")
    d.add_argument("--events", type=int, default=30_000, help="synthetic events to stream")
    d.add_argument(
        "--drift-at", type=int, default=None, help="inject drift at this event (default: halfway)"
    )
    d.add_argument("--no-drift", action="store_true", help="a stream without drift")
    d.add_argument("--users", type=int, default=500, help="synthetic users")
    d.add_argument("--items", type=int, default=1_000, help="synthetic items")
    d.add_argument("--seed", type=int, default=7, help="seed of the synthetic stream")
    d.add_argument(
        "--rate", type=float, default=None, help="events per second (default: as fast as possible)"
    )
    d.add_argument(
        "--idle-timeout", type=float, default=10.0, help="stop after SECONDS without a record"
    )
    _setting_flag(d, "--metrics-port", int, "Prometheus /metrics port for the demo worker")

    e = sub.add_parser("evaluate", help="run the core offline on a file (test-then-learn)")
    e.add_argument("path", type=Path, help="event log (jsonl, csv, MovieLens files; gzip ok)")
    e.add_argument("--format", required=True, help="jsonl, csv, movielens-100k, movielens-1m, ...")
    e.add_argument("--report", type=Path, default=None, help="write metrics.json, plots, HTML here")
    e.add_argument("--limit", type=int, default=None, help="evaluate the first N events only")
    e.add_argument(
        "--columns",
        metavar="FIELD=COLUMN,...",
        help="csv: map event fields to header columns, e.g. "
        "user_id=uid,item_id=sku,timestamp=ts,rating=stars,event_type=kind",
    )
    e.add_argument("--event-type", help="csv: event type when there is no event_type column")
    e.add_argument("--delimiter", default=",", help="csv: field delimiter ('tab' ok)")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    e.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="split the file into P shards as Kafka splits the events topic (user key), one "
        "model per shard sharing item state every STREAM_MODEL_SYNC_EVENTS events (auto: "
        "ceil(STREAM_MODEL_SYNC_STALENESS / (P - 1)))",
    )

    c = sub.add_parser("checkpoint", help="list, inspect, export or prune stored checkpoints")
    checkpoint_arguments(c)

    st = sub.add_parser("settings", help="print the effective settings (secrets masked)")
    st.add_argument(
        "--markdown", action="store_true", help="print the reference table of every setting"
    )

    s = sub.add_parser("schema", help="print the JSON Schemas of every record")
    s.add_argument("--output", type=Path, default=None, help="write one file per record here")
    _add_reader_commands(sub)
    finish_parser(parser, log_level_flag=True)
    return parser


def _add_reader_commands(sub: Any) -> None:
    """``tail`` and ``serve``: each module registers its subcommand and its handler."""
    from stream.serve import register as register_serve
    from stream.tail import register as register_tail

    register_tail(sub)
    register_serve(sub)


def _configure_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python logs every reconnect attempt with a traceback; our edges log one line.
    logging.getLogger("kafka").setLevel(
        logging.CRITICAL if level != logging.DEBUG else logging.DEBUG
    )


def _settings_overrides(ns: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(ns, n, None) for n in names}


def _cmd_worker(ns: argparse.Namespace) -> int:
    from stream.settings import load_settings
    from stream.worker import Worker

    settings = load_settings(
        **_settings_overrides(
            ns,
            [
                "bootstrap_servers",
                "events_topic",
                "recommendations_topic",
                "metrics_topic",
                "dead_letter_topic",
                "group_id",
                "metrics_port",
                "checkpoint_dir",
            ],
        )
    )
    if getattr(ns, "process_entry", False):  # never from main([...]) inside another program
        from stream.checkpoint import CheckpointStore
        from stream.hugepages import reexec_with_huge_pages

        CheckpointStore.from_settings(settings)  # a bad checkpoint setting fails before the exec
        forks = settings.checkpoint_dir is not None and settings.checkpoint_mode != "inline"
        reexec_with_huge_pages(settings.huge_pages == "auto" and forks)
    worker = Worker(settings)
    worker.install_signal_handlers()
    summary = worker.run(max_events=ns.max_events, idle_timeout=ns.idle_timeout)
    # Exit 1 when records were consumed but not committed: the run did not make them safe.
    unsafe = summary.uncommitted
    logger.log(
        logging.ERROR if unsafe else logging.INFO,
        # One final line: what is safe, and how well the served model did.
        "worker stopped (%s): consumed %d, processed %d, dead-lettered %d, drifts %d, %s; %s",
        summary.stopped_by,
        summary.consumed,
        summary.processed,
        summary.dead_lettered,
        len(summary.drifts),
        f"{unsafe} NOT YET SAFE (uncommitted, consumed again next run)"
        if unsafe
        else "all committed",
        summary.accuracy_line(summary.served_model(settings.recommender)),
    )
    return 1 if unsafe else 0


def settings_table() -> str:
    """Markdown table of every setting: variable, default, meaning (the README embeds it)."""
    from stream.settings import StreamSettings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in StreamSettings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, tuple):
            shown = ",".join(str(v) for v in default)
        elif isinstance(default, dict):
            shown = json.dumps(default)
        else:
            shown = "" if default is None else str(default)
        # One table row per setting: a docstring's line breaks would end the row (and the table).
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `STREAM_{name.upper()}` | `{shown}` | {meaning} |")
    return "\n".join(rows)


def _cmd_settings(ns: argparse.Namespace) -> int:
    from stream.settings import load_settings

    if ns.markdown:
        print(settings_table())
        return 0
    settings = load_settings()
    for name, value in settings.model_dump(mode="json").items():
        print(f"STREAM_{name.upper()}={'' if value is None else value}")
    return 0


def _cmd_schema(ns: argparse.Namespace) -> int:
    from stream.events import json_schemas

    schemas = json_schemas()
    if ns.output is None:
        print(json.dumps(schemas, indent=2))
        return 0
    ns.output.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        (ns.output / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {len(schemas)} schemas to {ns.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    return stdout_may_close(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    ns = _build_parser().parse_args(argv)
    ns.process_entry = argv is None  # the program itself, not main([...]) from other code
    try:
        level = parse_log_level(ns.log_level, os.environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(level)
    from stream.broker import BrokerError
    from stream.checkpoint import CheckpointError
    from stream.kafka import BrokerUnavailableError, UnreadableRecordsError
    from stream.settings import SettingsError
    from stream.sync.live import SyncError

    try:
        handler = getattr(ns, "handler", None)
        if handler is not None:  # subcommands registered with their handler (tail, serve)
            return int(handler(ns))
        if ns.command == "worker":
            return _cmd_worker(ns)
        if ns.command == "broker":
            from stream.broker import run_broker_cli

            return run_broker_cli(port=ns.port, host=ns.host)
        if ns.command == "demo":
            from stream.demo import run_demo

            return int(run_demo(ns))
        if ns.command == "evaluate":
            from stream.evaluate import run_evaluate

            return run_evaluate(ns)
        if ns.command == "checkpoint":
            from stream.checkpoint_cli import main as checkpoint_main

            return checkpoint_main(ns)
        if ns.command == "schema":
            return _cmd_schema(ns)
        if ns.command == "settings":
            return _cmd_settings(ns)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (
        CheckpointError,
        BrokerUnavailableError,
        BrokerError,
        UnreadableRecordsError,
        SyncError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
