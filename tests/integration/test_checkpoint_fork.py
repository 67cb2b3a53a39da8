"""A worker killed with SIGKILL while a forked child is writing its checkpoint
(STREAM_CHECKPOINT_MODE=fork): the child dies with it and publishes nothing, no offset beyond
a written checkpoint is committed, and the restarted worker resumes exactly (its final state
equals one uninterrupted in-process run of the partition).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from kafka_helpers import consume, produce, settings_for
from recovery_helpers import (
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
from stream.checkpoint_fork import FORK_AVAILABLE
from stream.kafka.admin import ensure_topics

pytestmark = [
    pytest.mark.integration,
    # /proc shows the worker's children; fork mode itself also runs on macOS.
    pytest.mark.skipif(not (FORK_AVAILABLE and sys.platform == "linux"), reason="Linux only"),
]

N_EVENTS = 3_000


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux ``/proc``)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def running(command: bytes) -> list[int]:
    """Live processes whose command line is ``command`` (a worker and its forked writers,
    also those reparented once the worker died)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                same = (entry / "cmdline").read_bytes() == command
            except OSError:
                continue
            if same and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_sigkill_while_a_child_writes_commits_nothing_uncovered_and_resumes_exactly(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = settings_for(
        kafka_bootstrap,
        models=("popularity", "knn", "biased_mf", "blend"),
        recommender="blend",
        seed=7,
        mf_factors=8,
        max_poll_records=50,
        metrics_every_events=1_000,
        checkpoint_every_events=150,
        checkpoint_every_seconds=3_600.0,
        checkpoint_dir=tmp_path / "checkpoints",
        checkpoint_key="fork-kill-test-key",
        checkpoint_keep=3,
        checkpoint_mode="fork",
    )
    topic = settings.events_topic
    ensure_topics(settings, {topic: 1}, timeout_s=30)
    config = SyntheticConfig(n_events=N_EVENTS, n_users=1_500, n_items=400, seed=5)
    sent = list(SyntheticStream(config).records())
    produce(kafka_bootstrap, topic, [r.value for r in sent], [r.key for r in sent])
    store = CheckpointStore.from_settings(settings)
    assert store is not None
    tp = (topic, 0)

    worker = WorkerProcess(settings, tmp_path / "worker-killed.log")
    writers: list[int] = []
    try:
        # A first checkpoint is written and committed; then the next child is caught at work.
        wait_for(
            lambda: (
                bool(committed_offsets(kafka_bootstrap, settings.group_id, topic))
                or not worker.alive()
            ),
            60,
            "a first checkpoint and its commit",
        )
        deadline = time.monotonic() + 60
        command = Path(f"/proc/{worker.pid}/cmdline").read_bytes()
        while worker.alive() and time.monotonic() < deadline and not writers:
            writers = children(worker.pid)
    finally:
        worker.kill()
    assert writers, f"no checkpoint writer was seen in flight\n{worker.log()}"
    assert worker.proc.returncode == -9
    # The writer dies with the worker: it never renames a file behind a restarted worker.
    # (Listed once every writer is gone, also one forked after the look above: a rename it
    # was inside of when its parent died completes.)
    wait_for(lambda: not running(command), 10, "the writers to die")
    files_at_kill = store.files(tp)
    time.sleep(0.5)
    assert store.files(tp) == files_at_kill
    # Only what a written checkpoint covers was committed.
    covered = {store.info(path).next_offset for path in files_at_kill}
    committed = committed_offsets(kafka_bootstrap, settings.group_id, topic).get(0)
    assert committed is not None and committed in covered, (committed, covered)
    assert committed <= checkpoint_offsets(store, topic, 1)[0] < N_EVENTS

    # The restart resumes from the newest checkpoint and learns every event exactly once.
    left = N_EVENTS - checkpoint_offsets(store, topic, 1)[0]
    again = WorkerProcess(settings, tmp_path / "worker-restart.log", "--max-events", str(left))
    assert again.wait(180) == 0, again.log()
    assert checkpoint_offsets(store, topic, 1) == {0: N_EVENTS}
    loaded = store.load(tp)
    assert loaded is not None
    got, next_offset = loaded
    assert next_offset == N_EVENTS
    want = offline_shard(settings, consume(kafka_bootstrap, topic, n=N_EVENTS))
    assert got.run_count == N_EVENTS and set(got.learned.values()) == {N_EVENTS}
    assert_same_state(got, want, sample_pairs(want, 40, seed=1))
    assert committed_offsets(kafka_bootstrap, settings.group_id, topic) == {0: N_EVENTS}
