"""Throughput and latency of the worker against the Kafka client's own ceiling (issue #2).

In one run, on the same broker:

(a) **ceiling** — a bare kafka-python loop that consumes N events, decodes them and produces one
    small record per event (``kafka_ceiling.measure_ceiling``): the most a one-output-per-event
    worker can do with this client on this machine;
(b) **worker** — :class:`stream.worker.Worker`, in-process, default settings (default models,
    evaluation of every model, one recommendation published per event, commits per batch), over
    N synthetic events already in a topic; timed from its first processed event to its last;
(c) **core** — :class:`stream.core.Pipeline` with the same settings over the same events,
    decoded beforehand, no Kafka at all.

It prints events/s for each and the ratio b/a (target: >= 0.5). Then **latency**: a probe in a
child process (so it does not share the worker's interpreter lock) produces events paced at
half of (b)'s rate for ``--latency-seconds`` while a fresh worker runs, and reads the
recommendations topic; per event, latency = (recommendation received by the probe, or its
record timestamp = when the worker sent it) - (event sent by the probe), matched on the
recommendation's ``source_offset``. Target: p99 < 100 ms.

The probe's producer batches like an application's would: ``--probe-linger-ms`` (default 5,
the ``linger.ms`` default of Apache Kafka's own client since 4.0). Latency counts from the
probe's ``send()`` call, so that wait is inside the figures. With ``--probe-linger-ms 0``
every event is its own produce request: 800 requests/s cost the embedded broker and the
probe about a core between them on this 2-core machine, and the worker's fetches queue
behind them (at 800 events/s, p99 ~300-600 ms instead of ~65-100 ms).

    python benchmarks/throughput.py [--events 30000] [--bootstrap HOST:PORT]
                                    [--latency-seconds 20] [--latency-rate R]
                                    [--probe-linger-ms 5] [--set NAME=VALUE ...]
                                    [--json PATH|-]

Without ``--bootstrap`` an embedded broker (Tansu) is started and stopped. Settings come from
``StreamSettings`` defaults (not the environment or ``.env``), so runs compare; ``--set
NAME=VALUE`` (a field name, e.g. ``--set fetch_max_wait_ms=5``) changes one for (b), (c) and
the latency run. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import fmt, percentile, print_table, quiet_logging, settings_overrides, write_json
from kafka_ceiling import measure_ceiling

from producers.pacing import Pacer
from producers.records import Record
from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.broker import EmbeddedBroker
from stream.core import Pipeline, PipelineConfig, StepResult
from stream.events import Event, Source, decode_one
from stream.kafka.admin import ensure_topics
from stream.models import build_models
from stream.settings import StreamSettings
from stream.worker import Worker

__all__ = ["LatencyResult", "ThroughputResult", "main"]

TARGET_RATIO = 0.5
TARGET_P99_MS = 100.0


@dataclass
class LatencyResult:
    """Event-to-publish latency at a paced rate (milliseconds)."""

    target_rate: float
    achieved_rate: float
    sent: int
    matched: int
    # Event sent by the probe -> recommendation received by the probe's consumer.
    received_ms: dict[str, float | None] = field(default_factory=dict)
    # Event sent by the probe -> recommendation record's timestamp (the worker's send).
    published_ms: dict[str, float | None] = field(default_factory=dict)
    worker_consumed: int = 0
    probe_linger_ms: int = 5


@dataclass
class ThroughputResult:
    """Everything one run measured."""

    events: int
    broker: str
    models: list[str]
    recommender: str
    # None: not measured (a latency-only run, --events 0).
    event_bytes: float | None = None
    recommendation_bytes: float | None = None
    ceiling_rate: float | None = None
    worker_rate: float | None = None
    worker_rate_with_shutdown: float | None = None
    core_rate: float | None = None
    decode_rate: float | None = None
    encode_rate: float | None = None
    ratio: float | None = None
    latency: LatencyResult | None = None
    settings_changed: dict[str, Any] = field(default_factory=dict)  # --set


# --- data ---------------------------------------------------------------------------------


def _run_specific(bootstrap: str, tag: str) -> dict[str, Any]:
    """The settings every run sets itself: its broker, fresh topics and group, no HTTP server
    (``--set`` cannot change them)."""
    return {
        "bootstrap_servers": bootstrap,
        "events_topic": f"{tag}.events",
        "recommendations_topic": f"{tag}.recommendations",
        "metrics_topic": f"{tag}.metrics",
        "dead_letter_topic": f"{tag}.dlq",
        "group_id": tag,
        "client_id": tag,
        "metrics_port": 0,
    }


def _settings(bootstrap: str, prefix: str, **overrides: Any) -> StreamSettings:
    """Default settings on fresh, uniquely named topics and group (env and .env ignored)."""
    tag = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return StreamSettings(_env_file=None, **_run_specific(bootstrap, tag), **overrides)


def _records(n: int, seed: int) -> list[Record]:
    """The demo's synthetic stream (500 users, 1,000 items, 10% ratings), no drift."""
    config = SyntheticConfig(n_events=n, seed=seed, ratings_fraction=0.1)
    return list(SyntheticStream(config).records())


def _fill(bootstrap: str, topic: str, records: list[Record]) -> None:
    """Produce ``records`` to ``topic`` (not timed)."""
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap], linger_ms=20, acks=1, enable_idempotence=False
    )
    try:
        for r in records:
            producer.send(topic, key=r.key, value=r.value)
        producer.flush()
    finally:
        producer.close()


# --- (b) the worker -------------------------------------------------------------------------


class _TimedPipeline(Pipeline):
    """The default pipeline, noting when it processed its first and its last event."""

    first: float | None = None
    last: float = 0.0

    def process_one(self, event: Event, source: Source) -> StepResult:
        if self.first is None:
            self.first = time.perf_counter()
        result = super().process_one(event, source)
        self.last = time.perf_counter()
        return result


def measure_worker(settings: StreamSettings, n: int) -> tuple[float, float]:
    """Events/s of the worker over the ``n`` events in ``settings.events_topic``: first to
    last event processed, and first event to ``run()`` returning (final flush, commit, close)."""
    shards: list[_TimedPipeline] = []

    def factory() -> Pipeline:
        shard = _TimedPipeline(PipelineConfig.from_settings(settings), build_models(settings))
        shards.append(shard)
        return shard

    worker = Worker(settings, pipeline_factory=factory)
    summary = worker.run(max_events=n, idle_timeout=60.0)
    returned = time.perf_counter()
    if summary.processed != n or not shards:
        raise RuntimeError(f"the worker processed {summary.processed} of {n} events")
    first = min(s.first for s in shards if s.first is not None)
    last = max(s.last for s in shards)
    return n / (last - first), n / (returned - first)


# --- (c) the core ---------------------------------------------------------------------------


def measure_core(settings: StreamSettings, records: list[Record]) -> dict[str, float]:
    """Events/s of decoding, of the core (``process_one``) and of encoding its output."""
    started = time.perf_counter()
    events = []
    for r in records:
        decoded = decode_one(r.key, r.value)
        if isinstance(decoded, Event):
            events.append(decoded)
    decode_s = time.perf_counter() - started
    pipeline = Pipeline.from_settings(settings)
    outputs = []
    started = time.perf_counter()
    for offset, event in enumerate(events):
        outputs.append(pipeline.process_one(event, Source(settings.events_topic, 0, offset)))
    core_s = time.perf_counter() - started
    started = time.perf_counter()
    size = 0
    for out in outputs:
        if out.recommendation is not None:
            size += len(out.recommendation.model_dump_json().encode())
    encode_s = time.perf_counter() - started
    n = len(events)
    return {
        "decode": n / decode_s,
        "core": n / core_s,
        "encode": n / encode_s,
        "recommendation_bytes": size / max(n, 1),
    }


# --- latency --------------------------------------------------------------------------------


def _probe(
    bootstrap: str,
    events_topic: str,
    recommendations_topic: str,
    rate: float,
    seconds: float,
    seed: int,
    linger_ms: int,
    conn: Connection,
) -> None:
    """Child process: send paced events, read recommendations, report per-event latencies."""
    quiet_logging()
    records = _records(max(1, int(rate * seconds)), seed)
    n = len(records)
    sent_at: dict[int, float] = {}
    received: dict[int, tuple[float, float]] = {}
    done = threading.Event()

    def consume() -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=[bootstrap], enable_auto_commit=False, fetch_max_wait_ms=10
        )
        tp = TopicPartition(recommendations_topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        try:
            while not done.is_set():
                for batch in consumer.poll(timeout_ms=50).values():
                    now = time.time()
                    for rec in batch:
                        if rec.value is None:
                            continue
                        offset = int(json.loads(rec.value)["source_offset"])
                        received[offset] = (now, rec.timestamp / 1000.0)
        finally:
            consumer.close()

    reader = threading.Thread(target=consume, name="latency-reader", daemon=True)
    reader.start()
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap], linger_ms=linger_ms, acks=1, enable_idempotence=False
    )

    def on_sent(at: float, metadata: Any) -> None:
        sent_at[metadata.offset] = at

    pacer = Pacer(rate=rate)
    started = time.monotonic()
    for r in records:
        pacer.wait_one()
        at = time.time()
        producer.send(events_topic, key=r.key, value=r.value).add_callback(on_sent, at)
    producer.flush()
    duration = time.monotonic() - started
    producer.close()
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and len(received) < n:
        time.sleep(0.1)
    done.set()
    reader.join(timeout=5)
    matched = [off for off in sent_at if off in received]
    conn.send(
        {
            "sent": n,
            "achieved_rate": n / max(duration, 1e-9),
            "received_ms": [(received[o][0] - sent_at[o]) * 1000 for o in matched],
            "published_ms": [(received[o][1] - sent_at[o]) * 1000 for o in matched],
        }
    )
    conn.close()


def _stats(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "% >100ms": (
            100.0 * sum(1 for v in values if v > TARGET_P99_MS) / len(values) if values else None
        ),
    }


def measure_latency(
    bootstrap: str,
    rate: float,
    seconds: float,
    seed: int,
    probe_linger_ms: int = 5,
    overrides: dict[str, Any] | None = None,
) -> LatencyResult:
    """Run a fresh worker in a thread while a child process sends paced events and times them."""
    settings = _settings(bootstrap, "latency", **(overrides or {}))
    ensure_topics(
        settings,
        {
            settings.events_topic: 1,
            settings.recommendations_topic: 1,
            settings.metrics_topic: 1,
            settings.dead_letter_topic: 1,
        },
    )
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60.0
    while not worker.health.ready:
        if time.monotonic() > deadline or not thread.is_alive():
            worker.request_stop("not ready")
            raise RuntimeError("the worker did not get its partition within 60 s")
        time.sleep(0.05)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    probe = ctx.Process(
        target=_probe,
        args=(
            bootstrap,
            settings.events_topic,
            settings.recommendations_topic,
            rate,
            seconds,
            seed + 1,
            probe_linger_ms,
            child,
        ),
        name="latency-probe",
    )
    probe.start()
    child.close()
    try:
        report: dict[str, Any] = parent.recv()
    finally:
        probe.join(timeout=60)
        worker.request_stop("latency run over")
        thread.join(timeout=60)
    return LatencyResult(
        target_rate=rate,
        achieved_rate=float(report["achieved_rate"]),
        sent=int(report["sent"]),
        matched=len(report["received_ms"]),
        received_ms=_stats(report["received_ms"]),
        published_ms=_stats(report["published_ms"]),
        worker_consumed=worker.summary.consumed,
        probe_linger_ms=probe_linger_ms,
    )


# --- the run ----------------------------------------------------------------------------------


def run(
    bootstrap: str,
    broker_name: str,
    n: int,
    latency_seconds: float,
    seed: int,
    latency_rate: float | None = None,
    probe_linger_ms: int = 5,
    overrides: dict[str, Any] | None = None,
) -> ThroughputResult:
    """All measurements, in order (a), (b), (c), latency, printing each as it completes.

    ``latency_rate`` paces the latency run instead of half of (b); with ``n == 0`` only the
    latency run happens (at ``latency_rate``).
    """
    overrides = overrides or {}
    if overrides:
        print(f"settings changed: {overrides}", flush=True)
    if n == 0:
        if latency_rate is None:
            raise ValueError("--events 0 needs --latency-rate")
        settings = _settings(bootstrap, "throughput", **overrides)
        result = ThroughputResult(
            events=0,
            broker=broker_name,
            models=list(settings.models),
            recommender=settings.recommender,
            settings_changed=dict(overrides),
        )
        print(f"latency: {latency_rate:,.0f} events/s for {latency_seconds:g} s ...", flush=True)
        result.latency = measure_latency(
            bootstrap, latency_rate, latency_seconds, seed, probe_linger_ms, overrides
        )
        return result
    records = _records(n, seed)
    event_bytes = sum(len(r.value) for r in records) / len(records)
    settings = _settings(bootstrap, "throughput", **overrides)
    print(
        f"{n:,} synthetic events (mean {event_bytes:.0f} B), broker {broker_name}; "
        f"models {', '.join(settings.models)}, recommender {settings.recommender}",
        flush=True,
    )

    print("(a) kafka-python consume + decode + produce one record per event ...", flush=True)
    ceiling = measure_ceiling(bootstrap, n)
    print(f"    {ceiling:,.0f} events/s", flush=True)

    print("(b) worker end to end (default models, evaluation, 1 recommendation/event) ...")
    ensure_topics(
        settings,
        {
            settings.events_topic: 1,
            settings.recommendations_topic: 1,
            settings.metrics_topic: 1,
            settings.dead_letter_topic: 1,
        },
    )
    _fill(bootstrap, settings.events_topic, records)
    worker_rate, worker_total = measure_worker(settings, n)
    print(f"    {worker_rate:,.0f} events/s ({worker_total:,.0f} incl. shutdown)", flush=True)

    print("(c) core alone (Pipeline.process_one over decoded events, no Kafka) ...", flush=True)
    core = measure_core(settings, records)
    print(
        f"    {core['core']:,.0f} events/s (decode {core['decode']:,.0f}/s, "
        f"encode {core['encode']:,.0f}/s)",
        flush=True,
    )

    result = ThroughputResult(
        events=n,
        broker=broker_name,
        models=list(settings.models),
        recommender=settings.recommender,
        settings_changed=dict(overrides),
        event_bytes=event_bytes,
        recommendation_bytes=core["recommendation_bytes"],
        ceiling_rate=ceiling,
        worker_rate=worker_rate,
        worker_rate_with_shutdown=worker_total,
        core_rate=core["core"],
        decode_rate=core["decode"],
        encode_rate=core["encode"],
        ratio=worker_rate / ceiling,
    )
    if latency_seconds > 0:
        rate = worker_rate / 2 if latency_rate is None else latency_rate
        print(
            f"latency: {rate:,.0f} events/s "
            f"({'half of (b)' if latency_rate is None else 'as asked'}) for {latency_seconds:g} s "
            "into a fresh worker ...",
            flush=True,
        )
        result.latency = measure_latency(
            bootstrap, rate, latency_seconds, seed, probe_linger_ms, overrides
        )
    return result


def print_summary(result: ThroughputResult) -> None:
    """The figures as tables, then the verdicts against the targets."""
    if result.events:
        _print_throughput(result)
    _print_latency(result)


def _print_throughput(result: ThroughputResult) -> None:
    a, b, b_total = result.ceiling_rate, result.worker_rate, result.worker_rate_with_shutdown
    c, ratio = result.core_rate, result.ratio
    assert a and b is not None and b_total is not None and c is not None and ratio is not None
    rows = [
        ["(a) kafka-python ceiling", fmt(a, 0), "1.00"],
        ["(b) worker end to end", fmt(b, 0), f"{b / a:.2f}"],
        ["    incl. shutdown", fmt(b_total, 0), f"{b_total / a:.2f}"],
        ["(c) core alone", fmt(c, 0), f"{c / a:.2f}"],
        ["    decode only", fmt(result.decode_rate, 0), "-"],
        ["    encode only", fmt(result.encode_rate, 0), "-"],
    ]
    print_table(
        ["stage", "events/s", "x ceiling"],
        rows,
        title=f"== throughput: {result.events:,} events on {result.broker} ==",
    )
    verdict = "MET" if ratio >= TARGET_RATIO else "NOT MET"
    print(f"\n  b/a = {ratio:.2f}  (target >= {TARGET_RATIO})  {verdict}")
    print(
        f"  events {fmt(result.event_bytes, 0)} B, "
        f"recommendations {fmt(result.recommendation_bytes, 0)} B;"
        f" models {', '.join(result.models)}; published: {result.recommender}"
    )


def _print_latency(result: ThroughputResult) -> None:
    lat = result.latency
    if lat is None:
        return
    rows = [
        ["sent -> received by consumer", *(fmt(lat.received_ms[q], 1) for q in _QS)],
        ["sent -> worker published (ts)", *(fmt(lat.published_ms[q], 1) for q in _QS)],
    ]
    print_table(
        ["latency (ms)", *_QS],
        rows,
        title=(
            f"== latency at {lat.target_rate:,.0f} events/s (achieved {lat.achieved_rate:,.0f}, "
            f"probe linger {lat.probe_linger_ms} ms); {lat.matched:,} of {lat.sent:,} events "
            "matched =="
        ),
    )
    p99 = lat.received_ms.get("p99")
    verdict = "MET" if p99 is not None and p99 < TARGET_P99_MS else "NOT MET"
    print(
        f"\n  p99 event-to-publish = {fmt(p99, 1)} ms  (target < {TARGET_P99_MS:g} ms)  {verdict}"
    )


_QS = ("p50", "p95", "p99", "max", "% >100ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000, help="events (default 30,000)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: embedded)")
    parser.add_argument(
        "--latency-seconds", type=float, default=20.0, help="paced latency run (0 = skip)"
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="events/s of the latency run (default: half of (b)); with --events 0, only that run",
    )
    parser.add_argument(
        "--probe-linger-ms",
        type=int,
        default=5,
        help="linger.ms of the latency probe's producer (default 5, Apache Kafka's client default)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a StreamSettings override, e.g. --set fetch_max_wait_ms=5 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=7, help="synthetic stream seed")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write JSON (- = stdout)")
    ns = parser.parse_args(argv)
    try:
        overrides = settings_overrides(ns.set)
        fixed = sorted(set(overrides) & set(_run_specific("", "")))
        if fixed:
            raise ValueError(f"--set cannot change {', '.join(fixed)}: each run names its own")
        _settings("localhost:9092", "check", **overrides)  # a bad value fails here, not mid-run
    except ValueError as exc:  # pydantic's ValidationError included
        parser.error(str(exc))
    quiet_logging()
    broker = None if ns.bootstrap else EmbeddedBroker().start()
    try:
        bootstrap = ns.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        name = ns.bootstrap or f"embedded Tansu {bootstrap}"
        result = run(
            bootstrap,
            name,
            ns.events,
            ns.latency_seconds,
            ns.seed,
            ns.latency_rate,
            ns.probe_linger_ms,
            overrides,
        )
    finally:
        if broker is not None:
            broker.stop()
    print_summary(result)
    if ns.json:
        write_json(ns.json, asdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
