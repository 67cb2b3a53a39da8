"""The learned fusion (STREAM_BLEND_FUSION=learned): it combines, not only chooses."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from stream.core import Pipeline
from stream.events import Event
from stream.models import Blend, Scored
from stream.models.fusion import LearnedFusion
from stream.settings import StreamSettings


def complementary_stream(seed: int = 5, n: int = 6_000) -> list[Event]:
    """Users keep to one of 6 clusters of 40 items; every 300 events 4 items per cluster
    turn hot, and 85 % of the events are a hot item of the user's cluster. Popularity knows
    what is hot (in every cluster), item-KNN knows the user's cluster (hot or not): only
    the items both rank high are the answer."""
    rng = random.Random(seed)
    clusters, size = 6, 40
    events: list[Event] = []
    hot: list[list[int]] = []
    for t in range(n):
        if t % 300 == 0:
            hot = [rng.sample(range(size), 4) for _ in range(clusters)]
        user = rng.randrange(240)
        cluster = user % clusters
        offset = rng.choice(hot[cluster]) if rng.random() < 0.85 else rng.randrange(size)
        item = f"i{cluster * size + offset}"
        events.append(Event(user_id=f"u{user}", item_id=item, event_type="view", timestamp=t))
    return events


def run(fusion: str, events: list[Event]) -> Pipeline:
    settings = StreamSettings(
        _env_file=None,
        models=("popularity", "knn", "blend"),
        recommender="blend",
        blend_fusion=fusion,  # type: ignore[arg-type]
        popularity_half_life=150.0,
        drift_min_events=0,
        promotion=False,
        seed=7,
    )
    pipe = Pipeline.from_settings(settings)
    for _ in pipe.run(events):
        pass
    return pipe


def hit_rates(pipe: Pipeline) -> dict[str, float]:
    return {n: pipe.evaluators[n].cumulative().hit_rate or 0.0 for n in pipe.models}


def test_learned_fusion_beats_both_components_that_carry_half_the_signal_each() -> None:
    events = complementary_stream()
    pipe = run("learned", events)
    hits = hit_rates(pipe)
    best = max(hits["popularity"], hits["knn"])
    assert hits["blend"] >= 1.3 * best, hits
    blend = pipe.models["blend"]
    assert isinstance(blend, Blend) and blend.updates > 1_000
    # A mere choice of the better component (what the Hedge weights of the rank fusion
    # converge to here: about knn's hit rate) cannot do that.
    assert hits["blend"] >= 1.2 * hit_rates(run("rrf", events))["blend"], hits


def test_learned_fusion_is_deterministic_and_survives_pickling() -> None:
    events = complementary_stream(n=2_000)
    first, second = run("learned", events), run("learned", events)
    assert hit_rates(first) == hit_rates(second)
    a, b = first.models["blend"], second.models["blend"]
    assert isinstance(a, Blend) and isinstance(b, Blend)
    assert a._learned is not None and b._learned is not None
    assert np.array_equal(a._learned.coef, b._learned.coef)
    restored = pickle.loads(pickle.dumps(a))
    user, exclude = "u1", set(first.history["u1"])
    assert restored.top_k(user, 10, exclude) == a.top_k(user, 10, exclude)


def test_softmax_step_moves_weight_to_the_list_that_holds_the_answer() -> None:
    fusion = LearnedFusion([1.0, 1.0], depth=3, learning_rate=0.5)
    right = [Scored("a", 3.0), Scored("b", 2.0), Scored("c", 1.0)]
    wrong = [Scored("x", 3.0), Scored("y", 2.0), Scored("z", 1.0)]
    for target in ["a", "b", "c"] * 10:
        assert fusion.update_one([right, wrong], fusion.fused([right, wrong], 3), target)
    assert all(r > w for r, w in zip(fusion.tables[0], fusion.tables[1], strict=True))
    # An outcome outside every list teaches nothing.
    before = fusion.coef.copy()
    assert not fusion.update_one([right, wrong], fusion.fused([right, wrong], 3), "nowhere")
    assert np.array_equal(before, fusion.coef)


def test_agreement_between_components_earns_a_bonus_of_its_own() -> None:
    # The answer is always the one item both lists hold, at a middling rank in each.
    fusion = LearnedFusion([1.0, 1.0], depth=3, learning_rate=0.5)
    for t in range(30):
        shared = f"s{t}"
        a = [Scored(f"a{t}", 3.0), Scored(shared, 2.0), Scored(f"b{t}", 1.0)]
        b = [Scored(f"c{t}", 3.0), Scored(f"d{t}", 2.0), Scored(shared, 1.0)]
        fusion.update_one([a, b], fusion.fused([a, b], 3), shared)
    assert fusion.agreement[0] > 0.5
    a = [Scored("p", 3.0), Scored("q", 2.0), Scored("r", 1.0)]
    b = [Scored("t", 3.0), Scored("u", 2.0), Scored("q", 1.0)]
    ranked = fusion.fused([a, b], 3)
    assert max(ranked, key=lambda item: ranked[item][0]) == "q"
    assert ranked["q"][3] == 2  # listed by both


def test_learned_fusion_starts_as_the_prior_weighted_rank_fusion() -> None:
    fusion = LearnedFusion([2.0, 1.0], depth=2, learning_rate=0.1)
    assert fusion.tables[0] == pytest.approx([1.0, 1 / np.log2(3)])
    assert fusion.tables[1] == pytest.approx([0.5, 0.5 / np.log2(3)])
    with pytest.raises(ValueError):
        LearnedFusion([1.0], depth=0, learning_rate=0.1)


def test_blend_rejects_an_unknown_fusion_and_restores_old_pickles_as_rank_fusion() -> None:
    from stream.models import Popularity

    with pytest.raises(ValueError, match="fusion"):
        Blend({"p": Popularity()}, {"p": 1.0}, fusion="stacked")
    blend = Blend({"p": Popularity()}, {"p": 1.0}, learning_rate=1.0)
    state = blend.__dict__.copy()
    for name in ("fusion", "fusion_rate", "_learned", "_last"):
        state.pop(name)
    old = Blend.__new__(Blend)
    old.__setstate__(state)  # a blend pickled before the learned fusion existed
    assert old.fusion == "rrf" and old._learned is None and old.learns_online


def test_the_setting_builds_a_learned_blend_and_a_wrong_value_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stream.models import build_models
    from stream.settings import SettingsError, load_settings

    monkeypatch.setenv("STREAM_BLEND_FUSION", "learned")
    monkeypatch.setenv("STREAM_BLEND_FUSION_RATE", "0.2")
    blend = build_models(load_settings())["blend"]
    assert isinstance(blend, Blend) and blend._learned is not None
    assert blend._learned.learning_rate == 0.2 and blend.learns_online
    monkeypatch.setenv("STREAM_BLEND_FUSION", "stacked")
    with pytest.raises(SettingsError, match="BLEND_FUSION"):
        load_settings()


def test_a_restore_keeps_the_learned_coefficients_at_the_new_rate_or_starts_afresh() -> None:
    from stream.models import Popularity

    components = {"p": Popularity(), "q": Popularity()}
    old = Blend(components, {"p": 1.0, "q": 1.0}, fusion="learned", fusion_rate=0.1)
    assert old._learned is not None
    old._learned.coef[0, 1] = 0.7  # as if learned
    kept = Blend(components, {"p": 1.0, "q": 1.0}, fusion="learned", fusion_rate=0.3)
    kept.carry_weights(old)
    assert kept._learned is not None and kept._learned.coef[0, 1] == 0.7
    assert kept._learned.learning_rate == 0.3 and old._learned.learning_rate == 0.1
    switched = Blend(components, {"p": 1.0, "q": 1.0}, fusion="learned")
    switched.carry_weights(Blend(components, {"p": 1.0, "q": 1.0}, learning_rate=10.0))
    assert switched._learned is not None and switched._learned.coef[0, 1] == 0.0


def test_a_deeper_list_than_learned_on_is_fused_without_growing_the_tables() -> None:
    fusion = LearnedFusion([1.0, 1.0], depth=2, learning_rate=0.1)
    deep = [Scored(f"i{r}", float(-r)) for r in range(50)]
    ranked = fusion.fused([deep, deep[:2]], 50)
    assert len(ranked) == 50 and ranked["i49"][0] == pytest.approx(1 / np.log2(51))
    assert len(fusion.tables[0]) == 2  # what a predict_one over the catalogue leaves behind
    assert fusion.update_one([deep, deep[:2]], ranked, "i30")
    assert len(fusion.tables[0]) == 2
