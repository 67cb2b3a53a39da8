"""Learned rank fusion: an online listwise linear model over the components' rankings."""

from __future__ import annotations

import logging
import math
import operator
import typing
from collections.abc import Hashable, Sequence

import numpy as np

from stream.models.base import Scored

__all__ = ["FEATURES", "LearnedFusion"]

logger = logging.getLogger(__name__)

FEATURES = ("dcg", "listed", "reciprocal", "score")
"""Per component, what an item at (1-based) rank ``r`` of its list shows: ``1 / log2(1 + r)``,
``1`` (it is listed at all), ``1 / r`` and its score rescaled to [0, 1] between the last and
the first of the list (1 for a list of equal scores); an unlisted item shows zeros. Besides,
an item listed by ``n >= 2`` components gets a learned bonus for that agreement."""


def _basis(depth: int) -> np.ndarray:
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    return np.stack([1.0 / np.log2(1.0 + ranks), np.ones(depth), 1.0 / ranks], axis=1)


class LearnedFusion:
    """The score of an item: ``sum_c coef[c] . features_c(item) + agreement[n - 2]``.

    Each component ``c`` has one coefficient per feature (:data:`FEATURES`): how much a
    high rank, a mere presence, a top rank and a high score in its list count; an item
    listed by ``n >= 2`` components adds ``agreement[n - 2]`` (agreement between
    components is evidence beyond the sum of their votes). The rank features' share of a
    component is a table by rank, so fusing costs about what reciprocal-rank fusion costs.

    :meth:`update_one` is one step of gradient ascent on the log-likelihood of a softmax
    over the fused candidates (every item some component lists): the consumed item's
    features minus their expectation under the fused scores. No sampling, so it is
    deterministic; an outcome outside every list teaches nothing. The
    coefficients start at ``prior`` on the first feature (a rank fusion weighted by the
    priors) and follow drift at a constant rate.

    Parameters
    ----------
    priors
        One non-negative prior weight per component, in fusion order.
    depth
        The depth of the lists fused (a deeper list gets its deeper ranks' shares computed
        for that call).
    learning_rate
        Step size of the gradient ascent.

    Examples
    --------
    >>> fusion = LearnedFusion([1.0, 1.0], depth=2, learning_rate=0.5)
    >>> a, b = [Scored("x", 1.0), Scored("y", 0.5)], [Scored("y", 1.0), Scored("z", 0.5)]
    >>> for _ in range(20):  # the second list is right every time
    ...     _ = fusion.update_one([a, b], fusion.fused([a, b], 2), "y")
    >>> ranked = fusion.fused([a, b], 2)
    >>> max(ranked, key=lambda item: ranked[item][0])
    'y'
    >>> bool(fusion.tables[1][0] > fusion.tables[0][0])
    True
    """

    def __init__(self, priors: Sequence[float], depth: int, learning_rate: float) -> None:
        if not (depth >= 1 and learning_rate >= 0):
            raise ValueError("depth must be >= 1 and learning_rate >= 0")
        top = max(priors, default=0.0)
        self.coef = np.zeros((len(priors), len(FEATURES)))
        if top > 0:
            self.coef[:, 0] = np.asarray(priors, dtype=np.float64) / top
        self.agreement = np.zeros(max(len(priors) - 1, 1))
        self.learning_rate = learning_rate
        self.updates = 0  # outcomes learned from (the consumed item was a candidate)
        self._depth = depth
        self._refresh()

    def _refresh(self) -> None:
        # Python floats, not arrays: the fusion reads them one by one.
        basis = _basis(self._depth)
        self._dcg, self._reciprocal = basis[:, 0].tolist(), basis[:, 2].tolist()
        # Component -> rank -> share of the rank features.
        self.tables: list[list[float]] = (basis @ self.coef[:, :3].T).T.tolist()
        self._score_weights: list[float] = self.coef[:, 3].tolist()
        # Listed by n components -> bonus (none for 0 or 1).
        self._bonus: list[float] = [0.0, 0.0, *self.agreement.tolist()]

    def fused(
        self,
        rankings: Sequence[Sequence[Scored]],
        depth: int,
        names: Sequence[str | None] | None = None,
    ) -> dict[Hashable, list[typing.Any]]:
        """Item -> ``[score, best contribution, reason of the best contributor, lists]``
        over the first ``depth`` items of each ranking (one per component, in fusion order);
        an item without a reason takes its best contributor's name from ``names``."""
        tables = self.tables
        if depth > self._depth:  # a deeper list than learned on (predict_one): this call only
            tables = (_basis(depth) @ self.coef[:, :3].T).T.tolist()
        fused: dict[Hashable, list[typing.Any]] = {}
        labels = names if names is not None else [None] * len(rankings)
        for m, (ranking, name) in enumerate(zip(rankings, labels, strict=True)):
            head = ranking[:depth]
            if not head:
                continue
            shares = tables[m][: len(head)]
            weight = self._score_weights[m]
            if weight:
                scores = [scored.score for scored in head]
                low, high = min(scores), max(scores)
                if high > low and math.isfinite(high - low):
                    unit = weight / (high - low)
                    shares = [t + (v - low) * unit for t, v in zip(shares, scores, strict=True)]
                else:
                    shares = [t + weight for t in shares]
            for share, scored in zip(shares, head, strict=True):
                entry = fused.get(scored.item)
                if entry is None:
                    fused[scored.item] = [share, share, scored.reason or name, 1]
                else:
                    entry[0] += share
                    entry[3] += 1
                    if share > entry[1]:
                        entry[1], entry[2] = share, scored.reason or name
        bonus = self._bonus
        if any(bonus):
            for entry in fused.values():
                entry[0] += bonus[entry[3]]
        return fused

    def update_one(
        self,
        rankings: Sequence[Sequence[Scored]],
        fused: dict[Hashable, list[typing.Any]],
        item: Hashable,
    ) -> bool:
        """One softmax step towards ``item`` given the rankings made before it was chosen
        and their :meth:`fused` scores; False (and nothing learned) if it was no candidate."""
        if item not in fused or not self.learning_rate:
            return False
        # A softmax over a hundred-odd candidates: plain floats cost less than arrays here.
        scores = [entry[0] for entry in fused.values()]
        top = max(scores)
        weights = [math.exp(score - top) for score in scores]
        norm = 1.0 / sum(weights)
        prob = dict(zip(fused, [w * norm for w in weights], strict=True))
        depth = max((len(ranking) for ranking in rankings), default=0)
        dcg, reciprocal = self._dcg, self._reciprocal
        if depth > self._depth:
            basis = _basis(depth)
            dcg, reciprocal = basis[:, 0].tolist(), basis[:, 2].tolist()
        grad: list[list[float]] = []
        for ranking in rankings:
            if not ranking:
                grad.append([0.0] * len(FEATURES))
                continue
            p = [prob[scored.item] for scored in ranking]
            values = [scored.score for scored in ranking]
            low, high = min(values), max(values)
            spread = high - low if high > low and math.isfinite(high - low) else 0.0
            mass = sum(p)
            row = [
                -sum(map(operator.mul, p, dcg)),
                -mass,
                -sum(map(operator.mul, p, reciprocal)),
                -(sum(map(operator.mul, p, values)) - low * mass) / spread if spread else -mass,
            ]
            for rank, scored in enumerate(ranking):
                if scored.item == item:
                    row[0] += dcg[rank]
                    row[1] += 1.0
                    row[2] += reciprocal[rank]
                    row[3] += (values[rank] - low) / spread if spread else 1.0
                    break
            grad.append(row)
        agree = [0.0] * len(self.agreement)
        for key, weight in prob.items():
            listed = fused[key][3]
            if listed >= 2:
                agree[listed - 2] -= weight
        if fused[item][3] >= 2:
            agree[fused[item][3] - 2] += 1.0
        self.coef += self.learning_rate * np.asarray(grad)
        self.agreement += self.learning_rate * np.asarray(agree)
        self.updates += 1
        self._refresh()
        return True
