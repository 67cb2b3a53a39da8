"""Yardsticks for the quality suite: item-KNN references as issue #10 defines them.

These are measuring sticks, not product models: they live with the benchmark, are added to
the pipeline next to the registered models and never published. Both follow the same
protocol as every model (River ``learn_one`` / ``predict_one`` plus ``top_k``), so the
pipeline evaluates them exactly like the others.

- :class:`PlainItemKNN`, the *plain item-KNN reference*: binary co-occurrence of items among
  each user's last 20 distinct items, similarity ``c_ij / sqrt(n_i n_j)``, a candidate's score
  the sum of its similarities to the user's last 20 items. Nothing else, no pruning.
- :class:`RecencyItemKNN`, the issue's recency variant: the most recent history item counts
  1 and each older one 0.85 times the next; a co-occurrence of items ``d`` positions apart in
  the user's window counts ``0.9 ** d``; similarity ``c_hj / (n_h ** 0.7 * n_j ** 0.3)``
  (``h`` the history item, ``j`` the candidate). The issue reports HR@10 0.202 on ML-100K.

Bookkeeping shared by both: when a user interacts with an item ``j`` that is not among their
last 20 distinct items, ``c[j][h]`` and ``c[h][j]`` grow (by 1, or by ``0.9 ** d``) for every
``h`` in the window and ``n_j`` (how many user windows ``j`` has entered) by 1; ``j`` joins
the window as its most recent item and the oldest beyond 20 drops out. A re-interaction with
an item already in the window makes it the most recent without counting anything.
"""

from __future__ import annotations

import typing
from collections.abc import Hashable, Iterable

import numpy as np
import numpy.typing as npt

from stream.models.base import Recommender, Scored

__all__ = ["PlainItemKNN", "RecencyItemKNN"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]


class _Row:
    """One item's co-occurrence row: growable parallel arrays plus a column -> slot map."""

    __slots__ = ("cols", "size", "slot", "vals")

    def __init__(self) -> None:
        self.cols: IntArray = np.zeros(8, dtype=np.intp)
        self.vals: FloatArray = np.zeros(8)
        self.size = 0
        self.slot: dict[int, int] = {}

    def add(self, col: int, value: float) -> None:
        at = self.slot.get(col)
        if at is None:
            at = self.size
            if at == self.cols.shape[0]:
                self.cols = np.concatenate((self.cols, np.zeros(at, dtype=np.intp)))
                self.vals = np.concatenate((self.vals, np.zeros(at)))
            self.slot[col] = at
            self.cols[at] = col
            self.size = at + 1
        self.vals[at] += value


class _WindowItemKNN(Recommender):
    """Co-occurrence within each user's last ``window`` distinct items (see the module doc).

    ``pair_decay`` weighs a co-occurrence of items ``d`` positions apart by
    ``pair_decay ** d``; ``history_decay`` weighs the user's ``p``-th most recent item (0 = the
    most recent) by ``history_decay ** p`` when scoring; ``alpha`` splits the normalisation
    ``c_hj / (n_h ** alpha * n_j ** (1 - alpha))``.
    """

    def __init__(
        self,
        window: int = 20,
        pair_decay: float = 1.0,
        history_decay: float = 1.0,
        alpha: float = 0.5,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.pair_decay = pair_decay
        self.history_decay = history_decay
        self.alpha = alpha
        self._index: dict[Hashable, int] = {}
        self._items: list[Hashable] = []
        self._rows: list[_Row] = []
        self._entered: FloatArray = np.zeros(16)  # n_i
        # Per user: item rows, oldest first (a dict as an ordered set).
        self._windows: dict[Hashable, dict[int, None]] = {}
        self._pair_weights = [pair_decay**d for d in range(window + 1)]
        self._history_weights = np.array([history_decay**p for p in range(window)])
        self._version = 0
        self._cached: tuple[Hashable, int, FloatArray | None] | None = None

    @property
    def n_users(self) -> int:
        return len(self._windows)

    @property
    def n_items(self) -> int:
        return len(self._items)

    def learn_one(
        self,
        user: Hashable,
        item: Hashable,
        y: float,
        x: dict[str, typing.Any] | None = None,
    ) -> None:
        self._version += 1
        j = self._index.get(item)
        if j is None:
            j = self._index[item] = len(self._items)
            self._items.append(item)
            self._rows.append(_Row())
            if j == self._entered.shape[0]:
                self._entered = np.concatenate((self._entered, np.zeros(j)))
        window = self._windows.get(user)
        if window is None:
            window = self._windows[user] = {}
        if j in window:
            del window[j]
            window[j] = None
            return
        row_j, rows, weights = self._rows[j], self._rows, self._pair_weights
        for d, h in enumerate(reversed(window), start=1):
            w = weights[d]
            row_j.add(h, w)
            rows[h].add(j, w)
        self._entered[j] += 1.0
        window[j] = None
        if len(window) > self.window:
            del window[next(iter(window))]

    def _scores(self, user: Hashable) -> FloatArray | None:
        cached = self._cached
        if cached is not None and cached[0] == user and cached[1] == self._version:
            return cached[2]
        window = self._windows.get(user)
        found: FloatArray | None = None
        if window:
            recent = list(reversed(window))  # most recent first
            rows = [self._rows[h] for h in recent]
            n = len(self._items)
            entered = self._entered[:n]
            scale = self._history_weights[: len(recent)] / entered[recent] ** self.alpha
            cols = np.concatenate([r.cols[: r.size] for r in rows])
            if cols.shape[0]:
                parts = [r.vals[: r.size] * s for r, s in zip(rows, scale, strict=True)]
                vals = np.concatenate(parts)
                summed = typing.cast(FloatArray, np.bincount(cols, weights=vals, minlength=n))
                found = summed / entered ** (1.0 - self.alpha)
        self._cached = (user, self._version, found)
        return found

    def predict_one(
        self, user: Hashable, item: Hashable, x: dict[str, typing.Any] | None = None
    ) -> float:
        """The user's score for ``item`` (0.0 for an unknown user or item)."""
        row = self._index.get(item)
        scores = self._scores(user) if row is not None else None
        return 0.0 if scores is None or row is None else float(scores[row])

    def top_k(self, user: Hashable, k: int, exclude: Iterable[Hashable] = ()) -> list[Scored]:
        scores = self._scores(user)
        if scores is None or k <= 0:
            return []
        scores = scores.copy()
        index = self._index
        masked = [r for r in map(index.get, exclude) if r is not None]
        if masked:
            scores[masked] = 0.0
        candidates = np.flatnonzero(scores > 0.0)
        values = scores[candidates]
        if candidates.shape[0] > k:
            cut = np.partition(values, values.shape[0] - k)[values.shape[0] - k]
            keep = values >= cut
            candidates, values = candidates[keep], values[keep]
        # Best first; ties by the order the items were first seen (stable for any depth).
        order = np.argsort(-values, kind="stable")[:k]
        items = self._items
        picked = zip(candidates[order].tolist(), values[order].tolist(), strict=True)
        return [Scored(items[r], v) for r, v in picked]

    def forget_user(self, user: Hashable) -> None:
        """Drop the user's window (co-occurrence counts are aggregates and stay)."""
        self._windows.pop(user, None)
        self._version += 1
        self._cached = None


class PlainItemKNN(_WindowItemKNN):
    """The plain item-KNN reference of issue #10 (binary co-occurrence, cosine, sum).

    Examples
    --------
    >>> model = PlainItemKNN()
    >>> for user, item in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x")]:
    ...     model.learn_one(user, item, 1.0)
    >>> model.top_k("c", 2, exclude={"x"})  # c_xy = 2, n_x = 3, n_y = 2: 2 / sqrt(6)
    [Scored(item='y', score=0.8164..., reason=None)]
    >>> model.top_k("stranger", 3)
    []
    """

    def __init__(self, window: int = 20, seed: int | None = None) -> None:
        super().__init__(window=window, seed=seed)


class RecencyItemKNN(_WindowItemKNN):
    """The recency-weighted item-KNN reference of issue #10.

    Examples
    --------
    >>> model = RecencyItemKNN()
    >>> for user, item in [("a", "x"), ("a", "y"), ("a", "z"), ("b", "x")]:
    ...     model.learn_one(user, item, 1.0)
    >>> # c_xy = 0.9 (adjacent), c_xz = 0.81 (two apart), n_x = 2, n_y = n_z = 1
    >>> [(s.item, round(s.score, 4)) for s in model.top_k("b", 2, exclude={"x"})]
    [('y', 0.554), ('z', 0.4986)]
    """

    def __init__(
        self,
        window: int = 20,
        pair_decay: float = 0.9,
        history_decay: float = 0.85,
        alpha: float = 0.7,
        seed: int | None = None,
    ) -> None:
        super().__init__(window, pair_decay, history_decay, alpha, seed)
