"""Memory per user and per item at the default settings, and a million users under a TTL.

Three measurements, each driving a default :class:`~stream.core.Pipeline` (``StreamSettings()``:
popularity, knn, sequence, biased_mf, blend) with ``process_one``, the way the worker and
``stream evaluate`` do:

1. **per user**: a pipeline that learned a 100-item catalogue (every item pair co-occurs, so
   the item state no longer grows) takes new users with ``h`` events each on distinct known
   items; the growth of the Python heap (``tracemalloc``) per new user, for several ``h`` (each
   user then holds ``h`` items in the pipeline's history), against ``1 KB + 32 bytes x h``,
   with the source files that allocated it.
2. **per item**: 100 users with full histories (their state no longer grows) learn new items,
   3 events each; the heap growth per new item, by source file.
3. **a million users**: that many distinct users through one pipeline with
   ``STREAM_USER_TTL_SECONDS`` (one event per second of event time, 2,000 items); the peak
   resident set (RSS) of the process, against the 1 GiB limit of the k8s manifest.

Prints figures; asserts nothing. The functions are importable (``benchmarks/scale.py``).

    python benchmarks/memory.py [--parts 1 2 3] [--users 20000] [--history 1 5 20]
                                [--items 5000] [--million 1000000] [--per-user 1]
                                [--ttl 100000] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from _common import quiet_logging, settings_overrides

from stream.core import Pipeline
from stream.events import Event, Source
from stream.settings import StreamSettings

__all__ = [
    "bytes_per_item",
    "bytes_per_user",
    "main",
    "many_users_peak_rss",
    "peak_rss_bytes",
    "rss_bytes",
]

T0 = 1_700_000_000.0
KINDS = ("view", "view", "view", "click", "add_to_cart", "purchase")


def rss_bytes() -> int:
    """The resident set size of this process now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Clock:
    """Event time, one second per event."""

    def __init__(self) -> None:
        self.t = T0

    def tick(self) -> float:
        self.t += 1.0
        return self.t


def _drive(pipeline: Pipeline, events: Iterator[Event]) -> int:
    n = pipeline.run_count
    for e in events:
        pipeline.process_one(e, Source("memory", 0, n))
        n += 1
    return n


def _catalogue_events(
    users: int, items: int, per_user: int, clock: _Clock, rng: np.random.Generator, prefix: str
) -> Iterator[Event]:
    """``users`` users with ``per_user`` events each on distinct items of a Zipf-ish catalogue
    (``i0`` ... ``i{items-1}``), one user after the other."""
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    weights /= weights.sum()
    for u in range(users):
        picked = rng.choice(items, size=per_user, replace=False, p=weights)
        for item in picked.tolist():
            yield Event(
                user_id=f"{prefix}{u}",
                item_id=f"i{item}",
                event_type=KINDS[int(rng.integers(len(KINDS)))],
                timestamp=clock.tick(),
            )


def _warm(settings: StreamSettings, items: int, seed: int) -> tuple[Pipeline, _Clock]:
    """A pipeline that knows ``items`` items (2,000 warm-up users, 10 events each)."""
    clock, rng = _Clock(), np.random.default_rng(seed)
    pipeline = Pipeline.from_settings(settings)
    _drive(pipeline, _catalogue_events(2_000, items, 10, clock, rng, "warm"))
    # Every item seen at least once, so the measured users only meet known items.
    _drive(
        pipeline,
        (
            Event(user_id="warm-all", item_id=f"i{i}", event_type="view", timestamp=clock.tick())
            for i in range(items)
        ),
    )
    pipeline.forget_user("warm-all")
    return pipeline, clock


def _heap() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _by_file(before: tracemalloc.Snapshot, per: int) -> dict[str, float]:
    """Growth since ``before`` per unit, by the source file that allocated it (top 5)."""
    gc.collect()
    stats = tracemalloc.take_snapshot().compare_to(before, "filename")
    out: dict[str, float] = {}
    for stat in sorted(stats, key=lambda s: -s.size_diff)[:5]:
        frame = stat.traceback[0].filename
        parts = Path(frame).parts
        name = "/".join(parts[parts.index("stream") :]) if "stream" in parts else Path(frame).name
        out[name] = stat.size_diff / max(per, 1)
    return out


def bytes_per_user(
    settings: StreamSettings,
    users: int,
    per_user: int,
    items: int = 100,
    traced: bool = True,
    seed: int = 5,
) -> dict[str, Any]:
    """Growth of the heap (``traced``) or of the RSS per new user with ``per_user`` events."""
    pipeline, clock = _warm(settings, items, seed)
    rng = np.random.default_rng(seed + 1)
    events = _catalogue_events(users, items, per_user, clock, rng, "new")
    if traced:
        tracemalloc.start()
        before = _heap()
        snapshot = tracemalloc.take_snapshot()
    else:
        gc.collect()
        before = rss_bytes()
    held_before = len(pipeline.history)
    started = time.perf_counter()
    _drive(pipeline, events)
    seconds = time.perf_counter() - started
    after = _heap() if traced else (gc.collect(), rss_bytes())[1]
    added = len(pipeline.history) - held_before
    files = _by_file(snapshot, added) if traced else {}
    if traced:
        tracemalloc.stop()
    remembered = sum(len(pipeline.history[f"new{u}"]) for u in range(users))
    return {
        "users": added,
        "events_per_user": per_user,
        "history_items": remembered / max(added, 1),
        "bytes_per_user": (after - before) / max(added, 1),
        "how": "tracemalloc" if traced else "rss",
        "seconds": seconds,
        "by_file": files,
    }


def bytes_per_item(
    settings: StreamSettings,
    items: int,
    per_item: int = 3,
    pool: int = 100,
    traced: bool = True,
    seed: int = 7,
) -> dict[str, Any]:
    """Growth per new item once a pool of users has full histories (their state is flat)."""
    warm_items = 500
    clock, rng = _Clock(), np.random.default_rng(seed)
    pipeline = Pipeline.from_settings(settings)
    depth = min(settings.history_size, warm_items)
    _drive(pipeline, _catalogue_events(pool, warm_items, depth, clock, rng, "pool"))
    # Brand new items, each seen ``per_item`` times by random pool users, one after the other.
    events = (
        Event(
            user_id=f"pool{int(rng.integers(pool))}",
            item_id=f"new{n}",
            event_type=KINDS[int(rng.integers(len(KINDS)))],
            timestamp=clock.tick(),
        )
        for n in range(items)
        for _ in range(per_item)
    )
    known = pipeline.n_items
    if traced:
        tracemalloc.start()
        before = _heap()
        snapshot = tracemalloc.take_snapshot()
    else:
        gc.collect()
        before = rss_bytes()
    started = time.perf_counter()
    _drive(pipeline, events)
    seconds = time.perf_counter() - started
    after = _heap() if traced else (gc.collect(), rss_bytes())[1]
    added = pipeline.n_items - known
    files = _by_file(snapshot, added) if traced else {}
    if traced:
        tracemalloc.stop()
    return {
        "items": added,
        "events_per_item": per_item,
        "bytes_per_item": (after - before) / max(added, 1),
        "how": "tracemalloc" if traced else "rss",
        "seconds": seconds,
        "by_file": files,
    }


def many_users_peak_rss(
    settings: StreamSettings, users: int, per_user: int = 2, items: int = 2_000, seed: int = 9
) -> dict[str, Any]:
    """``users`` distinct users (``per_user`` events each, one second of event time per
    event) through one pipeline; the process's peak RSS and what the limits removed."""
    pipeline, clock = _warm(settings, items, seed)
    rng = np.random.default_rng(seed + 1)
    started = time.perf_counter()
    _drive(pipeline, _catalogue_events(users, items, per_user, clock, rng, "m"))
    seconds = time.perf_counter() - started
    record = pipeline.metrics_record()
    return {
        "users": users,
        "events": users * per_user,
        "held_users": record.users,
        "expired_ttl": record.users_expired_ttl,
        "expired_cap": record.users_expired_cap,
        "peak_rss": peak_rss_bytes(),
        "rss": rss_bytes(),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=20_000, help="events of a per-user run")
    parser.add_argument("--items", type=int, default=5_000, help="new items measured")
    parser.add_argument("--history", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--million", type=int, default=1_000_000, help="users of part 3")
    parser.add_argument("--per-user", type=int, default=1, help="events per user in part 3")
    parser.add_argument(
        "--ttl", type=float, default=100_000.0, help="TTL of part 3 (s; 1 event/s of event time)"
    )
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ns = parser.parse_args(argv)
    quiet_logging()
    settings = StreamSettings(_env_file=None, **settings_overrides(ns.set))
    print(f"models: {', '.join(settings.models)}; history_size {settings.history_size}")

    if 1 in ns.parts:
        _per_user(settings, ns)
    if 2 in ns.parts:
        _per_item(settings, ns)
    if 3 in ns.parts:
        _many_users(settings, ns)
    return 0


def _breakdown(files: dict[str, float], unit: str) -> None:
    print("      by file: " + ", ".join(f"{n} {b:,.0f}" for n, b in files.items()) + f" ({unit})")


def _per_user(settings: StreamSettings, ns: argparse.Namespace) -> None:
    print("\n1. per user (tracemalloc; a 100-item catalogue learned first, so item state is flat)")
    print("   events/user    users  history items  bytes/user  target 1 KB + 32 B/item")
    for h in ns.history:
        users = max(1_000, ns.users // h)
        r = bytes_per_user(settings, users, h)
        target = 1024 + 32 * r["history_items"]
        print(
            f"   {h:>11}  {r['users']:>7,}  {r['history_items']:>13.1f}  "
            f"{r['bytes_per_user']:>10,.0f}  {target:>24,.0f}   ({r['seconds']:.0f} s)",
            flush=True,
        )
        _breakdown(r["by_file"], "bytes/user")


def _per_item(settings: StreamSettings, ns: argparse.Namespace) -> None:
    print("\n2. per item (tracemalloc; 100 users with full histories learn new items)")
    print("     items  events/item  bytes/item  target")
    r = bytes_per_item(settings, ns.items)
    print(
        f"   {r['items']:>7,}  {r['events_per_item']:>11}  {r['bytes_per_item']:>10,.0f}  "
        f"{4096:>6,}   ({r['seconds']:.0f} s)",
        flush=True,
    )
    _breakdown(r["by_file"], "bytes/item")


def _many_users(settings: StreamSettings, ns: argparse.Namespace) -> None:
    limited = settings.model_copy(update={"user_ttl_seconds": ns.ttl})
    print(
        f"\n3. {ns.million:,} distinct users, {ns.per_user} event(s) each, one event per second "
        f"of event time, STREAM_USER_TTL_SECONDS={ns.ttl:g}"
    )
    r = many_users_peak_rss(limited, ns.million, ns.per_user)
    print(
        f"   held at the end {r['held_users']:,} users; expired {r['expired_ttl']:,} (ttl); "
        f"peak RSS {r['peak_rss'] / 2**20:,.0f} MiB (limit 1,024 MiB), now "
        f"{r['rss'] / 2**20:,.0f} MiB; {r['events'] / r['seconds']:,.0f} events/s "
        f"({r['seconds']:,.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
