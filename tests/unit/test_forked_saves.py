"""Checkpoints written by a forked child (STREAM_CHECKPOINT_MODE=fork): the file is the one an
inline write gives (signed, verified, restorable), failures come back as outcomes, at most one
child per partition, and a lock held by another thread at fork time does not hang the child."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_checkpoint import KEY, TP, make_events

from stream import checkpoint
from stream.checkpoint import CheckpointStore, read_info
from stream.checkpoint_fork import FORK_AVAILABLE, ForkedSaves, SaveOutcome
from stream.core import Pipeline
from stream.events import Source
from stream.models import rebuilt
from stream.settings import SettingsError, StreamSettings, load_settings

pytestmark = pytest.mark.skipif(not FORK_AVAILABLE, reason="needs os.fork (Linux, macOS)")


def learned_pipeline(settings: StreamSettings, n: int = 300) -> Pipeline:
    pipeline = Pipeline.from_settings(settings)
    for offset, event in enumerate(make_events(n)):
        pipeline.process_one(event, Source(*TP, offset))
    return pipeline


def wait_one(forks: ForkedSaves, timeout_s: float = 60.0) -> SaveOutcome:
    """The next outcome, failing (and killing the child) instead of hanging on a stuck one."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = forks.poll()
        if done:
            (outcome,) = done
            return outcome
        time.sleep(0.01)
    forks.close()
    raise AssertionError(f"the forked checkpoint did not finish within {timeout_s:g}s")


def test_a_forked_checkpoint_verifies_and_restores_the_state_at_the_fork(tmp_path: Path) -> None:
    settings = StreamSettings(seed=4)
    pipeline = learned_pipeline(settings)
    store = CheckpointStore(tmp_path, KEY, keep=2)
    forks = ForkedSaves(store)
    pause = forks.start(TP, pipeline, 300)
    assert forks.busy(TP) and forks.in_flight() == {TP: 300}
    # The parent goes on learning while the child writes: the file holds the fork's instant.
    later = make_events(20, seed=9)
    for offset, event in enumerate(later, start=300):
        pipeline.process_one(event, Source(*TP, offset))
    outcome = wait_one(forks)
    assert outcome.error is None, outcome.error
    assert (outcome.tp, outcome.next_offset) == (TP, 300)
    assert 0 < pause == outcome.pause_seconds <= outcome.seconds
    assert not forks.busy(TP)

    (path,) = store.files(TP)
    assert read_info(path, KEY).verified
    loaded = store.load(TP)
    assert loaded is not None
    restored, offset = loaded
    assert offset == 300
    assert restored.run_count == 300 and pipeline.run_count == 320
    want = learned_pipeline(settings)
    assert restored.history == want.history
    assert restored.learned == want.learned
    for user in ("u1", "u7"):
        assert restored.models["blend"].top_k(user, 10) == want.models["blend"].top_k(user, 10)


def test_a_child_failure_comes_back_as_an_outcome_and_leaves_no_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    store = CheckpointStore(blocker / "checkpoints", KEY)
    forks = ForkedSaves(store)
    forks.start(TP, learned_pipeline(StreamSettings(seed=4), 50), 50)
    outcome = wait_one(forks)
    assert outcome.error is not None
    assert "NotADirectoryError" in outcome.error or "FileExistsError" in outcome.error
    assert blocker.read_text() == "x"


def test_one_save_per_partition_at_a_time(tmp_path: Path) -> None:
    pipeline = learned_pipeline(StreamSettings(seed=4), 50)
    forks = ForkedSaves(CheckpointStore(tmp_path, KEY))
    forks.start(TP, pipeline, 50)
    try:
        with pytest.raises(RuntimeError, match="already being written"):
            forks.start(TP, pipeline, 50)
        forks.start(("events", 1), pipeline, 50)  # another partition may go in parallel
        assert forks.in_flight() == {TP: 50, ("events", 1): 50}
        outcomes = forks.poll(block=True)
        assert sorted((o.tp, o.error) for o in outcomes) == [(TP, None), (("events", 1), None)]
    finally:
        forks.close()


def test_a_child_killed_midway_is_a_failure_and_publishes_nothing(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, KEY)
    forks = ForkedSaves(store)
    forks.start(TP, learned_pipeline(StreamSettings(seed=4), 50), 50)
    (child,) = forks._children.values()
    os.kill(child.pid, 9)
    outcome = wait_one(forks)
    assert outcome.error is not None and "killed by signal 9" in outcome.error
    assert store.files(TP) == [] or store.load(TP) is not None  # a finished rename is whole


def test_a_build_lock_held_by_another_thread_does_not_hang_the_child(tmp_path: Path) -> None:
    settings = StreamSettings(
        models=("popularity", "ease"), recommender="ease", seed=4, rebuild_min_events=20
    )
    pipeline = learned_pipeline(settings, 100)
    release = threading.Event()

    def hold() -> None:
        with rebuilt._BUILD_LOCK:  # what a background build holds while it runs
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        forks = ForkedSaves(CheckpointStore(tmp_path, KEY))
        forks.start(TP, pipeline, 100)
        outcome = wait_one(forks, timeout_s=30)
    finally:
        release.set()
        holder.join()
    assert outcome.error is None, outcome.error


def test_fork_mode_is_refused_where_fork_does_not_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(checkpoint_mode="fork").checkpoint_mode == "fork"
    assert StreamSettings().checkpoint_mode == "auto"
    monkeypatch.delattr(os, "fork")
    with pytest.raises(SettingsError, match="STREAM_CHECKPOINT_MODE"):
        load_settings(checkpoint_mode="fork")
    assert load_settings(checkpoint_mode="auto").checkpoint_mode == "auto"


def test_the_write_and_the_restore_run_without_the_cyclic_gc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full collections during a pickle round trip made writes 3x slower at 150k users."""
    seen: list[tuple[str, bool]] = []
    real_dump, real_load = checkpoint.pickle.dump, checkpoint._RestrictedUnpickler.load

    def dump(*args: Any, **kwargs: Any) -> None:
        seen.append(("dump", gc.isenabled()))
        real_dump(*args, **kwargs)

    def load(self: Any) -> Any:
        seen.append(("load", gc.isenabled()))
        return real_load(self)

    monkeypatch.setattr(checkpoint.pickle, "dump", dump)
    monkeypatch.setattr(checkpoint._RestrictedUnpickler, "load", load)
    store = CheckpointStore(tmp_path, KEY)
    assert gc.isenabled()
    store.save(TP, learned_pipeline(StreamSettings(seed=4), 30), 30)
    assert store.load(TP) is not None
    assert seen == [("dump", False), ("load", False)]
    assert gc.isenabled()


def test_the_heap_is_set_aside_from_collections_while_a_child_writes(tmp_path: Path) -> None:
    """A full collection in the parent would copy every page of the heap the child shares."""
    forks = ForkedSaves(CheckpointStore(tmp_path, KEY))
    pipeline = learned_pipeline(StreamSettings(seed=4), 30)
    assert gc.get_freeze_count() == 0
    forks.start(TP, pipeline, 30)
    assert gc.get_freeze_count() > 0
    wait_one(forks)
    assert gc.get_freeze_count() == 0
