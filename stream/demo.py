"""``python -m stream demo``: the whole product on one machine, with nothing to set up.

Starts the embedded broker (Tansu), streams a synthetic event log with known structure (and,
optionally, an injected drift) into it from a producer thread, runs the worker on it with
``/metrics`` served, prints progress, and ends with a summary of what was learned and measured.
A handful of malformed records are mixed in so the dead-letter path is visible too.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time

from prometheus_client import CollectorRegistry

from producers.emitter import EmitResult, emit
from producers.pacing import Pacer
from producers.records import Record
from producers.sinks import KafkaSink, SinkError
from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.broker import EmbeddedBroker
from stream.evaluate import EvaluationResult, print_table
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings, load_settings
from stream.worker import RunSummary, Worker

__all__ = ["MALFORMED", "NEXT_STEPS", "next_steps", "run_demo"]

logger = logging.getLogger(__name__)

MALFORMED: tuple[bytes, ...] = (
    b"{not json",
    b'{"user_id": "u1", "item_id": "i1", "event_type": "teleport", "timestamp": 1}',
    b'{"user_id": "u1", "item_id": "i1", "event_type": "rating", "rating": 99, "timestamp": 1}',
    b"\xff\xfe not utf-8",
)
"""Bad records the demo mixes into the stream: each must end up in the dead-letter topic."""


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _drift_at(ns: argparse.Namespace) -> int | None:
    if getattr(ns, "no_drift", False):
        return None
    return int(ns.drift_at) if ns.drift_at is not None else ns.events // 2


def _records(ns: argparse.Namespace) -> list[Record]:
    stream = SyntheticStream(
        SyntheticConfig(
            n_events=ns.events,
            n_users=ns.users,
            n_items=ns.items,
            seed=ns.seed,
            drift_at=_drift_at(ns),
            ratings_fraction=0.1,
        )
    )
    records = list(stream.records())
    # Spread the malformed records through the stream.
    step = max(1, len(records) // (len(MALFORMED) + 1))
    for i, value in enumerate(MALFORMED, start=1):
        at = min(len(records), i * step)
        records.insert(at, Record(at, records[at - 1].timestamp if at else 0.0, b"bad", value))
    return records


def _produce(
    records: list[Record], settings: StreamSettings, rate: float | None, out: list[EmitResult]
) -> None:
    try:
        sink = KafkaSink(settings, settings.events_topic)
    except SinkError as exc:
        logger.error("demo producer: %s", exc)
        return
    try:
        out.append(emit(records, sink, Pacer(rate=rate) if rate else None))
    except SinkError as exc:
        logger.error("demo producer: %s", exc)
    finally:
        sink.close()


def _progress(worker: Worker, total: int, done: threading.Event) -> None:
    started = time.monotonic()
    while not done.wait(2.0):
        s = worker.summary
        rec = s.last_metrics
        hit = None
        if rec is not None:
            m = rec.window_metrics.get(s.served_model(worker.settings.recommender))
            hit = None if m is None else m.hit_rate
        rate = s.consumed / max(time.monotonic() - started, 1e-9)
        print(
            f"  {s.consumed:>7,}/{total:,} records  {rate:>6,.0f}/s  "
            f"dead letters {s.dead_lettered}  drifts {len(s.drifts)}  "
            f"HR@{worker.settings.top_k} ({s.served_model(worker.settings.recommender)}, window) "
            f"{'-' if hit is None else f'{hit:.3f}'}",
            flush=True,
        )


def _summary(worker: Worker, summary: RunSummary, elapsed: float, produced: int) -> None:
    s = worker.settings
    print()
    print(
        f"demo finished in {elapsed:.1f}s: produced {produced:,}, consumed {summary.consumed:,}, "
        f"processed {summary.processed:,}, dead-lettered {summary.dead_lettered}, "
        f"recommendations published {summary.recommendations:,}"
    )
    record = summary.last_metrics
    if record is None:
        print("no metrics were published (nothing consumed?)")
        return
    print(f"learned {record.users:,} users and {record.items:,} items; cumulative test-then-learn:")
    print_table(
        EvaluationResult(
            events=record.events,
            k=record.k,
            default_model=s.recommender,
            models=record.cumulative_metrics,
            events_per_second={},
            total_events_per_second=summary.consumed / max(elapsed, 1e-9),
            drifts=summary.drifts,
        )
    )
    print(summary.accuracy_line(summary.served_model(s.recommender)))


NEXT_STEPS = """\
next steps (the demo's broker is stopped now; its topics went with it):
  your own log, offline:
    python -m stream evaluate FILE --format jsonl|csv|movielens-100k [--report report/]
  the live flow, one terminal each:
    python -m stream broker                        # prints its bootstrap address
    export STREAM_BOOTSTRAP_SERVERS=127.0.0.1:9092
    python -m producers replay FILE --format F     # or: python -m producers synthetic
    python -m stream worker --idle-timeout 30
  read what the worker publishes:
    python -m stream tail {recommendations}   (also {metrics}, {dead_letters})
"""
"""What the demo prints last (README "Quick start" says the same)."""


def next_steps(settings: StreamSettings) -> str:
    """The closing hint, with the topic names of ``settings``."""
    return NEXT_STEPS.format(
        recommendations=settings.recommendations_topic,
        metrics=settings.metrics_topic,
        dead_letters=settings.dead_letter_topic,
    )


def run_demo(ns: argparse.Namespace) -> int:
    """Broker + synthetic producer + worker; returns the exit code."""
    records = _records(ns)
    with EmbeddedBroker() as broker:
        port = ns.metrics_port if ns.metrics_port is not None else 8000
        if port and not _port_free("0.0.0.0", port):
            print(f"port {port} is busy: serving /metrics on a free port instead", flush=True)
            port = 0
        settings = load_settings(
            bootstrap_servers=broker.bootstrap,
            metrics_port=port,
            group_id="stream-demo",
            metrics_every_seconds=2.0,
        )
        ensure_topics(settings, {settings.events_topic: settings.events_partitions})
        produced: list[EmitResult] = []
        producer = threading.Thread(
            target=_produce,
            args=(records, settings, ns.rate, produced),
            name="demo-producer",
            daemon=True,
        )
        registry = CollectorRegistry()
        worker = Worker(settings, registry=registry)
        worker.install_signal_handlers()
        drift_at = _drift_at(ns)
        drift = "no drift" if drift_at is None else f"abrupt drift at event {drift_at:,}"
        print(
            f"broker {broker.bootstrap}; streaming {len(records):,} synthetic events "
            f"({len(MALFORMED)} malformed, {drift}) into '{settings.events_topic}'",
            flush=True,
        )
        started = time.monotonic()
        producer.start()
        done = threading.Event()
        progress = threading.Thread(
            target=_progress, args=(worker, len(records), done), daemon=True
        )
        progress.start()
        try:
            summary = worker.run(max_events=len(records), idle_timeout=ns.idle_timeout)
        finally:
            done.set()
            producer.join(timeout=30)
        if worker.server_port:
            print(f"(/metrics was served on port {worker.server_port} during the run)")
        sent = produced[0].delivered if produced else 0
        _summary(worker, summary, time.monotonic() - started, sent)
    print()
    print(next_steps(settings), end="")
    if not produced or produced[0].failed:
        print("error: the producer could not deliver every event", file=sys.stderr)
        return 1
    return 0
