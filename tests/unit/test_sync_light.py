"""Light deltas (STREAM_MODEL_SYNC_FULL_EVERY, issue 12): between two full deltas a shard shares
only the fast-moving item state (popularity counts, factor models' item biases) — what P shards
lose most by the sync interval's staleness — and the rest waits for the next full delta, so once
every delta is applied the additive state still equals one partition's, across restarts too."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
from sync_fakes import FakeReader, FakeTopic

from stream.core import Pipeline
from stream.events import Event, Source
from stream.kafka.partitioner import partition_of
from stream.models import ItemKNN, MatrixFactorization, Popularity
from stream.settings import StreamSettings
from stream.sync import ShardDelta, ShardSync
from stream.sync.live import WorkerSync
from stream.sync.offline import LocalShards


def _feed(
    sync: WorkerSync, shards: dict[int, Pipeline], events: list[tuple[int, int, Event]]
) -> None:
    for p, offset, event in events:
        shards[p].process_one(event, Source("events", p, offset))
        sync.after_one(("events", p), offset)
        sync.poll()


def _settings(**extra: object) -> StreamSettings:
    values: dict[str, object] = {
        "models": ("popularity", "knn", "biased_mf", "blend"),
        "knn_neighbors": 500,
        "knn_half_life": None,
        "popularity_half_life": math.inf,
        "negative_samples": 0,
        "model_sync_full_every": 4,
        **extra,
    }
    return StreamSettings(_env_file=None, **values)  # type: ignore[arg-type]


def _events(n: int, seed: int = 2) -> list[Event]:
    rng = random.Random(seed)
    return [
        Event(
            user_id=f"u{rng.randrange(60)}",
            item_id=f"i{int(80 * rng.random() ** 2)}",
            event_type=rng.choice(["view", "click", "purchase"]),
            timestamp=float(t),
        )
        for t in range(n)
    ]


def _co(model: ItemKNN) -> dict[tuple[str, str], float]:
    items = model._items
    return {
        (str(items[i]), str(items[j])): v for i, r in enumerate(model._co) for j, v in r.items()
    }


def test_a_light_delta_carries_popularity_and_item_biases_only() -> None:
    settings = _settings()
    a = ShardSync(Pipeline.from_settings(settings), "events", 0, full_every=4)
    b = ShardSync(Pipeline.from_settings(settings), "events", 1, full_every=4)
    kinds = []
    for n, event in enumerate(_events(40)):
        a.pipeline.process_one(event, Source("events", 0, n))
        a.note_one(n)
        if n % 10 == 9:
            delta = a.collect_one()
            assert delta is not None
            kinds.append((delta.full, sorted(delta.models)))
            b.apply_one(ShardDelta.decode(delta.encode()))
            if not delta.full:
                assert set(delta.models["biased_mf"]) == {"items", "biases"}
    assert kinds == [(False, ["biased_mf", "popularity"])] * 3 + [
        (True, ["biased_mf", "blend", "knn", "popularity"])
    ]
    # After the light ones b knew a's items by their biases (zero vectors) and counts; the
    # full one brought the co-occurrences and the vectors.
    mf_a, mf_b = a.pipeline.models["biased_mf"], b.pipeline.models["biased_mf"]
    assert isinstance(mf_a, MatrixFactorization) and isinstance(mf_b, MatrixFactorization)
    assert mf_a.i_latents.keys() == mf_b.i_latents.keys()
    for item, vector in mf_a.i_latents.items():
        np.testing.assert_allclose(mf_b.i_latents[item], vector, atol=2e-3)
        assert mf_b.i_biases[item] == pytest.approx(mf_a.i_biases[item], abs=1e-4)  # float16
    knn_a, knn_b = a.pipeline.models["knn"], b.pipeline.models["knn"]
    assert isinstance(knn_a, ItemKNN) and isinstance(knn_b, ItemKNN)
    assert _co(knn_b) == pytest.approx(_co(knn_a), rel=1e-12)


def test_a_light_delta_makes_a_new_item_known_by_its_bias_before_the_full_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import stream.models.mf

    monkeypatch.setattr(stream.models.mf, "_LIGHT_MIN_BIAS", 0.0)  # every bias change goes
    settings = _settings(model_sync_full_every=1_000)
    a = ShardSync(Pipeline.from_settings(settings), "events", 0, full_every=1_000)
    b = ShardSync(Pipeline.from_settings(settings), "events", 1, full_every=1_000)
    for n in range(5):
        e = Event(user_id=f"u{n}", item_id="hot", event_type="purchase", timestamp=float(n))
        a.pipeline.process_one(e, Source("events", 0, n))
        a.note_one(n)
    delta = a.collect_one()
    assert delta is not None and not delta.full and "knn" not in delta.models
    b.apply_one(delta)
    mf_b = b.pipeline.models["biased_mf"]
    assert isinstance(mf_b, MatrixFactorization)
    mf_a = a.pipeline.models["biased_mf"]
    assert isinstance(mf_a, MatrixFactorization) and mf_a.i_biases["hot"] != 0
    assert "hot" in mf_b.i_latents and not np.any(mf_b.i_latents["hot"])
    assert mf_b.i_biases["hot"] == pytest.approx(mf_a.i_biases["hot"], rel=1e-3)
    assert [s.item for s in mf_b.top_k("stranger", 1)] == ["hot"]
    pop_b = b.pipeline.models["popularity"]
    assert isinstance(pop_b, Popularity) and pop_b.score_of("hot") > 0


@pytest.mark.parametrize("partitions,every,full_every", [(4, 10, 4), (3, 7, 3)])
def test_with_light_deltas_the_additive_state_still_equals_one_partitions(
    partitions: int, every: int, full_every: int
) -> None:
    events = _events(2_000)
    settings = _settings(model_sync_full_every=full_every)
    one = LocalShards(lambda: Pipeline.from_settings(settings), 1, 0).shards[0].pipeline
    for n, e in enumerate(events):
        one.process_one(e, Source("file", 0, n))
    shards = LocalShards(
        lambda: Pipeline.from_settings(settings), partitions, every, full_every=full_every
    )
    for e in events:
        shards.process_one(e)
    shards.share_all()
    pop1, knn1, mf1 = (one.models[m] for m in ("popularity", "knn", "biased_mf"))
    assert isinstance(pop1, Popularity) and isinstance(knn1, ItemKNN)
    assert isinstance(mf1, MatrixFactorization)
    for pipe in shards.pipelines:
        pop, knn, mf = (pipe.models[m] for m in ("popularity", "knn", "biased_mf"))
        assert isinstance(pop, Popularity) and isinstance(knn, ItemKNN)
        assert isinstance(mf, MatrixFactorization)
        assert pop._counts == pytest.approx(pop1._counts, rel=1e-12)
        assert _co(knn) == pytest.approx(_co(knn1), rel=1e-12)
        assert mf.i_latents.keys() == mf1.i_latents.keys()
        mean, mean1 = mf.river_model.global_mean, mf1.river_model.global_mean
        assert mean.n == pytest.approx(mean1.n) and mean.get() == pytest.approx(mean1.get())


def test_a_restored_shard_replays_light_and_full_deltas_as_they_were_published() -> None:
    settings = _settings(
        models=("popularity", "knn"),
        recommender="knn",
        model_sync=True,
        model_sync_events=9,
        model_sync_ms=3_600_000,
        model_sync_full_every=3,
    )
    by_partition: dict[int, list[tuple[int, int, Event]]] = {0: [], 1: []}
    for e in _events(500, seed=4):
        p = partition_of(e.user_id, 2)
        by_partition[p].append((p, len(by_partition[p]), e))
    stream = sorted(by_partition[0] + by_partition[1], key=lambda x: x[2].timestamp)
    topic = FakeTopic()
    first = WorkerSync(settings, FakeReader(topic), topic.send, clock=lambda: 0.0)
    shards = {p: Pipeline.from_settings(settings) for p in (0, 1)}
    for p, pipe in shards.items():
        first.attach(("events", p), pipe)
    cut = len(stream) // 3
    _feed(first, shards, stream[:cut])
    first.publish(("events", 0), full=True)  # a forced full one (a revoke) before the cut
    checkpoint = pickle.dumps(shards[0])
    at = max(o for p, o, _ in stream[:cut] if p == 0) + 1
    _feed(first, shards, stream[cut:])
    published = [ShardDelta.decode(v) for v in topic.values]
    assert {d.full for d in published if d.source_partition == 0} == {True, False}

    second = WorkerSync(settings, FakeReader(topic), topic.send, clock=lambda: 0.0)
    restored = pickle.loads(checkpoint)
    second.attach(("events", 0), restored)
    _feed(second, {0: restored}, [x for x in by_partition[0] if x[1] >= at])
    assert not second._replay and len(topic.values) == len(published)  # nothing sent again
    second.publish_all()
    first.publish_all()
    first.poll()
    second.poll()
    one = Pipeline.from_settings(settings)
    for _, _, e in stream:
        one.process_one(e, Source("events", 0, 0))
    knn1, pop1 = one.models["knn"], one.models["popularity"]
    assert isinstance(knn1, ItemKNN) and isinstance(pop1, Popularity)
    for pipe in (shards[1], restored):
        knn, pop = pipe.models["knn"], pipe.models["popularity"]
        assert isinstance(knn, ItemKNN) and isinstance(pop, Popularity)
        assert _co(knn) == pytest.approx(_co(knn1), rel=1e-12)
        assert pop._counts == pytest.approx(pop1._counts, rel=1e-12)


def test_a_quiet_shard_closes_its_light_deltas_with_a_full_one_applied_once() -> None:
    """The last delta before a stream goes quiet may be light: what waited for a full delta
    goes in a full one ending at the same offset, which receivers apply once and a restored
    shard replays (from a checkpoint taken between the two) without sending it again."""
    settings = _settings(
        models=("popularity", "knn"),
        recommender="knn",
        model_sync=True,
        model_sync_events=1_000,
        model_sync_ms=3_600_000,
        model_sync_full_every=1_000,
    )
    by_partition: dict[int, list[tuple[int, int, Event]]] = {0: [], 1: []}
    for e in _events(300, seed=6):
        p = partition_of(e.user_id, 2)
        by_partition[p].append((p, len(by_partition[p]), e))
    stream = sorted(by_partition[0] + by_partition[1], key=lambda x: x[2].timestamp)
    topic = FakeTopic()
    first = WorkerSync(settings, FakeReader(topic), topic.send, clock=lambda: 0.0)
    shards = {p: Pipeline.from_settings(settings) for p in (0, 1)}
    for p, pipe in shards.items():
        first.attach(("events", p), pipe)
    _feed(first, shards, stream)
    for p in (0, 1):
        first.publish(("events", p))  # light: the co-occurrences wait
    first.poll()
    checkpoint = pickle.dumps(shards[0])
    first.publish_all()  # a full one closing each light one, at the same offset
    first.poll()
    kinds = [
        (d.source_partition, d.last_offset, d.full) for d in map(ShardDelta.decode, topic.values)
    ]
    assert [k[2] for k in kinds] == [False, False, True, True]
    assert kinds[0][1] == kinds[2][1] and kinds[1][1] == kinds[3][1]

    second = WorkerSync(settings, FakeReader(topic), topic.send, clock=lambda: 0.0)
    restored = pickle.loads(checkpoint)
    second.attach(("events", 0), restored)
    assert second.stats.replayed == 1 and not second._replay
    second.publish_all()
    assert len(topic.values) == 4  # the closing delta was not sent again
    one = Pipeline.from_settings(settings)
    for _, _, e in stream:
        one.process_one(e, Source("events", 0, 0))
    knn1 = one.models["knn"]
    assert isinstance(knn1, ItemKNN)
    for pipe in (shards[1], restored, shards[0]):
        knn = pipe.models["knn"]
        assert isinstance(knn, ItemKNN)
        assert _co(knn) == pytest.approx(_co(knn1), rel=1e-12)
    # Read again from the beginning, nothing is applied twice.
    again = ShardSync(pickle.loads(pickle.dumps(shards[1])), "events", 1)
    assert {again.apply_one(ShardDelta.decode(v)) for v in topic.values} == {"own", "duplicate"}


def test_a_full_delta_holds_back_factor_changes_that_moved_little_until_they_add_up() -> None:
    """MF's full delta leaves out an item whose components all moved by less than
    ``_FULL_MIN_CHANGE`` (and bias by less than ``_LIGHT_MIN_BIAS``) since it was last shared;
    the change stays pending and goes whole once it adds up. An item not shared yet always
    goes, so every receiver knows the catalogue."""
    from stream.models import mf as mf_module

    model = MatrixFactorization(n_factors=4, negative_samples=0, seed=3)
    model.learn_one("u", "a", 1.0)
    model.learn_one("u", "b", 1.0)
    first = model.item_delta()  # everything learned so far (tracking starts)
    assert set(first["items"]) == {"a", "b"}
    row = model._index["a"]
    vector = model._vectors[row].copy()
    # A change below the threshold (as a sampled negative's push): held back.
    tiny = np.full(4, 0.4 * mf_module._FULL_MIN_CHANGE)
    model.river_model.i_latents["a"] = vector + tiny
    model._mirror("a")
    model.learn_one("v", "c", 1.0)  # a new item: always sent, however little it moved
    second = model.item_delta()
    assert second["items"] == ["c"]
    assert "a" in model._item_sync  # still pending, from its last shared value
    # The same again: now it adds up past the threshold and goes whole.
    model.river_model.i_latents["a"] = vector + 2 * tiny + tiny
    model._mirror("a")
    third = model.item_delta()
    assert third["items"] == ["a"]
    change = third["steps"][0].astype(float) * float(third["step"][0])
    assert np.allclose(change, 3 * tiny, rtol=0.01)
    assert not model._item_sync
