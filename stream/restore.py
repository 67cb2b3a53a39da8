"""A restored Pipeline meets the current settings: what changed is applied, or refused.

A checkpoint holds a :class:`~stream.core.Pipeline` built with the settings of its time
(:func:`~stream.core.built_with`, recorded in the Pipeline and in the checkpoint's header).
On restore, :func:`apply_settings` compares them with the current settings:

- **applied** — the models to run (new ones are built and learn from the next event, removed
  ones are dropped), the published model, K, the blend weights, the history length, the
  learning targets, the metric window and the drift detector. State that is still valid is
  kept; the accuracy of what is now measured differently (another K or window, a re-weighted
  blend) restarts, and so do the drift detectors watching it.
- **refused** — a setting a kept model learned with (``STREAM_KNN_*``, ``STREAM_MF_*``,
  ``STREAM_NEGATIVE_SAMPLES``, ``STREAM_POPULARITY_HALF_LIFE``, ``STREAM_SEED``): its state
  cannot be converted. The worker refuses to start and names them, unless
  ``STREAM_CHECKPOINT_RELEARN_CHANGED=true``, which rebuilds those models empty.

So every shard of a worker runs the current settings (never a restored old configuration
next to a fresh new one), and each change is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from stream.checkpoint import CheckpointError, CheckpointStore, read_info
from stream.core import PIPELINE_SETTINGS, Pipeline, PipelineConfig, built_with
from stream.models import (
    MODEL_REGISTRY,
    MODEL_SETTINGS,
    Blend,
    RebuiltRecommender,
    Recommender,
    build_blend,
    build_models,
)
from stream.settings import SettingsError, StreamSettings

__all__ = [
    "RestorePlan",
    "RestoreRefusedError",
    "SettingChange",
    "apply_settings",
    "check_restorable",
    "plan_restore",
    "recorded_settings",
]

logger = logging.getLogger(__name__)

FALLBACK = "the cold-start popularity fallback"

# Applied on restore, and what applying them means for the restored state.
_APPLIED_NOTES: dict[str, str] = {
    "models": "",  # spelled out per model
    "recommender": "published from the next event",
    "top_k": "from the next event; accuracy and drift detection restart (HR@K of another K)",
    "history_size": "histories trimmed to it",
    "weight_view": "learning target from the next event",
    "weight_click": "learning target from the next event",
    "weight_add_to_cart": "learning target from the next event",
    "weight_purchase": "learning target from the next event",
    "metric_window": "accuracy windows restart",
    "drift_detector": "drift detectors restart",
    "drift_delta": "drift detectors restart",
    "drift_min_events": "applies to the running detectors",
    "drift_direction": "applies to the running detectors",
    "drift_min_change": "applies to the running detectors",
    "blend": "blend re-weighted; its accuracy restarts",
    "blend_learning_rate": "the blend's weights learn at the new rate from the next event",
    "blend_half_life": "the blend's weights forget at the new rate from the next event",
    "blend_fusion": "the blend fuses that way from the next event (a learned fusion starts afresh)",
    "blend_fusion_rate": "the learned fusion steps at the new rate from the next event",
    "seed": "seeds the models built from now on",
    "promotion": "the promotion policy follows it from the next event",
    "promotion_metric": "the promotion policy follows it from the next event",
    "promotion_margin": "the promotion policy follows it from the next event",
    "promotion_min_events": "the promotion policy follows it from the next event",
    "drift_reaction": "the drift reaction follows it from the next event",
    "drift_reaction_drop": "the drift reaction follows it from the next event",
    "drift_reaction_cooldown": "the drift reaction follows it from the next event",
    "drift_reaction_span": "the drift reaction follows it from the next event",
}
# Settings added after checkpoints recorded their settings, with the behaviour of the code
# before them: a checkpoint without one was built with that value.
_BEFORE_THEY_EXISTED: dict[str, Any] = {
    "drift_direction": "both",
    "drift_min_change": 0.0,
    "blend_fusion": "rrf",
    "blend_fusion_rate": 0.05,
}
# Settings a learned model's state depends on, by model (the blend holds no state of its own).
_LEARNED_WITH: dict[str, tuple[str, ...]] = {
    name: names for name, names in MODEL_SETTINGS.items() if name != "blend"
}


class RestoreRefusedError(SettingsError):
    """Settings changed that a restored model cannot follow; the message says what to do."""


@dataclass(frozen=True, slots=True)
class SettingChange:
    """One setting whose value differs from the checkpoint's."""

    name: str
    old: Any
    new: Any
    note: str = ""

    def __str__(self) -> str:
        text = f"STREAM_{self.name.upper()} {_show(self.old)} -> {_show(self.new)}"
        return f"{text} ({self.note})" if self.note else text


@dataclass
class RestorePlan:
    """What restoring a checkpoint under the current settings does."""

    applied: list[SettingChange] = field(default_factory=list)
    refused: list[SettingChange] = field(default_factory=list)
    # Kept models whose state is rebuilt empty (STREAM_CHECKPOINT_RELEARN_CHANGED).
    relearn: list[str] = field(default_factory=list)
    # Settings the checkpoint did not record (written by an older version): not comparable.
    unchecked: list[str] = field(default_factory=list)

    @property
    def changes(self) -> list[SettingChange]:
        return self.applied + self.refused


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return repr(value) if isinstance(value, str) else str(value)


def recorded_settings(pipeline: Pipeline) -> tuple[dict[str, Any], bool]:
    """The settings ``pipeline`` was built with, and whether they are complete.

    A Pipeline from before they were recorded yields what its configuration still shows
    (models, K, recommender, ...) and False: its models' own settings are unknown.
    """
    held = getattr(pipeline, "built_with", None)
    if held:
        return dict(held), True
    c = pipeline.config
    derived: dict[str, Any] = {
        "models": list(pipeline.models),
        "recommender": c.recommender,
        "top_k": c.top_k,
        "history_size": c.history_size,
        **{f"weight_{kind}": weight for kind, weight in c.implicit_weights},
        "metric_window": c.metric_window,
        "drift_detector": c.drift_detector,
        "drift_delta": c.drift_delta,
        "drift_min_events": c.drift_min_events,
        "popularity_half_life": c.popularity_half_life,
        "seed": c.seed,
    }
    blend = pipeline.models.get("blend")
    if isinstance(blend, Blend):
        derived["blend"] = dict(blend.weights)
    return derived, False


def plan_restore(
    old: dict[str, Any], settings: StreamSettings, complete: bool = True
) -> RestorePlan:
    """Compare the settings a checkpoint was built with (``old``) with ``settings``.

    Examples
    --------
    >>> old = StreamSettings(models=("popularity", "knn"), recommender="knn", top_k=10)
    >>> new = StreamSettings(models=("popularity", "knn", "biased_mf"), top_k=5,
    ...                      recommender="biased_mf", knn_neighbors=20)
    >>> plan = plan_restore(built_with(old), new)
    >>> [c.name for c in plan.applied], [str(c) for c in plan.refused]
    (['models', 'recommender', 'top_k'], ['STREAM_KNN_NEIGHBORS 100 -> 20 (knn learned with 100)'])
    """
    new = built_with(settings)
    # Settings added after a checkpoint was written: it was built with their behaviour then.
    old = {**{k: v for k, v in _BEFORE_THEY_EXISTED.items() if k in new and complete}, **old}
    old_models = list(old.get("models", []))
    kept = [m for m in settings.models if m in old_models]
    plan = RestorePlan()
    learned_with: dict[str, list[str]] = {}  # setting -> kept models whose state depends on it
    for model in kept:
        for name in _LEARNED_WITH.get(model, ()):
            learned_with.setdefault(name, []).append(model)
    # The fallback is kept whatever the models: a restored pipeline always has one.
    learned_with.setdefault("popularity_half_life", [])
    if "popularity" not in settings.models:
        learned_with["popularity_half_life"].append(FALLBACK)
    elif "popularity" not in old_models:
        learned_with["popularity_half_life"].append(f"popularity (from {FALLBACK})")
    for name in sorted(set(old) & set(new), key=_order):
        if old[name] == new[name]:
            continue
        users = learned_with.get(name, [])
        if users:
            note = f"{', '.join(users)} learned with {_show(old[name])}"
            change = SettingChange(name, old[name], new[name], note)
            if settings.checkpoint_relearn_changed:
                plan.applied.append(
                    SettingChange(name, old[name], new[name], f"{note}: learned afresh")
                )
                plan.relearn += [u for u in users if u in settings.models]
                if FALLBACK in users or any(u.startswith("popularity (") for u in users):
                    plan.relearn.append(FALLBACK)
            else:
                plan.refused.append(change)
        else:
            plan.applied.append(
                SettingChange(name, old[name], new[name], _models_note(old_models, settings))
                if name == "models"
                else SettingChange(name, old[name], new[name], _APPLIED_NOTES.get(name, ""))
            )
    plan.relearn = list(dict.fromkeys(plan.relearn))
    if not complete:
        plan.unchecked = sorted(
            {n for m in kept for n in _LEARNED_WITH.get(m, ())} - set(PIPELINE_SETTINGS) - set(old)
        )
    return plan


def _order(name: str) -> tuple[int, str]:
    position = {n: i for i, n in enumerate(PIPELINE_SETTINGS)}
    return position.get(name, len(position)), name


def _models_note(old_models: list[str], settings: StreamSettings) -> str:
    added = [m for m in settings.models if m not in old_models]
    removed = [m for m in old_models if m not in settings.models]
    parts = []
    if added:
        parts.append(f"added {', '.join(added)}: learning from the next event")
    if removed:
        parts.append(f"removed {', '.join(removed)}: state dropped")
    return "; ".join(parts) or "reordered"


def refusal_message(where: str, refused: list[SettingChange]) -> str:
    """What the worker says when it refuses to start: the settings, and the ways out."""
    names = ", ".join(f"STREAM_{c.name.upper()}" for c in refused)
    back = " ".join(f"STREAM_{c.name.upper()}={_show(c.old)}" for c in refused)
    return (
        f"{where} was learned with other settings, which its models cannot follow: "
        + "; ".join(str(c) for c in refused)
        + f". Either set them back ({back}), or set STREAM_CHECKPOINT_RELEARN_CHANGED=true to "
        f"rebuild the affected models empty with the new {names} (they learn again from the "
        "next event; every other model keeps its state), or start over without these "
        "checkpoints (move STREAM_CHECKPOINT_DIR away and reset the group's offsets)"
    )


def check_restorable(store: CheckpointStore, settings: StreamSettings) -> None:
    """Refuse to start, before joining the group, when a checkpoint of the events topic was
    learned with settings its models cannot follow (any of its partitions may come here).

    Reads the newest file's header only, unverified: the restore verifies the file and checks
    again (also files from before the settings were recorded, which this skips).

    Raises
    ------
    RestoreRefusedError
        Naming the partitions, the settings and what to do.
    """
    refused: dict[str, list[str]] = {}  # message -> partitions it applies to
    for tp in store.partitions():
        files = store.files(tp) if tp[0] == settings.events_topic else []
        if not files:
            continue
        try:
            recorded = read_info(files[0]).header.get("settings")
        except CheckpointError:
            continue  # the restore says what is wrong with it, or skips it
        if isinstance(recorded, dict):
            plan = plan_restore(recorded, settings)
            if plan.refused:
                refused.setdefault(refusal_message("", plan.refused), []).append(str(tp[1]))
    if refused:
        raise RestoreRefusedError(
            " -- also ".join(
                f"the checkpoint of {settings.events_topic}[{','.join(partitions)}]{message}"
                for message, partitions in refused.items()
            )
        )


def apply_settings(
    pipeline: Pipeline, settings: StreamSettings, where: str = "a checkpoint"
) -> tuple[Pipeline, RestorePlan]:
    """``pipeline`` (restored) under ``settings``: itself when nothing changed, else a
    Pipeline of the current configuration carrying over the state that is still valid.

    Raises
    ------
    RestoreRefusedError
        A kept model learned with a setting that changed (and relearning is not allowed).
    """
    old, complete = recorded_settings(pipeline)
    plan = plan_restore(old, settings, complete)
    if plan.refused:
        raise RestoreRefusedError(refusal_message(where, plan.refused))
    if plan.unchecked:
        logger.warning(
            "%s predates recorded model settings: %s could not be compared with the "
            "checkpoint's; if they changed, the restored models still use the old values",
            where,
            ", ".join(f"STREAM_{n.upper()}" for n in plan.unchecked),
        )
    if not plan.applied:
        pipeline.built_with = built_with(settings)
    else:
        pipeline = _rebuilt(pipeline, settings, plan)
    _apply_build_schedule(pipeline, settings)
    pipeline.bound_memory(settings)  # the memory limits are read live, like the schedule
    pipeline.apply_retrieval(settings)
    # What the drift monitor reports follows the current settings, whatever the plan said
    # (a checkpoint older than a filter setting holds no value of it to compare with).
    pipeline.drift.min_events = settings.drift_min_events
    pipeline.drift.configure(settings.drift_direction, settings.drift_min_change)
    pipeline.config = replace(
        pipeline.config,
        drift_min_events=settings.drift_min_events,
        drift_direction=settings.drift_direction,
        drift_min_change=settings.drift_min_change,
    )
    return pipeline, plan


def _apply_build_schedule(pipeline: Pipeline, settings: StreamSettings) -> None:
    """How a restored full model builds (STREAM_REBUILD_BACKGROUND / _NICE) is no part of
    what it learned: the current settings apply, as a freshly built model would have them."""
    for name, model in pipeline.models.items():
        if isinstance(model, RebuiltRecommender) and name in MODEL_REGISTRY:
            fresh = MODEL_REGISTRY[name](settings)
            assert isinstance(fresh, RebuiltRecommender)
            model.background, model.nice = fresh.background, fresh.nice


def _rebuilt(old: Pipeline, settings: StreamSettings, plan: RestorePlan) -> Pipeline:
    changed = {c.name for c in plan.applied}
    fresh = build_models(settings)
    relearn = set(plan.relearn)
    reuse_fallback = FALLBACK not in relearn
    models: dict[str, Recommender] = {}
    for wanted in settings.models:
        if wanted == "blend":
            models[wanted] = fresh[wanted]  # replaced below, once its components are chosen
        elif wanted in old.models and wanted not in relearn:
            models[wanted] = old.models[wanted]
        elif wanted == "popularity" and reuse_fallback:
            models[wanted] = old.fallback  # it learned every event the same way
        else:
            models[wanted] = fresh[wanted]
    if "blend" in models:
        blend = build_blend(settings, models)
        previous = old.models.get("blend")
        if "blend" not in changed and isinstance(previous, Blend):
            blend.carry_weights(previous)  # same components: the learned weights still hold
        models["blend"] = blend
    fallback = old.fallback if reuse_fallback else None
    pipeline = Pipeline(PipelineConfig.from_settings(settings), models, fallback=fallback)
    pipeline.built_with = built_with(settings)
    # The model sync's record of what the restored models hold (stream.sync): without it every
    # delta on the topic would be applied again. A model built new here starts its tracking
    # when the shard is synced (ShardSync).
    sync_state = getattr(old, "sync_state", None)
    if sync_state is not None:
        pipeline.sync_state = sync_state

    size = settings.history_size
    for user, seen in old.history.items():
        while len(seen) > size:
            del seen[next(iter(seen))]
        pipeline.history[user] = seen
    pipeline.run_count = old.run_count
    pipeline.evaluated_count = old.evaluated_count
    # The served model, its version and the reaction's state carry over, under the new settings.
    config = pipeline.config
    pipeline.updates = old.updates
    pipeline.retention = old.retention  # who was seen when (the memory limits)
    pipeline.updates.reconfigure(
        config.promotion_settings(), config.reaction_settings(), config.recommender, models
    )

    # What was learned or measured before and still means the same thing now.
    remeasured = bool(changed & {"top_k", "metric_window"})
    carried = {
        name
        for name in models
        if name in old.models
        and name not in relearn
        and not (name == "blend" and "blend" in changed)
        and not (name == "popularity" and old.models.get(name) is not models[name])
    }
    learned_all = max(old.learned.values(), default=0)
    for name, model in models.items():
        if name in carried or (name == "popularity" and model is old.fallback):
            pipeline.learned[name] = old.learned.get(name, learned_all)
            pipeline.model_seconds[name] = old.model_seconds.get(name, 0.0)
        if name in carried and not remeasured:
            pipeline.evaluators[name] = old.evaluators[name]
    if reuse_fallback and "popularity" not in models:
        seconds = old.model_seconds.get("_fallback_popularity", old.model_seconds.get("popularity"))
        pipeline.model_seconds["_fallback_popularity"] = seconds or 0.0

    if remeasured or changed & {"drift_detector", "drift_delta", "seed"}:
        return pipeline  # fresh detectors (the new Pipeline's)
    drift = old.drift
    drift.min_events = settings.drift_min_events
    drift.configure(settings.drift_direction, settings.drift_min_change)
    drift.forget_models({n for n in old.models if n not in carried or n not in pipeline.models})
    pipeline.drift = drift
    return pipeline
