"""Implicit-feedback matrix factorisation that learns to rank: online BPR."""

from __future__ import annotations

import logging
import math
import typing
from collections.abc import Hashable, Iterable
from itertools import repeat

import numpy as np

from stream.models._ranking import FloatArray, grow, remove_row, select
from stream.models.base import Recommender, Scored, scored_many

__all__ = ["BPR"]

logger = logging.getLogger(__name__)

_REASON_USER = "matches your taste"
_REASON_BIAS = "popular with everyone"


class BPR(Recommender):
    """Bayesian Personalised Ranking (Rendle et al., 2009), learned one event at a time.

    River's factorisations regress a target (the rating); this one learns an *order*: on each
    event ``(u, i)`` it draws ``negative_samples`` items ``j`` uniformly from the catalogue it
    knows and takes one SGD step on ``-log sigmoid(x_ui - x_uj)`` for each, with
    ``x_ui = p_u . q_i + b_i``. Every interaction counts as a positive whatever its type or
    rating (the counting models do the same); a draw of ``i`` itself is skipped. The negatives
    of one event are updated together (one numpy step over their rows), from River's
    convention of a seeded ``random.Random`` in ``self._rng``.

    :meth:`top_k` is ``Q @ p_u + b`` over the known items; an unknown user is ranked by the
    item biases alone (the items most often preferred to random ones: a popularity prior).
    :meth:`predict_one` is ``x_ui`` (a preference score, not a rating). :meth:`forget_user`
    deletes the user's vector.

    Parameters
    ----------
    n_factors
        Latent factors.
    learning_rate
        SGD step.
    l2
        L2 regularisation of the factors and biases.
    negative_samples
        Negatives drawn per event.
    init_std
        Standard deviation of the normal initialisation of the factors.
    seed
        Seeds the initialisation and the sampling.

    Examples
    --------
    >>> model = BPR(n_factors=4, seed=1)
    >>> for _ in range(30):
    ...     for user, item in [("ann", "x"), ("ann", "y"), ("bob", "x"), ("cat", "z")]:
    ...         model.learn_one(user, item, 1.0, {"implicit": True})
    >>> model.top_k("bob", 1, exclude={"x"})[0].item
    'y'
    >>> model.top_k("nobody", 1)[0].reason
    'popular with everyone'
    """

    def __init__(
        self,
        n_factors: int = 32,
        learning_rate: float = 0.05,
        l2: float = 0.002,
        negative_samples: int = 4,
        init_std: float = 0.1,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        if n_factors < 1 or negative_samples < 1:
            raise ValueError("n_factors and negative_samples must be at least 1")
        if not (learning_rate > 0 and l2 >= 0 and init_std > 0):
            raise ValueError("learning_rate and init_std must be > 0, l2 >= 0")
        self.n_factors = n_factors
        self.learning_rate = learning_rate
        self.l2 = l2
        self.negative_samples = negative_samples
        self.init_std = init_std
        self._np_rng = np.random.default_rng(seed)
        self._index: dict[Hashable, int] = {}
        self._items: list[Hashable] = []
        self._q: FloatArray = np.zeros((0, n_factors))
        self._b: FloatArray = np.zeros(0)
        self._users: dict[Hashable, FloatArray] = {}

    @property
    def n_users(self) -> int:
        return len(self._users)

    @property
    def n_items(self) -> int:
        return len(self._items)

    def _row(self, item: Hashable) -> int:
        row = self._index.get(item)
        if row is None:
            row = len(self._items)
            self._index[item] = row
            self._items.append(item)
            self._q = grow(self._q, row + 1)
            self._b = grow(self._b, row + 1)
            self._q[row] = self._np_rng.normal(0.0, self.init_std, self.n_factors)
        return row

    def learn_one(
        self,
        user: Hashable,
        item: Hashable,
        y: float,
        x: dict[str, typing.Any] | None = None,
    ) -> None:
        i = self._row(item)
        p = self._users.get(user)
        if p is None:
            p = self._users[user] = self._np_rng.normal(0.0, self.init_std, self.n_factors)
        n = len(self._items)
        if n < 2:
            return
        draw = self._rng.randrange
        negatives = [j for j in (draw(n) for _ in range(self.negative_samples)) if j != i]
        if not negatives:
            return
        js = np.array(negatives, dtype=np.intp)
        q, b, lr, l2 = self._q, self._b, self.learning_rate, self.l2
        q_i, q_j = q[i].copy(), q[js]
        diff = q_i - q_j  # (negatives x factors)
        x_uij = diff @ p + (b[i] - b[js])
        # d/dx of log sigmoid(x) = sigmoid(-x); numerically safe for large |x|.
        g = 1.0 / (1.0 + np.exp(np.clip(x_uij, -30.0, 30.0)))
        p_old = p.copy()
        p += lr * (g @ diff - l2 * p)
        q[i] += lr * (float(g.sum()) * p_old - l2 * q_i)
        step_q, step_b = lr * (g[:, None] * p_old + l2 * q_j), lr * (g + l2 * b[js])
        b[i] += lr * (float(g.sum()) - l2 * b[i])
        if len(set(negatives)) == len(negatives):  # the usual case: plain (faster) indexing
            q[js] -= step_q
            b[js] -= step_b
        else:  # a row drawn twice takes both steps
            np.subtract.at(q, js, step_q)
            np.subtract.at(b, js, step_b)
        if not math.isfinite(float(p[0])):
            raise FloatingPointError("BPR diverged: lower learning_rate")

    def predict_one(
        self, user: Hashable, item: Hashable, x: dict[str, typing.Any] | None = None
    ) -> float:
        """``p_u . q_i + b_i`` (the item bias alone for an unknown user; 0 for an unknown item)."""
        row = self._index.get(item)
        if row is None:
            return 0.0
        p = self._users.get(user)
        bias = float(self._b[row])
        return bias if p is None else float(self._q[row] @ p) + bias

    def top_k(self, user: Hashable, k: int, exclude: Iterable[Hashable] = ()) -> list[Scored]:
        n = len(self._items)
        if n == 0 or k <= 0:
            return []
        p = self._users.get(user)
        if p is None:
            scores, reason = self._b[:n].copy(), _REASON_BIAS
        else:
            scores, reason = self._q[:n] @ p + self._b[:n], _REASON_USER
        rows, values = select(scores, self._index, k, exclude)
        items = self._items
        return scored_many([items[r] for r in rows], values, repeat(reason, len(rows)))

    def forget_user(self, user: Hashable) -> None:
        """Delete the user's latent vector (item factors are aggregates and stay)."""
        self._users.pop(user, None)

    def forget_item(self, item: Hashable) -> None:
        self.forget_items((item,))

    def forget_items(self, items: Iterable[Hashable]) -> None:
        """Drop the items' factors and biases; the last row moves into a freed one (the
        arrays stay dense: nothing else refers to rows)."""
        for item in items:
            remove_row(self._index, self._items, item, (self._q, self._b))
