"""Item state shared across shards (issue 12): additive state merges exactly, deltas are
applied once, and ``evaluate --partitions`` runs the shards as the worker would."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from stream.__main__ import main
from stream.core import Pipeline, PipelineConfig
from stream.events import Event, Source
from stream.kafka.partitioner import partition_of
from stream.models import Blend, ItemKNN, MatrixFactorization, Popularity, build_models
from stream.settings import StreamSettings
from stream.sync import DeltaError, ShardDelta, ShardSync
from stream.sync.offline import LocalShards


def _events(n: int, users: int = 120, items: int = 60, seed: int = 3) -> list[Event]:
    rng = random.Random(seed)
    kinds = ["view", "click", "add_to_cart", "purchase"]
    return [
        Event(
            user_id=f"u{rng.randrange(users)}",
            item_id=f"i{min(int(rng.paretovariate(1.2)), items)}",
            event_type=rng.choice(kinds),
            timestamp=float(t),
        )
        for t in range(n)
    ]


def _settings(**extra: object) -> StreamSettings:
    values: dict[str, object] = {
        "models": ("popularity", "knn", "sequence", "biased_mf", "blend"),
        "knn_neighbors": 500,  # no co-occurrence row is pruned: rows stay exactly additive
        "knn_half_life": None,
        "popularity_half_life": math.inf,
        **extra,
    }
    return StreamSettings(_env_file=None, **values)  # type: ignore[arg-type]


def _knn_state(model: ItemKNN) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    items = model._items
    norms = {str(items[r]): float(model._norms[r]) * 1.0 for r in range(len(items))}
    co = {
        (str(items[i]), str(items[j])): v for i, row in enumerate(model._co) for j, v in row.items()
    }
    return norms, co


def _run(events: list[Event], partitions: int, every: int, **extra: object) -> LocalShards:
    shards = LocalShards(lambda: Pipeline.from_settings(_settings(**extra)), partitions, every)
    for event in events:
        shards.process_one(event)
    shards.share_all()
    return shards


def _assert_close(a: dict, b: dict, rel: float = 1e-9) -> None:  # type: ignore[type-arg]
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-9), key


@pytest.mark.parametrize("partitions,every", [(4, 50), (8, 7), (3, 1)])
def test_additive_item_state_of_p_shards_equals_one_shard(partitions: int, every: int) -> None:
    events = _events(3_000)
    # Negative samples are drawn from each shard's catalogue of the moment: without them the
    # global mean (part of the item side of biased MF) is additive too.
    one = _run(events, 1, 0, negative_samples=0).pipelines[0]
    shards = _run(events, partitions, every, negative_samples=0)
    assert len({partition_of(e.user_id, partitions) for e in events}) == partitions
    for pipe in shards.pipelines:
        pop, pop1 = pipe.models["popularity"], one.models["popularity"]
        assert isinstance(pop, Popularity) and isinstance(pop1, Popularity)
        _assert_close(
            {i: pop.score_of(i) for i in pop._counts}, {i: pop1.score_of(i) for i in pop1._counts}
        )
        for name in ("knn", "sequence"):
            knn, knn1 = pipe.models[name], one.models[name]
            assert isinstance(knn, ItemKNN) and isinstance(knn1, ItemKNN)
            norms, co = _knn_state(knn)
            norms1, co1 = _knn_state(knn1)
            _assert_close(norms, norms1)
            _assert_close(co, co1)
        mf, mf1 = pipe.models["biased_mf"], one.models["biased_mf"]
        assert isinstance(mf, MatrixFactorization) and isinstance(mf1, MatrixFactorization)
        assert set(mf.i_latents) == set(mf1.i_latents)  # the catalogue
        mean, mean1 = mf.river_model.global_mean, mf1.river_model.global_mean
        assert mean.n == pytest.approx(mean1.n) and mean.get() == pytest.approx(mean1.get())
    # Without the sync each shard knows only its own users' items.
    isolated = _run(events, partitions, 0)
    pop1 = one.models["popularity"]
    assert any(p.models["popularity"].n_items < pop1.n_items for p in isolated.pipelines)


def test_with_decay_every_shard_ends_on_the_same_clock_and_close_counts() -> None:
    """With decay an event's age on another shard is off by at most what the shards learned
    in one interval; every shard's clock ends at the total number of events."""
    events = _events(2_000)
    half_life, every, partitions = 500.0, 20, 4
    extra = {"popularity_half_life": half_life}
    one = _run(events, 1, 0, **extra).pipelines[0].models["popularity"]
    bound = 2.0 ** (partitions * every / half_life)
    for pipe in _run(events, partitions, every, **extra).pipelines:
        pop = pipe.models["popularity"]
        assert isinstance(pop, Popularity) and isinstance(one, Popularity)
        assert math.log(pop._scale) == pytest.approx(math.log(one._scale), rel=1e-9)
        for item in one._counts:
            assert one.score_of(item) / bound <= pop.score_of(item) <= one.score_of(item) * bound


def test_a_delta_is_applied_once_and_never_by_its_sender() -> None:
    settings = _settings()
    a = ShardSync(Pipeline.from_settings(settings), "events", 0)
    b = ShardSync(Pipeline.from_settings(settings), "events", 1)
    for offset, event in enumerate(_events(30)):
        a.pipeline.process_one(event, Source("events", 0, offset))
        a.note_one(offset)
    delta = a.collect_one()
    assert delta is not None and (delta.first_offset, delta.last_offset, delta.events) == (
        0,
        29,
        30,
    )
    assert a.collect_one() is None  # nothing new
    wire = ShardDelta.decode(delta.encode())
    assert b.apply_one(wire) == "applied"
    counts = dict(b.pipeline.models["popularity"]._counts)
    assert b.apply_one(ShardDelta.decode(delta.encode())) == "duplicate"
    assert b.pipeline.models["popularity"]._counts == counts
    assert (b.state.deltas_applied, b.state.duplicates_dropped, b.state.applied) == (
        1,
        1,
        {("events", 0): 29},
    )
    assert a.apply_one(wire) == "own"
    # The receiver's own next delta carries none of what it applied.
    b.pipeline.process_one(_events(1)[0], Source("events", 1, 0))
    b.note_one(0)
    mine = b.collect_one()
    assert mine is not None and len(mine.models["popularity"]["counts"]) == 1


def test_a_factor_delta_of_another_width_is_refused_whole() -> None:
    """A delta from a sender with other STREAM_MF_FACTORS (read back after a restart that
    changed them) raises before it touches any item: the live sync counts it as invalid."""
    sender = MatrixFactorization("biased", n_factors=10, seed=1)
    receiver = MatrixFactorization("biased", n_factors=8, seed=1)
    for event in _events(40):
        sender.learn_one(event.user_id, event.item_id, 1.0)
        receiver.learn_one(event.user_id, event.item_id, 1.0)
    delta = sender.item_delta()
    assert delta["items"]
    before = {i: v.copy() for i, v in receiver.river_model.i_latents.items()}
    biases = dict(receiver.river_model.i_biases)
    with pytest.raises(ValueError, match="10 factors for a model of 8"):
        receiver.apply_item_delta(delta)
    assert receiver.river_model.i_biases == biases
    assert all((receiver.river_model.i_latents[i] == v).all() for i, v in before.items())


def test_the_sync_state_travels_with_the_pickled_pipeline() -> None:
    import pickle

    a = ShardSync(Pipeline.from_settings(_settings()), "events", 1)
    a.apply_one(ShardDelta("events", 0, 0, 9, 10, {}))
    restored = ShardSync(pickle.loads(pickle.dumps(a.pipeline)), "events", 1)
    assert restored.state.applied == {("events", 0): 9}
    assert restored.apply_one(ShardDelta("events", 0, 5, 9, 5, {})) == "duplicate"


@pytest.mark.parametrize("data", [b"", b"not zlib", ShardDelta("t", 0, 0, 0, 0, {}).encode()[:-3]])
def test_a_corrupt_delta_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(DeltaError):
        ShardDelta.decode(data)


def test_partition_of_is_kafka_pythons_default_partitioner() -> None:
    from kafka.partitioner.default import murmur2

    for user in ("alice", "bob", "u1", "ünï"):
        key = user.encode("utf-8")
        assert partition_of(user, 8) == (murmur2(key) & 0x7FFFFFFF) % 8


def test_evaluate_partitions_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "events.jsonl"
    log.write_text("".join(e.model_dump_json() + "\n" for e in _events(400)))
    assert main(["evaluate", str(log), "--format", "jsonl", "--partitions", "4", "-q"]) == 0
    assert "400 events" in capsys.readouterr().out
    assert main(["evaluate", str(log), "--format", "jsonl", "--partitions", "0", "-q"]) == 2
    assert "--partitions" in capsys.readouterr().err


def test_merged_metrics_records_cover_the_union_of_their_partitions() -> None:
    from stream.core import merge_metrics

    records = [Pipeline.from_settings(_settings()).metrics_record() for _ in range(2)]
    records[0].partitions, records[0].worker_id = {"events": [0, 2]}, "a@h:1"
    records[1].partitions, records[1].worker_id = {"events": [1, 3], "other": [0]}, "b@h:2"
    merged = merge_metrics(records)
    assert merged.partitions == {"events": [0, 1, 2, 3], "other": [0]}
    assert merged.worker_id is None  # several workers


def test_with_every_delta_applied_a_shard_ranks_as_the_one_shard_model() -> None:
    """Issue 12's quality gap at P shards is the sync interval's staleness, not the merge: with
    a delta after every event (decay on, drift reactions off) every shard's popularity ranking
    (its sorted head, what `top_k` and the retriever read) and scores equal one partition's
    after each event, through the wire encoding."""
    rng = random.Random(11)
    events = [  # ~300 items, a few hot ones: the head of 50 keeps changing
        Event(
            user_id=f"u{rng.randrange(200)}",
            item_id=f"i{int(300 * rng.random() ** 2)}",
            event_type=rng.choice(["view", "click", "purchase"]),
            timestamp=float(t),
        )
        for t in range(1_500)
    ]
    settings = _settings(popularity_half_life=300.0, knn_half_life=2_000.0, drift_reaction=False)

    def pipeline() -> Pipeline:  # a head of 50: items enter and leave it by deltas too
        models = build_models(settings)
        models["popularity"] = Popularity(half_life=300.0, head=50)
        return Pipeline(PipelineConfig.from_settings(settings), models)

    one = LocalShards(pipeline, 1, 0)
    shards = LocalShards(pipeline, 4, 1)
    for n, event in enumerate(events):
        one.process_one(event)
        shards.process_one(event)
        if n % 100 != 99:
            continue
        pop1 = one.pipelines[0].models["popularity"]
        assert isinstance(pop1, Popularity)
        want = [(s.item, s.score) for s in pop1.top_k("nobody", 20)]
        for pipe in shards.pipelines:
            pop = pipe.models["popularity"]
            assert isinstance(pop, Popularity)
            got = [(s.item, s.score) for s in pop.top_k("nobody", 20)]
            assert [i for i, _ in got] == [i for i, _ in want], n
            assert [s for _, s in got] == pytest.approx([s for _, s in want], rel=1e-9)
            assert pop._ranked == pop1._ranked and pop.n_items == pop1.n_items > 50


def test_the_blends_weights_learn_from_every_shards_outcomes() -> None:
    """The blend's Hedge gains are shared like item state: with a delta after every event,
    every shard's gains (and so its weights) are the one-partition blend's, not those of its
    own 1/P of the outcomes; the sync off, they are not."""
    rng = random.Random(4)
    events = [
        Event(
            user_id=f"u{rng.randrange(120)}",
            item_id=f"i{int(200 * rng.random() ** 3)}",  # popularity carries the signal
            event_type="click",
            timestamp=float(t),
        )
        for t in range(1_500)
    ]
    settings = _settings(models=("popularity", "knn", "blend"), drift_reaction=False)

    def pipeline() -> Pipeline:
        return Pipeline.from_settings(settings)

    def gains(shards: LocalShards) -> list[list[float]]:
        out = []
        for pipe in shards.pipelines:
            blend = pipe.models["blend"]
            assert isinstance(blend, Blend)
            out.append(list(blend._gains))
        return out

    one, shared = LocalShards(pipeline, 1, 0), LocalShards(pipeline, 4, 1)
    alone = LocalShards(pipeline, 4, 0)
    for event in events:
        one.process_one(event)
        shared.process_one(event)
        alone.process_one(event)
    want = gains(one)[0]
    assert min(want) > 0
    for got in gains(shared):
        assert got == pytest.approx(want, rel=1e-9)
    for got in gains(alone):
        assert got != pytest.approx(want, rel=0.05)


def test_evaluate_partitions_follows_stream_model_sync_false() -> None:
    """``STREAM_MODEL_SYNC=false`` makes `stream evaluate --partitions P` run isolated shards,
    as the worker runs them (the default, auto, shares with P > 1)."""
    from stream.evaluate import evaluate_partitioned

    events = _events(300)
    shared = evaluate_partitioned(events, _settings(), 4)
    isolated = evaluate_partitioned(events, _settings(model_sync=False), 4)
    assert shared.sync is not None and isolated.sync is not None
    assert shared.sync["sync_events"] > 0 and shared.sync["delta_records"] > 0
    assert isolated.sync["sync_events"] == 0 and isolated.sync["delta_records"] == 0


def test_a_delta_one_model_refuses_is_refused_whole_by_the_shard() -> None:
    """Every model's part is checked before any is applied: a factor part of another width
    leaves the popularity part unapplied too, at every offer (nothing applied twice later)."""
    sender = ShardSync(Pipeline.from_settings(_settings(mf_factors=10)), "events", 0)
    receiver = ShardSync(Pipeline.from_settings(_settings(mf_factors=8)), "events", 1)
    for offset, event in enumerate(_events(30)):
        sender.pipeline.process_one(event, Source("events", 0, offset))
        sender.note_one(offset)
    delta = ShardDelta.decode(sender.collect_one().encode())  # type: ignore[union-attr]
    assert next(iter(delta.models)) == "popularity"  # (the part applied first)
    for _ in range(2):
        with pytest.raises(ValueError, match="10 factors for a model of 8"):
            receiver.apply_one(delta)
        assert receiver.pipeline.models["popularity"].n_items == 0
        assert receiver.state.applied == {}
