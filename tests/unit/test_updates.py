"""Model updates (``stream/updates``): champion / challenger promotion, the drift reaction, the
served model's version, and the pipeline consulting them; list-backed streams, no broker."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.checkpoint import CheckpointStore
from stream.core import Pipeline, PipelineConfig
from stream.evaluation import ModelEvaluator, rank_outcome
from stream.events import Event
from stream.models.blend import Blend
from stream.models.knn import ItemKNN
from stream.models.popularity import Popularity
from stream.settings import StreamSettings
from stream.updates import (
    DriftReaction,
    ModelUpdates,
    PromotionPolicy,
    PromotionSettings,
    ReactionSettings,
    model_versions,
    rebuilds_of,
)


def feed(evaluator: ModelEvaluator, hit: bool) -> None:
    evaluator.update_rank(rank_outcome(["x"] if hit else [], "x"))


def evaluators(*names: str, window: int = 100) -> dict[str, ModelEvaluator]:
    return {n: ModelEvaluator(window=window) for n in names}


# --- the promotion policy ------------------------------------------------------------------


def drive_policy(
    policy: PromotionPolicy,
    evs: dict[str, ModelEvaluator],
    rates: dict[str, float],
    n: int,
    start: int = 0,
    seed: int = 0,
) -> list[tuple[int, str, str]]:
    """Feed each model hits at its rate (the same random draws for every model, like models
    scored on the same events), observe the policy after each; the promotions made."""
    rng = random.Random(seed)
    done = []
    for i in range(start + 1, start + n + 1):
        u = rng.random()
        for name, rate in rates.items():
            feed(evs[name], u < rate)
        decision = policy.observe_one(evs, i)
        if decision is not None:
            done.append((i, decision.from_model, decision.to_model))
    return done


def test_a_challenger_is_promoted_after_leading_by_the_margin_for_min_events() -> None:
    evs = evaluators("a", "b")
    policy = PromotionPolicy(PromotionSettings(margin=0.1, min_events=300), "a", ["a", "b"])
    done = drive_policy(policy, evs, {"a": 0.2, "b": 0.4}, 1_000)
    # Both windows hold 100 evaluations from event 100 on: b leads from there, for 300 events.
    assert done == [(399, "a", "b")]
    assert policy.champion == "b" and policy.promotions == 1


def test_the_champion_can_be_promoted_back() -> None:
    evs = evaluators("a", "b")
    policy = PromotionPolicy(PromotionSettings(margin=0.1, min_events=200), "a", ["a", "b"])
    done = drive_policy(policy, evs, {"a": 0.2, "b": 0.4}, 600)
    done += drive_policy(policy, evs, {"a": 0.5, "b": 0.1}, 1_000, start=600)
    assert [(f, t) for _, f, t in done] == [("a", "b"), ("b", "a")]
    assert policy.champion == "a"


def test_no_promotion_within_the_margin_or_when_the_lead_breaks() -> None:
    evs = evaluators("a", "b")
    policy = PromotionPolicy(PromotionSettings(margin=0.5, min_events=100), "a", ["a", "b"])
    assert drive_policy(policy, evs, {"a": 0.3, "b": 0.4}, 2_000) == []  # +33 % < 50 %
    # b leads by far, but for 150 events at a time, then falls behind: the lead never lasts.
    evs = evaluators("a", "b", window=20)
    policy = PromotionPolicy(PromotionSettings(margin=0.1, min_events=200), "a", ["a", "b"])
    done = []
    for block in range(10):
        rates = {"a": 0.2, "b": 0.8} if block % 2 == 0 else {"a": 0.8, "b": 0.1}
        done += drive_policy(policy, evs, rates, 150, start=150 * block, seed=block)
    assert done == []


def test_promotion_off_keeps_the_champion_and_the_metric_setting_is_used() -> None:
    evs = evaluators("a", "b")
    off = PromotionPolicy(PromotionSettings(enabled=False, min_events=10), "a", ["a", "b"])
    assert drive_policy(off, evs, {"a": 0.1, "b": 0.9}, 500) == []
    # MRR: b hits at rank 2 (MRR 0.5), a at rank 1 half as often (MRR 0.4): b wins on hr
    # (0.8 vs 0.4), a wins on mrr.
    for metric, winner in (("hr", "b"), ("mrr", "a")):
        evs = evaluators("a", "b")
        policy = PromotionPolicy(
            PromotionSettings(metric=metric, margin=0.1, min_events=50),  # type: ignore[arg-type]
            "b" if winner == "a" else "a",
            ["a", "b"],
        )
        rng = random.Random(1)
        for i in range(1, 400):
            u = rng.random()
            evs["a"].update_rank(rank_outcome(["x"] if u < 0.4 else [], "x"))
            evs["b"].update_rank(rank_outcome(["y", "x"] if u < 0.8 else [], "x"))
            policy.observe_one(evs, i)
        assert policy.champion == winner, metric


# --- the drift reaction ----------------------------------------------------------------------


def reaction_run(
    hits_before: float, hits_after: float, detect_at: list[int], **settings: Any
) -> tuple[DriftReaction, list[int]]:
    reaction = DriftReaction(ReactionSettings(**settings), window=500)
    evaluator = ModelEvaluator(window=500)
    rng = random.Random(3)
    fired = []
    for i in range(1, 6_001):
        feed(evaluator, rng.random() < (hits_before if i <= 3_000 else hits_after))
        due = reaction.observe_one("m", evaluator, i, i if i in detect_at else None)
        if due is not None:
            fired.append(i)
    return reaction, fired


def test_a_detection_with_a_drop_in_hit_rate_fires_one_reaction() -> None:
    _, fired = reaction_run(0.3, 0.05, detect_at=[3_150, 3_400, 3_900])
    assert len(fired) == 1 and 3_150 <= fired[0] < 3_450  # confirmed soon after the detection


def test_detections_without_a_drop_do_not_fire() -> None:
    # A detection on a rise of the hit rate, and detections on a stationary stream.
    _, fired = reaction_run(0.1, 0.4, detect_at=[3_200])
    assert fired == []
    _, fired = reaction_run(0.3, 0.3, detect_at=[1_000, 2_000, 3_500, 5_000])
    assert fired == []


def test_the_cool_down_ignores_detections_after_a_reaction() -> None:
    _, fired = reaction_run(0.3, 0.05, detect_at=[3_100, 4_600], cooldown_events=5_000)
    assert len(fired) == 1
    # Without a cool-down, the fall is still there at the second detection: a second reaction.
    _, fired = reaction_run(0.3, 0.05, detect_at=[3_100, 4_600], cooldown_events=0)
    assert len(fired) == 2


class Rebuilt(Popularity):
    """A stand-in for a full-rebuild model (the interface of stream/updates' docs)."""

    def __init__(self) -> None:
        super().__init__(half_life=1_000.0)
        self.version = 1
        self.requested: list[str] = []
        self.rebuilds: list[dict[str, Any]] = []

    def request_rebuild(self, reason: str) -> None:
        self.requested.append(reason)
        self.version += 1
        self.rebuilds.append(
            {"event": 10, "version": self.version, "seconds": 0.1, "reason": reason,
             "events_in_window": 5}
        )  # fmt: skip


def test_a_reaction_speeds_decays_requests_rebuilds_then_restores() -> None:
    knn, pop, full = ItemKNN(half_life=8_000.0), Popularity(half_life=4_000.0), Rebuilt()
    blend = Blend({"knn": knn, "pop": pop}, {"knn": 1.0, "pop": 1.0}, learning_rate=1.0)
    models = {"knn": knn, "popularity": pop, "full": full, "blend": blend}
    reaction = DriftReaction(ReactionSettings(speedup=4.0, span_events=100), window=100)
    actions = reaction.react(models, evaluated=1_000, reason="drift on blend")
    assert (knn.half_life, pop.half_life, blend.half_life) == (2_000.0, 1_000.0, 500.0)
    assert full.requested == ["drift on blend"] and full.half_life == 250.0
    assert any("rebuild requested" in a for a in actions)
    assert not any(a.startswith("blend") for a in actions)  # Hedge weights left to adapt
    reaction.maybe_end_span(models, 1_050)
    assert knn.half_life == 2_000.0
    reaction.maybe_end_span(models, 1_100)
    assert (knn.half_life, pop.half_life, full.half_life) == (8_000.0, 4_000.0, 1_000.0)
    assert reaction.reactions == 1
    assert model_versions(models) == {"knn": 0, "popularity": 0, "full": 2, "blend": 0}
    assert [r["model"] for r in rebuilds_of(models)] == ["full"]
    # A reaction during a span starts from the configured half-lives, not the shortened ones.
    reaction.react(models, evaluated=2_000, reason="again")
    reaction.react(models, evaluated=2_010, reason="and again")
    assert knn.half_life == 2_000.0
    reaction.end_span(models)
    assert knn.half_life == 8_000.0


def test_model_version_counts_promotions_and_rebuilds_of_the_served_model() -> None:
    full = Rebuilt()
    models = {"full": full, "popularity": Popularity()}
    updates = ModelUpdates(PromotionSettings(), ReactionSettings(), "full", 100, models)
    assert updates.current_version(models) == 1
    full.request_rebuild("scheduled")
    assert updates.current_version(models) == 2 == updates.current_version(models)


# --- the pipeline consults them ----------------------------------------------------------------


def pairs_stream(n_users: int = 400, seed: int = 1) -> list[Event]:
    """Each user views ``a<j>`` then ``b<j>``: an item-to-item model predicts every second
    event, popularity (over 150 pairs) hardly any."""
    rng = random.Random(seed)
    out = []
    for u in range(n_users):
        j = rng.randrange(150)
        for item in (f"a{j}", f"b{j}"):
            out.append(Event(user_id=f"u{u}", item_id=item, event_type="view", timestamp=len(out)))
    return out


def pairs_settings(**over: Any) -> StreamSettings:
    values: dict[str, Any] = {
        "models": ("popularity", "knn"),
        "recommender": "popularity",
        "metric_window": 100,
        "promotion_min_events": 60,
        "drift_min_events": 0,
    }
    values.update(over)
    return StreamSettings(_env_file=None, **values)


def test_the_pipeline_serves_the_promoted_model_with_a_new_version() -> None:
    pipeline = Pipeline.from_settings(pairs_settings())
    results = list(pipeline.run(pairs_stream()))
    promoted = [(r, p) for r in results for p in r.promotions]
    assert len(promoted) == 1
    step, record = promoted[0]
    assert (record.from_model, record.to_model, record.model_version) == ("popularity", "knn", 2)
    assert record.to_value > record.from_value * 1.1 and record.lead_events >= 60
    assert step.recommendation is not None and step.recommendation.model == "knn"
    assert step.recommendation.model_version == 2
    before = results[results.index(step) - 1].recommendation
    assert before is not None and (before.model, before.model_version) == ("popularity", 1)
    assert pipeline.served == "knn" and pipeline.metrics_record().served == {"knn": 1}
    # Off: the configured recommender is served throughout.
    off = Pipeline.from_settings(pairs_settings(promotion=False))
    assert {r.recommendation.model for r in off.run(pairs_stream()) if r.recommendation} == {
        "popularity"
    }


def test_a_checkpoint_restores_the_served_model_its_version_and_the_policy(
    tmp_path: Any,
) -> None:
    events = pairs_stream()
    pipeline = Pipeline.from_settings(pairs_settings())
    for _ in pipeline.run(events[:500]):
        pass
    assert pipeline.served == "knn"
    store = CheckpointStore(tmp_path, "k" * 32)
    store.save(("events", 0), pipeline, 500)
    loaded = store.load(("events", 0))
    assert loaded is not None
    restored, offset = loaded
    assert offset == 500
    assert restored.served == "knn" and restored.updates.model_version == 2
    assert restored.updates.policy.promotions == 1
    header = store.files(("events", 0))[0]
    from stream.checkpoint import read_info

    info = read_info(header, "k" * 32)
    assert info.header["served"] == "knn" and info.header["updates"]["model_version"] == 2
    assert info.header["model_versions"] == {"popularity": 0, "knn": 0}
    # The restored pipeline goes on exactly like the one that never stopped.
    tail_a = [r.recommendation for r in pipeline.run(events[500:])]
    tail_b = [r.recommendation for r in restored.run(events[500:])]
    assert [(r.model, r.model_version, r.items) for r in tail_a if r] == [
        (r.model, r.model_version, r.items) for r in tail_b if r
    ]


def test_the_pipeline_reacts_to_drift_on_the_served_model_only() -> None:
    config = SyntheticConfig(n_events=12_000, n_users=300, n_items=600, drift_at=6_000, seed=2)
    events = [Event.model_validate(e) for e in SyntheticStream(config).events()]
    s = pairs_settings(
        models=("popularity", "knn"),
        recommender="knn",
        promotion=False,
        metric_window=500,
        drift_min_events=300,
    )
    pipeline = Pipeline.from_settings(s)
    results = list(pipeline.run(events))
    reactions = [x for r in results for x in r.reactions]
    assert len(reactions) == 1
    assert reactions[0].model == "knn" and 6_000 < reactions[0].event < 7_000
    assert reactions[0].recent < 0.75 * reactions[0].before
    assert any("knn: half-life" in a for a in reactions[0].actions)
    # The past is discounted by the evidence: the report's hit rate after over before, or the
    # reaction's own recent over before, whichever says less of the past still holds.
    (weighted,) = [a for a in reactions[0].actions if a.startswith("knn: past weighted x")]
    assert float(weighted.rsplit("x", 1)[1]) <= reactions[0].recent / reactions[0].before + 0.01
    # What is reported on the served model is the drift, not the noise before it.
    served_detections = [d for r in results for d in r.drifts if d.model == "knn"]
    assert served_detections and all(d.detected_event > 6_000 for d in served_detections)
    # Unfiltered, the detector fires more often than the reaction does: it asks for evidence.
    raw = s.model_copy(update={"drift_direction": "both", "drift_min_change": 0.0})
    raw_results = list(Pipeline.from_settings(raw).run(events))
    raw_detections = [d for r in raw_results for d in r.drifts if d.model == "knn"]
    assert len(raw_detections) > len([x for r in raw_results for x in r.reactions]) >= 1
    off = Pipeline.from_settings(s.model_copy(update={"drift_reaction": False}))
    assert [x for r in off.run(events) for x in r.reactions] == []


@pytest.mark.parametrize("bad", [{"promotion_margin": -0.1}, {"drift_reaction_drop": 1.0}])
def test_bad_update_settings_are_refused(bad: dict[str, Any]) -> None:
    from stream.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="STREAM_"):
        load_settings(**bad)


def test_evaluate_writes_the_series_promotions_and_rebuilds(tmp_path: Any) -> None:
    from stream.evaluate import evaluate, updates_summary
    from stream.report import write_report

    result = evaluate(pairs_stream(n_users=1_100), pairs_settings())
    doc = result.to_json()
    assert [(p["event"], p["from"], p["to"]) for p in doc["promotions"]] == [
        (result.promotions[0].event, "popularity", "knn")
    ]
    at = result.promotions[0].event
    rows = doc["series"]
    assert {r["event"] for r in rows} == {1_000, 2_000, 2_200}
    assert all(set(r) == {"event", "model", "hr@10", "served"} for r in rows)
    assert len(rows) == 3 * 2  # every model at every sampled event
    for r in rows:
        assert r["served"] == (r["model"] == ("knn" if r["event"] >= at else "popularity"))
        hr = result.served_series[[n for n, _, _ in result.served_series].index(r["event"])][2]
        assert r["hr@10"] == hr[r["model"]]
    assert doc["rebuilds"] == [] and doc["served_model"] == "knn"
    assert {"events", "k", "default_model", "models", "drifts", "rejected"} <= set(doc)
    assert "popularity -> knn" in updates_summary(result)
    write_report(result, tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "promoted knn over popularity" in page
    assert json.loads((tmp_path / "metrics.json").read_text())["promotions"] == doc["promotions"]


def test_rebuilds_of_full_models_reach_metrics_json() -> None:
    from stream.evaluate import evaluate

    s = pairs_settings(promotion=False)
    full = Rebuilt()
    pipeline = Pipeline(PipelineConfig.from_settings(s), {"popularity": full, "knn": ItemKNN()})
    full.request_rebuild("scheduled")
    result = evaluate(pairs_stream(), s, pipeline=pipeline)
    doc = result.to_json()
    assert [(r["model"], r["version"], r["reason"]) for r in doc["rebuilds"]] == [
        ("popularity", 2, "scheduled")
    ]
    assert doc["model_versions"] == {"popularity": 2, "knn": 0}


def test_reconfigure_keeps_the_served_model_or_falls_back_to_the_recommender() -> None:
    pipeline = Pipeline.from_settings(pairs_settings())
    for _ in pipeline.run(pairs_stream()):
        pass
    updates = pipeline.updates
    assert (updates.served, updates.model_version) == ("knn", 2)
    models = pipeline.models
    updates.reconfigure(PromotionSettings(margin=0.5), ReactionSettings(), "popularity", models)
    assert (updates.served, updates.model_version) == ("knn", 2)
    assert updates.policy.settings.margin == 0.5 and updates.policy.promotions == 1
    updates.reconfigure(
        PromotionSettings(enabled=False), ReactionSettings(enabled=False), "popularity", models
    )
    assert (updates.served, updates.model_version) == ("popularity", 3)
    assert not updates.reaction.settings.enabled


def test_set_half_life_changes_the_decay_from_the_next_event() -> None:
    pop = Popularity(half_life=1_000_000.0)
    pop.learn_one("u", "old", 1.0, {"implicit": True})
    pop.set_half_life(1.0)
    for n in range(3):
        pop.learn_one("u", f"new{n}", 1.0, {"implicit": True})
    # Three events at half-life 1: the old count weighs 1/8 of a fresh one.
    assert pop.score_of("old") / pop.score_of("new2") == pytest.approx(0.125)
    knn = ItemKNN(half_life=None)
    knn.set_half_life(10.0)
    assert knn.half_life == 10.0
    with pytest.raises(ValueError):
        pop.set_half_life(0.0)


@pytest.mark.parametrize("make", [lambda: Popularity(half_life=4_000.0), lambda: ItemKNN()])
def test_discount_weighs_the_past_less_at_once(make: Any) -> None:
    def trained(discount: float | None) -> list[Any]:
        model = make()
        for n in range(6):  # "old" with five users, then "new" with one
            model.learn_one(f"u{n}", "seed", 1.0, {"implicit": True})
            if n < 5:
                model.learn_one(f"u{n}", "old", 1.0, {"implicit": True})
        if discount is not None:
            model.discount(discount)
        model.learn_one("u5", "new", 1.0, {"implicit": True})
        model.learn_one("u6", "new", 1.0, {"implicit": True})
        model.learn_one("u6", "seed", 1.0, {"implicit": True})
        model.learn_one("u9", "seed", 1.0, {"implicit": True})
        return [s.item for s in model.top_k("u9", 2, exclude={"seed"})]

    assert trained(None)[0] == "old"
    assert trained(0.1)[0] == "new"
    with pytest.raises(ValueError, match="discount"):
        make().discount(0.0)


def test_a_reaction_discounts_the_past_by_the_measured_fall() -> None:
    knn, pop = ItemKNN(half_life=8_000.0), Popularity(half_life=4_000.0)
    reaction = DriftReaction(ReactionSettings(), window=100)
    for model in (knn, pop):
        model.learn_one("u", "a", 1.0, {"implicit": True})
    pop_before, knn_scale = pop._scale, knn._scale
    actions = reaction.react({"knn": knn, "popularity": pop}, 1_000, "drift", keep=0.1)
    assert "popularity: past weighted x0.10" in actions and "knn: past weighted x0.10" in actions
    assert pop._scale == pytest.approx(pop_before * 10)
    assert knn._scale == pytest.approx(knn_scale * 10)
    assert reaction.react({"popularity": pop}, 2_000, "drift") == ["popularity: half-life 1000"]
