"""Time and size of checkpoint save/load for a pipeline that learned a synthetic stream.

A Pipeline with the default models (``StreamSettings()``) learns N synthetic events (default
100k events, 1k users, 2k items: Zipf-like item popularity, per-user taste clusters, 10%
ratings), then the checkpoint store writes and reads it back several times. Prints figures;
asserts nothing.

Then the two ways the worker writes a checkpoint (``STREAM_CHECKPOINT_MODE``): *inline* (the
event loop pickles, signs, fsyncs: the loop's pause is the whole write) and *fork* (the loop
forks; a child writes the same file: the loop's pause is the fork alone). Each forked file is
verified (HMAC) and restored.

``--fill learn`` reaches a large state fast: each event goes only through the models'
``learn_one`` and the per-user history (no evaluation, no recommendation), users in turn (so
``--events`` >= ``--users`` puts every user in the state), and 1M users take minutes instead of
hours; what is checkpointed is the same kind of state.

    python benchmarks/checkpoint.py [--events 100000] [--users 1000] [--items 2000]
                                    [--repeat 5] [--dir DIR] [--fill process|learn]
    python benchmarks/checkpoint.py --fill learn --events 1000000 --users 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from stream.checkpoint import CheckpointStore, read_info
from stream.checkpoint_fork import ForkedSaves
from stream.core import Pipeline
from stream.events import Event, Source
from stream.settings import StreamSettings

__all__ = ["main", "synthetic_events"]

KEY = "benchmark-key-not-a-secret"


def synthetic_events(
    n: int, users: int, items: int, seed: int = 11, users_in_turn: bool = False
) -> Iterator[Event]:
    """A reproducible implicit/rating stream with popularity skew and user taste clusters
    (``users_in_turn``: user ``t % users`` at event ``t``, so every user appears)."""
    rng = np.random.default_rng(seed)
    clusters = 20
    user_cluster = rng.integers(0, clusters, size=users)
    ranks = np.arange(1, items + 1, dtype=float)
    base = 1.0 / ranks**0.8
    cdfs = []
    for _ in range(clusters):
        boost = np.ones(items)
        boost[rng.choice(items, size=items // clusters, replace=False)] = 8.0
        cdf = np.cumsum(base * boost)
        cdfs.append(cdf / cdf[-1])
    kinds = ("view", "click", "add_to_cart", "purchase", "rating")
    kind_cdf = np.cumsum([0.55, 0.2, 0.08, 0.07, 0.1])
    for t in range(n):
        user = t % users if users_in_turn else int(rng.integers(users))
        item = int(np.searchsorted(cdfs[user_cluster[user]], rng.random()))
        kind = kinds[min(int(np.searchsorted(kind_cdf, rng.random())), len(kinds) - 1)]
        yield Event(
            user_id=f"u{user}",
            item_id=f"i{item}",
            event_type=kind,
            rating=float(rng.integers(1, 6)) if kind == "rating" else None,
            timestamp=1_700_000_000.0 + t,
        )


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return times, result


def _fmt(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1e3:8.1f} ms   min {min(times) * 1e3:8.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: tmp)")
    parser.add_argument(
        "--fill",
        choices=("process", "learn"),
        default="process",
        help="process: the full process_one per event; learn: learn_one + history only",
    )
    parser.add_argument(
        "--fork-only",
        action="store_true",
        help="after learning, print RSS, huge pages and three bare fork() pauses, then stop "
        "(compare runs with and without PYTHONMALLOC=malloc GLIBC_TUNABLES=glibc.malloc.hugetlb=1)",
    )
    ns = parser.parse_args(argv)

    settings = StreamSettings()
    pipeline = Pipeline.from_settings(settings)
    print(f"models {', '.join(settings.models)}; learning {ns.events:,} events "
          f"({ns.users:,} users, {ns.items:,} items) ...", flush=True)  # fmt: skip
    started = time.perf_counter()
    if ns.fill == "learn":
        _learn_only(pipeline, synthetic_events(ns.events, ns.users, ns.items, users_in_turn=True))
    else:
        for offset, event in enumerate(synthetic_events(ns.events, ns.users, ns.items)):
            pipeline.process_one(event, Source("events", 0, offset))
    learn_s = time.perf_counter() - started
    print(f"learned in {learn_s:.1f} s ({ns.events / learn_s:,.0f} events/s); "
          f"users {pipeline.n_users:,}, items {pipeline.n_items:,}")  # fmt: skip

    if ns.fork_only:
        _fork_pauses()
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        root = ns.dir if ns.dir is not None else Path(tmp)
        store = CheckpointStore(root, KEY, keep=2)
        tp = ("events", 0)
        pickle_t, payload = _timed(lambda: pickle.dumps(pipeline, protocol=5), ns.repeat)
        save_t, path = _timed(lambda: store.save(tp, pipeline, ns.events), ns.repeat)
        header_t, _ = _timed(lambda: read_info(path), ns.repeat)
        verify_t, _ = _timed(lambda: read_info(path, KEY), ns.repeat)
        load_t, restored = _timed(lambda: store.load(tp), ns.repeat)
        size = path.stat().st_size
        header = read_info(path).header
        pauses, child_t = _forked(store, pipeline, tp, ns.events, ns.repeat)
        alone, beside = _loop_rates(store, pipeline, tp, ns.events + ns.repeat + 1, ns.items)

    assert restored is not None and restored[1] == ns.events
    print(
        f"checkpoint file      {size / 2**20:8.2f} MiB (pickle payload "
        f"{len(payload) / 2**20:.2f} MiB, JSON header {len(json.dumps(header)) / 1024:.1f} KiB)"
    )
    for label, times in (
        ("pickle only", pickle_t),
        ("save (sign+fsync)", save_t),
        ("header, no key", header_t),
        ("header + HMAC", verify_t),
        ("load (HMAC+unpickle)", load_t),
        ("fork: loop's pause", pauses),
        ("fork: child's write", child_t),
    ):
        print(f"{label:<21}{_fmt(times)}")  # fmt: skip
    rss = _rss_mib()
    print(f"event loop pause     inline {statistics.median(save_t) * 1e3:.1f} ms, fork "
          f"{statistics.median(pauses) * 1e3:.1f} ms (process RSS {rss:,.0f} MiB)")  # fmt: skip
    print(f"loop while a child writes {beside:,.0f} events/s, with no child {alone:,.0f} events/s "
          "(process_one; copy-on-write faults are the difference)")  # fmt: skip
    per_model = ", ".join(f"{m} {n:,}" for m, n in header["events_learned"].items())
    print(f"events learned       {per_model}")
    return 0


def _fork_pauses(repeat: int = 3) -> None:
    """The state's resident size, how much of it is on huge pages, and bare fork() pauses
    (the child exits at once: the pause a forked checkpoint costs the loop)."""
    import gc
    import os

    gc.collect()
    pauses = []
    for _ in range(repeat):
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        pauses.append(time.perf_counter() - started)
        os.waitpid(pid, 0)
    huge = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                huge = int(line.split()[1]) // 1024
    heap = os.environ.get("PYTHONMALLOC", "pymalloc")
    tunables = os.environ.get("GLIBC_TUNABLES", "-")
    print(f"heap {heap} (GLIBC_TUNABLES {tunables}): process RSS {_rss_mib():,.0f} MiB, "
          f"on huge pages {huge:,} MiB; fork pauses "
          + ", ".join(f"{p * 1e3:.1f} ms" for p in pauses))  # fmt: skip


def _learn_only(pipeline: Pipeline, events: Iterator[Event]) -> None:
    """Each event through the models' learn_one and the history only (a benchmark shortcut
    that reaches the state of a long run; the worker runs ``process_one``)."""
    learners = [m for _, m in pipeline._learners]
    count = 0
    for event in events:
        y = pipeline.target(event)
        x = {"event_type": event.event_type, "implicit": event.implicit, "timestamp": 0.0}
        for model in learners:
            model.learn_one(event.user_id, event.item, y, x)
        pipeline._remember(event.user_id, event.item)
        count += 1
    for name in pipeline.models:
        pipeline.learned[name] += count
    pipeline.run_count += count


def _forked(
    store: CheckpointStore, pipeline: Pipeline, tp: tuple[str, int], offset: int, repeat: int
) -> tuple[list[float], list[float]]:
    """The loop's pause and the child's whole write, per forked checkpoint; each file is
    verified (HMAC) and restored once at the end."""
    forks = ForkedSaves(store)
    pauses, writes = [], []
    for i in range(repeat):
        forks.start(tp, pipeline, offset + 1 + i)
        (outcome,) = forks.poll(block=True)
        if outcome.error is not None:
            raise SystemExit(f"forked checkpoint failed: {outcome.error}")
        pauses.append(outcome.pause_seconds)
        writes.append(outcome.seconds)
    loaded = store.load(tp)
    assert loaded is not None and loaded[1] == offset + repeat
    assert loaded[0].n_users == pipeline.n_users
    return pauses, writes


def _loop_rates(
    store: CheckpointStore, pipeline: Pipeline, tp: tuple[str, int], offset: int, items: int
) -> tuple[float, float]:
    """process_one's events/s with no child, then while a forked child writes (at most as many
    events as the first part, fewer when the child finishes first)."""
    events = list(synthetic_events(4_000, 50_000, items, seed=99))
    half = len(events) // 2
    started = time.perf_counter()
    for i, event in enumerate(events[:half]):
        pipeline.process_one(event, Source("events", 0, offset + i))
    alone = half / (time.perf_counter() - started)
    forks = ForkedSaves(store)
    forks.start(tp, pipeline, offset + half)
    started = time.perf_counter()
    done = 0
    for i, event in enumerate(events[half:]):
        pipeline.process_one(event, Source("events", 0, offset + half + i))
        done += 1
        if i % 50 == 49 and not forks.in_flight():
            break
        if i % 50 == 49 and forks.poll():
            break
    beside = done / (time.perf_counter() - started)
    forks.poll(block=True)
    return alone, beside


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
