"""Two-stage recommendation (candidate retrieval) and sampled challengers (issue 11).

Candidates must rank exactly as the full catalogue does whenever they cover it; the shortcuts
that keep the cost flat (the popularity head, ItemKNN's compact score vector) must compute what
the plain path computes; the challenger sample must be a deterministic function of the events.
"""

from __future__ import annotations

import pickle
import random
from typing import Any

import pytest

import stream.models.knn as knn_module
from producers.synthetic import SyntheticStream
from stream.core import Pipeline, challenger_draw
from stream.events import Event, Source
from stream.models.knn import ItemKNN
from stream.models.popularity import Popularity
from stream.retrieval import CandidateRetriever, Round
from stream.settings import StreamSettings


def settings(**over: Any) -> StreamSettings:
    values: dict[str, Any] = {
        "mf_factors": 4,
        "knn_neighbors": 10,
        "metric_window": 50,
        "drift_min_events": 0,
        "seed": 3,
    }
    values.update(over)
    return StreamSettings(_env_file=None, **values)


def events(n: int = 2_500, seed: int = 2, items: int = 300) -> list[Event]:
    stream = SyntheticStream(n_events=n, n_users=80, n_items=items, seed=seed)
    return [Event.model_validate(e) for e in stream.events()]


def observed(pipeline: Pipeline, stream: list[Event]) -> list[Any]:
    out: list[Any] = []
    for i, event in enumerate(stream):
        result = pipeline.process_one(event, Source("t", 0, i))
        assert result.recommendation is not None
        out.append([(r.item_id, r.score, r.reason) for r in result.recommendation.items])
    out.append({n: (e.cumulative(), e.windowed()) for n, e in pipeline.evaluators.items()})
    return out


def test_candidates_covering_the_catalogue_measure_exactly_what_exact_ranking_does() -> None:
    # Every source asked for more items than exist: the candidates are the whole catalogue.
    stream = events()
    exact = Pipeline.from_settings(settings(retrieval="exact"))
    covering = Pipeline.from_settings(
        settings(retrieval="candidates", retrieval_candidates=100_000)
    )
    assert exact._retriever is None and covering._retriever is not None
    assert observed(covering, stream) == observed(exact, stream)


def test_default_candidates_rank_the_sources_exactly_and_stay_close_overall() -> None:
    stream = events(4_000, items=1_500)
    exact = Pipeline.from_settings(settings(retrieval="exact"))
    cand = Pipeline.from_settings(settings(retrieval="candidates", retrieval_candidates=20))
    observed(exact, stream)
    observed(cand, stream)
    # popularity, knn and sequence are retrieval sources: ranked exactly in both modes.
    for name in ("popularity", "knn", "sequence"):
        assert cand.evaluators[name].cumulative() == exact.evaluators[name].cumulative()
    a = exact.evaluators["blend"].cumulative().hit_rate
    b = cand.evaluators["blend"].cumulative().hit_rate
    assert a is not None and b is not None and b >= 0.9 * a


def test_a_cold_user_still_gets_the_popularity_fallback() -> None:
    pipeline = Pipeline.from_settings(settings())
    stream = events(500)
    observed(pipeline, stream)
    fresh = Event(user_id="newcomer", item_id=stream[0].item_id, event_type="view", timestamp=1.0)
    result = pipeline.process_one(fresh, Source("t", 0, 999))
    assert result.recommendation is not None
    assert len(result.recommendation.items) == pipeline.config.top_k


def test_candidates_exclude_the_users_items_and_are_bounded() -> None:
    pipeline = Pipeline.from_settings(settings(retrieval_candidates=15))
    observed(pipeline, events(1_500))
    retriever = pipeline._retriever
    assert retriever is not None
    assert set(retriever.sources) == {"popularity", "knn", "knn_classic", "sequence"}
    knn = pipeline.models["knn"]
    for user, seen in list(pipeline.history.items())[:20]:
        assert knn.retrieve_one(user, 15, seen) == [s.item for s in knn.top_k(user, 15, seen)]
    for user, seen in list(pipeline.history.items())[:20]:
        found = retriever.candidates_one(user, seen, Round())
        assert len(found) <= 4 * 15 and len(set(found)) == len(found)
        assert not set(found) & set(seen)


def test_a_pipeline_with_candidates_survives_pickling_and_old_pickles_get_a_retriever() -> None:
    stream = events(2_000)
    pipeline = Pipeline.from_settings(settings())
    observed(pipeline, stream[:1_000])
    twin = pickle.loads(pickle.dumps(pipeline))
    assert observed(twin, stream[1_000:]) == observed(pipeline, stream[1_000:])
    assert "_retriever" not in pipeline.__getstate__()  # rebuilt on load, never pickled
    # A checkpoint from before retrieval existed: its configuration has no such fields.
    state = pipeline.__getstate__()
    del state["_sample"]
    state["config"] = _OldConfig(pipeline.config)
    old = Pipeline.__new__(Pipeline)
    old.__setstate__(state)
    assert old._retriever is None and old._sample == 1.0  # ranks as it did: exactly


class _OldConfig:
    """A PipelineConfig as pickled before retrieval existed (no retrieval fields)."""

    def __init__(self, config: Any) -> None:
        for name in ("top_k", "recommender", "popularity_half_life"):
            setattr(self, name, getattr(config, name))


def test_the_popularity_head_ranks_as_a_fully_sorted_catalogue() -> None:
    rng = random.Random(1)
    small, full = Popularity(half_life=50, head=5), Popularity(half_life=50, head=10**6)
    for t in range(6_000):
        item = f"i{int(rng.paretovariate(1.0)) % 300}"
        weight = rng.choice([0.0, 1.0, 2.0, 5.0])
        for model in (small, full):
            model.learn_one("u", item, weight, {"implicit": True})
        if t % 40 == 0:
            drop = {f"i{rng.randrange(30)}" for _ in range(rng.randrange(12))}
            for k in (1, 3, 10, 50):
                assert small.top_k("u", k, drop) == full.top_k("u", k, drop), (t, k)
    assert len(small._ranked) == 5 and small.n_items == full.n_items


def test_an_old_popularity_pickle_keeps_its_ranking_as_the_head() -> None:
    model = Popularity(half_life=20)
    for i in range(50):
        model.learn_one("u", f"i{i % 17}", 1.0, {"implicit": True})
    expected = model.top_k("u", 17)
    state = model.__dict__.copy()
    del state["head"]
    old = Popularity.__new__(Popularity)
    old.__setstate__(state)
    assert old.head == 1_000 and old.top_k("u", 17) == expected


@pytest.mark.parametrize("directed", [False, True])
def test_knn_compact_scores_equal_the_dense_vector(
    directed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(3)
    model = ItemKNN(neighbors=10, history=8, alpha=0.7, recency=0.85, directed=directed)
    for _ in range(8_000):
        item = f"i{int(rng.paretovariate(0.7)) % 1_500}"
        model.learn_one(f"u{rng.randrange(200)}", item, 1.0, {"implicit": True})
    compared = 0
    for u in range(200):
        user = f"u{u}"
        drop = set(rng.sample(list(model._index), 30))
        out = []
        for factor in (10**9, 0):  # dense always, compact always
            monkeypatch.setattr(knn_module, "_DENSE_FACTOR", factor)
            model._cached = None
            ranked = model.top_k(user, 30, drop)
            out.append((ranked, [model.predict_one(user, f"i{j}") for j in range(40)]))
        assert out[0] == out[1], user
        compared += bool(out[0][0])
    assert compared > 100


def test_the_retriever_takes_each_sources_best_in_source_order() -> None:
    pop = Popularity()
    for item in ["a", "b", "b", "c", "c", "c"]:
        pop.learn_one("u", item, 1.0, {"implicit": True})
    retriever = CandidateRetriever({"popularity": pop}, per_source=2)
    assert retriever.candidates_one("v", {"c": None}, Round()) == ["b", "a"]
    with pytest.raises(ValueError):
        CandidateRetriever({"popularity": pop}, per_source=0)


# --- sampled challengers ----------------------------------------------------------------------


def test_challenger_sampling_is_deterministic_and_spares_the_served_model() -> None:
    stream = events(3_000)
    runs = []
    for _ in range(2):
        pipeline = Pipeline.from_settings(settings(challenger_sample=0.3, promotion=False))
        runs.append((pipeline, observed(pipeline, stream)))
    (a, seen_a), (_, seen_b) = runs
    assert seen_a == seen_b
    served = a.served
    assert a.evaluators[served].evaluated == a.evaluated_count
    # Exactly the evaluated events whose draw falls in the sample.
    history: dict[str, set[str]] = {}
    expected = 0
    for event in stream:
        seen = history.setdefault(event.user_id, set())
        if event.item not in seen and challenger_draw(event.user_id, event.item) < 0.3:
            expected += 1
        seen.add(event.item)
    for name, evaluator in a.evaluators.items():
        if name != served:
            assert evaluator.evaluated == expected
    assert 0.2 * a.evaluated_count < expected < 0.4 * a.evaluated_count
    # The served blend's fusion and online weights still see every component on every event.
    full = Pipeline.from_settings(settings(promotion=False))
    observed(full, stream)
    blend = a.models["blend"]
    assert blend.current_weights == full.models["blend"].current_weights  # type: ignore[attr-defined]
    assert a.evaluators["blend"].cumulative() == full.evaluators["blend"].cumulative()


def test_a_sampled_challenger_that_is_better_still_gets_promoted() -> None:
    s = settings(
        models=("popularity", "knn"),
        recommender="popularity",
        challenger_sample=0.3,
        promotion_min_events=200,
        promotion_margin=0.05,
        metric_window=100,
    )
    pipeline = Pipeline.from_settings(s)
    promoted = []
    for i, event in enumerate(events(6_000)):
        promoted += pipeline.process_one(event, Source("t", 0, i)).promotions
    assert [(p.from_model, p.to_model) for p in promoted][:1] == [("popularity", "knn")]
    assert pipeline.served == "knn"
