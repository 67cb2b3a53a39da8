"""Quality at scale (issue 12): the default configuration split into P shards as Kafka splits
the events topic, sharing item state (``stream evaluate --partitions P``), on the suite's
streams. Target: HR@10 of the default at every P >= 0.95 x its P = 1 figure. Also the sync
traffic: delta bytes per event against the bytes of the events themselves (compact JSON).

    python benchmarks/quality.py --skip-suite --partitions 1,4,8 [--streams a,b] [--scale F]
                                 [--set model_sync_events=N|auto] [--set model_sync_staleness=B]
"""

from __future__ import annotations

import time
from typing import Any

from streams import STREAMS

from stream.evaluate import evaluate_partitioned
from stream.settings import StreamSettings

__all__ = ["partitions_section"]

TARGET = 0.95


def partitions_section(
    names: list[str], seed: int, scale: float, overrides: dict[str, Any], partitions: str
) -> dict[str, Any]:
    counts = [int(p) for p in partitions.split(",") if p.strip()]
    settings = StreamSettings(_env_file=None, **overrides)
    every = settings.model_sync_events
    if every == "auto":
        every = f"auto (ceil({settings.model_sync_staleness} / (P - 1)))"
    print(
        f"\n## Partitions (default {settings.recommender}, sync every {every} events per "
        f"shard, every {settings.model_sync_full_every}th delta full)"
    )
    print(
        f"{'stream':<18} {'P':>3} {'every':>5} {'HR@10':>8} {'x P=1':>7} {'ok':>3} "
        f"{'delta B/ev':>10} {'event B':>8} {'s':>5}"
    )
    out: dict[str, Any] = {}
    for name in names:
        events = STREAMS[name].events(seed, scale)
        event_bytes = sum(len(e.model_dump_json(exclude_none=True)) for e in events) / len(events)
        base: float | None = None
        rows: dict[str, Any] = {}
        for p in counts:
            started = time.perf_counter()
            result = evaluate_partitioned(events, settings, p)
            seconds = time.perf_counter() - started
            hr = result.models[settings.recommender].hit_rate
            if p == 1:
                base = hr
            ratio = hr / base if hr is not None and base else None
            per_event = result.sync.get("delta_bytes", 0) / max(result.events, 1)
            ok = "" if ratio is None or p == 1 else ("yes" if ratio >= TARGET else "NO")
            every_p = result.sync.get("sync_events", 0)
            print(
                f"{name:<18} {p:>3} {every_p:>5} {hr or 0:>8.4f} {ratio or 0:>7.3f} {ok:>3} "
                f"{per_event:>10.1f} {event_bytes:>8.1f} {seconds:>5.0f}",
                flush=True,
            )
            rows[str(p)] = {
                "hr@10": hr,
                "vs_p1": ratio,
                "delta_bytes_per_event": per_event,
                "event_bytes": event_bytes,
                "delta_records": result.sync.get("delta_records", 0),
                "sync_events": result.sync.get("sync_events", 0),
                "seconds": seconds,
            }
        out[name] = rows
    return out
