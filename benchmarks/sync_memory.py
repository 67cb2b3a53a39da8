"""The model sync's memory in a worker: what a :class:`stream.sync.live.WorkerSync` holds after
reading ``--deltas`` deltas of another shard from a list-backed model-updates topic (no broker).

The deltas are encoded before measuring (they are the topic's, not the worker's); the figure
is what tracemalloc still traces after the worker read them all into one attached shard (models
with a fixed set of items, so the shard's own state does not grow), then after a second shard
attached late (bootstrapped from the same topic). Before the worker stopped keeping the deltas
it read (issue 12), it grew with them: 32.8 MB after 10,000.

    python benchmarks/sync_memory.py [--deltas 10000]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The list-backed topic and reader of the sync's unit tests: the worker's side without a broker.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))

from sync_fakes import FakeReader, delta_topic

from stream.core import Pipeline
from stream.settings import StreamSettings
from stream.sync.live import WorkerSync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deltas", type=int, default=10_000)
    args = parser.parse_args()
    settings = StreamSettings(
        _env_file=None,
        models=("popularity", "knn"),
        recommender="knn",
        popularity_half_life=math.inf,
        knn_half_life=None,
        model_sync=True,
        model_sync_events=10,
        model_sync_ms=3_600_000,
    )
    topic = delta_topic(settings, args.deltas)  # one event per delta, over 20 items
    topic_bytes = sum(map(len, topic.values))

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    sync = WorkerSync(settings, FakeReader(topic), topic.send, clock=lambda: 0.0)
    sync.attach(("events", 0), Pipeline.from_settings(settings))
    while sync.poll():
        pass
    gc.collect()
    after_read = tracemalloc.get_traced_memory()[0] - base
    sync.attach(("events", 2), Pipeline.from_settings(settings))
    gc.collect()
    after_late = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"{args.deltas:,} deltas on the topic ({topic_bytes / 1e6:.2f} MB encoded)")
    print(f"traced after reading them into one shard: {after_read / 1e6:.2f} MB")
    print(f"traced after a second shard attached late: {after_late / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
