"""The worker's side of the sync without a broker (a list-backed model-updates topic): a shard
restored from a checkpoint re-learns what followed it without publishing its deltas again,
and applies nothing twice."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
from sync_fakes import FakeReader, FakeTopic, sync_settings

from stream.core import Pipeline
from stream.events import Event, Source
from stream.kafka.partitioner import partition_of
from stream.models import Popularity
from stream.sync import ShardDelta
from stream.sync.live import WorkerSync

SETTINGS = sync_settings()


def _events(n: int) -> list[Event]:
    rng = random.Random(1)
    return [
        Event(
            user_id=f"u{rng.randrange(40)}",
            item_id=f"i{rng.randrange(30)}",
            event_type="click",
            timestamp=float(t),
        )
        for t in range(n)
    ]


def _feed(
    sync: WorkerSync, shards: dict[int, Pipeline], events: list[tuple[int, int, Event]]
) -> None:
    for p, offset, event in events:
        shards[p].process_one(event, Source("events", p, offset))
        sync.after_one(("events", p), offset)
        sync.poll()


@pytest.mark.parametrize("older", [False, True])
def test_a_restored_shard_replays_its_published_deltas_and_everything_adds_up_once(
    older: bool,
) -> None:
    """``older``: a checkpoint from before shards kept where their reading stood (no
    ``offered``): the re-read starts at the topic's beginning and the dedupe drops what the
    checkpoint holds; else it starts at the checkpoint's mark."""
    events = _events(400)
    by_partition: dict[int, list[tuple[int, int, Event]]] = {0: [], 1: []}
    for e in events:
        p = partition_of(e.user_id, 2)
        by_partition[p].append((p, len(by_partition[p]), e))
    stream = sorted(by_partition[0] + by_partition[1], key=lambda x: x[2].timestamp)
    topic = FakeTopic()
    clock = [0.0]

    # First life: both shards; shard 0 checkpointed midway, then the process dies.
    first = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: clock[0])
    shards = {p: Pipeline.from_settings(SETTINGS) for p in (0, 1)}
    for p, pipe in shards.items():
        first.attach(("events", p), pipe)
    cut = len(stream) // 2
    _feed(first, shards, stream[:cut])
    checkpoint = pickle.dumps(shards[0])
    at = max(o for p, o, _ in stream[:cut] if p == 0) + 1  # next offset of shard 0
    _feed(first, shards, stream[cut:])
    own_before = sum(1 for v in topic.values if ShardDelta.decode(v).source_partition == 0)

    # Second life of shard 0 (shard 1 lives on in ``first``): restored, it re-learns.
    second = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: clock[0])
    restored = pickle.loads(checkpoint)
    mark = restored.sync_state.offered["model-updates"][0]
    assert mark > 0
    if older:
        del restored.sync_state.offered
    second.attach(("events", 0), restored)
    assert second.reader.rewound_to == (None if older else mark)  # type: ignore[attr-defined]
    replays = len(second._replay[("events", 0)])
    assert replays, "deltas were published after the checkpoint"
    _feed(second, {0: restored}, [x for x in by_partition[0] if x[1] >= at])
    assert second.stats.replayed == replays and not second._replay
    own_after = sum(1 for v in topic.values if ShardDelta.decode(v).source_partition == 0)
    assert own_after == own_before  # nothing re-published (the tail was already shared)
    # Shard 1's deltas the checkpoint held: read again and dropped, or not read at all.
    assert (second.stats.duplicates > 0) == older

    # Once every delta is applied, every shard holds the one-partition counts.
    second.publish_all()
    first.publish_all()
    first.poll()
    second.poll()
    one = Pipeline.from_settings(SETTINGS)
    for _, _, e in stream:
        one.process_one(e, Source("events", 0, 0))
    want = one.models["popularity"]
    assert isinstance(want, Popularity)
    for pipe in (shards[1], restored):
        got = pipe.models["popularity"]
        assert isinstance(got, Popularity)
        assert got._counts.keys() == want._counts.keys()
        for item, count in want._counts.items():
            assert got._counts[item] == pytest.approx(count)


def test_the_interval_in_milliseconds_publishes_a_quiet_shard() -> None:
    topic = FakeTopic()
    clock = [100.0]
    settings = SETTINGS.model_copy(update={"model_sync_events": 10_000, "model_sync_ms": 500})
    sync = WorkerSync(settings, FakeReader(topic), topic.send, clock=lambda: clock[0])
    pipe = Pipeline.from_settings(settings)
    sync.attach(("events", 0), pipe)
    _feed(sync, {0: pipe}, [(0, 0, _events(1)[0])])
    assert topic.values == [] and sync.stats.lag_events == 1
    clock[0] += 0.6
    sync.poll()
    assert len(topic.values) == 1 and sync.stats.published == 1
    sync.poll()
    assert len(topic.values) == 1  # nothing new learned: nothing sent


def test_a_delta_sent_after_the_checkpoint_without_a_new_event_is_not_sent_again() -> None:
    """The time trigger shares what a checkpoint already holds as pending; the restored shard
    drops that pending at once, and its next delta starts right after."""
    topic = FakeTopic()
    clock = [0.0]
    settings = SETTINGS.model_copy(update={"model_sync_events": 10_000, "model_sync_ms": 500})
    sync = WorkerSync(settings, FakeReader(topic), topic.send, clock=lambda: clock[0])
    pipe = Pipeline.from_settings(settings)
    sync.attach(("events", 0), pipe)
    events = _events(6)
    _feed(sync, {0: pipe}, [(0, o, e) for o, e in enumerate(events[:4])])
    checkpoint = pickle.dumps(pipe)
    clock[0] += 1.0
    sync.poll()  # the time trigger: [0..3], after the checkpoint
    assert [ShardDelta.decode(v).last_offset for v in topic.values] == [3]

    again = WorkerSync(settings, FakeReader(topic), topic.send, clock=lambda: clock[0])
    restored = pickle.loads(checkpoint)
    again.attach(("events", 0), restored)
    assert again.stats.replayed == 1 and not again._replay
    _feed(again, {0: restored}, [(0, o, e) for o, e in enumerate(events[4:], start=4)])
    again.publish_all()
    ranges = [(d.first_offset, d.last_offset) for d in map(ShardDelta.decode, topic.values)]
    assert ranges == [(0, 3), (4, 5)]


def test_a_delta_that_decodes_but_does_not_fit_the_models_is_counted_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic = FakeTopic()
    sync = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    shard = Pipeline.from_settings(SETTINGS)
    sync.attach(("events", 0), shard)
    # A foreign writer's delta: well-formed, but its popularity part is nonsense.
    bad = ShardDelta("events", 1, 0, 9, 10, {"popularity": {"items": ["a"], "counts": "x"}})
    topic.send(b"events:1", bad.encode())
    sync.poll()  # must not raise
    assert sync.stats.invalid == 1
    assert "could not be applied" in caplog.text


def test_deltas_of_another_events_topic_are_skipped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two deployments sharing one model-updates topic (the default name) do not mix models."""
    topic = FakeTopic()
    sync = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    shard = Pipeline.from_settings(SETTINGS)
    sync.attach(("events", 0), shard)
    other = Pipeline.from_settings(SETTINGS)
    for offset, event in enumerate(_events(20)):
        other.process_one(event, Source("other-events", 1, offset))
    part = other.models["popularity"].item_delta()
    for first in (0, 20):
        delta = ShardDelta("other-events", 1, first, first + 19, 20, {"popularity": part})
        topic.send(b"other-events:1", delta.encode())
    sync.poll()
    assert (sync.stats.foreign, sync.stats.applied, sync.stats.invalid) == (2, 0, 0)
    assert shard.models["popularity"].n_items == 0
    assert caplog.text.count("another deployment shares it") == 1


def test_deltas_of_another_consumer_group_on_the_same_topic_are_skipped() -> None:
    """Two groups reading one events topic learn the same events: applying each other's
    deltas would count them twice. Records without a group (older senders) still apply."""
    topic = FakeTopic()
    sync = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    shard = Pipeline.from_settings(SETTINGS)
    sync.attach(("events", 0), shard)
    other = Pipeline.from_settings(SETTINGS)
    for offset, event in enumerate(_events(20)):
        other.process_one(event, Source("events", 1, offset))
    part = other.models["popularity"].item_delta()
    theirs = ShardDelta("events", 1, 0, 19, 20, {"popularity": part}, group="other-group")
    topic.send(b"events:1", theirs.encode())
    sync.poll()
    assert (sync.stats.foreign, sync.stats.applied) == (1, 0)
    assert shard.models["popularity"].n_items == 0
    ours = ShardDelta("events", 1, 0, 19, 20, {"popularity": part}, group=SETTINGS.group_id)
    unnamed = ShardDelta("events", 2, 0, 19, 20, {"popularity": part})
    for delta in (ours, unnamed):
        topic.send(f"events:{delta.source_partition}".encode(), delta.encode())
    sync.poll()
    assert (sync.stats.foreign, sync.stats.applied) == (1, 2)
    assert shard.models["popularity"].n_items == other.models["popularity"].n_items


def test_a_published_delta_names_the_workers_group() -> None:
    topic = FakeTopic()
    sync = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    shard = Pipeline.from_settings(SETTINGS)
    sync.attach(("events", 0), shard)
    _feed(sync, {0: shard}, [(0, o, e) for o, e in enumerate(_events(15))])
    assert topic.values and {ShardDelta.decode(v).group for v in topic.values} == {
        SETTINGS.group_id
    }


def test_a_checkpoint_taken_mid_replay_plans_the_rest_of_the_replay_at_its_restore() -> None:
    """Restored from C0, a shard re-learns its events while replaying its own deltas; a
    checkpoint C1 taken before the replay ends (a revoke, a periodic one) must not let the
    next owner skip those deltas: it plans their replay again, re-sends none, adds up once."""
    events = _events(400)
    by_partition: dict[int, list[tuple[int, int, Event]]] = {0: [], 1: []}
    for e in events:
        p = partition_of(e.user_id, 2)
        by_partition[p].append((p, len(by_partition[p]), e))
    stream = sorted(by_partition[0] + by_partition[1], key=lambda x: x[2].timestamp)
    topic = FakeTopic()
    first = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    shards = {p: Pipeline.from_settings(SETTINGS) for p in (0, 1)}
    for p, pipe in shards.items():
        first.attach(("events", p), pipe)
    cut = len(stream) // 4
    _feed(first, shards, stream[:cut])
    c0 = pickle.dumps(shards[0])
    at = max(o for p, o, _ in stream[:cut] if p == 0) + 1
    _feed(first, shards, stream[cut:])
    own = sum(1 for v in topic.values if ShardDelta.decode(v).source_partition == 0)

    second = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    restored = pickle.loads(c0)
    second.attach(("events", 0), restored)
    boundaries = [b for b, _ in second._replay[("events", 0)]]
    assert len(boundaries) >= 3
    mine = [x for x in by_partition[0] if x[1] >= at]
    half = [x for x in mine if x[1] <= boundaries[len(boundaries) // 2]]
    _feed(second, {0: restored}, half)
    assert second._replay.get(("events", 0)), "still replaying"
    second.publish(("events", 0), full=True)  # a revoke mid-replay: publishes nothing
    c1 = pickle.dumps(restored)

    third = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    again = pickle.loads(c1)
    third.attach(("events", 0), again)
    assert third._replay.get(("events", 0)), "the rest of the replay is planned again"
    _feed(third, {0: again}, [x for x in mine if x[1] > half[-1][1]])
    assert not third._replay
    assert sum(1 for v in topic.values if ShardDelta.decode(v).source_partition == 0) == own
    third.publish_all()
    first.publish_all()
    third.poll()
    one = Pipeline.from_settings(SETTINGS)
    for _, _, e in stream:
        one.process_one(e, Source("events", 0, 0))
    want, got = one.models["popularity"], again.models["popularity"]
    assert isinstance(want, Popularity) and isinstance(got, Popularity)
    assert got._counts == pytest.approx(want._counts)


def test_a_malformed_part_never_poisons_a_model_and_a_deep_header_is_undecodable() -> None:
    topic = FakeTopic()
    sync = WorkerSync(SETTINGS, FakeReader(topic), topic.send, clock=lambda: 0.0)
    shard = Pipeline.from_settings(SETTINGS)
    sync.attach(("events", 0), shard)
    bad = {"ticks": 1, "items": ["a", "b"], "counts": [[1.0, 2.0], [3.0, 4.0]]}
    topic.send(b"events:1", ShardDelta("events", 1, 0, 9, 10, {"popularity": bad}).encode())
    nan = {"ticks": 1, "items": ["a"], "counts": np.array([float("nan")])}
    topic.send(b"events:2", ShardDelta("events", 2, 0, 9, 10, {"popularity": nan}).encode())
    import zlib

    topic.send(b"x", zlib.compress(b"[" * 200_000))  # a version-1 record nested too deep
    sync.poll()  # must not raise
    assert sync.stats.invalid == 3 and shard.models["popularity"].n_items == 0
    event = Event(user_id="u", item_id="x", event_type="click", timestamp=0.0)
    shard.process_one(event, Source("events", 0, 0))  # the model still learns
    assert shard.models["popularity"].n_items == 1


def test_the_worker_applies_deltas_within_a_batch_not_only_between_batches() -> None:
    """A poll batch takes a second or more at the default STREAM_MAX_POLL_RECORDS: the sync is
    polled while it is handled (every STREAM_MODEL_SYNC_POLL_MS), so another shard's delta is
    applied tens of milliseconds after its publish, not a batch later (measured: 2.3 s)."""
    import time as time_

    from stream.settings import StreamSettings
    from stream.worker import Worker

    class CountingSync:
        attaching: frozenset[tuple[str, int]] = frozenset()
        polls = 0

        def poll(self) -> int:
            self.polls += 1
            return 0

    worker = Worker(StreamSettings(_env_file=None, model_sync_poll_ms=5, metrics_port=0))
    sync = CountingSync()
    worker._sync = sync  # type: ignore[assignment]
    polls_seen: list[int] = []

    def handle(record: object) -> None:
        time_.sleep(0.002)  # 40 records: 80 ms or more, so at least a dozen 5-ms periods
        polls_seen.append(sync.polls)

    worker._handle_one = handle  # type: ignore[method-assign]
    worker._handle_batch([object()] * 40)  # type: ignore[list-item]
    assert polls_seen[0] == 0  # (none before the first record)
    assert polls_seen[-1] >= 8, polls_seen

    # STREAM_MODEL_SYNC_POLL_MS=0: only between batches.
    worker = Worker(StreamSettings(_env_file=None, model_sync_poll_ms=0, metrics_port=0))
    sync = CountingSync()
    worker._sync = sync  # type: ignore[assignment]
    polls_seen.clear()
    worker._handle_one = handle  # type: ignore[method-assign]
    worker._handle_batch([object()] * 10)  # type: ignore[list-item]
    assert polls_seen == [0] * 10
