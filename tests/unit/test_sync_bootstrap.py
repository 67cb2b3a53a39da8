"""A worker's sync keeps nothing per delta (issue 12): a shard attached later (a rebalance) is
brought up to date by re-reading the model-updates topic from its beginning, once for all the
shards of one assignment, and the shards attached before skip the re-read (not duplicates)."""

from __future__ import annotations

import gc
import pickle
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from sync_fakes import FakeReader, FakeTopic, delta_topic, sync_settings

from stream.core import Pipeline
from stream.events import Event, Source
from stream.kafka.partitioner import partition_of
from stream.models import Blend, ItemKNN, Popularity
from stream.restore import apply_settings
from stream.sync import ShardDelta, SyncState
from stream.sync.live import SyncError, WorkerSync
from stream.worker import Worker

SETTINGS = sync_settings(model_sync_full_every=3)


def _co(model: ItemKNN) -> dict[tuple[str, str], float]:
    items = model._items
    return {
        (str(items[i]), str(items[j])): v for i, r in enumerate(model._co) for j, v in r.items()
    }


def _topic_of(n: int) -> FakeTopic:
    return delta_topic(SETTINGS, n)


def _retained(topic: FakeTopic) -> tuple[int, dict[str, int]]:
    """Bytes a worker's sync (and its two shards) hold once it read ``topic``: one shard from
    the start, one attached late; and the sizes of the sync's containers."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sync = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
        sync.attach(("events", 0), Pipeline.from_settings(SETTINGS))
        sync.poll()
        sync.attach(("events", 2), Pipeline.from_settings(SETTINGS))
        sync.poll()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sync.stats.applied == 2 * len(topic.values)  # every delta, to both shards
    sizes = {name: len(v) for name, v in vars(sync).items() if isinstance(v, (list, dict, set))}
    return held, sizes


def test_the_sync_holds_nothing_per_delta_read() -> None:
    small, large = _topic_of(200), _topic_of(2_000)
    held_small, sizes_small = _retained(small)
    held_large, sizes_large = _retained(large)
    assert sizes_large == sizes_small  # no container grows with the deltas read
    # (Keeping each decoded delta cost ~3 kB: 1,800 more would be ~6 MB.)
    assert held_large - held_small < 1_800 * 16, (held_small, held_large)


def _clicks(n: int, draw: Callable[[], tuple[int, int]]) -> list[Event]:
    """``n`` clicks, one per second; ``draw()`` gives each one's user and item numbers."""
    return [
        Event(user_id=f"u{u}", item_id=f"i{i}", event_type="click", timestamp=float(t))
        for t, (u, i) in ((t, draw()) for t in range(n))
    ]


def _by_partition(events: list[Event], partitions: int) -> dict[int, list[tuple[int, int, Event]]]:
    out: dict[int, list[tuple[int, int, Event]]] = {p: [] for p in range(partitions)}
    for e in events:
        p = partition_of(e.user_id, partitions)
        out[p].append((p, len(out[p]), e))
    return out


def _feed(
    owners: dict[int, tuple[WorkerSync, Pipeline]], events: list[tuple[int, int, Event]]
) -> None:
    for p, offset, event in events:
        sync, pipeline = owners[p]
        pipeline.process_one(event, Source("events", p, offset))
        sync.after_one(("events", p), offset)
        for other in {id(s): s for s, _ in owners.values()}.values():
            other.poll()


def test_shards_attached_late_end_with_the_one_partition_item_state() -> None:
    """Worker A owns partitions 0 and 1 from the start; B owns 2, checkpoints it, publishes
    more deltas and dies. A then takes over 2 (restored from B's checkpoint: it replays B's
    deltas after it) and 3 (new, no event before) in one assignment: one re-read, and every
    shard ends with the one-partition counts."""
    rng = random.Random(3)
    events = _clicks(900, lambda: (rng.randrange(60), int(40 * rng.random() ** 2)))
    cut1, cut2 = 300, 600
    # Partition 3 has no event before the takeover (a new partition's shard starts empty).
    events = [e for t, e in enumerate(events) if t >= cut2 or partition_of(e.user_id, 4) != 3]
    by_partition = _by_partition(events, 4)
    stream = sorted((x for xs in by_partition.values() for x in xs), key=lambda x: x[2].timestamp)
    first = [x for x in stream if x[2].timestamp < cut1]
    middle = [x for x in stream if cut1 <= x[2].timestamp < cut2]
    last = [x for x in stream if x[2].timestamp >= cut2]

    topic = FakeTopic()
    reader = FakeReader(topic)
    a = WorkerSync(SETTINGS, reader, topic.send, clock=lambda: 0.0)
    b = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    pipes = {p: Pipeline.from_settings(SETTINGS) for p in (0, 1, 2)}
    a.attach_all({("events", 0): pipes[0], ("events", 1): pipes[1]})
    b.attach(("events", 2), pipes[2])
    owners = {0: (a, pipes[0]), 1: (a, pipes[1]), 2: (b, pipes[2])}
    _feed(owners, first)
    checkpoint = pickle.dumps(pipes[2])
    at = max(o for p, o, _ in first if p == 2) + 1  # next offset of B's checkpoint
    _feed(owners, middle)  # then B dies: what it learned after its last delta is lost
    own_2 = sum(1 for v in topic.values if ShardDelta.decode(v).source_partition == 2)
    assert a.stats.duplicates == 0 and a.stats.reread == 0

    read_before = len(topic.values)
    restored, new = pickle.loads(checkpoint), Pipeline.from_settings(SETTINGS)
    a.attach_all({("events", 2): restored, ("events", 3): new})
    assert reader.rewinds == 1  # one re-read for both partitions
    assert a.stats.reread == read_before  # every record read before, read once more
    assert a._replay[("events", 2)], "B published deltas after its checkpoint"
    # The shards attached before skipped the re-read: nothing dropped as a duplicate there;
    # the restored shard dropped what its checkpoint held.
    for p in (0, 1):
        assert a.shards[("events", p)].state.duplicates_dropped == 0
    # The restored shard was not even offered what its checkpoint held (its SyncState keeps
    # where its reading stood): nothing dropped as a duplicate.
    assert a.stats.duplicates == restored.sync_state.duplicates_dropped == 0

    owners = {0: (a, pipes[0]), 1: (a, pipes[1]), 2: (a, restored), 3: (a, new)}
    _feed(owners, [x for x in by_partition[2] if at <= x[1] and x[2].timestamp < cut2])
    assert ("events", 2) not in a._replay
    assert sum(1 for v in topic.values if ShardDelta.decode(v).source_partition == 2) == own_2
    _feed(owners, last)
    a.publish_all()
    a.poll()

    one = Pipeline.from_settings(SETTINGS)
    for _, _, e in stream:
        one.process_one(e, Source("events", 0, 0))
    pop1, knn1 = one.models["popularity"], one.models["knn"]
    assert isinstance(pop1, Popularity) and isinstance(knn1, ItemKNN)
    for pipe in (pipes[0], pipes[1], restored, new):
        pop, knn = pipe.models["popularity"], pipe.models["knn"]
        assert isinstance(pop, Popularity) and isinstance(knn, ItemKNN)
        assert pop._counts == pytest.approx(pop1._counts, rel=1e-12)
        assert _co(knn) == pytest.approx(_co(knn1), rel=1e-12)


def test_a_record_undecodable_is_counted_once_not_at_each_re_read() -> None:
    topic = FakeTopic()
    topic.send(b"x", b"not a delta")
    sync = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    sync.attach(("events", 0), Pipeline.from_settings(SETTINGS))
    sync.attach(("events", 1), Pipeline.from_settings(SETTINGS))
    assert sync.stats.invalid == 1
    assert (sync.stats.received, sync.stats.reread) == (1, 1)


def test_no_shard_no_read() -> None:
    """Before any partition is assigned the topic is not read (the first attach reads it from
    its beginning: reading it before would only read it twice)."""
    topic = _topic_of(3)
    reader = FakeReader(topic)
    sync = WorkerSync(SETTINGS, reader, topic.send, clock=lambda: 0.0)
    assert sync.poll() == 0 and reader.position == 0
    sync.attach(("events", 0), Pipeline.from_settings(SETTINGS))
    assert reader.rewinds == 0 and sync.stats.received == 3 and sync.stats.applied == 3


def _catch_up(worker: Worker) -> None:
    """What the worker's loop does between polls until its new shards are synced."""
    assert worker._sync is not None
    for _ in range(1_000):
        if not worker._sync.attaching:
            return
        worker._catch_up(busy=False)
    raise AssertionError("the attach did not end")


def test_a_worker_syncs_the_partitions_of_one_assignment_with_one_re_read(
    tmp_path: Path,
) -> None:
    """Restored and new shards of one assignment are attached together (one re-read); a new
    one becomes the partition's shard at its first event without another."""
    settings = SETTINGS.model_copy(
        update={
            "checkpoint_dir": tmp_path,
            "checkpoint_key": SecretStr("bootstrap-test-key"),
            "checkpoint_mode": "inline",
        }
    )
    topic = _topic_of(5)  # deltas of events[1]
    reader = FakeReader(topic)
    worker = Worker(settings, registry=CollectorRegistry())
    assert worker.checkpoints is not None
    worker._sync = sync = WorkerSync(settings, reader, topic.send, clock=lambda: 0.0)
    worker.checkpoints.save(("events", 2), Pipeline.from_settings(settings), 0)

    assert worker._on_assigned([("events", 0)]) == {}
    _catch_up(worker)
    assert set(sync.shards) == {("events", 0)} and sync.stats.received == 5
    assert worker._on_assigned([("events", 2), ("events", 3)]) == {("events", 2): 0}
    _catch_up(worker)
    assert reader.rewinds == 1 and sync.stats.reread == 5
    assert set(sync.shards) == {("events", 0), ("events", 2), ("events", 3)}
    assert sync.stats.applied == 3 * 5 and sync.stats.duplicates == 0
    new = worker._shard(("events", 3), 0)
    assert new is sync.shards[("events", 3)].pipeline and reader.rewinds == 1
    assert new.models["popularity"].n_items == 5  # the deltas read at the assignment
    worker._drop([("events", 0), ("events", 3)])
    assert set(sync.shards) == {("events", 2)} and not worker._synced_new


def _one_partition_state(stream: list[tuple[int, int, Event]]) -> tuple[Popularity, ItemKNN]:
    one = Pipeline.from_settings(SETTINGS)
    for _, _, e in stream:
        one.process_one(e, Source("events", 0, 0))
    pop, knn = one.models["popularity"], one.models["knn"]
    assert isinstance(pop, Popularity) and isinstance(knn, ItemKNN)
    return pop, knn


def test_a_partition_moved_without_a_checkpoint_adopts_its_previous_owners_deltas() -> None:
    """B owns partition 1 without checkpoints and dies; A gets it with a new shard starting at
    the committed offset: B's deltas ending before it are A's to apply (its own partition's,
    from a previous owner), those after it are replayed while A learns those events again.
    Every shard ends with the one-partition popularity counts (not B's partition missing, not
    twice)."""
    rng = random.Random(5)
    events = _clicks(600, lambda: (rng.randrange(40), rng.randrange(30)))
    by_partition = _by_partition(events, 2)
    stream = sorted((x for xs in by_partition.values() for x in xs), key=lambda x: x[2].timestamp)
    topic = FakeTopic()
    a = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    b = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    mine, theirs = Pipeline.from_settings(SETTINGS), Pipeline.from_settings(SETTINGS)
    a.attach(("events", 0), mine)
    b.attach(("events", 1), theirs)
    owners = {0: (a, mine), 1: (b, theirs)}
    first = stream[:400]
    _feed(owners, first)
    published = [ShardDelta.decode(v) for v in topic.values]
    ends = [d.last_offset for d in published if d.source_partition == 1]
    assert len(ends) >= 4
    committed = ends[len(ends) // 2] + 1  # B committed there, then published more and died

    new = Pipeline.from_settings(SETTINGS)
    a.attach(("events", 1), new, start=committed)
    assert len(a._replay[("events", 1)]) == len([e for e in ends if e >= committed])
    again = [x for x in by_partition[1] if x[1] >= committed and x[2].timestamp < 400]
    owners = {0: (a, mine), 1: (a, new)}
    _feed(owners, again)  # learned again from the committed offset
    assert ("events", 1) not in a._replay
    _feed(owners, stream[400:])
    a.publish_all()
    a.poll()

    pop1, _ = _one_partition_state(stream)
    for pipe in (mine, new):
        pop = pipe.models["popularity"]
        assert isinstance(pop, Popularity)
        # (Co-occurrences cannot match: they need the users' histories, which a shard without
        # a checkpoint does not have.)
        assert pop._counts == pytest.approx(pop1._counts, rel=1e-12)


def test_an_attach_that_cannot_read_the_topic_in_time_fails_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The re-read at an attach runs in the rebalance callback: past half of
    STREAM_MAX_POLL_INTERVAL_MS it raises (nothing attached, no replay left unplanned), and
    within it, it reads to the topic's end at the rewind, not to the end of the reader's start."""
    now = [0.0]
    monkeypatch.setattr("stream.sync.live.time.monotonic", lambda: now[0])
    topic = _topic_of(3)
    reader = FakeReader(topic, per_poll=1)
    sync = WorkerSync(SETTINGS, reader, topic.send, clock=lambda: 0.0)
    sync.attach(("events", 0), Pipeline.from_settings(SETTINGS))
    late = _topic_of(250)
    topic.values[:] = late.values  # the topic grew (same sender: the first 3 are the same)

    def tick() -> None:
        now[0] += 0.1  # a poll every 0.1 s: 250 records in 25 s of the 30 s budget

    reader.on_poll = tick
    sync.attach(("events", 2), pipe := Pipeline.from_settings(SETTINGS))
    popularity = pipe.models["popularity"]
    assert isinstance(popularity, Popularity) and popularity.n_items == 20
    assert sync.shards[("events", 2)].state.applied[("events", 1)] == 249

    reader.per_poll, now[0] = 1, 0.0
    topic.values[:] = _topic_of(400).values
    with pytest.raises(SyncError, match="STREAM_MAX_POLL_INTERVAL_MS"):
        sync.attach(("events", 3), Pipeline.from_settings(SETTINGS))
    assert ("events", 3) not in sync.shards and sync._boundaries == {}


def test_a_restore_that_applies_changed_settings_keeps_the_sync_state() -> None:
    """A checkpoint restored under a changed setting is rebuilt (stream.restore): it keeps
    what the sync applied, so the re-read drops it as duplicates instead of adding it again;
    and a blend built new there starts tracking empty, never sending back what it applied."""
    settings = SETTINGS.model_copy(update={"models": ("popularity", "knn", "blend")})
    topic = FakeTopic()
    sync = WorkerSync(settings, FakeReader(topic), topic.send, clock=lambda: 0.0)
    pa, pb = Pipeline.from_settings(settings), Pipeline.from_settings(settings)
    sync.attach_all({("events", 0): pa, ("events", 1): pb})
    rng = random.Random(1)
    for o in range(200):
        p = o % 2
        event = Event(user_id=f"u{rng.randrange(30)}", item_id=f"i{rng.randrange(20)}",
                      event_type="click", timestamp=float(o))  # fmt: skip
        (pa, pb)[p].process_one(event, Source("events", p, o // 2))
        sync.after_one(("events", p), o // 2)
        sync.poll()
    sync.publish_all()
    sync.poll()
    pop = pb.models["popularity"]
    assert isinstance(pop, Popularity)
    total = sum(pop._counts.values())
    changed = settings.model_copy(update={"recommender": "popularity", "blend": {"knn": 1.0}})
    for older in (False, True):  # older: a checkpoint without where its reading stood
        restored, plan = apply_settings(pickle.loads(pickle.dumps(pb)), changed, "checkpoint")
        assert plan.applied
        if older:
            del restored.sync_state.offered
        again = WorkerSync(changed, FakeReader(topic), topic.send, clock=lambda: 0.0)
        again.attach(("events", 1), restored)
        pop = restored.models["popularity"]
        assert isinstance(pop, Popularity)
        assert sum(pop._counts.values()) == pytest.approx(total, rel=1e-12)
        assert (again.stats.duplicates > 0) == older and again.stats.applied == 0
    blend = restored.models["blend"]
    assert isinstance(blend, Blend) and blend.sync_tracking
    assert blend.item_delta()["ticks"] == 0


def test_a_worker_is_not_ready_while_new_partitions_catch_up(tmp_path: Path) -> None:
    """The rebalance callback only starts an attach: the loop reads the model-updates topic
    for the new shards between polls, so a topic longer than the group's poll interval
    allows is no failure. /readyz says not ready until they are synced, ready after."""
    topic = _topic_of(40)
    reader = FakeReader(topic, per_poll=1)
    worker = Worker(SETTINGS, registry=CollectorRegistry())
    worker._sync = sync = WorkerSync(SETTINGS, reader, topic.send, clock=lambda: 0.0)
    sync.attach_budget_s = -1.0  # what attach_all (in the callback) could not afford
    worker._set_ready(True, "")
    worker._on_assigned([("events", 0)])
    assert sync.attaching == {("events", 0)} and reader.position == 0  # nothing read yet
    assert not worker.health.ready and "model sync" in worker.health.reason
    slices = 0
    while sync.attaching:
        assert not worker.health.ready
        worker._catch_up(busy=True)
        slices += 1
        assert slices < 100
    assert worker.health.ready and ("events", 0) in sync.shards
    pipe = sync.shards[("events", 0)].pipeline
    popularity = pipe.models["popularity"]
    assert isinstance(popularity, Popularity) and popularity.n_items == 20
    assert sync.shards[("events", 0)].state.applied[("events", 1)] == 39
    # A partition revoked while its shard catches up is dropped from the attach (and from
    # the partitions the loop paused for it), publishing nothing.
    worker._on_assigned([("events", 2)])
    assert sync.attaching == {("events", 2)}
    worker._paused.add(("events", 2))  # (what the loop's _hold_attaching did)
    worker._on_revoked([("events", 2)])
    assert not sync.attaching and ("events", 2) not in sync.shards
    assert not worker._paused and sync.stats.published == 0


def test_a_shard_catching_up_publishes_nothing() -> None:
    """What a restored shard's checkpoint left pending may be on the topic already (its
    previous owner's last delta): a stop or revoke while it catches up sends nothing."""
    topic = _topic_of(5)
    sync = WorkerSync(SETTINGS, FakeReader(topic, per_poll=1), topic.send, clock=lambda: 0.0)
    pipe = Pipeline.from_settings(SETTINGS)
    sync.begin_attach({("events", 0): pipe})
    pipe.process_one(
        Event(user_id="u", item_id="x", event_type="click", timestamp=0.0), Source("events", 0, 0)
    )
    sync.shards[("events", 0)].note_one(0)  # (the worker holds its events; a test does not)
    sync.publish_all()
    assert len(topic.values) == 5 and sync.stats.published == 0
    while sync.attaching:
        sync.catch_up(0.0)
    sync.publish_all()
    assert len(topic.values) == 6 and sync.stats.published == 1


def test_a_mark_past_the_topics_end_reads_the_topic_from_its_beginning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A checkpoint's mark from a topic deleted and created again since: the shard would skip
    every record below it; it reads the new topic whole instead."""
    topic = _topic_of(5)
    restored = Pipeline.from_settings(SETTINGS)
    restored.sync_state = SyncState(offered={SETTINGS.model_updates_topic: {0: 100}})
    reader = FakeReader(topic)
    sync = WorkerSync(SETTINGS, reader, topic.send, clock=lambda: 0.0)
    sync.attach(("events", 0), restored)
    assert sync.stats.applied == 5 and "past its end" in caplog.text
    popularity = restored.models["popularity"]
    assert isinstance(popularity, Popularity) and popularity.n_items == 5
