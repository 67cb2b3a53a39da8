"""Champion / challenger: which configured model is served, decided on the windowed metric.

Every model is scored prequentially (test-then-learn) on every evaluated event, so the
evidence is already there: the policy only reads each model's windowed metric after each
evaluated event and switches the served recommender (the *champion*) when a challenger has
beaten it by a relative ``margin`` for ``min_events`` evaluated events in a row. A promoted
challenger is the champion from then on, and is itself replaced the same way (a switch back
is just another promotion).

Why these defaults (``margin`` 0.10, ``min_events`` 2,000 with a 1,000-event window): a
windowed hit rate over ``W`` events has a standard deviation of about ``sqrt(p (1 - p) / W)``,
about 11 % of ``p`` for ``p = 0.08`` and ``W = 1,000``; two models with no real difference
still lead each other by 5 % for hundreds of events at a time. Requiring the lead for two
windows' worth of fresh evaluations makes a promotion between equal models rare
(``benchmarks/updates.py`` measures it: two copies of one model under different seeds).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from stream.evaluation import ModelEvaluator

__all__ = ["METRICS", "Promotion", "PromotionPolicy", "PromotionSettings"]

logger = logging.getLogger(__name__)

PromotionMetric = Literal["hr", "ndcg", "mrr"]
METRICS: dict[str, int] = {"hr": 0, "ndcg": 1, "mrr": 2}  # index in windowed_rank()


@dataclass(frozen=True, slots=True)
class PromotionSettings:
    """The policy's knobs (``STREAM_PROMOTION*``)."""

    enabled: bool = True
    metric: PromotionMetric = "hr"
    margin: float = 0.10
    min_events: int = 2_000


@dataclass(frozen=True, slots=True)
class Promotion:
    """One decision of the policy (the core turns it into a published record)."""

    from_model: str
    to_model: str
    evaluated: int
    from_value: float
    to_value: float
    lead_events: int


class PromotionPolicy:
    """Keeps the champion and each challenger's unbroken lead over it.

    Parameters
    ----------
    settings
        Metric, margin and minimum evidence.
    champion
        The model served at start (``STREAM_RECOMMENDER``).
    challengers
        Every model that may be promoted (the champion may be among them).

    Examples
    --------
    >>> from stream.evaluation import ModelEvaluator, rank_outcome
    >>> evs = {"a": ModelEvaluator(window=50), "b": ModelEvaluator(window=50)}
    >>> policy = PromotionPolicy(PromotionSettings(min_events=100), "a", list(evs))
    >>> decisions = []
    >>> for n in range(1, 301):
    ...     evs["a"].update_rank(rank_outcome(["x"] if n % 4 == 0 else [], "x"))  # HR 0.25
    ...     evs["b"].update_rank(rank_outcome(["x"] if n % 2 == 0 else [], "x"))  # HR 0.5
    ...     decisions += [d for d in [policy.observe_one(evs, n)] if d is not None]
    >>> [(d.from_model, d.to_model, d.evaluated) for d in decisions], policy.champion
    ([('a', 'b', 149)], 'b')
    """

    def __init__(self, settings: PromotionSettings, champion: str, challengers: list[str]) -> None:
        if settings.metric not in METRICS:
            raise ValueError(f"unknown promotion metric {settings.metric!r}; {sorted(METRICS)}")
        if not settings.margin >= 0 or settings.min_events < 1:
            raise ValueError("promotion margin must be >= 0 and min_events >= 1")
        self.settings = settings
        self.champion = champion
        self.challengers = [c for c in challengers if c != champion] + [champion]
        self._index = METRICS[settings.metric]
        # Challenger -> evaluated count at which its current unbroken lead began.
        self._leading_since: dict[str, int] = {}
        self.promotions = 0

    def observe_one(
        self, evaluators: Mapping[str, ModelEvaluator], evaluated: int
    ) -> Promotion | None:
        """Update the leads after one evaluated event; a promotion when one is due."""
        if not self.settings.enabled:
            return None
        need = self.settings.min_events
        evidence = min(need, evaluators[self.champion].window)
        index = self._index

        def measured(name: str) -> tuple[int, float]:
            evaluator = evaluators[name]
            return evaluator.in_window, evaluator.windowed_rank()[index]

        n_champion, base = measured(self.champion)
        if n_champion < evidence:
            return None
        bar = base * (1.0 + self.settings.margin)
        leading = self._leading_since
        best: tuple[float, str] | None = None
        for name in self.challengers:
            if name == self.champion:
                continue
            n, value = measured(name)
            if n < evidence or value <= bar or value <= base:
                leading.pop(name, None)
                continue
            since = leading.setdefault(name, evaluated)
            if evaluated - since + 1 >= need and (best is None or value > best[0]):
                best = (value, name)
        if best is None:
            return None
        value, name = best
        decision = Promotion(
            from_model=self.champion,
            to_model=name,
            evaluated=evaluated,
            from_value=base,
            to_value=value,
            lead_events=evaluated - leading[name] + 1,
        )
        self.champion = name
        self.promotions += 1
        leading.clear()
        return decision
