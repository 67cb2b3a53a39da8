"""The reaction to drift: when the served model's detector fires *and* its accuracy fell.

Real logs are never stationary: ADWIN raises a detection every few hundred events on an
e-commerce log without injected drift, on increases of the hit rate as well as on falls. A
detection therefore only *arms* the reaction; it fires if, within ``arm_events`` evaluated
events, the served model's hit rate over its last ``recent_events`` evaluations is below
``1 - drop`` times its windowed level one window before the detection (a level the drift has
not touched yet). After a reaction, detections are ignored for ``cooldown_events`` events.

What a reaction does, for ``span_events`` evaluated events (then the settings come back):

- blends are left as they are: their online (Hedge) weights already move to the components
  that recover first, within a few hundred evaluations; resetting them or shortening their
  half-life was measured to make the served blend worse after a drift (``benchmarks/updates.py``);
- models with a decay (``set_half_life``: popularity, knn) forget ``speedup`` times faster;
- models that rebuild from a window (``request_rebuild``) are asked to rebuild now, from the
  post-drift events.

A challenger that recovers faster than the served model takes over through the ordinary
promotion policy. Promoting on less evidence after a reaction was tried and measured worse:
right after a drift the model that fell least leads for a while (bpr, on the synthetic stream),
is promoted, and then stays served after the blend has recovered past it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.evaluation import ModelEvaluator
from stream.models.blend import Blend

__all__ = ["DriftReaction", "Reaction", "ReactionSettings"]

logger = logging.getLogger(__name__)

_SAMPLE_EVERY = 100  # evaluated events between two samples of the served windowed HR
SAMPLE_EVERY = _SAMPLE_EVERY  # (what the shared evidence's replay decides at, stream.updates)


@dataclass(frozen=True, slots=True)
class ReactionSettings:
    """The reaction's knobs (``STREAM_DRIFT_REACTION*``)."""

    enabled: bool = True
    drop: float = 0.40
    recent_events: int = 300
    arm_events: int = 1_000
    cooldown_events: int = 10_000
    span_events: int = 5_000
    speedup: float = 4.0


@dataclass(slots=True)
class Reaction:
    """One reaction (the core turns it into a published record)."""

    model: str
    evaluated: int
    detected_at_event: int
    before: float
    recent: float
    actions: list[str] = field(default_factory=list)


class DriftReaction:
    """Arms on the served model's ``miss`` detections, confirms with evidence, reacts.

    ``restore`` holds what the reaction changed (model -> original half-life) until the span
    ends; all of it is plain data, so a checkpoint carries a reaction in progress.
    """

    def __init__(self, settings: ReactionSettings, window: int) -> None:
        if not (0 < settings.drop < 1 and settings.speedup >= 1):
            raise ValueError("drift reaction drop must be in (0, 1) and speedup >= 1")
        self.settings = settings
        self.window = window
        # (evaluated count, served windowed HR), one sample every _SAMPLE_EVERY evaluations.
        self._samples: deque[tuple[int, float]] = deque(maxlen=2 * window // _SAMPLE_EVERY + 2)
        self._armed: tuple[int, int, float] | None = None  # (until evaluated, event, level)
        self._quiet_until = 0  # evaluated count: no reaction before it (cool-down)
        self._span_until = 0
        self.restore: dict[str, float | None] = {}
        self.reactions = 0
        self.detections_seen = 0

    def _level_before(self, evaluated: int) -> float | None:
        """The served windowed HR sampled about one window before ``evaluated``."""
        target = evaluated - self.window
        level = None
        for at, value in self._samples:
            if at > target:
                break
            level = value
        return level

    def observe_one(
        self,
        served: str,
        evaluator: ModelEvaluator,
        evaluated: int,
        detected_at: int | None,
    ) -> tuple[float, float, int] | None:
        """After one evaluated event of the served model (``detected_at``: the event index when
        its ``miss`` detector fired on it). Returns (before, recent, detection event) when a
        reaction is due; the caller then calls :meth:`react`."""
        s = self.settings
        if not s.enabled:
            return None
        if evaluated % _SAMPLE_EVERY == 0 and evaluator.in_window >= self.window:
            self._samples.append((evaluated, evaluator.windowed_rank()[0]))
        if detected_at is not None:
            self.detections_seen += 1
            if evaluated >= self._quiet_until and self._armed is None:
                level = self._level_before(evaluated)
                if level is not None and level > 0:
                    self._armed = (evaluated + s.arm_events, detected_at, level)
        armed = self._armed
        if armed is None:
            return None
        until, event, level = armed
        if evaluated > until:
            self._armed = None
            return None
        recent = evaluator.recent_hit_rate(s.recent_events)
        if recent is None or evaluator.in_window < s.recent_events:
            return None
        if recent >= (1.0 - s.drop) * level:
            return None
        self._armed = None
        self._quiet_until = evaluated + s.cooldown_events
        return level, recent, event

    def react(
        self, models: Mapping[str, Any], evaluated: int, reason: str, keep: float = 1.0
    ) -> list[str]:
        """Apply the reaction to ``models``; returns what was done, one phrase per action.

        ``keep`` (the served hit rate now over its level before: the evidence of how much of
        what was learned still holds) discounts the past of every model with a ``discount``
        at once: a hit rate fallen to a tenth weighs what was learned a tenth.

        Blends are left alone: their Hedge weights already follow the components' outcomes
        with a half-life of a few hundred evaluations, and resetting or shortening it was
        measured to hurt (flatter weights serve the weak components more; see
        ``benchmarks/updates.py``).
        """
        s = self.settings
        actions: list[str] = []
        self.end_span(models)  # a new reaction starts from the configured settings
        for name, model in models.items():
            if isinstance(model, Blend):
                continue
            if keep < 1.0 and hasattr(model, "discount"):
                model.discount(keep)
                actions.append(f"{name}: past weighted x{keep:.2f}")
            if hasattr(model, "set_half_life") and getattr(model, "half_life", None):
                self.restore[name] = model.half_life
                model.set_half_life(model.half_life / s.speedup)
                actions.append(f"{name}: half-life {model.half_life:g}")
            if hasattr(model, "request_rebuild"):
                model.request_rebuild(reason)
                actions.append(f"{name}: rebuild requested")
        self._span_until = evaluated + s.span_events
        self.reactions += 1
        return actions

    def maybe_end_span(self, models: Mapping[str, Any], evaluated: int) -> None:
        if self.restore and evaluated >= self._span_until:
            self.end_span(models)

    def end_span(self, models: Mapping[str, Any]) -> None:
        """Put the configured half-lives back."""
        for name, half_life in self.restore.items():
            model = models.get(name)
            if model is not None and half_life is not None:
                model.set_half_life(half_life)
        self.restore.clear()
