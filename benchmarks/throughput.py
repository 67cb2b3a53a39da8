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

It prints events/s for each and the ratio b/a (target: >= 0.5), and where (b)'s time goes:
microseconds per event inside ``Pipeline.process_one`` (the core) and outside it (decode,
records, produce, metrics, bookkeeping, the Kafka client's thread). Then **latency**: a probe in
a child process (so it does not share the worker's interpreter lock) produces events paced at
half of (b)'s rate for ``--latency-seconds`` while a fresh worker runs, and reads the
recommendations topic; per event, latency = (recommendation received by the probe, or its
record timestamp = when the worker sent it) - (event sent by the probe), matched on the
recommendation's ``source_partition`` and ``source_offset``; ``--runs`` times (default 5).
Target: p99 < 100 ms in every run.

(b) and the latency runs are repeated for each ``--partitions`` count (default: 1 and 4, in one
run, on the same broker): the events topic gets that many partitions, the worker one shard per
partition. ``--workers N`` runs N worker processes in one consumer group instead of one
in-process worker (the partitions are split between them; their rebalance is inside (b);
with ``--steady`` the group starts on the empty topic and the events are produced once every
worker holds partitions, so (b) is the steady state without the join).
With more than one partition the worker runs with the model sync on (``STREAM_MODEL_SYNC=auto``,
the default since the fifth session; ``--set model_sync=false`` for isolated shards, as runs
before it measured). With ``--workers`` > 1 (and no ``--set model_sync=...``), (b) is measured
twice per partition count, with the model sync off and on (issue 12: ``STREAM_MODEL_SYNC=true``
at its default interval, fresh topics and group, the same events), printing both, their ratio
(target: the sync keeps >= 0.85 of the per-worker throughput), the delta bytes published per
event against the events' own bytes (target <= 2x) and the workers' CPU seconds per event
(every thread, from each worker's first event to its last) with the sync against without: the
same cost as the throughput ratio, less moved by other load on a shared machine.
``--sync-pairs N`` measures that pair N times, alternated, each on fresh topics, prints every
pair's ratios and judges their median (on our VM one pair swings by +-0.15).

The probe's producer batches like an application's would: ``--probe-linger-ms`` (default 5,
the ``linger.ms`` default of Apache Kafka's own client since 4.0). Latency counts from the
probe's ``send()`` call, so that wait is inside the figures. With ``--probe-linger-ms 0``
every event is its own produce request: 800 requests/s cost the embedded broker and the
probe about a core between them on this 2-core machine, and the worker's fetches queue
behind them (at 800 events/s, p99 ~300-600 ms instead of ~65-100 ms).

    python benchmarks/throughput.py [--events 30000] [--bootstrap HOST:PORT]
                                    [--partitions 1 4] [--workers 1] [--steady] [--runs 5]
                                    [--latency-seconds 20] [--latency-rate R]
                                    [--probe-linger-ms 5] [--set NAME=VALUE ...]
                                    [--sync-pairs 1] [--json PATH|-]

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
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
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
from stream.worker import Worker, json_bytes

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
    partitions: int = 1


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
    latency: LatencyResult | None = None  # the first of ``latencies``
    settings_changed: dict[str, Any] = field(default_factory=dict)  # --set
    partitions: int = 1
    workers: int = 1
    # Where (b)'s time goes, microseconds per event: inside Pipeline.process_one / the rest.
    core_us: float | None = None
    outside_us: float | None = None
    latencies: list[LatencyResult] = field(default_factory=list)
    # --workers > 1: (b) again with the model sync on (issue 12), on fresh topics.
    sync_rate: float | None = None
    sync_bytes_per_event: float | None = None
    sync_cpu_ratio: float | None = None  # workers' CPU per event with the sync / without
    # --sync-pairs N: every pair's ratios (the first is the pair above), alternated runs.
    sync_ratios: list[float] = field(default_factory=list)
    sync_cpu_ratios: list[float] = field(default_factory=list)


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
        "model_updates_topic": f"{tag}.model-updates",
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
    inside: float = 0.0  # seconds spent in process_one
    # The process's CPU seconds (every thread) at the first event and after the last one.
    cpu_first: float | None = None
    cpu_last: float = 0.0

    def process_one(self, event: Event, source: Source) -> StepResult:
        started = time.time()
        if self.first is None:
            self.first = started
            self.cpu_first = time.process_time()
        result = super().process_one(event, source)
        self.last = time.time()
        self.cpu_last = time.process_time()
        self.inside += self.last - started
        return result


def _timed_worker(settings: StreamSettings) -> tuple[Worker, list[_TimedPipeline]]:
    shards: list[_TimedPipeline] = []

    def factory() -> Pipeline:
        shard = _TimedPipeline(PipelineConfig.from_settings(settings), build_models(settings))
        shards.append(shard)
        return shard

    return Worker(settings, pipeline_factory=factory), shards


def _spans(shards: list[_TimedPipeline]) -> dict[str, float]:
    started = [s.first for s in shards if s.first is not None]
    cpu = [s.cpu_first for s in shards if s.cpu_first is not None]
    return {
        "first": min(started) if started else 0.0,
        "last": max((s.last for s in shards), default=0.0),
        "inside": sum(s.inside for s in shards),
        # CPU seconds of the process from its first event to its last (all its threads)
        "cpu": max((s.cpu_last for s in shards), default=0.0) - min(cpu) if cpu else 0.0,
    }


def measure_worker(settings: StreamSettings, n: int) -> dict[str, float]:
    """The in-process worker over the ``n`` events in ``settings.events_topic``: events/s from
    first to last event processed (``rate``) and to ``run()`` returning (``total``: final flush,
    commit, close), and the seconds spent inside ``process_one`` (``inside``)."""
    worker, shards = _timed_worker(settings)
    summary = worker.run(max_events=n, idle_timeout=60.0)
    returned = time.time()
    if summary.processed != n or not shards:
        raise RuntimeError(f"the worker processed {summary.processed} of {n} events")
    span = _spans(shards)
    elapsed = span["last"] - span["first"]
    return {"rate": n / elapsed, "total": n / (returned - span["first"]), **span}


def _worker_process(
    settings: StreamSettings, idle_timeout: float | None, ready: Any, conn: Connection
) -> None:
    """Child process: one timed worker of the group, until idle (or SIGTERM); reports spans."""
    quiet_logging()
    worker, shards = _timed_worker(settings)
    worker.install_signal_handlers()
    done: dict[str, Any] = {}

    def body() -> None:
        done["summary"] = worker.run(idle_timeout=idle_timeout)

    thread = threading.Thread(target=body, name="worker", daemon=True)
    thread.start()
    while thread.is_alive() and not worker.health.ready:
        time.sleep(0.05)
    ready.set()
    thread.join()
    summary = done.get("summary")
    sync = worker._sync.stats if worker._sync is not None else None
    conn.send(
        {
            "processed": 0 if summary is None else summary.processed,
            "sync_bytes": sync.published_bytes if sync is not None else 0,
            **_spans(shards),
        }
    )
    conn.close()


class _WorkerGroup:
    """``n`` worker processes in one consumer group (``--workers``)."""

    def __init__(self, settings: StreamSettings, n: int, idle_timeout: float | None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._procs = []
        self._conns = []
        self._ready = []
        for i in range(n):
            parent, child = ctx.Pipe(duplex=False)
            ready = ctx.Event()
            proc = ctx.Process(
                target=_worker_process,
                args=(settings, idle_timeout, ready, child),
                name=f"worker-{i}",
            )
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
            self._ready.append(ready)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        for ready in self._ready:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                self.stop()
                raise RuntimeError(f"the workers did not get partitions within {timeout_s:g} s")

    def stop(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: a clean stop

    def reports(self, timeout_s: float = 600.0) -> list[dict[str, float]]:
        out = [conn.recv() for conn in self._conns]
        for proc in self._procs:
            proc.join(timeout=timeout_s)
        return out


# A worker of the group stops once it has processed nothing for this long. 5 s was too short:
# a rebalance on the embedded broker (slow group joins) can leave a worker without partitions
# that long while events remain, and it stopped early ("processed 27,976 of 30,000 events").
# The figures span the first to the last event processed, so the idle tail is not counted.
_IDLE_S = 20.0


def measure_workers(
    settings: StreamSettings, n: int, workers: int, fill: Callable[[], None] | None = None
) -> dict[str, float]:
    """Like :func:`measure_worker` with ``workers`` processes in one group (each stops once idle
    for ``_IDLE_S``). With the topic filled before (``fill`` None) the first-to-last span covers the
    group's join and its rebalances; with ``fill`` (``--steady``) the group starts on the empty
    topic and ``fill`` runs once every worker holds partitions: the steady state alone."""
    settle_s = 0.0 if fill is None else 60.0  # (the group's join on the embedded broker)
    group = _WorkerGroup(settings, workers, idle_timeout=_IDLE_S + settle_s)
    if fill is not None:
        group.wait_ready(timeout_s=settle_s)
        time.sleep(2.0)  # the last join's assignment settles (readiness comes with it)
        fill()
    reports = group.reports()
    processed = sum(int(r["processed"]) for r in reports)
    if processed < n:
        raise RuntimeError(f"the workers processed {processed} of {n} events")
    first = min(r["first"] for r in reports if r["first"])
    last = max(r["last"] for r in reports)
    elapsed = last - first
    return {
        "rate": n / elapsed,
        "total": n / elapsed,
        "first": first,
        "last": last,
        "inside": sum(r["inside"] for r in reports),
        "sync_bytes": sum(r["sync_bytes"] for r in reports),
        "cpu": sum(r["cpu"] for r in reports),
    }


# --- (c) the core ---------------------------------------------------------------------------


def _measure_fresh(
    bootstrap: str,
    prefix: str,
    overrides: dict[str, Any],
    partitions: int,
    n: int,
    workers: int,
    records: list[Record],
    steady: bool,
) -> dict[str, float]:
    """:func:`measure_workers` on fresh topics and group: filled first, or once every worker
    holds partitions (``steady``)."""
    settings = _settings(bootstrap, prefix, **overrides)
    _topics(settings, partitions)

    def fill() -> None:
        _fill(bootstrap, settings.events_topic, records)

    if not steady:
        fill()
    return measure_workers(settings, n, workers, fill if steady else None)


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
            size += len(json_bytes(out.recommendation))
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
    # Keyed by (partition, offset) of the event: offsets repeat across partitions.
    sent_at: dict[tuple[int, int], float] = {}
    received: dict[tuple[int, int], tuple[float, float]] = {}
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
                        value = json.loads(rec.value)
                        key = (int(value["source_partition"]), int(value["source_offset"]))
                        received[key] = (now, rec.timestamp / 1000.0)
        finally:
            consumer.close()

    reader = threading.Thread(target=consume, name="latency-reader", daemon=True)
    reader.start()
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap], linger_ms=linger_ms, acks=1, enable_idempotence=False
    )

    def on_sent(at: float, metadata: Any) -> None:
        sent_at[(metadata.partition, metadata.offset)] = at

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


def _topics(settings: StreamSettings, partitions: int) -> None:
    ensure_topics(
        settings,
        {
            settings.events_topic: partitions,
            settings.recommendations_topic: 1,
            settings.metrics_topic: 1,
            settings.dead_letter_topic: 1,
        },
    )


def measure_latency(
    bootstrap: str,
    rate: float,
    seconds: float,
    seed: int,
    probe_linger_ms: int = 5,
    overrides: dict[str, Any] | None = None,
    partitions: int = 1,
    workers: int = 1,
) -> LatencyResult:
    """Run a fresh worker in a thread (``workers`` > 1: that many processes in one group)
    while a child process sends paced events and times them."""
    settings = _settings(
        bootstrap, "latency", **{**(overrides or {}), "events_partitions": partitions}
    )
    _topics(settings, partitions)
    worker: Worker | None = None
    group: _WorkerGroup | None = None
    if workers > 1:
        group = _WorkerGroup(settings, workers, idle_timeout=None)
        group.wait_ready()
        time.sleep(2.0)  # the last member's join settles
    else:
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
    consumed = 0
    try:
        report: dict[str, Any] = parent.recv()
    finally:
        probe.join(timeout=60)
        if worker is not None:
            worker.request_stop("latency run over")
            thread.join(timeout=60)
            consumed = worker.summary.consumed
        if group is not None:
            group.stop()
            consumed = sum(int(r["processed"]) for r in group.reports(60))
    return LatencyResult(
        target_rate=rate,
        achieved_rate=float(report["achieved_rate"]),
        sent=int(report["sent"]),
        matched=len(report["received_ms"]),
        received_ms=_stats(report["received_ms"]),
        published_ms=_stats(report["published_ms"]),
        worker_consumed=consumed,
        probe_linger_ms=probe_linger_ms,
        partitions=partitions,
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
    partitions: tuple[int, ...] = (1, 4),
    workers: int = 1,
    runs: int = 5,
    steady: bool = False,
    sync_pairs: int = 1,
) -> list[ThroughputResult]:
    """All measurements, printing each as it completes: (a) and (c) once, then (b) and
    ``runs`` latency runs per partition count. One result per partition count.

    ``latency_rate`` paces the latency runs instead of half of (b); with ``n == 0`` only the
    latency runs happen (at ``latency_rate``).
    """
    overrides = overrides or {}
    if overrides:
        print(f"settings changed: {overrides}", flush=True)
    settings = _settings(bootstrap, "throughput", **overrides)
    results: list[ThroughputResult] = []
    if n == 0:
        if latency_rate is None:
            raise ValueError("--events 0 needs --latency-rate")
        for p in partitions:
            result = ThroughputResult(
                events=0,
                broker=broker_name,
                models=list(settings.models),
                recommender=settings.recommender,
                settings_changed=dict(overrides),
                partitions=p,
                workers=workers,
            )
            _latency_runs(result, bootstrap, latency_rate, latency_seconds, seed,
                          probe_linger_ms, overrides, runs, asked=True)  # fmt: skip
            results.append(result)
        return results
    records = _records(n, seed)
    event_bytes = sum(len(r.value) for r in records) / len(records)
    print(
        f"{n:,} synthetic events (mean {event_bytes:.0f} B), broker {broker_name}; "
        f"models {', '.join(settings.models)}, recommender {settings.recommender}; "
        f"partitions {', '.join(map(str, partitions))}; {workers} worker(s)",
        flush=True,
    )

    print("(a) kafka-python consume + decode + produce one record per event ...", flush=True)
    ceiling = measure_ceiling(bootstrap, n)
    print(f"    {ceiling:,.0f} events/s", flush=True)

    print("(c) core alone (Pipeline.process_one over decoded events, no Kafka) ...", flush=True)
    core = measure_core(settings, records)
    print(
        f"    {core['core']:,.0f} events/s (decode {core['decode']:,.0f}/s, "
        f"encode {core['encode']:,.0f}/s)",
        flush=True,
    )

    for p in partitions:
        compare_sync = (
            workers > 1
            and "model_sync" not in overrides
            and str(overrides.get("model_sync_events", "")) != "0"  # (0: the sync is off)
        )
        # Compared with the sync: the first run has it off (STREAM_MODEL_SYNC=auto, the
        # default, would turn it on with several partitions).
        base = {
            **overrides,
            "events_partitions": p,
            **({"model_sync": False} if compare_sync else {}),
        }
        settings = _settings(bootstrap, f"throughput-p{p}", **base)
        print(f"(b) worker end to end, {p} partition(s), {workers} worker(s) ...", flush=True)
        _topics(settings, p)

        def fill(topic: str = settings.events_topic) -> None:
            _fill(bootstrap, topic, records)

        if not (steady and workers > 1):
            fill()
        if workers > 1:
            measured = measure_workers(settings, n, workers, fill if steady else None)
        else:
            measured = measure_worker(settings, n)
        worker_rate = measured["rate"]
        core_us = measured["inside"] / n * 1e6
        outside_us = 1e6 / worker_rate * workers - core_us
        print(
            f"    {worker_rate:,.0f} events/s ({measured['total']:,.0f} incl. shutdown); "
            f"{worker_rate / ceiling:.2f}x ceiling; per event {core_us:.0f} us in the core, "
            f"{outside_us:.0f} us outside",
            flush=True,
        )
        sync_rate = sync_bytes = sync_cpu = None
        if compare_sync:
            # Issue 12: the same workers with the model sync on, for per-worker throughput
            # with it against without (same events, fresh topics and group).
            synced = _settings(
                bootstrap,
                f"throughput-p{p}-sync",
                **{**overrides, "events_partitions": p, "model_sync": True},
            )
            print("    ... and with the model sync on (STREAM_MODEL_SYNC=true) ...", flush=True)
            _topics(synced, p)

            def fill_synced(topic: str = synced.events_topic) -> None:
                _fill(bootstrap, topic, records)

            if not steady:
                fill_synced()
            with_sync = measure_workers(synced, n, workers, fill_synced if steady else None)
            sync_rate = with_sync["rate"]
            sync_bytes = with_sync["sync_bytes"] / n
            # CPU per event, every thread of the workers: what the sync costs them, less
            # moved by other load on the machine than events/s.
            sync_cpu = with_sync["cpu"] / max(measured["cpu"], 1e-9)
            print(
                f"    {sync_rate:,.0f} events/s with the sync ({sync_rate / measured['rate']:.2f}x"
                f" without); {sync_bytes:,.0f} delta bytes per event "
                f"({sync_bytes / event_bytes:.2f}x the events); workers' CPU per event "
                f"{with_sync['cpu'] / n * 1e6:.0f} us with it, {measured['cpu'] / n * 1e6:.0f} "
                f"us without ({sync_cpu:.2f}x)",
                flush=True,
            )
        ratios: list[float] = []
        cpus: list[float] = []
        if compare_sync and sync_rate is not None and sync_cpu is not None:
            ratios, cpus = [sync_rate / worker_rate], [sync_cpu]
            for k in range(1, sync_pairs):
                # The machine's load moves between two halves of a pair: more pairs,
                # alternated, each on fresh topics and groups, and their median.
                off, on = (
                    _measure_fresh(
                        bootstrap,
                        f"throughput-p{p}-pair{k}{'-sync' if sync else ''}",
                        {**overrides, "events_partitions": p, "model_sync": sync},
                        p,
                        n,
                        workers,
                        records,
                        steady,
                    )
                    for sync in (False, True)
                )
                ratios.append(on["rate"] / off["rate"])
                cpus.append(on["cpu"] / max(off["cpu"], 1e-9))
                print(
                    f"    pair {k + 1}/{sync_pairs}: {off['rate']:,.0f} events/s without the "
                    f"sync, {on['rate']:,.0f} with it ({ratios[-1]:.2f}x); CPU per event "
                    f"{cpus[-1]:.2f}x",
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
            worker_rate_with_shutdown=measured["total"],
            core_rate=core["core"],
            decode_rate=core["decode"],
            encode_rate=core["encode"],
            ratio=worker_rate / ceiling,
            partitions=p,
            workers=workers,
            core_us=core_us,
            outside_us=outside_us,
            sync_rate=sync_rate,
            sync_bytes_per_event=sync_bytes,
            sync_cpu_ratio=sync_cpu,
            sync_ratios=ratios,
            sync_cpu_ratios=cpus,
        )
        if latency_seconds > 0:
            rate = worker_rate / 2 if latency_rate is None else latency_rate
            _latency_runs(result, bootstrap, rate, latency_seconds, seed, probe_linger_ms,
                          overrides, runs, asked=latency_rate is not None)  # fmt: skip
        results.append(result)
    return results


def _latency_runs(
    result: ThroughputResult,
    bootstrap: str,
    rate: float,
    seconds: float,
    seed: int,
    probe_linger_ms: int,
    overrides: dict[str, Any],
    runs: int,
    asked: bool,
) -> None:
    for i in range(runs):
        print(
            f"latency {i + 1}/{runs}: {rate:,.0f} events/s "
            f"({'as asked' if asked else 'half of (b)'}) for {seconds:g} s into a fresh worker, "
            f"{result.partitions} partition(s) ...",
            flush=True,
        )
        lat = measure_latency(bootstrap, rate, seconds, seed + i, probe_linger_ms, overrides,
                              result.partitions, result.workers)  # fmt: skip
        print(f"    p99 {fmt(lat.received_ms.get('p99'), 1)} ms", flush=True)
        result.latencies.append(lat)
    result.latency = result.latencies[0] if result.latencies else None


def print_summary(results: list[ThroughputResult]) -> None:
    """The figures as tables, then the verdicts against the targets."""
    for result in results:
        if result.events:
            _print_throughput(result)
        _print_latency(result)
    if len(results) > 1:
        _print_overview(results)


def _print_throughput(result: ThroughputResult) -> None:
    a, b, b_total = result.ceiling_rate, result.worker_rate, result.worker_rate_with_shutdown
    c, ratio = result.core_rate, result.ratio
    assert a and b is not None and b_total is not None and c is not None and ratio is not None
    rows = [
        ["(a) kafka-python ceiling", fmt(a, 0), "1.00"],
        ["(b) worker end to end", fmt(b, 0), f"{b / a:.2f}"],
        ["    incl. shutdown", fmt(b_total, 0), f"{b_total / a:.2f}"],
        *(
            [
                [
                    "(b) with the model sync on",
                    fmt(result.sync_rate, 0),
                    f"{result.sync_rate / a:.2f}",
                ]
            ]
            if result.sync_rate is not None
            else []
        ),
        ["(c) core alone", fmt(c, 0), f"{c / a:.2f}"],
        ["    decode only", fmt(result.decode_rate, 0), "-"],
        ["    encode only", fmt(result.encode_rate, 0), "-"],
    ]
    print_table(
        ["stage", "events/s", "x ceiling"],
        rows,
        title=(
            f"== throughput: {result.events:,} events on {result.broker}, "
            f"{result.partitions} partition(s), {result.workers} worker(s) =="
        ),
    )
    verdict = "MET" if ratio >= TARGET_RATIO else "NOT MET"
    print(f"\n  b/a = {ratio:.2f}  (target >= {TARGET_RATIO})  {verdict}")
    if result.sync_rate is not None and result.sync_bytes_per_event is not None:
        keeps = result.sync_rate / b
        several = len(result.sync_ratios) > 1
        if several:
            keeps = statistics.median(result.sync_ratios)
            print(
                f"  model sync: {len(result.sync_ratios)} alternated pairs, with / without = "
                + ", ".join(f"{r:.2f}" for r in result.sync_ratios)
                + "; CPU per event "
                + ", ".join(f"{r:.2f}" for r in result.sync_cpu_ratios)
            )
        print(
            f"  model sync: per-worker throughput with it / without = {keeps:.2f}"
            f"{' (median)' if several else ''} (target >= 0.85)"
            f"  {'MET' if keeps >= 0.85 else 'NOT MET'}; {result.sync_bytes_per_event:,.0f} delta"
            f" bytes per event = {result.sync_bytes_per_event / (result.event_bytes or 1):.2f}x"
            f" the events (target <= 2x)"
        )
        if result.sync_cpu_ratio is not None:
            cpu = statistics.median(result.sync_cpu_ratios) if several else result.sync_cpu_ratio
            print(
                f"  model sync: the workers' CPU per event with it / without ="
                f" {cpu:.2f}{' (median)' if several else ''} (1 / 0.85 = 1.18 is the"
                " throughput target's)"
            )
    print(
        f"  (b) per event: {fmt(result.core_us, 0)} us in the core (Pipeline.process_one), "
        f"{fmt(result.outside_us, 0)} us outside it (Kafka client, decode, records, metrics)"
    )
    print(
        f"  events {fmt(result.event_bytes, 0)} B, "
        f"recommendations {fmt(result.recommendation_bytes, 0)} B;"
        f" models {', '.join(result.models)}; published: {result.recommender}"
    )


def _print_latency(result: ThroughputResult) -> None:
    if not result.latencies:
        return
    rows = []
    for i, lat in enumerate(result.latencies, start=1):
        rows.append([f"#{i} sent -> received", *(fmt(lat.received_ms[q], 1) for q in _QS)])
        rows.append([f"#{i} sent -> published (ts)", *(fmt(lat.published_ms[q], 1) for q in _QS)])
    first = result.latencies[0]
    print_table(
        ["latency (ms)", *_QS],
        rows,
        title=(
            f"== latency, {result.partitions} partition(s), at {first.target_rate:,.0f} events/s "
            f"(achieved {', '.join(f'{lat.achieved_rate:,.0f}' for lat in result.latencies)}; "
            f"probe linger {first.probe_linger_ms} ms); matched "
            f"{', '.join(f'{lat.matched:,}/{lat.sent:,}' for lat in result.latencies)} =="
        ),
    )
    met = _runs_met(result)
    verdict = "MET" if met == len(result.latencies) else "NOT MET"
    p99s = ", ".join(fmt(lat.received_ms.get("p99"), 1) for lat in result.latencies)
    print(
        f"\n  p99 event-to-publish = {p99s} ms  (target < {TARGET_P99_MS:g} ms in every run): "
        f"{met} of {len(result.latencies)}  {verdict}"
    )


def _runs_met(result: ThroughputResult) -> int:
    return sum(
        1
        for lat in result.latencies
        if lat.received_ms.get("p99") is not None
        and float(lat.received_ms["p99"] or 0.0) < TARGET_P99_MS
    )


def _print_overview(results: list[ThroughputResult]) -> None:
    rows = []
    for r in results:
        p99s = [lat.received_ms.get("p99") for lat in r.latencies]
        known = [float(v) for v in p99s if v is not None]
        rows.append(
            [
                str(r.partitions),
                str(r.workers),
                fmt(r.worker_rate, 0),
                "-" if r.ratio is None else f"{r.ratio:.2f}",
                fmt(r.core_us, 0),
                fmt(r.outside_us, 0),
                fmt(statistics.median(known), 1) if known else "-",
                fmt(max(known), 1) if known else "-",
                f"{_runs_met(r)}/{len(r.latencies)}",
            ]
        )
    print_table(
        ["partitions", "workers", "events/s", "x ceiling", "core us/ev", "outside us/ev",
         "p99 median", "p99 worst", "p99<100ms"],
        rows,
        title="== overview ==",
    )  # fmt: skip


_QS = ("p50", "p95", "p99", "max", "% >100ms")


def _partitions(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("a partition count is at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=30_000, help="events (default 30,000)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: embedded)")
    parser.add_argument(
        "--partitions",
        type=_partitions,
        nargs="+",
        default=[1, 4],
        help="partition counts of the events topic, each measured in turn (default: 1 4)",
    )
    parser.add_argument(
        "--workers",
        type=_partitions,
        default=1,
        help="worker processes in one consumer group (default 1: one worker in-process)",
    )
    parser.add_argument(
        "--steady",
        action="store_true",
        help="with --workers > 1: produce the events once every worker holds partitions "
        "(steady state; default: fill the topic first, the span covers the group's join)",
    )
    parser.add_argument(
        "--runs", type=_partitions, default=5, help="latency runs per partition count (default 5)"
    )
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
    parser.add_argument(
        "--sync-pairs",
        type=_partitions,
        default=1,
        help="with --workers > 1: measure the sync off / on pair this many times, alternated, "
        "and judge the median (a pair's halves see different load; default 1)",
    )
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
        results = run(
            bootstrap,
            name,
            ns.events,
            ns.latency_seconds,
            ns.seed,
            ns.latency_rate,
            ns.probe_linger_ms,
            overrides,
            tuple(ns.partitions),
            ns.workers,
            ns.runs,
            ns.steady,
            ns.sync_pairs,
        )
    finally:
        if broker is not None:
            broker.stop()
    print_summary(results)
    if ns.json:
        write_json(ns.json, {"results": [asdict(r) for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
