"""Two workers in one consumer group sharing a checkpoint directory: partitions are split, one
worker is stopped (SIGTERM) or killed (SIGKILL), the other takes its partition over from the
stopped one's last checkpoint. No event is lost and none is learned twice: each partition's
final state counts each of its events once and equals one uninterrupted in-process run of it.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

import pytest
from kafka_helpers import consume, produce, settings_for
from recovery_helpers import (
    OutputWatcher,
    WorkerProcess,
    assert_same_state,
    assignments,
    committed_offsets,
    offline_shard,
    restorations,
    sample_pairs,
    wait_for,
)

from producers.records import Record
from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.checkpoint import CheckpointStore
from stream.kafka import RawRecord
from stream.kafka.admin import ensure_topics

pytestmark = pytest.mark.integration

PARTITIONS = 2
N_EVENTS = 2_400
PHASES = (1_000, 1_700)  # phase 1 ends here, phase 2a ends here, 2b runs to N_EVENTS


def _send(bootstrap: str, topic: str, records: list[Record]) -> None:
    produce(bootstrap, topic, [r.value for r in records], [r.key for r in records])


def _ends(records: list[RawRecord]) -> dict[int, int]:
    ends = dict.fromkeys(range(PARTITIONS), 0)
    for r in records:
        ends[r.partition] = max(ends[r.partition], r.offset + 1)
    return ends


def _consumed(log: str) -> int:
    found = re.findall(r"worker stopped \(.*\): consumed (\d+)", log)
    assert found, f"no final summary line in the worker's log:\n{log[-3000:]}"
    return int(found[-1])


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_the_survivor_takes_over_from_the_stopped_workers_checkpoint(
    kafka_bootstrap: str, tmp_path: Path, stop: Literal["sigterm", "sigkill"]
) -> None:
    settings = settings_for(
        kafka_bootstrap,
        # Compared with each partition's events replayed offline: every partition its own
        # model (STREAM_MODEL_SYNC=auto would share item state; that is test_model_sync.py's).
        model_sync=False,
        events_partitions=PARTITIONS,
        models=("popularity", "knn", "biased_mf", "blend"),
        seed=5,
        negative_samples=2,
        mf_factors=8,
        drift_min_events=50,
        max_poll_records=20,
        metrics_every_events=500,
        checkpoint_every_events=53,
        checkpoint_every_seconds=3_600.0,
        checkpoint_dir=tmp_path / "checkpoints",
        checkpoint_key="takeover-test-key",
        # The loop writes its own checkpoints here, so they land every 53 events and B is
        # reliably stopped past one: a forked writer defers a checkpoint due while a child
        # still writes, which on a loaded machine can leave B's newest checkpoint at its last
        # event (the fork path's SIGKILL proof is tests/integration/test_checkpoint_fork.py).
        checkpoint_mode="inline",
    )
    topic = settings.events_topic
    ensure_topics(settings, {topic: PARTITIONS, settings.recommendations_topic: 1}, timeout_s=30)
    store = CheckpointStore.from_settings(settings)
    assert store is not None
    events = list(
        SyntheticStream(
            SyntheticConfig(n_events=N_EVENTS, n_users=120, n_items=250, seed=9)
        ).records()
    )
    watcher = OutputWatcher(kafka_bootstrap, settings.recommendations_topic)
    a = b = None
    try:
        # Phase 1: worker A alone learns both partitions.
        _send(kafka_bootstrap, topic, events[: PHASES[0]])
        ends1 = _ends(consume(kafka_bootstrap, topic, n=PHASES[0]))
        a = WorkerProcess(settings, tmp_path / "worker-a.log")
        wait_for(lambda: watcher.covers(ends1), 90, "worker A to learn phase 1")
        assert assignments(a.log(None))[0] == list(range(PARTITIONS))

        # B joins: the group splits the partitions; B restores A's checkpoint of its share.
        b = WorkerProcess(settings, tmp_path / "worker-b.log")
        wait_for(
            lambda: bool(assignments(b.log(None)) and restorations(b.log(None))),
            90,
            "worker B to be assigned a partition and restore it",
        )
        (taken,) = assignments(b.log(None))[-1]
        (kept,) = [p for p in range(PARTITIONS) if p != taken]
        assert restorations(b.log(None)) == [(taken, ends1[taken])]

        # Phase 2a: both consume; B is stopped after learning part of it.
        _send(kafka_bootstrap, topic, events[PHASES[0] : PHASES[1]])
        ends2 = _ends(consume(kafka_bootstrap, topic, n=PHASES[1]))
        wait_for(
            lambda: (kept, ends1[kept] + 20) in watcher.sources(),
            60,
            "worker A to learn from phase 2",
        )

        def b_is_past_its_checkpoint() -> bool:
            # B published (so flushed) results of events its newest checkpoint does not cover:
            # stopping now leaves work that only the stop's own checkpoint (or none) holds.
            info = store.newest_info((topic, taken))
            done = [o for p, o in watcher.sources() if p == taken]
            return info is not None and max(done, default=-1) >= info.next_offset + 5

        wait_for(b_is_past_its_checkpoint, 60, "worker B to learn past its checkpoint")
        if stop == "sigterm":
            assert b.stop() == 0, b.log()
            assert _consumed(b.log(None)) > 0
        else:
            b.kill()
        stopped_at = time.time()
        handed_over = store.newest_info((topic, taken))
        assert handed_over is not None
        handed_offset = handed_over.next_offset
        # A clean stop checkpoints what B learned; a kill may come before B's first own one.
        assert ends1[taken] + (stop == "sigterm") <= handed_offset <= ends2[taken]

        # Phase 2b: A takes B's partition over from B's last checkpoint and learns the rest.
        _send(kafka_bootstrap, topic, events[PHASES[1] :])
        records = consume(kafka_bootstrap, topic, n=N_EVENTS)
        ends = _ends(records)
        wait_for(lambda: watcher.covers(ends), 120, "worker A to learn everything")
        assert (taken, handed_offset) in restorations(a.log(None))
        assert a.stop() == 0, a.log()
    finally:
        for worker in (a, b):
            if worker is not None:
                worker.kill()
        published = [json.loads(r.value) for r in watcher.poll() if r.value is not None]
        watcher.close()

    by_partition: dict[int, list[RawRecord]] = defaultdict(list)
    for r in records:
        by_partition[r.partition].append(r)
    for p in range(PARTITIONS):
        loaded = store.load((topic, p))
        assert loaded is not None
        got, next_offset = loaded
        assert next_offset == ends[p]
        assert got.run_count == ends[p], f"partition {p}: events lost or learned twice"
        assert set(got.learned.values()) == {ends[p]}
        want = offline_shard(settings, by_partition[p])
        assert_same_state(got, want, sample_pairs(want, 30, seed=p))
    assert committed_offsets(kafka_bootstrap, settings.group_id, topic) == ends

    # Every event has its recommendation. Only the events B learned after its last
    # checkpoint were processed (and published) again by A: none after a clean stop.
    sources = Counter((r["source_partition"], r["source_offset"]) for r in published)
    assert set(sources) == {(p, o) for p in range(PARTITIONS) for o in range(ends[p])}
    uncovered = sorted(
        r["source_offset"]
        for r in published
        if r["source_partition"] == taken
        and r["source_offset"] >= handed_offset
        and r["created_at"] < stopped_at
    )
    twice = sorted(o for (p, o), n in sources.items() if n > 1)
    assert twice == uncovered, f"re-processed {twice}, B left {uncovered}"
    if stop == "sigterm":
        assert not twice
    print(
        f"\n{stop}: B handed partition {taken} over at offset {handed_offset}; "
        f"{len(twice)} event(s) re-processed"
    )
