"""The core's shortcuts compute exactly what the plain path computes.

The pipeline ranks each model once per event and lets a blend fuse its components' rankings
(instead of ranking them again), which relies on a top-``m`` list beginning with the top-``k``
one; the evaluator keeps its ranking means with River's ``stats.Mean`` arithmetic inlined.
Each shortcut is compared here with the path it replaces, for equality (not closeness).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from river import stats, utils

from producers.synthetic import SyntheticStream
from stream.core import Pipeline, PipelineConfig
from stream.evaluation import ModelEvaluator, RankOutcome
from stream.events import Event, Source
from stream.models import MODEL_REGISTRY, Blend, build_models
from stream.models.blend import DEPTH
from stream.settings import StreamSettings

K = 5


def settings(**over: Any) -> StreamSettings:
    values: dict[str, Any] = {
        "models": ("popularity", "knn", "biased_mf", "blend"),
        "recommender": "knn",
        "top_k": K,
        "mf_factors": 4,
        "knn_neighbors": 8,
        "metric_window": 40,
        "drift_min_events": 0,
        "seed": 3,
    }
    values.update(over)
    return StreamSettings(_env_file=None, **values)


def events(n: int = 3_000, seed: int = 2) -> list[Event]:
    stream = SyntheticStream(n_events=n, n_users=60, n_items=150, seed=seed)
    return [Event.model_validate(e) for e in stream.events()]


def test_rank_means_are_rivers_rolling_means_exactly() -> None:
    rng = random.Random(8)
    window = 37
    evaluator = ModelEvaluator(window=window)
    cumulative = [stats.Mean() for _ in range(3)]
    rolling = [utils.Rolling(stats.Mean, window_size=window) for _ in range(3)]
    for n in range(500):
        hit = float(rng.random() < 0.3)
        position = rng.randrange(1, 11)
        outcome = RankOutcome(hit, hit / (1 + position / 7), hit / position)
        evaluator.update_rank(outcome)
        for i, value in enumerate((outcome.hit, outcome.ndcg, outcome.mrr)):
            cumulative[i].update(value)
            rolling[i].update(value)
        if n % 7 == 0 or n > 490:
            cum, win = evaluator.cumulative(), evaluator.windowed()
            assert [cum.hit_rate, cum.ndcg, cum.mrr] == [m.get() for m in cumulative], n
            assert [win.hit_rate, win.ndcg, win.mrr] == [m.get() for m in rolling], n


def test_window_of_one_matches_river_too() -> None:
    evaluator = ModelEvaluator(window=1)
    reference = utils.Rolling(stats.Mean, window_size=1)
    for value in (1.0, 0.0, 0.0, 1.0, 1.0):
        evaluator.update_rank(RankOutcome(value, value, value))
        reference.update(value)
        assert evaluator.windowed().hit_rate == reference.get()


@pytest.mark.parametrize("name", sorted(n for n in MODEL_REGISTRY if n != "blend"))
def test_a_deeper_top_k_begins_with_the_top_k(name: str) -> None:
    # Rebuilt models (svd, ease) build inline and early, so they have rankings to compare.
    s = settings(
        models=(name,),
        recommender=name,
        rebuild_background=False,
        rebuild_min_events=200,
        rebuild_every=500,
    )
    model = build_models(s)[name]
    pipeline = Pipeline(PipelineConfig.from_settings(s), {name: model})
    checked = 0
    for i, event in enumerate(events(1_500)):
        pipeline.process_one(event, _source(i))
        if i % 10 == 0:
            user = event.user_id
            excluded = pipeline.history.get(user, {})
            shallow = model.top_k(user, K, excluded)
            assert shallow == model.top_k(user, DEPTH * K, excluded)[:K], (i, user)
            checked += len(shallow) > 0
    assert checked > 100


def test_fuse_equals_top_k() -> None:
    s = settings()
    models = build_models(s)
    blend = models["blend"]
    assert isinstance(blend, Blend)
    pipeline = Pipeline(PipelineConfig.from_settings(s), models)
    compared = 0
    for i, event in enumerate(events(1_500)):
        pipeline.process_one(event, _source(i))
        user = event.user_id
        excluded = pipeline.history.get(user, {})
        given = {n: c.top_k(user, DEPTH * K + 7, excluded) for n, c in blend.active}
        assert blend.fuse(given, K) == blend.top_k(user, K, excluded), i
        compared += 1
    assert compared == 1_500


def test_a_fused_blend_scores_as_a_blend_that_ranks_its_own_components() -> None:
    # Pipeline A: the default wiring, the blend fusing the rankings made for evaluation.
    # Pipeline B: a stand-alone blend over its own (identical, deterministic) components,
    # ranked by Blend.top_k: nothing is shared, so nothing is reused. Fixed weights: online
    # ones learn from different rankings in a stand-alone blend (it knows no user history).
    s = settings(blend_learning_rate=0.0)
    shared = Pipeline.from_settings(s)
    own = build_models(s)
    own["blend"] = MODEL_REGISTRY["blend"](s)
    separate = Pipeline(PipelineConfig.from_settings(s), own)
    assert "blend" in shared._fusing and "blend" not in separate._fusing
    for i, event in enumerate(events()):
        a = shared.process_one(event, _source(i))
        b = separate.process_one(event, _source(i))
        assert a.evaluated == b.evaluated
    assert shared.evaluators["blend"].evaluated > 500
    for name in s.models:
        assert shared.evaluators[name].cumulative() == separate.evaluators[name].cumulative()
        assert shared.evaluators[name].windowed() == separate.evaluators[name].windowed()
        assert shared.evaluators[name].served == separate.evaluators[name].served


def test_recommending_with_the_blend_matches_its_top_k() -> None:
    p = Pipeline.from_settings(settings(recommender="blend"))
    for i, event in enumerate(events(1_000)):
        result = p.process_one(event, _source(i))
        assert result.recommendation is not None
        served = p.serve("blend", event.user_id, p.history[event.user_id])
        assert [r.item_id for r in result.recommendation.items] == [str(s.item) for s in served]


def _source(offset: int) -> Source:
    return Source("t", 0, offset)
