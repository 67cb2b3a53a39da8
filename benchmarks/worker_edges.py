"""Per-event costs of the worker outside the core, each alone, no broker (microseconds/event).

What ``benchmarks/throughput.py`` reports as "outside the core" is these plus the Kafka client
(its IO thread shares the interpreter lock with the loop). Each line times one step of
``Worker._handle_one`` over the demo's synthetic events; "before" lines are how the step was
done before issue 11 (kept for the comparison). Prints figures; asserts nothing.

    python benchmarks/worker_edges.py [--events 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import print_table

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.events import Event, Recommendation, Source, decode_one
from stream.kafka import RawRecord
from stream.monitoring import WorkerMetrics
from stream.worker import json_bytes

__all__ = ["main"]


def _per_event(fn: Callable[[int], object], n: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    ns = parser.parse_args(argv)
    n = ns.events
    records = list(SyntheticStream(SyntheticConfig(n_events=n, seed=7)).records())
    raws = [RawRecord("events", 0, i, r.key, r.value, 0) for i, r in enumerate(records)]
    events = [e for e in (decode_one(r.key, r.value) for r in raws) if isinstance(e, Event)]
    rec = Recommendation.model_validate(
        {
            "user_id": "user-00012",
            "items": [
                {"item_id": f"item-{i:06d}", "score": 0.1 * i, "reason": "knn: similar to x"}
                for i in range(10)
            ],
            "model": "blend",
            "model_version": 1,
            "source_topic": "events",
            "source_partition": 0,
            "source_offset": 123,
            "event_timestamp": 1.7e9,
        }
    )
    metrics = WorkerMetrics(CollectorRegistry())
    counts: Counter[str] = Counter()

    def labelled_inc(i: int) -> None:
        metrics.events.labels(events[i % len(events)].event_type, "processed").inc()
        metrics.recommendations.labels("blend").inc()
        now = time.time()
        metrics.event_lag.set(now - 1.0)
        metrics.last_event.set(now)

    def batched_inc(i: int) -> None:
        counts[events[i % len(events)].event_type] += 1
        counts["blend"] += 1
        if i % 100 == 99:  # one poll batch of 100 records
            for name, k in counts.items():
                metrics.events.labels(name, "processed").inc(k)
            counts.clear()
            now = time.time()
            metrics.event_lag.set(now - 1.0)
            metrics.last_event.set(now)

    rows = [
        ["decode_one (JSON + validation)", _per_event(lambda i: decode_one(raws[i].key, raws[i].value), n)],  # noqa: E501
        ["RawRecord + Source per record", _per_event(lambda i: (RawRecord("e", 0, i, None, b"", 0), Source("e", 0, i)), n)],  # noqa: E501
        ["encode: model_dump_json().encode() (before)", _per_event(lambda i: rec.model_dump_json().encode(), n)],  # noqa: E501
        ["encode: json_bytes (now)", _per_event(lambda i: json_bytes(rec), n)],
        ["Prometheus: labelled inc x2 + 2 gauges per event (before)", _per_event(labelled_inc, n)],
        ["Prometheus: counted, added per poll batch (now)", _per_event(batched_inc, n)],
        ["Prometheus: processing histogram observe", _per_event(lambda i: metrics.processing.observe(0.001), n)],  # noqa: E501
    ]  # fmt: skip
    print_table(
        ["step", "us/event"],
        [[name, f"{us:.1f}"] for name, us in rows],
        title=f"== worker steps outside the core, {n:,} events (best of 3) ==",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
