"""A restored Pipeline under changed settings: applied where the state allows, refused where not.

Checkpoints are written and read with a real :class:`~stream.checkpoint.CheckpointStore`, so
what is compared is what a worker restores.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pytest

from stream.checkpoint import CheckpointStore
from stream.core import Pipeline
from stream.events import Event, Source
from stream.restore import (
    RestoreRefusedError,
    apply_settings,
    check_restorable,
    plan_restore,
    recorded_settings,
)
from stream.settings import StreamSettings

OLD: dict[str, Any] = {
    "models": ("popularity", "knn", "biased_mf", "blend"),
    "recommender": "blend",
    "top_k": 10,
    "mf_factors": 4,
    "metric_window": 100,
    "drift_min_events": 0,
    "seed": 3,
}


def settings(**over: Any) -> StreamSettings:
    return StreamSettings(_env_file=None, **{**OLD, **over})


def events(n: int, seed: int = 1) -> list[Event]:
    rng = random.Random(seed)
    return [
        Event(
            user_id=f"u{rng.randrange(25)}",
            item_id=f"i{rng.randrange(60)}",
            event_type=rng.choice(["view", "click", "purchase"]),
            timestamp=float(t),
        )
        for t in range(n)
    ]


def checkpointed(tmp_path: Path, s: StreamSettings, stream: list[Event]) -> Pipeline:
    """``stream`` learned under ``s``, saved and restored (what a worker gets back)."""
    pipeline = Pipeline.from_settings(s)
    list(pipeline.run(stream))
    store = CheckpointStore(tmp_path, key="restore-test-key")
    store.save(("events", 0), pipeline, len(stream))
    assert store.newest_info(("events", 0)).header["settings"] == pipeline.built_with  # type: ignore[union-attr]
    restored = store.load(("events", 0))
    assert restored is not None
    return restored[0]


def run_more(pipeline: Pipeline, stream: list[Event], start: int) -> list[Any]:
    return [
        pipeline.process_one(e, Source("events", 0, start + i)).recommendation
        for i, e in enumerate(stream)
    ]


def test_unchanged_settings_restore_the_same_pipeline(tmp_path: Path) -> None:
    restored = checkpointed(tmp_path, settings(), events(300))
    same, plan = apply_settings(restored, settings())
    assert same is restored and plan.changes == []


def test_changed_recommender_k_and_models_take_effect_keeping_the_valid_state(
    tmp_path: Path,
) -> None:
    first, rest = events(400), events(200, seed=2)
    old_settings = settings()
    restored = checkpointed(tmp_path, old_settings, first)
    knn, popularity, history = (
        restored.models["knn"],
        restored.models["popularity"],
        restored.history,
    )
    new = settings(models=("popularity", "knn", "funk_mf"), recommender="knn", top_k=5)
    pipeline, plan = apply_settings(restored, new)

    assert [c.name for c in plan.applied] == ["models", "recommender", "top_k"]
    assert plan.refused == []
    note = next(c.note for c in plan.applied if c.name == "models")
    assert "added funk_mf" in note and "removed biased_mf, blend" in note
    assert list(pipeline.models) == ["popularity", "knn", "funk_mf"]
    # Kept: the learned instances, the histories, the counters.
    assert pipeline.models["knn"] is knn and pipeline.models["popularity"] is popularity
    assert pipeline.history is not history and pipeline.history == history
    assert pipeline.run_count == 400 and pipeline.learned["knn"] == 400
    # Built: the new model starts empty and learns from the next event.
    assert pipeline.models["funk_mf"].n_users == 0 and pipeline.learned["funk_mf"] == 0
    # K changed: accuracy restarts (an HR@10 window is not an HR@5 one).
    assert all(e.evaluated == 0 for e in pipeline.evaluators.values())
    assert pipeline.built_with["top_k"] == 5

    recs = run_more(pipeline, rest, 400)
    assert {r.model for r in recs} == {"knn"} and {len(r.items) for r in recs} == {5}
    assert pipeline.models["funk_mf"].n_users == len({e.user_id for e in rest})

    # The kept knn is exactly the one an uninterrupted run of the old settings has.
    uninterrupted = Pipeline.from_settings(old_settings)
    list(uninterrupted.run(first + rest))
    for user in ("u1", "u7", "u19"):
        seen = uninterrupted.history.get(user, {})
        assert pipeline.models["knn"].top_k(user, 5, seen) == uninterrupted.models["knn"].top_k(
            user, 5, seen
        )


def test_without_a_new_k_the_kept_models_keep_their_accuracy(tmp_path: Path) -> None:
    restored = checkpointed(tmp_path, settings(), events(300))
    before = {n: e.evaluated for n, e in restored.evaluators.items()}
    drift = restored.drift
    pipeline, plan = apply_settings(restored, settings(recommender="knn", weight_click=4.0))
    assert {c.name for c in plan.applied} == {"recommender", "weight_click"}
    assert {n: e.evaluated for n, e in pipeline.evaluators.items()} == before
    assert pipeline.drift is drift
    assert pipeline.target(Event(user_id="u", item_id="i", event_type="click", timestamp=0)) == 4.0


def test_a_re_weighted_blend_is_rebuilt_over_the_kept_models(tmp_path: Path) -> None:
    restored = checkpointed(tmp_path, settings(), events(300))
    pipeline, plan = apply_settings(restored, settings(blend={"knn": 1.0, "biased_mf": 1.0}))
    assert [c.name for c in plan.applied] == ["blend"]
    blend = pipeline.models["blend"]
    assert blend.components == {
        "knn": pipeline.models["knn"],
        "biased_mf": pipeline.models["biased_mf"],
    }
    assert pipeline.evaluators["blend"].evaluated == 0
    assert pipeline.evaluators["knn"].evaluated == restored.evaluators["knn"].evaluated


def test_a_dropped_popularity_model_becomes_the_fallback_and_comes_back(tmp_path: Path) -> None:
    restored = checkpointed(tmp_path, settings(), events(300))
    popularity = restored.models["popularity"]
    without, _ = apply_settings(restored, settings(models=("knn", "biased_mf"), recommender="knn"))
    assert "popularity" not in without.models and without.fallback is popularity
    again, plan = apply_settings(without, settings())
    assert again.models["popularity"] is popularity and again.learned["popularity"] == 300
    assert "added popularity, blend" in plan.applied[0].note


@pytest.mark.parametrize(
    ("change", "model"),
    [
        ({"knn_neighbors": 7}, "knn"),
        ({"mf_factors": 8}, "biased_mf"),
        ({"negative_samples": 1}, "biased_mf"),
        ({"popularity_half_life": 99.0}, "popularity"),
        ({"seed": 4}, "knn"),
    ],
)
def test_a_setting_a_kept_model_learned_with_is_refused_naming_it(
    tmp_path: Path, change: dict[str, Any], model: str
) -> None:
    restored = checkpointed(tmp_path, settings(), events(200))
    ((name, value),) = change.items()
    with pytest.raises(RestoreRefusedError) as info:
        apply_settings(restored, settings(**change), "the checkpoint of events[0]")
    message = str(info.value)
    env = f"STREAM_{name.upper()}"
    assert message.startswith("the checkpoint of events[0] was learned with other settings")
    assert f"{env} {OLD.get(name, StreamSettings.model_fields[name].default)} -> {value}" in message
    assert model in message and "STREAM_CHECKPOINT_RELEARN_CHANGED=true" in message
    assert f"set them back ({env}=" in message


def test_a_changed_model_setting_of_a_model_built_new_is_no_conflict(tmp_path: Path) -> None:
    restored = checkpointed(
        tmp_path, settings(models=("popularity", "knn"), recommender="knn"), events(200)
    )
    plan = plan_restore(recorded_settings(restored)[0], settings(mf_factors=32))
    assert plan.refused == [] and [c.name for c in plan.applied] == ["models", "recommender"]


def test_relearning_rebuilds_only_the_changed_models(tmp_path: Path) -> None:
    restored = checkpointed(tmp_path, settings(), events(300))
    mf, popularity = restored.models["biased_mf"], restored.models["popularity"]
    pipeline, plan = apply_settings(
        restored, settings(knn_neighbors=7, checkpoint_relearn_changed=True)
    )
    assert plan.relearn == ["knn"] and plan.refused == []
    assert pipeline.models["knn"].n_users == 0 and pipeline.models["knn"].neighbors == 7
    assert pipeline.learned["knn"] == 0 and pipeline.evaluators["knn"].evaluated == 0
    assert pipeline.models["biased_mf"] is mf and pipeline.models["popularity"] is popularity
    assert pipeline.models["blend"].components["knn"] is pipeline.models["knn"]
    # Applied now, recorded: the next restore has nothing to change.
    assert plan_restore(pipeline.built_with, settings(knn_neighbors=7)).changes == []


def test_a_checkpoint_from_before_settings_were_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    restored = checkpointed(tmp_path, settings(), events(200))
    restored.built_with = {}  # what an older release pickled
    with caplog.at_level(logging.WARNING):
        pipeline, plan = apply_settings(restored, settings(top_k=5, knn_neighbors=7))
    assert [c.name for c in plan.applied] == ["top_k"]  # what the configuration still shows
    assert "knn_neighbors" in plan.unchecked and "STREAM_KNN_NEIGHBORS" in caplog.text
    assert pipeline.config.top_k == 5 and pipeline.built_with["knn_neighbors"] == 7


def test_the_start_check_reads_every_partitions_newest_header(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, key="restore-test-key")
    for partition, s in enumerate([settings(), settings(knn_neighbors=7)]):
        pipeline = Pipeline.from_settings(s)
        list(pipeline.run(events(50)))
        store.save(("events", partition), pipeline, 50)
        store.save(("other-topic", partition), pipeline, 50)
    check_restorable(store, settings(events_topic="nothing-here", knn_neighbors=99))
    with pytest.raises(RestoreRefusedError) as info:
        check_restorable(store, settings(events_topic="events", top_k=3))
    message = str(info.value)
    assert message.startswith("the checkpoint of events[1] was learned with other settings")
    assert "STREAM_KNN_NEIGHBORS 7 -> 100" in message
    with pytest.raises(RestoreRefusedError) as info:
        check_restorable(store, settings(events_topic="events", knn_neighbors=8))
    both = str(info.value)
    assert "events[0] was learned" in both and "STREAM_KNN_NEIGHBORS 100 -> 8" in both
    assert "also the checkpoint of events[1] was learned" in both and "7 -> 8" in both
    (tmp_path / "events" / "1").rename(tmp_path / "away")
    check_restorable(store, settings(events_topic="events", top_k=3))  # applied on restore
    store.save(("events", 1), Pipeline.from_settings(settings()), 0)
    with pytest.raises(RestoreRefusedError, match=r"events\[0,1\] was learned"):
        check_restorable(store, settings(events_topic="events", seed=5))


def test_docstring_examples() -> None:
    import doctest

    import stream.restore

    result = doctest.testmod(stream.restore, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _variant(name: str) -> Any:
    field = StreamSettings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default * 0.5
    if default is None and name == "knn_half_life":
        return 10.0
    return None


@pytest.mark.parametrize(
    "model",
    ["popularity", "knn", "knn_classic", "sequence", "bpr", "biased_mf", "funk_mf", "userknn"],
)
def test_model_settings_name_exactly_what_each_factory_reads(model: str) -> None:
    """A model is built from the settings MODEL_SETTINGS lists for it, and no others (River's
    constructor parameters): a factory that starts reading another setting fails here."""
    from stream.models import MODEL_REGISTRY, MODEL_SETTINGS

    base = MODEL_REGISTRY[model](StreamSettings(_env_file=None))._get_params()
    for name in StreamSettings.model_fields:
        value = _variant(name)
        if value is None:
            continue
        try:
            other = StreamSettings(_env_file=None, **{name: value})
        except ValueError:
            continue
        differs = MODEL_REGISTRY[model](other)._get_params() != base
        assert differs == (name in MODEL_SETTINGS[model]), (model, name)


def test_how_a_restored_full_model_builds_follows_the_current_settings() -> None:
    from stream.models import RebuiltRecommender
    from stream.restore import apply_settings

    old = StreamSettings(
        _env_file=None,
        models=("popularity", "svd"),
        recommender="svd",
        rebuild_background=False,
        rebuild_nice=15,
    )
    pipeline = Pipeline.from_settings(old)
    new = old.model_copy(update={"rebuild_background": True, "rebuild_nice": 5})
    restored, plan = apply_settings(pipeline, new)
    model = restored.models["svd"]
    assert isinstance(model, RebuiltRecommender)
    assert (model.background, model.nice) == (True, 5)
    assert not plan.refused


def test_retrieval_and_challenger_sample_follow_the_current_settings_on_restore(
    tmp_path: Path,
) -> None:
    # They change no learned state: applied to the restored pipeline as they are now.
    restored = checkpointed(tmp_path, settings(), events(300))
    assert restored._retriever is not None and restored._sample == 1.0
    changed = settings(retrieval="exact", challenger_sample=0.5)
    pipeline, plan = apply_settings(restored, changed)
    assert pipeline is restored and plan.changes == []
    assert pipeline._retriever is None and pipeline._sample == 0.5
    back, _ = apply_settings(pipeline, settings(retrieval_candidates=7))
    assert back._retriever is not None and back._retriever.per_source == 7


def test_drift_report_filters_take_effect_and_follow_the_current_settings_on_restore(
    tmp_path: Path,
) -> None:
    built = Pipeline.from_settings(settings(drift_direction="both", drift_min_change=0.0))
    assert (built.drift.direction, built.drift.min_change) == ("both", 0.0)
    restored = checkpointed(tmp_path, settings(), events(300))
    detectors = restored.drift._detectors
    assert detectors and restored.drift.direction == "worse"
    pipeline, plan = apply_settings(restored, settings(drift_min_change=0.1))
    assert [c.name for c in plan.applied] == ["drift_min_change"] and not plan.refused
    assert pipeline.drift.min_change == 0.1
    assert pipeline.drift._detectors is detectors  # the running detectors are kept


def test_a_pipeline_config_pickled_by_an_older_version_keeps_every_value_in_place() -> None:
    import pickle

    from stream.core import PipelineConfig

    config = PipelineConfig(seed=7, popularity_half_life=123.0, challenger_sample=0.5)
    assert pickle.loads(pickle.dumps(config)) == config
    older = config.__getstate__()[:-2]  # before drift_direction / drift_min_change existed
    restored = PipelineConfig.__new__(PipelineConfig)
    restored.__setstate__(older)
    assert (restored.seed, restored.popularity_half_life, restored.challenger_sample) == (
        7,
        123.0,
        0.5,
    )
    assert (restored.drift_direction, restored.drift_min_change) == ("worse", 0.4)


def test_a_checkpoint_older_than_the_drift_filters_reports_as_the_settings_say_now(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline.from_settings(settings())
    list(pipeline.run(events(300)))
    # What a checkpoint written before the filters holds: no such settings, an unfiltered monitor.
    for name in ("drift_direction", "drift_min_change"):
        del pipeline.built_with[name]
    pipeline.drift.direction, pipeline.drift.min_change = "both", 0.0
    restored, plan = apply_settings(pipeline, settings())
    assert {c.name for c in plan.applied} == {"drift_direction", "drift_min_change"}
    assert (restored.drift.direction, restored.drift.min_change) == ("worse", 0.4)
    assert restored.built_with["drift_direction"] == "worse"
    again, plan = apply_settings(restored, settings(drift_min_change=0.2))
    assert [c.name for c in plan.applied] == ["drift_min_change"]
    assert again.drift.min_change == 0.2 and again.config.drift_min_change == 0.2
