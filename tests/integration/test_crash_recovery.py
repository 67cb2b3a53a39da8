"""Durable state under crashes: the worker killed with SIGKILL at random points and restarted
ends with exactly the state of a run that was never interrupted.

The worker runs as a real process (``python -m stream worker``) against a real broker, with
checkpoints far more frequent than in production so kills land between them. Its final
checkpoint, per partition, must equal the in-process :class:`~stream.core.Pipeline` driven over
the same partition's events in offset order (the worker runs that same code, so this is the
uninterrupted run): same event counts per model, same evaluator counts and metrics, same
history, and bit-identical predictions and top-K for a sample of user-item pairs.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path

import pytest
from kafka_helpers import consume, produce, settings_for
from recovery_helpers import (
    OutputWatcher,
    WorkerProcess,
    assert_same_state,
    checkpoint_offsets,
    committed_offsets,
    offline_shard,
    sample_pairs,
    wait_for,
)

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.checkpoint import CheckpointStore
from stream.kafka import RawRecord
from stream.kafka.admin import ensure_topics

pytestmark = pytest.mark.integration

N_EVENTS = 5_000
PARTITIONS = 2
TAIL = 300  # events produced after the last kill: the restarted worker must go on learning
KILLS = 5
SEED = 20_240_611


def test_sigkill_at_random_points_then_restart_equals_an_uninterrupted_run(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = settings_for(
        kafka_bootstrap,
        # Compared with each partition's events replayed offline: every partition its own
        # model (STREAM_MODEL_SYNC=auto would share item state; that is test_model_sync.py's).
        model_sync=False,
        events_partitions=PARTITIONS,
        models=("popularity", "knn", "biased_mf", "funk_mf", "blend"),
        recommender="blend",
        seed=7,
        negative_samples=2,
        mf_factors=8,
        drift_min_events=50,
        metric_window=200,
        max_poll_records=25,
        metrics_every_events=500,
        # Far more often than in production, so kills land between checkpoints (and a few
        # during one) at many points of the stream.
        checkpoint_every_events=97,
        checkpoint_every_seconds=3_600.0,
        checkpoint_dir=tmp_path / "checkpoints",
        checkpoint_key="crash-recovery-test-key",
        checkpoint_keep=2,
    )
    topic = settings.events_topic
    ensure_topics(settings, {topic: PARTITIONS}, timeout_s=30)
    config = SyntheticConfig(
        n_events=N_EVENTS + TAIL, n_users=150, n_items=300, seed=3, ratings_fraction=0.1
    )
    sent = list(SyntheticStream(config).records())
    head, tail = sent[:N_EVENTS], sent[N_EVENTS:]
    produce(kafka_bootstrap, topic, [r.value for r in head], [r.key for r in head])

    store = CheckpointStore.from_settings(settings)
    assert store is not None

    def progress() -> int:
        return sum(checkpoint_offsets(store, topic, PARTITIONS).values())

    rng = random.Random(SEED)
    started = time.monotonic()
    at_kills: list[int] = []
    for round_ in range(KILLS):
        before = progress()
        worker = WorkerProcess(settings, tmp_path / f"worker-kill-{round_}.log")
        try:
            # Wait for this run's first checkpoint, then kill it a random moment later:
            # mid-batch, between checkpoints, or while writing one. Each run learns a few
            # hundred events at most, so every kill lands well inside the stream.
            wait_for(
                lambda w=worker, b=before: progress() > b or not w.alive(),  # type: ignore[misc]
                60,
                f"a checkpoint of run {round_}",
            )
            assert worker.alive(), worker.log()
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            worker.kill()
        assert worker.proc.returncode == -9
        at_kills.append(progress())

    produce(kafka_bootstrap, topic, [r.value for r in tail], [r.key for r in tail])
    by_partition: dict[int, list[RawRecord]] = defaultdict(list)
    for record in consume(kafka_bootstrap, topic, n=N_EVENTS + TAIL):
        by_partition[record.partition].append(record)
    ends = {p: len(by_partition[p]) for p in range(PARTITIONS)}
    assert all(ends.values()), f"every partition must get events: {ends}"

    # Restart until the stream is fully consumed; each run stops by itself after the events
    # its checkpoints do not cover yet (a rebalance inside a run can make one run fall short).
    finals = 0
    while checkpoint_offsets(store, topic, PARTITIONS) != ends:
        finals += 1
        assert finals <= 4, f"stream not covered after {finals - 1} clean runs"
        left = sum(ends.values()) - progress()
        worker = WorkerProcess(
            settings, tmp_path / f"worker-final-{finals}.log", "--max-events", str(left)
        )
        assert worker.wait(180) == 0, worker.log()
    print(
        f"\n{KILLS} kills (checkpointed events at each: {at_kills}) + {finals} clean run(s) "
        f"over {N_EVENTS + TAIL} events: {time.monotonic() - started:.1f}s"
    )

    # Outputs are at-least-once: events processed after the last checkpoint before a kill
    # were processed again, so the kills did land between checkpoints...
    watcher = OutputWatcher(kafka_bootstrap, settings.recommendations_topic)
    try:
        every_event = {(p, o) for p in ends for o in range(ends[p])}
        wait_for(lambda: every_event <= set(watcher.sources()), 60, "a recommendation per event")
        published = sum(watcher.sources().values())
    finally:
        watcher.close()
    assert published > N_EVENTS + TAIL
    assert at_kills[-1] < N_EVENTS, "the last kill came after the stream's end"
    # ...yet the state learned every event exactly once, as if never interrupted.
    for p in range(PARTITIONS):
        loaded = store.load((topic, p))
        assert loaded is not None
        got, next_offset = loaded
        assert next_offset == ends[p]
        want = offline_shard(settings, by_partition[p])
        assert got.run_count == ends[p]
        assert set(got.learned.values()) == {ends[p]}
        assert_same_state(got, want, sample_pairs(want, 40, seed=p))

    # The group's committed offsets are exactly what the checkpoints cover.
    assert committed_offsets(kafka_bootstrap, settings.group_id, topic) == ends
