"""Test-then-learn accuracy: ranking metrics (HR@K, NDCG@K, MRR@K) and rating errors (MAE, RMSE).

Each model gets one :class:`ModelEvaluator` holding cumulative and windowed statistics, built
on River's ``metrics.MAE`` / ``metrics.RMSE`` and ``utils.Rolling`` (ranking means: the same
arithmetic as River's rolling ``stats.Mean``, fused into one update).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from river import metrics, utils

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


class _RankMeans:
    """Cumulative and rolling means of (hit, ndcg, mrr), three streams updated together.

    The arithmetic is exactly River's ``stats.Mean`` (``update``/``revert``) inside
    ``utils.Rolling`` (revert the oldest value once the window is full, then update), so the
    numbers are bit-identical to those objects', at one Python call per evaluation instead of
    six wrapped ones (tests/unit/test_evaluation_drift.py compares them).
    """

    __slots__ = ("cumulative", "n", "w_n", "window", "window_size", "windowed")

    def __init__(self, window_size: int) -> None:
        self.window_size = window_size
        self.window: deque[tuple[float, float, float]] = deque()
        self.n = 0.0
        self.w_n = 0.0
        self.cumulative = [0.0, 0.0, 0.0]
        self.windowed = [0.0, 0.0, 0.0]

    def update(self, hit: float, ndcg: float, mrr: float) -> None:
        values = (hit, ndcg, mrr)
        self.n += 1.0
        share = 1.0 / self.n
        cum = self.cumulative
        for i in range(3):
            cum[i] += share * (values[i] - cum[i])
        self.update_window(hit, ndcg, mrr)

    def update_window(self, hit: float, ndcg: float, mrr: float) -> None:
        """Only the rolling means (the same arithmetic as :meth:`update`'s): what a decision
        reads, for the model sync's replay of the other shards' evaluations."""
        values = (hit, ndcg, mrr)
        window, win = self.window, self.windowed
        if len(window) == self.window_size:
            old = window.popleft()
            self.w_n -= 1.0
            if self.w_n == 0:
                win[0] = win[1] = win[2] = 0.0
            else:
                share = 1.0 / self.w_n
                for i in range(3):
                    win[i] -= share * (old[i] - win[i])
        self.w_n += 1.0
        share = 1.0 / self.w_n
        for i in range(3):
            win[i] += share * (values[i] - win[i])
        window.append(values)


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
        self._rank = _RankMeans(window)
        self.mae, self.rmse = metrics.MAE(), metrics.RMSE()
        self.w_mae = utils.Rolling(metrics.MAE, window_size=window)
        self.w_rmse = utils.Rolling(metrics.RMSE, window_size=window)
        self.evaluated = 0
        self.rated = 0
        # Distinct items this model put in a top-K it was evaluated on (catalogue coverage).
        self.served: set[Hashable] = set()

    def update_rank(self, outcome: RankOutcome) -> None:
        self.evaluated += 1
        self._rank.update(outcome.hit, outcome.ndcg, outcome.mrr)

    def update_rating(self, y_true: float, y_pred: float) -> None:
        self.rated += 1
        for metric in (self.mae, self.rmse, self.w_mae, self.w_rmse):
            metric.update(y_true, y_pred)

    @property
    def in_window(self) -> int:
        """Evaluations the windowed ranking metrics cover now (at most ``window``)."""
        return len(self._rank.window)

    def windowed_rank(self) -> tuple[float, float, float]:
        """Windowed (HR, NDCG, MRR) as plain floats: a cheap read for a per-event policy."""
        win = self._rank.windowed
        return win[0], win[1], win[2]

    def recent_hit_rate(self, n: int) -> float | None:
        """Hit rate over the last ``n`` evaluations of the window (fewer if it holds fewer)."""
        window = self._rank.window
        if not window or n <= 0:
            return None
        taken = min(n, len(window))
        return sum(v[0] for v in itertools.islice(reversed(window), taken)) / taken

    def cumulative(self) -> ModelMetrics:
        return self._metrics(self._rank.cumulative, self.mae, self.rmse)

    def windowed(self) -> ModelMetrics:
        return self._metrics(self._rank.windowed, self.w_mae, self.w_rmse)

    def _metrics(self, rank: list[float], mae: object, rmse: object) -> ModelMetrics:
        ranked = self.evaluated > 0
        rated = self.rated > 0
        return ModelMetrics(
            hit_rate=rank[0] if ranked else None,
            ndcg=rank[1] if ranked else None,
            mrr=rank[2] if ranked else None,
            mae=_value(mae) if rated else None,
            rmse=_value(rmse) if rated else None,
            evaluated=self.evaluated,
            rated=self.rated,
        )

    def window_hits(self) -> list[float]:
        """The hits (1.0 or 0.0) of the evaluations in the window, oldest first.

        >>> ev = ModelEvaluator(window=2)
        >>> for ranked in (["x"], ["y"], ["x"]):
        ...     ev.update_rank(rank_outcome(ranked, "x"))
        >>> ev.window_hits()
        [0.0, 1.0]
        """
        return [hit for hit, _, _ in self._rank.window]

    def last_outcome(self) -> RankOutcome | None:
        """The outcome of the last ranking evaluation (None before the first): what the model
        sync shares of it (:mod:`stream.updates.evidence`)."""
        window = self._rank.window
        if not window:
            return None
        hit, ndcg, mrr = window[-1]
        return RankOutcome(hit, ndcg, mrr)

    def update_window(self, outcome: RankOutcome) -> None:
        """Add ``outcome`` to the windowed ranking metrics only (not to the cumulative ones,
        nor to ``evaluated``): the decision windows of :mod:`stream.updates.evidence`."""
        self._rank.update_window(outcome.hit, outcome.ndcg, outcome.mrr)
