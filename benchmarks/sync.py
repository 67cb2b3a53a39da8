"""The model sync live (issue 12): per-worker throughput with the sync on and off, and the sync
traffic per event, for ``--workers`` workers sharing a ``--partitions``-partition topic.

Each configuration runs on fresh topics of the same broker with the same synthetic events:
``--workers`` processes each run :class:`stream.worker.Worker` (default settings, in a group)
until the topic is consumed; per worker, events/s from its first processed event to its last.
With the sync on (``STREAM_MODEL_SYNC=true`` at the default interval) also the delta bytes
published per event, against the bytes of the events themselves, and the final HR@10 of the
default (served) model merged over the shards (cumulative).

    python benchmarks/sync.py [--events 12000] [--partitions 4] [--workers 2]
                              [--settle SECONDS] [--set NAME=VALUE ...] [--json PATH|-]

``--settle S``: the workers start on the empty topic and the events are produced S seconds
later (the group has settled; default: the topic is filled first and the group joins as the
workers consume it).

Targets: throughput with the sync within 15 % of without; traffic <= 2x the input bytes.
Prints figures; asserts nothing. Without ``--bootstrap`` an embedded broker is started.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import quiet_logging, settings_overrides, write_json
from throughput import _fill, _records, _run_specific, _TimedPipeline

from stream.broker import EmbeddedBroker
from stream.core import Pipeline, PipelineConfig, merge_metrics
from stream.kafka.admin import ensure_topics
from stream.models import build_models
from stream.settings import StreamSettings
from stream.worker import Worker


def _one_worker(settings: StreamSettings, out: Any, idle_s: float) -> None:
    quiet_logging()
    shards: list[_TimedPipeline] = []

    def factory() -> Pipeline:
        shard = _TimedPipeline(PipelineConfig.from_settings(settings), build_models(settings))
        shard.built_with = {}
        shards.append(shard)
        return shard

    worker = Worker(settings, pipeline_factory=factory)
    summary = worker.run(idle_timeout=idle_s)
    firsts = [s.first for s in shards if s.first is not None]
    stats = worker._sync.stats if worker._sync is not None else None
    out.put(
        {
            "processed": summary.processed,
            "seconds": (max(s.last for s in shards) - min(firsts)) if firsts else 0.0,
            "published_bytes": stats.published_bytes if stats else 0,
            "published": stats.published if stats else 0,
            "applied": stats.applied if stats else 0,
            "records": [s.metrics_record().model_dump(mode="json") for s in shards],
        }
    )


def run_config(
    bootstrap: str,
    records: list[Any],
    partitions: int,
    workers: int,
    settle_s: float = 0.0,
    **overrides: Any,
) -> dict[str, Any]:
    """One configuration. ``settle_s`` > 0: the workers start on the empty topic and the
    events are produced ``settle_s`` seconds later (the group has settled: no rebalance while
    they are consumed); 0: the topic is filled first (a backfill, the group joining as it goes)."""
    tag = f"sync-{uuid.uuid4().hex[:8]}"
    settings = StreamSettings(
        _env_file=None,
        **_run_specific(bootstrap, tag),
        events_partitions=partitions,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        max_poll_interval_ms=60_000,
        **overrides,
    )
    ensure_topics(settings, {settings.events_topic: partitions}, timeout_s=30)
    if not settle_s:
        _fill(bootstrap, settings.events_topic, records)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    idle_s = 8.0 + settle_s
    procs = [
        ctx.Process(target=_one_worker, args=(settings, queue, idle_s)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    if settle_s:
        time.sleep(settle_s)
        _fill(bootstrap, settings.events_topic, records)
    results: list[dict[str, Any]] = []
    while len(results) < len(procs):
        try:
            results.append(queue.get(timeout=2))
        except Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed:  # a worker that failed to start or crashed sends nothing: say so, not hang
                for p in procs:
                    p.kill()
                raise SystemExit(f"a worker process failed (exit code {failed[0]})") from None
    for p in procs:
        p.join(60)
    from stream.events import MetricsRecord

    merged = merge_metrics(
        [MetricsRecord.model_validate(r) for res in results for r in res["records"]]
    )
    served = max(merged.served, key=lambda m: merged.served[m]) if merged.served else ""
    return {
        "sync": settings.model_sync,
        "workers": [
            {k: v for k, v in r.items() if k != "records"}
            | {"events_per_second": r["processed"] / r["seconds"] if r["seconds"] else None}
            for r in results
        ],
        "processed": sum(r["processed"] for r in results),
        "published_bytes": sum(r["published_bytes"] for r in results),
        "hr@10": merged.cumulative_metrics[served].hit_rate if served else None,
        "served": served,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=12_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="start the workers on the empty topic, produce the events this much later "
        "(default 0: fill the topic first)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", default=None, metavar="PATH")
    ns = parser.parse_args(argv)
    overrides = settings_overrides(ns.set)
    quiet_logging()
    records = _records(ns.events, ns.seed)
    event_bytes = sum(len(r.value) for r in records) / len(records)
    broker = None if ns.bootstrap else EmbeddedBroker().start()
    bootstrap = ns.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    report: dict[str, Any] = {"events": ns.events, "event_bytes": event_bytes}
    try:
        for name, sync in (("sync off", False), ("sync on", True)):
            started = time.perf_counter()
            result = run_config(
                bootstrap,
                records,
                ns.partitions,
                ns.workers,
                ns.settle,
                **{"model_sync": sync, **overrides},
            )
            report[name] = result
            rates = ", ".join(
                f"{w['processed']:,} ev at {w['events_per_second'] or 0:,.0f} ev/s"
                for w in result["workers"]
            )
            per_event = result["published_bytes"] / max(result["processed"], 1)
            print(
                f"{name}: {ns.workers} workers x {ns.partitions} partitions: {rates}; "
                f"HR@10 ({result['served']}) {result['hr@10'] or 0:.4f}; sync traffic "
                f"{per_event:,.0f} B/event = {per_event / event_bytes:.1f}x the "
                f"{event_bytes:.0f}-B events ({time.perf_counter() - started:.0f}s)",
                flush=True,
            )
    finally:
        if broker is not None:
            broker.stop()
    if ns.json:
        write_json(ns.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
