"""Test-then-learn accuracy: ranking metrics (HR@K, NDCG@K, MRR@K) and rating errors (MAE, RMSE).

Each model gets one :class:`ModelEvaluator` holding cumulative and windowed statistics, built
on River's ``stats.Mean`` / ``metrics.MAE`` / ``metrics.RMSE`` and ``utils.Rolling``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from river import metrics, stats, utils

from stream.events import ModelMetrics

__all__ = ["ModelEvaluator", "RankOutcome", "rank_outcome"]


@dataclass(frozen=True, slots=True)
class RankOutcome:
    """Where the event's item stood in the top-K the model would have served."""

    hit: float
    ndcg: float
    mrr: float


def rank_outcome(ranked: Sequence[Hashable], item: Hashable) -> RankOutcome:
    """Score one top-K list against the item the user actually chose.

    >>> rank_outcome(["a", "b", "c"], "b")
    RankOutcome(hit=1.0, ndcg=0.6309297535714575, mrr=0.5)
    >>> rank_outcome(["a"], "z").hit
    0.0
    """
    for position, candidate in enumerate(ranked):
        if candidate == item:
            return RankOutcome(1.0, 1.0 / math.log2(position + 2), 1.0 / (position + 1))
    return RankOutcome(0.0, 0.0, 0.0)


def _value(metric: object) -> float | None:
    value = metric.get()  # type: ignore[attr-defined]
    return None if value is None else float(value)


class ModelEvaluator:
    """Cumulative and windowed (last ``window`` evaluations) accuracy of one model.

    >>> ev = ModelEvaluator(window=2)
    >>> for ranked in (["x"], ["y"], ["x"]):
    ...     ev.update_rank(rank_outcome(ranked, "x"))
    >>> ev.cumulative().hit_rate, ev.windowed().hit_rate
    (0.6666666666666666, 0.5)
    """

    def __init__(self, window: int = 1_000) -> None:
        self.window = window
        self.hit, self.ndcg, self.mrr = stats.Mean(), stats.Mean(), stats.Mean()
        self.w_hit = utils.Rolling(stats.Mean, window_size=window)
        self.w_ndcg = utils.Rolling(stats.Mean, window_size=window)
        self.w_mrr = utils.Rolling(stats.Mean, window_size=window)
        self.mae, self.rmse = metrics.MAE(), metrics.RMSE()
        self.w_mae = utils.Rolling(metrics.MAE, window_size=window)
        self.w_rmse = utils.Rolling(metrics.RMSE, window_size=window)
        self.evaluated = 0
        self.rated = 0
        # Distinct items this model put in a top-K it was evaluated on (catalogue coverage).
        self.served: set[Hashable] = set()

    def update_rank(self, outcome: RankOutcome) -> None:
        self.evaluated += 1
        for cum, win, value in (
            (self.hit, self.w_hit, outcome.hit),
            (self.ndcg, self.w_ndcg, outcome.ndcg),
            (self.mrr, self.w_mrr, outcome.mrr),
        ):
            cum.update(value)
            win.update(value)

    def update_rating(self, y_true: float, y_pred: float) -> None:
        self.rated += 1
        for metric in (self.mae, self.rmse, self.w_mae, self.w_rmse):
            metric.update(y_true, y_pred)

    def cumulative(self) -> ModelMetrics:
        return self._metrics(self.hit, self.ndcg, self.mrr, self.mae, self.rmse)

    def windowed(self) -> ModelMetrics:
        return self._metrics(self.w_hit, self.w_ndcg, self.w_mrr, self.w_mae, self.w_rmse)

    def _metrics(
        self, hit: object, ndcg: object, mrr: object, mae: object, rmse: object
    ) -> ModelMetrics:
        ranked = self.evaluated > 0
        rated = self.rated > 0
        return ModelMetrics(
            hit_rate=_value(hit) if ranked else None,
            ndcg=_value(ndcg) if ranked else None,
            mrr=_value(mrr) if ranked else None,
            mae=_value(mae) if rated else None,
            rmse=_value(rmse) if rated else None,
            evaluated=self.evaluated,
            rated=self.rated,
        )
