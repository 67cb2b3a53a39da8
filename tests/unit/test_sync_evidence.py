"""The decision evidence shared across shards (issue 12, STREAM_MODEL_SYNC_EVIDENCE): each
shard decides promotions and drift reactions on every shard's evaluations, as one partition
would, through the delta's ``_evidence`` part; exactly once, checkpointed, never a crash."""

from __future__ import annotations

import pickle
import random
from typing import Any

import numpy as np
import pytest
from sync_fakes import FakeReader, FakeTopic, sync_settings

from stream.core import Pipeline
from stream.events import Event, Source
from stream.settings import StreamSettings
from stream.sync import ShardDelta, ShardSync
from stream.sync.evidence import EVIDENCE
from stream.sync.live import WorkerSync
from stream.sync.offline import LocalShards
from stream.updates import ModelUpdates, SharedEvidence


def _settings(**extra: Any) -> StreamSettings:
    values: dict[str, Any] = {
        "models": ("popularity", "knn"),
        "recommender": "knn",
        "popularity_half_life": 5_000.0,
        "knn_half_life": None,
        "knn_neighbors": 500,
        "metric_window": 400,
        "promotion_min_events": 150,
        "drift_min_events": 100,
        "drift_reaction_cooldown": 600,
        "drift_reaction_span": 300,
        **extra,
    }
    return StreamSettings(_env_file=None, **values)


def _churn(n: int = 4_500, seed: int = 3) -> list[Event]:
    """Popularity carries the signal (knn, served first, loses to it) and the popular items
    are replaced twice: the served model's hit rate falls, a drift reaction follows."""
    rng = random.Random(seed)
    out = []
    for t in range(n):
        era = t * 3 // n
        out.append(
            Event(
                user_id=f"u{rng.randrange(400)}",
                item_id=f"e{era}i{int(100 * rng.random() ** 2)}",
                event_type="click",
                timestamp=float(t),
            )
        )
    return out


def _decisions(result_lists: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (
            type(d).__name__,
            d.evaluated,
            *((d.from_model, d.to_model) if hasattr(d, "to_model") else (d.model, d.actions)),
        )
        for d in result_lists
    ]


def _run(shards: LocalShards, events: list[Event]) -> list[list[tuple[Any, ...]]]:
    for event in events:
        shards.process_one(event)
    out = []
    for pipe in shards.pipelines:
        updates = pipe.updates
        out.append(_decisions([*updates.promotions, *updates.reactions]))
    return out


def test_with_a_delta_per_event_every_shard_decides_as_one_partition() -> None:
    """With a delta after every event, every shard promotes and reacts to drift as the
    one-partition run does (same decisions, same actions on its copy of the item state):
    exactly, at the same evaluation, up to the first promotion; after it, within a few dozen
    evaluations (the shared evidence feeds only the served model's detector, and a new
    champion's starts from its window, where one partition's has fed it all along). The
    shards agree with each other exactly. Each deciding on its own 1/P of the evaluations,
    they do not."""
    settings = _settings()
    events = _churn()

    def pipeline() -> Pipeline:
        return Pipeline.from_settings(settings)

    (want,) = _run(LocalShards(pipeline, 1, 0), events)
    kinds = [d[0] for d in want]
    assert kinds[0] == "Promotion" and "Reaction" in kinds[1:], want  # the stream makes both
    shared = _run(LocalShards(pipeline, 4, 1, evidence=True), events)
    for got in shared:
        assert got == shared[0]
        assert got[0] == want[0]  # the promotion: the same, at the same evaluation
        assert [(d[0], *d[2:]) for d in got] == [(d[0], *d[2:]) for d in want]
        assert all(abs(g[1] - w[1]) <= 50 for g, w in zip(got, want, strict=True)), (got, want)
    alone = _run(LocalShards(pipeline, 4, 1, evidence=False), events)
    for got in alone:
        assert got != want


def test_a_decision_made_while_replaying_comes_out_with_the_next_event() -> None:
    settings = _settings()
    shards = LocalShards(lambda: Pipeline.from_settings(settings), 3, 1, evidence=True)
    published: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for event in _churn():
        result = shards.process_one(event)
        p = result.source.partition
        published[p] += [f"promotion {r.to_model}" for r in result.promotions]
        published[p] += [f"reaction {r.model}" for r in result.reactions]
        # Reported in the shard's own event indices, as without the sharing.
        assert all(r.source_partition == p for r in result.reactions)
        assert all(0 < r.detected_at_event <= r.event for r in result.reactions)
    for p, pipe in enumerate(shards.pipelines):
        updates = pipe.updates
        decided = [f"promotion {d.to_model}" for d in updates.promotions]
        decided += [f"reaction {d.model}" for d in updates.reactions]
        assert sorted(published[p]) == sorted(decided) and decided  # every decision published


def test_the_evidence_travels_in_every_delta_and_applies_once() -> None:
    settings = _settings()
    a, b = (ShardSync(Pipeline.from_settings(settings), "events", p, 4, True) for p in (0, 1))
    events = _churn(40)
    for o, event in enumerate(events):
        a.pipeline.process_one(event, Source("events", 0, o))
        a.note_one(o)
    light = a.collect_one(full=False)
    assert light is not None and not light.full
    received = ShardDelta.decode(light.encode())
    assert next(iter(received.models)) == EVIDENCE  # first: applied before the item state
    part = received.models[EVIDENCE]
    n = a.pipeline.evaluated_count
    assert part["codes"].dtype == np.uint8 and part["codes"].shape == (n, 2) and n > 30
    assert b.apply_one(received) == "applied" and b.apply_one(received) == "duplicate"
    evidence = b.pipeline.updates.evidence
    assert evidence is not None and evidence.evaluated == n == evidence.replayed
    ev_a, ev_b = a.pipeline.evaluators, evidence.evaluators
    for name in ("popularity", "knn"):
        assert ev_b[name].windowed_rank() == pytest.approx(ev_a[name].windowed_rank(), rel=1e-12)
    assert b.pipeline.evaluators["knn"].evaluated == 0  # its own metrics are its own


def test_without_the_setting_or_a_second_shard_nothing_is_shared() -> None:
    settings = _settings()
    for shards in (
        LocalShards(lambda: Pipeline.from_settings(settings), 1, 5, evidence=True),
        LocalShards(lambda: Pipeline.from_settings(settings), 3, 0, evidence=True),
        LocalShards(lambda: Pipeline.from_settings(settings), 3, 5, evidence=False),
    ):
        for event in _churn(60):
            shards.process_one(event)
        shards.share_all()
        assert all(p.updates.evidence is None for p in shards.pipelines)


def test_a_malformed_evidence_part_is_refused_before_anything_applies() -> None:
    settings = _settings()
    b = ShardSync(Pipeline.from_settings(settings), "events", 1, 1, True)
    good = {"names": ["knn"], "codes": np.zeros((2, 1), np.uint8), "users": np.zeros(2, np.uint16)}
    bad_parts: list[dict[str, Any]] = [
        {"names": ["knn"], "codes": np.zeros((2, 1), np.float64), "users": good["users"]},
        {"names": ["knn", "popularity"], "codes": good["codes"], "users": good["users"]},
        {"names": "knn", "codes": good["codes"], "users": good["users"]},
        {"names": ["knn"], "codes": good["codes"]},
        {"names": ["knn"], "codes": [[1], [2]], "users": [1, 2]},  # JSON numbers: not unsigned
    ]
    for n, part in enumerate(bad_parts):
        delta = ShardDelta("events", 0, n, n, 1, {EVIDENCE: part, "popularity": {"ticks": 1}})
        with pytest.raises(ValueError):
            b.apply_one(ShardDelta.decode(delta.encode()))
    evidence = b.pipeline.updates.evidence
    assert evidence is not None and evidence.evaluated == 0
    assert b.state.applied == {} and b.pipeline.models["popularity"].n_items == 0


def test_a_malformed_evidence_part_is_counted_as_invalid_by_the_worker() -> None:
    settings = sync_settings()
    topic = FakeTopic()
    sync = WorkerSync(settings, FakeReader(topic), topic.send, clock=lambda: 0.0)
    sync.attach(("events", 0), Pipeline.from_settings(settings))
    part = {"names": ["knn"], "codes": np.zeros((3, 2), np.uint8), "users": np.zeros(3, np.uint16)}
    topic.send(b"events:1", ShardDelta("events", 1, 0, 9, 10, {EVIDENCE: part}).encode())
    sync.poll()  # must not raise
    assert sync.stats.invalid == 1


def test_a_checkpoint_carries_the_evidence_and_older_ones_restore() -> None:
    settings = _settings()
    events = _churn(1_200)
    straight = LocalShards(lambda: Pipeline.from_settings(settings), 3, 2, evidence=True)
    for event in events:
        straight.process_one(event)
    halfway = LocalShards(lambda: Pipeline.from_settings(settings), 3, 2, evidence=True)
    for event in events[:600]:
        halfway.process_one(event)
    for shard in halfway.shards:  # a checkpoint and a restore of every shard, mid-stream
        shard.pipeline = pickle.loads(pickle.dumps(shard.pipeline))
        shard._shared = None
    for event in events[600:]:
        halfway.process_one(event)
    for a, b in zip(straight.pipelines, halfway.pipelines, strict=True):
        assert a.updates.evidence is not None and b.updates.evidence is not None
        assert a.updates.evidence.evaluated == b.updates.evidence.evaluated
        assert _decisions(a.updates.reactions) == _decisions(b.updates.reactions)

    # A ModelUpdates pickled before the evidence existed: none, and it decides as before.
    old = pickle.loads(pickle.dumps(Pipeline.from_settings(settings)))
    old.updates.__dict__.pop("evidence", None)
    assert old.updates.evidence is None and old.updates._pending is None
    old.process_one(events[0], Source("events", 0, 0))
    shard = ShardSync(old, "events", 0, 1, True)  # the sync with evidence turned on later
    assert isinstance(shard.pipeline.updates.evidence, SharedEvidence)
    assert shard.pipeline.updates.evidence.evaluated == old.evaluated_count == 1

    # Evidence pickled by its first version (no signature, no event index) restores.
    first = shard.pipeline.updates.evidence
    first.__dict__.pop("signature"), first.__dict__.pop("event")
    older = pickle.loads(pickle.dumps(shard.pipeline))
    older.process_one(events[1], Source("events", 0, 1))
    again = ShardSync(older, "events", 0, 1, True).pipeline.updates.evidence
    assert isinstance(again, SharedEvidence) and again.evaluated == older.evaluated_count


def test_turning_the_setting_off_on_restore_decides_on_the_shard_alone() -> None:
    settings = _settings()
    shard = ShardSync(Pipeline.from_settings(settings), "events", 0, 1, True)
    assert isinstance(shard.pipeline.updates, ModelUpdates)
    restored = ShardSync(pickle.loads(pickle.dumps(shard.pipeline)), "events", 0, 1, False)
    assert restored.pipeline.updates.evidence is None
    assert EVIDENCE not in restored.shared()


def test_a_restore_under_another_window_measures_the_evidence_anew() -> None:
    from stream.restore import apply_settings

    settings = _settings()
    shard = ShardSync(Pipeline.from_settings(settings), "events", 0, 1, True)
    for o, event in enumerate(_churn(300)):
        shard.pipeline.process_one(event, Source("events", 0, o))
    kept = pickle.loads(pickle.dumps(shard.pipeline))
    same, _ = apply_settings(pickle.loads(pickle.dumps(shard.pipeline)), settings)
    assert ShardSync(same, "events", 0, 1, True).pipeline.updates.evidence is not None
    held = same.updates.evidence
    assert held is not None and held.evaluated == kept.evaluated_count  # kept as it was
    assert held.evaluators["knn"].in_window == kept.evaluated_count > 250

    wider = _settings(metric_window=600)
    restored, _ = apply_settings(kept, wider)
    again = ShardSync(restored, "events", 0, 1, True).pipeline.updates.evidence
    assert again is not None and again is not held
    assert again.evaluators["knn"].window == 600 and again.evaluators["knn"].in_window == 0


def test_a_model_added_at_a_restore_is_measured_from_then_on() -> None:
    from stream.restore import apply_settings

    settings = _settings()
    a, b = (ShardSync(Pipeline.from_settings(settings), "events", p, 1, True) for p in (0, 1))
    for o, event in enumerate(_churn(200)):
        a.pipeline.process_one(event, Source("events", 0, o))
        a.note_one(o)
    delta = a.collect_one()
    assert delta is not None
    more = _settings(models=("popularity", "knn", "sequence"))
    restored, _ = apply_settings(pickle.loads(pickle.dumps(b.pipeline)), more)
    b = ShardSync(restored, "events", 1, 1, True)
    assert b.apply_one(ShardDelta.decode(delta.encode())) == "applied"  # no KeyError
    evidence = b.pipeline.updates.evidence
    assert evidence is not None and evidence.evaluators["sequence"].in_window == 0
    assert evidence.evaluators["knn"].in_window == a.pipeline.evaluated_count


def test_the_decision_windows_hold_the_evaluators_windowed_means_bit_for_bit() -> None:
    from stream.evaluation import ModelEvaluator, rank_outcome
    from stream.updates.evidence import _outcome, rank_code

    rng = random.Random(8)
    full, window = ModelEvaluator(window=50), ModelEvaluator(window=50)
    for _ in range(400):
        ranked = [f"i{rng.randrange(30)}" for _ in range(10)]
        outcome = rank_outcome(ranked, f"i{rng.randrange(30)}")
        full.update_rank(outcome)
        window.update_window(_outcome(rank_code(outcome)))  # as it travels
        assert window.windowed_rank() == full.windowed_rank()
        assert window.recent_hit_rate(30) == full.recent_hit_rate(30)
    assert window.in_window == full.in_window == 50 and window.evaluated == 0


def test_the_shared_evidence_feeds_only_the_served_models_detector() -> None:
    """Only a detection on the served model's misses arms the reaction: the shared evidence
    keeps that one detector (a promoted model's replaces the former champion's)."""
    settings = _settings()
    shards = LocalShards(lambda: Pipeline.from_settings(settings), 3, 1, evidence=True)
    for event in _churn():
        shards.process_one(event)
    for pipe in shards.pipelines:
        updates = pipe.updates
        assert updates.promotions  # (the champion changed on the way)
        evidence = updates.evidence
        assert evidence is not None
        assert evidence.drift.models() == {updates.served}
        assert set(evidence.evaluators) >= set(pipe.models)  # every model's window, still


def test_evidence_of_the_version_that_fed_every_detector_keeps_the_served_ones() -> None:
    """A checkpoint from before :meth:`SharedEvidence.watch` has every model's detector fed
    with every shard's evaluations: the served one's carries on as it was, the others go."""
    settings = _settings()
    shards = LocalShards(lambda: Pipeline.from_settings(settings), 2, 1, evidence=True)
    for event in _churn()[:1_500]:
        shards.process_one(event)
    updates = shards.pipelines[0].updates
    evidence = pickle.loads(pickle.dumps(updates.evidence))
    served = updates.served
    other = next(name for name in evidence.evaluators if name != served)
    evidence.drift.update_one(other, "miss", 1.0, 0, None, 0.0)  # as the old version fed it
    del evidence.__dict__["watched"]  # (pickled before the attribute existed)
    assert evidence.watched is None
    kept = evidence.drift._detectors[(served, "miss")]
    evidence.watch(served)
    assert evidence.drift.models() == {served}
    assert evidence.drift._detectors[(served, "miss")] is kept  # not rebuilt from its window
