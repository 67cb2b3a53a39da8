"""The core (:class:`stream.core.Pipeline`) driven by plain lists of events, without a broker.

Covers what the pipeline adds on top of the models and the evaluators (those have their own
tests in ``tests/contract/test_models.py`` and ``tests/unit/test_evaluation_drift.py``): the
test-then-learn order, exclusion of the user's history, which events are evaluated, rating
errors only for rating models, the popularity fallback, the published record, ``forget``,
determinism, merging shards, and drift on a stream with a known abrupt change.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterable
from typing import Any

import pytest

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.core import Pipeline, StepResult, merge_metrics, user_digest
from stream.evaluation import ModelEvaluator
from stream.events import DriftRecord, Event, MetricsRecord, ModelMetrics, Source
from stream.settings import StreamSettings

K = 5
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}


def settings(**over: Any) -> StreamSettings:
    values: dict[str, Any] = {
        "models": ("popularity", "knn", "biased_mf", "blend"),
        "recommender": "knn",
        "top_k": K,
        "mf_factors": 4,
        "knn_neighbors": 10,
        "metric_window": 50,
        "drift_min_events": 0,
        "seed": 11,
    }
    values.update(over)
    return StreamSettings(_env_file=None, **values)


def ev(user: str, item: str, kind: str = "view", t: float = 0.0, **extra: Any) -> Event:
    return Event(user_id=user, item_id=item, event_type=kind, timestamp=t, **extra)


def forget(user: str, t: float = 0.0) -> Event:
    return Event(user_id=user, event_type="forget", timestamp=t)


def clustered(n: int = 600, seed: int = 5, ratings: float = 0.0) -> list[Event]:
    """Users prefer one of four 10-item clusters; a share of events are star ratings."""
    rng = random.Random(seed)
    out = []
    for t in range(n):
        u = rng.randrange(30)
        own = u % 4
        cluster = own if rng.random() < 0.8 else rng.randrange(4)
        item = f"i{cluster * 10 + min(int(rng.expovariate(0.35)), 9)}"
        if rng.random() < ratings:
            stars = 4.5 if cluster == own else 1.5
            out.append(ev(f"u{u}", item, "rating", float(t), rating=stars))
        else:
            kind = rng.choice(["view", "view", "view", "click", "add_to_cart", "purchase"])
            out.append(ev(f"u{u}", item, kind, float(t)))
    return out


def hits(evaluator: ModelEvaluator) -> int:
    """Hits so far (the cumulative hit rate is a mean over the evaluated events)."""
    rate = evaluator.cumulative().hit_rate
    return 0 if rate is None else round(rate * evaluator.evaluated)


def comparable(result: StepResult) -> Any:
    rec = result.recommendation
    return None if rec is None else rec.model_dump(exclude={"created_at"})


# --- test-then-learn ----------------------------------------------------------------------


def test_the_first_event_of_a_new_item_is_never_a_hit() -> None:
    p = Pipeline.from_settings(settings())
    seen_items: set[str] = set()
    firsts = 0
    for i, event in enumerate(clustered(400)):
        before = {n: hits(e) for n, e in p.evaluators.items()}
        result = p.process_one(event, Source("t", 0, i))
        if event.item not in seen_items:
            firsts += 1
            assert result.evaluated
            # No model can have served an item none of them had learned yet.
            assert {n: hits(e) for n, e in p.evaluators.items()} == before, event
        seen_items.add(event.item)
    assert firsts == 40  # every item of the catalogue arrived once during the stream
    assert all(hits(e) > 0 for e in p.evaluators.values())  # ...and later ones did hit


def test_each_event_is_scored_against_the_ranking_served_before_learning_it() -> None:
    p = Pipeline.from_settings(settings())
    for i, event in enumerate(clustered(300)):
        expected: dict[str, bool] = {}
        if event.item not in p.history.get(event.user_id, {}):
            for name in p.models:
                served = [
                    s.item for s in p.serve(name, event.user_id, p.history.get(event.user_id, {}))
                ]
                expected[name] = event.item in served
        before = {n: hits(e) for n, e in p.evaluators.items()}
        p.process_one(event, Source("t", 0, i))
        for name, was_hit in expected.items():
            assert hits(p.evaluators[name]) - before[name] == int(was_hit), (i, name)


def test_the_doctest_stream_learns_after_ranking() -> None:
    # a->x, a->y, b->x: b's x is a hit only because a taught the models x first.
    p = Pipeline.from_settings(settings(models=("popularity",), recommender="popularity"))
    outcomes = []
    for i, event in enumerate([ev("a", "x"), ev("a", "y"), ev("b", "x")]):
        before = hits(p.evaluators["popularity"])
        p.process_one(event, Source("t", 0, i))
        outcomes.append(hits(p.evaluators["popularity"]) - before)
    assert outcomes == [0, 0, 1]


# --- history ------------------------------------------------------------------------------


def test_recommendations_and_evaluation_rankings_exclude_the_users_history() -> None:
    p = Pipeline.from_settings(settings())
    known: set[str] = set()
    for result in p.run(clustered(500)):
        known.add(result.event.item)
        user = result.event.user_id
        history = set(p.history[user])
        assert result.event.item in history
        assert result.recommendation is not None
        recommended = [i.item_id for i in result.recommendation.items]
        assert not history & set(recommended), (user, history & set(recommended))
        # Always a full top-K when the catalogue allows (popularity fills what models lack).
        assert len(recommended) == len(set(recommended)) == min(K, len(known - history))
        for name in p.models:
            served = {s.item for s in p.serve(name, user, p.history[user])}
            assert not history & served, name


def test_re_interactions_are_not_evaluated() -> None:
    p = Pipeline.from_settings(settings())
    events = [ev("a", "x"), ev("a", "y"), ev("a", "x", "click"), ev("b", "x"), ev("a", "y")]
    results = list(p.run(events))
    assert [r.evaluated for r in results] == [True, True, False, True, False]
    assert p.evaluated_count == 3
    assert all(e.evaluated == 3 for e in p.evaluators.values())
    # ...but they are learned from: every model saw all five events.
    assert p.learned == dict.fromkeys(p.models, 5)
    assert list(p.history["a"]) == ["x", "y"]  # most recent last


def test_an_item_evicted_from_a_bounded_history_is_evaluated_again() -> None:
    p = Pipeline.from_settings(settings(history_size=2))
    events = [ev("a", "x"), ev("a", "y"), ev("a", "z"), ev("a", "x"), ev("a", "z")]
    assert [r.evaluated for r in p.run(events)] == [True, True, True, True, False]
    assert list(p.history["a"]) == ["x", "z"]  # a re-interaction moves z to the end


# --- ratings ------------------------------------------------------------------------------


def test_rating_errors_only_for_rating_models_and_measured_before_learning() -> None:
    p = Pipeline.from_settings(settings())
    rating_models = [n for n, m in p.models.items() if m.predicts_ratings]
    assert rating_models == ["biased_mf"]
    errors: list[float] = []
    events = clustered(600, ratings=0.3)
    for i, event in enumerate(events):
        if event.event_type == "rating":
            assert event.rating is not None
            predicted = float(p.models["biased_mf"].predict_one(event.user_id, event.item))
            # Scored on the valid rating scale: a prediction outside it is clipped.
            clipped = min(max(predicted, p.config.rating_min), p.config.rating_max)
            errors.append(event.rating - clipped)
        p.process_one(event, Source("t", 0, i))
    n_ratings = sum(e.event_type == "rating" for e in events)
    assert n_ratings == len(errors) > 100
    cumulative = p.metrics_record().cumulative_metrics
    mf = cumulative["biased_mf"]
    assert mf.rated == n_ratings
    assert mf.mae == pytest.approx(sum(abs(e) for e in errors) / len(errors))
    assert mf.rmse == pytest.approx(math.sqrt(sum(e * e for e in errors) / len(errors)))
    window = p.metrics_record().window_metrics["biased_mf"]
    tail = errors[-p.config.metric_window :]
    assert window.mae == pytest.approx(sum(abs(e) for e in tail) / len(tail))
    for name in ("popularity", "knn", "blend"):
        assert cumulative[name].rated == 0
        assert cumulative[name].mae is None and cumulative[name].rmse is None
        assert cumulative[name].hit_rate is not None


def test_implicit_events_produce_no_rating_errors_and_learn_their_weight() -> None:
    p = Pipeline.from_settings(settings())
    list(p.run(clustered(200)))
    assert p.metrics_record().cumulative_metrics["biased_mf"].mae is None
    for kind, weight in WEIGHTS.items():
        assert p.target(ev("u", "i", kind)) == weight
    assert p.target(ev("u", "i", "rating", rating=3.5)) == 3.5


# --- cold users and the published record --------------------------------------------------


@pytest.mark.parametrize("models", [("popularity", "knn"), ("knn",)])
def test_popularity_fills_a_cold_users_top_k(models: tuple[str, ...]) -> None:
    p = Pipeline.from_settings(settings(models=models, recommender="knn"))
    warm = [ev(f"w{n % 7}", f"i{n % 20}", t=float(n)) for n in range(200)]
    list(p.run(warm))
    # A brand-new user on a brand-new item: KNN knows nothing co-occurring with it.
    assert p.models["knn"].top_k("stranger", K) == []
    result = p.process_one(ev("stranger", "brand-new", t=300.0), Source("t", 0, 200))
    assert result.recommendation is not None
    items = result.recommendation.items
    # The whole top-K is the fallback's: the most popular items, the user's own excluded.
    top = [str(s.item) for s in p.fallback.top_k("stranger", K, {"brand-new"})]
    assert [i.item_id for i in items] == top and len(top) == K
    assert {i.reason for i in items} == {"popular now"}


def test_popularity_tops_up_a_short_personal_list() -> None:
    p = Pipeline.from_settings(settings(models=("popularity", "knn"), recommender="knn"))
    warm = [ev("a", "x"), ev("a", "y")] + [ev(f"p{n}", f"pop{n % 6}") for n in range(30)]
    list(p.run(warm))
    rec = p.process_one(ev("c", "x"), Source("t", 0, 32)).recommendation
    assert rec is not None
    assert rec.items[0].item_id == "y"  # the one item co-occurring with x, KNN's own
    assert rec.items[0].reason != "popular now" and "x" in (rec.items[0].reason or "")
    assert len(rec.items) == K
    assert [i.reason for i in rec.items[1:]] == ["popular now"] * (K - 1)
    assert {i.item_id for i in rec.items[1:]} <= {f"pop{n}" for n in range(6)}


def test_the_published_recommendation_record() -> None:
    p = Pipeline.from_settings(settings(recommender="blend"))
    list(p.run(clustered(300)))
    event = ev("u3", "i31", "purchase", t=1_700_000_123.5)
    before = time.time()
    result = p.process_one(event, Source("events-x", 4, 987_654))
    after = time.time()
    rec = result.recommendation
    assert rec is not None
    assert rec.user_id == "u3" and rec.model == "blend"
    assert (rec.source_topic, rec.source_partition, rec.source_offset) == ("events-x", 4, 987_654)
    assert rec.event_timestamp == 1_700_000_123.5
    assert before <= rec.created_at <= after
    expected = p.serve("blend", "u3", p.history["u3"])
    assert [(i.item_id, i.score, i.reason) for i in rec.items] == [
        (str(s.item), float(s.score), s.reason) for s in expected
    ]
    assert all(i.reason for i in rec.items)  # every recommendation says why
    scores = [i.score for i in rec.items]
    assert scores == sorted(scores, reverse=True)
    assert result.source == Source("events-x", 4, 987_654) and result.event is event


# --- forget -------------------------------------------------------------------------------


def test_forget_removes_the_user_from_history_and_every_model() -> None:
    p = Pipeline.from_settings(settings(models=("popularity", "knn", "biased_mf", "blend")))
    events = clustered(400)
    list(p.run(events))
    user = "u7"
    assert user in p.history
    knn, mf = p.models["knn"], p.models["biased_mf"]
    users_before = (knn.n_users, mf.n_users)
    stranger = {n: m.top_k("never-seen", K) for n, m in p.models.items()}
    evaluated_before = p.evaluated_count
    result = p.process_one(forget(user), Source("t", 0, 400))
    assert result.recommendation is None and not result.evaluated and result.drifts == []
    assert user not in p.history
    assert (knn.n_users, mf.n_users) == (users_before[0] - 1, users_before[1] - 1)
    for name, model in p.models.items():
        assert model.top_k(user, K) == stranger[name], name
    assert p.evaluated_count == evaluated_before and p.run_count == 401
    # Coming back, the user is new: an item they had seen is a prediction again.
    old_item = next(e.item for e in events if e.user_id == user)
    assert p.process_one(ev(user, old_item), Source("t", 0, 401)).evaluated
    # Forgetting someone unknown is not an error.
    assert p.process_one(forget("nobody"), Source("t", 0, 402)).recommendation is None


def test_forget_reaches_the_internal_fallback_too() -> None:
    p = Pipeline.from_settings(settings(models=("knn",), recommender="knn"))
    list(p.run(clustered(200)))
    assert "popularity" not in p.models  # the fallback is the pipeline's own
    assert p.models["knn"].n_users > 0
    n = p.models["knn"].n_users
    p.process_one(forget("u1"), Source("t", 0, 200))
    assert p.models["knn"].n_users == n - 1 and "u1" not in p.history


def test_a_forgotten_users_id_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    user = "erase-me-5b2f0"
    p = Pipeline.from_settings(settings(models=("popularity", "knn", "biased_mf", "blend")))
    list(p.run([*clustered(200), ev(user, "i1"), ev(user, "i2")]))
    with caplog.at_level(logging.DEBUG):
        p.process_one(forget(user), Source("t", 0, 202))
    logged = [r.getMessage() for r in caplog.records]
    assert any(user_digest(user) in line for line in logged), logged  # still traceable
    assert not [line for line in logged if user in line]
    assert user_digest(user) != user_digest("erase-me-5b2f1")


# --- determinism --------------------------------------------------------------------------


def test_same_seed_same_events_same_outputs() -> None:
    events = [*clustered(500, ratings=0.2), forget("u2"), *clustered(200, seed=9, ratings=0.2)]

    def once() -> tuple[list[Any], dict[str, Any], list[DriftRecord]]:
        p = Pipeline.from_settings(settings(recommender="blend"))
        recs = [comparable(r) for r in p.run(events)]
        m = p.metrics_record().model_dump(exclude={"created_at"})
        return recs, m, p.drift.detections

    first, second = once(), once()
    assert first[0] == second[0]
    assert first[1] == second[1]
    drop = {"detected_at"}
    assert [d.model_dump(exclude=drop) for d in first[2]] == [
        d.model_dump(exclude=drop) for d in second[2]
    ]
    # The seed matters: another one changes the matrix factorization's numbers.
    other = Pipeline.from_settings(settings(recommender="blend", seed=12))
    list(other.run(events))
    assert (
        other.metrics_record().cumulative_metrics["biased_mf"]
        != (MetricsRecord.model_validate(first[1]).cumulative_metrics["biased_mf"])
    )


# --- merging shards -----------------------------------------------------------------------


def _record(events: int, users: int, items: int, **models: ModelMetrics) -> MetricsRecord:
    return MetricsRecord(
        k=10,
        events=events,
        evaluated=sum(m.evaluated for m in models.values()) // max(1, len(models)),
        window=200,
        window_metrics=dict(models),
        cumulative_metrics=dict(models),
        users=users,
        items=items,
    )


def test_merge_metrics_weights_by_evaluations_and_rated_events() -> None:
    a = _record(
        150,
        users=10,
        items=40,
        mf=ModelMetrics(
            hit_rate=0.5, ndcg=0.25, mrr=0.2, mae=1.0, rmse=1.0, evaluated=100, rated=10
        ),
        knn=ModelMetrics(hit_rate=0.1, ndcg=0.1, mrr=0.1, evaluated=100),
    )
    b = _record(
        400,
        users=30,
        items=70,
        mf=ModelMetrics(
            hit_rate=1.0, ndcg=0.5, mrr=0.6, mae=2.0, rmse=3.0, evaluated=300, rated=30
        ),
    )
    merged = merge_metrics([a, b])
    assert merge_metrics([a]) is a
    assert (merged.events, merged.users, merged.items, merged.k) == (550, 40, 70, 10)
    cum, win = merged.cumulative_metrics["mf"], merged.window_metrics["mf"]
    assert cum.hit_rate == pytest.approx((0.5 * 100 + 1.0 * 300) / 400)
    assert cum.ndcg == pytest.approx((0.25 * 100 + 0.5 * 300) / 400)
    assert cum.mrr == pytest.approx((0.2 * 100 + 0.6 * 300) / 400)
    assert cum.mae == pytest.approx((1.0 * 10 + 2.0 * 30) / 40)
    assert cum.rmse == pytest.approx(math.sqrt((1.0 * 10 + 9.0 * 30) / 40))
    assert (cum.evaluated, cum.rated) == (400, 40)
    # In the window a shard weighs at most `window` (200) evaluations.
    assert win.hit_rate == pytest.approx((0.5 * 100 + 1.0 * 200) / 300)
    # A model only one shard has keeps that shard's numbers.
    assert merged.cumulative_metrics["knn"].hit_rate == pytest.approx(0.1)
    assert merged.cumulative_metrics["knn"].mae is None


def test_merged_shards_equal_the_pooled_per_event_outcomes() -> None:
    events = clustered(800, ratings=0.2)
    shards = [Pipeline.from_settings(settings()) for _ in range(3)]
    pooled_hits = dict.fromkeys(shards[0].models, 0)
    pooled_sq: list[float] = []
    for i, event in enumerate(events):
        shard = shards[int(event.user_id[1:]) % 3]  # keyed by user, like the topic
        before = {n: hits(e) for n, e in shard.evaluators.items()}
        if event.event_type == "rating":
            assert event.rating is not None
            pred = float(shard.models["biased_mf"].predict_one(event.user_id, event.item))
            pred = min(max(pred, shard.config.rating_min), shard.config.rating_max)
            pooled_sq.append((event.rating - pred) ** 2)
        shard.process_one(event, Source("t", 0, i))
        for name, evaluator in shard.evaluators.items():
            pooled_hits[name] += hits(evaluator) - before[name]
    merged = merge_metrics([s.metrics_record() for s in shards])
    evaluated = sum(s.evaluated_count for s in shards)
    assert merged.events == len(events) and merged.evaluated == evaluated
    for name, total in pooled_hits.items():
        assert merged.cumulative_metrics[name].hit_rate == pytest.approx(total / evaluated)
        assert merged.cumulative_metrics[name].evaluated == evaluated
    rmse = merged.cumulative_metrics["biased_mf"].rmse
    assert rmse == pytest.approx(math.sqrt(sum(pooled_sq) / len(pooled_sq)))
    assert merged.users == len({e.user_id for e in events})


# --- drift --------------------------------------------------------------------------------

DRIFT_AT = 6_000


def _synthetic(drift_at: int | None) -> list[Event]:
    config = SyntheticConfig(n_events=12_000, n_users=200, n_items=300, seed=3, drift_at=drift_at)
    return [Event.model_validate(e) for e in SyntheticStream(config).events()]


class DriftRun:
    """Popularity and KNN over a stream, keeping the drift records and KNN's per-event hits."""

    def __init__(self, events: Iterable[Event]) -> None:
        s = settings(models=("popularity", "knn"), recommender="knn", top_k=10)
        s = s.model_copy(update={"drift_min_events": 500, "knn_neighbors": 50})
        self.pipeline = p = Pipeline.from_settings(s)
        self.results: list[StepResult] = []
        self.knn_hit: dict[int, int] = {}  # event index (1-based) -> hit, evaluated events only
        so_far = 0
        for result in p.run(events, topic="synthetic"):  # a generator: one step per next()
            self.results.append(result)
            now = hits(p.evaluators["knn"])
            if result.evaluated:
                self.knn_hit[p.run_count] = now - so_far
            so_far = now
        self.drifts = [d for r in self.results for d in r.drifts]

    def hit_rate(self, start: int, end: int) -> float:
        inside = [h for i, h in self.knn_hit.items() if start < i <= end]
        return sum(inside) / len(inside)


def _near_the_change(drifts: list[DriftRecord], model: str) -> list[DriftRecord]:
    return [d for d in drifts if d.model == model and DRIFT_AT < d.event <= DRIFT_AT + 1_000]


def test_an_abrupt_drift_is_detected_soon_after_it_happens() -> None:
    events = _synthetic(DRIFT_AT)
    run = DriftRun(events)
    results, drifts = run.results, run.drifts
    assert run.pipeline.drift.detections == drifts  # every detection was reported by its step
    for model in ("popularity", "knn"):
        near = _near_the_change(drifts, model)
        assert near, (model, [(d.model, d.event) for d in drifts])
        d = near[0]
        assert (d.metric, d.detector) == ("miss", "adwin")
        # The record points at the event that triggered it.
        assert (d.source_topic, d.source_partition, d.source_offset) == (
            "synthetic",
            0,
            d.event - 1,
        )
        assert d.timestamp == events[d.event - 1].timestamp
        assert d in results[d.event - 1].drifts
    # The drift is real: KNN's hit rate fell right after the change.
    assert run.hit_rate(DRIFT_AT, DRIFT_AT + 1_000) < 0.8 * run.hit_rate(DRIFT_AT - 2_000, DRIFT_AT)


def test_the_same_stream_without_drift_has_no_detection_there() -> None:
    drifts = DriftRun(_synthetic(None)).drifts
    assert _near_the_change(drifts, "popularity") == []
    assert _near_the_change(drifts, "knn") == []
