"""EASE rebuilt from a sliding window: a closed-form item-item model of the frequent items."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.linalg
import scipy.sparse as sp

from stream.models._ranking import FloatArray, IntArray
from stream.models.rebuilt import Pair, RebuiltRecommender, Snapshot, encode_window

__all__ = ["EASE"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class _ItemWeights(Snapshot):
    """The item-item weights ``B`` (items x items): a user's scores are ``x_u B``."""

    weights: npt.NDArray[np.float32]

    def score(self, rows: IntArray, weights: FloatArray) -> FloatArray:
        return (weights.astype(np.float32) @ self.weights[rows]).astype(np.float64)


class EASE(RebuiltRecommender):
    """EASE (Steck, 2019), rebuilt from the last ``window`` interactions.

    A build keeps the window's ``max_items`` most frequent items (by distinct users; ties: the
    first seen), their binary user-item matrix ``X``, and solves EASE in closed form in
    float32: ``P = (X^T X + l2 I)^-1``, ``B = I - P diag(1 / diag P)`` (a zero diagonal: an item
    does not recommend itself). A user's scores are ``x_u B`` over their *live* recent history
    (1 per item, their last ``history`` items), so their new events count at once. Items
    outside the kept ones are not recommended until a build keeps them. Cost: ``max_items``
    squared floats (36 MB at 3,000) and one ``max_items``-sized inverse per build.

    Parameters
    ----------
    l2
        The L2 penalty ``lambda`` (larger: smoother, closer to co-occurrence counts).
    max_items
        Most frequent items of the window kept in the build.
    window, every, min_events, history, background, nice, recency, seed
        See :class:`~stream.models.rebuilt.RebuiltRecommender` (the build draws nothing).

    Examples
    --------
    >>> model = EASE(l2=1.0, min_events=5, background=False)
    >>> for user, item in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x")]:
    ...     model.learn_one(user, item, 1.0, {"implicit": True})
    >>> model.top_k("c", 1, exclude={"x"})
    [Scored(item='y', score=0.5, reason='people with your recent items chose it')]
    >>> model.top_k("stranger", 1), model.n_items
    ([], 2)
    """

    def __init__(
        self,
        l2: float = 200.0,
        max_items: int = 3_000,
        window: int = 100_000,
        every: int = 10_000,
        min_events: int = 1_000,
        history: int = 100,
        background: bool = True,
        nice: int = 15,
        recency: float = 0.9,
        seed: int | None = None,
    ) -> None:
        if not l2 > 0 or max_items < 1:
            raise ValueError("l2 must be positive and max_items at least 1")
        self.l2 = l2
        self.max_items = max_items
        super().__init__(
            window=window,
            every=every,
            min_events=min_events,
            history=history,
            background=background,
            nice=nice,
            recency=recency,
            seed=seed,
        )

    def build(self, pairs: Sequence[Pair]) -> Snapshot:
        users, items, keys = encode_window(pairs)
        n_items = len(keys)
        # Distinct (user, item) pairs: an interaction counts once.
        cells = np.unique(users * n_items + items)
        users, items = cells // n_items, cells % n_items
        counts = np.bincount(items, minlength=n_items)
        kept = np.argsort(-counts, kind="stable")[: self.max_items]
        row_of = np.full(n_items, -1, dtype=np.intp)
        row_of[kept] = np.arange(kept.shape[0])
        mine = row_of[items] >= 0
        x = sp.csr_matrix(
            (np.ones(int(mine.sum()), dtype=np.float32), (users[mine], row_of[items[mine]])),
            shape=(int(users.max()) + 1, kept.shape[0]),
        )
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += np.float32(self.l2)
        # LU + getri: measured 0.7 s against 5.8 s for numpy's solve-based inverse at 3,000.
        p = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        b = p / -np.diag(p)
        np.fill_diagonal(b, 0.0)
        b = np.ascontiguousarray(b, dtype=np.float32)
        b.flags.writeable = False
        kept_items = tuple(keys[i] for i in kept.tolist())
        index: dict[Hashable, int] = {item: row for row, item in enumerate(kept_items)}
        return _ItemWeights(kept_items, index, b)
