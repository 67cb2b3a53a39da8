"""Shared helpers of the models: growable row storage and a fast top-k over a score vector.

``np.argpartition`` over a few thousand scores costs ~20 µs here, as much as the rest of a
model's ``top_k``. :func:`best_rows` instead takes the ``m``-th largest score of a strided
sample as a threshold: at least ``m`` scores of the full vector are at or above it, so the
``m`` best are among the (few) rows that pass, and only those get sorted.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sized
from itertools import repeat
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "DecayClock",
    "FloatArray",
    "IntArray",
    "best_rows",
    "grow",
    "remove_row",
    "select",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

_SMALL = 256  # below this many scores a plain sort is as fast as anything clever
_EMPTY_ROWS: IntArray = np.empty(0, dtype=np.intp)


def grow(array: npt.NDArray[Any], needed: int) -> npt.NDArray[Any]:
    """``array`` with room for at least ``needed`` rows (capacity doubles; zero-filled)."""
    capacity = array.shape[0]
    if needed <= capacity:
        return array
    new_capacity = max(needed, 2 * capacity, 16)
    bigger = np.zeros((new_capacity, *array.shape[1:]), dtype=array.dtype)
    bigger[:capacity] = array
    return bigger


def remove_row(
    index: dict[Hashable, int],
    items: list[Hashable],
    item: Hashable,
    arrays: Iterable[npt.NDArray[Any]],
) -> None:
    """Remove ``item``'s row: the last row moves into it, so the rows stay dense (for models
    where nothing else refers to rows). An unknown item is ignored."""
    row = index.pop(item, None)
    if row is None:
        return
    last = len(items) - 1
    moved = items.pop()
    arrays = list(arrays)
    if row != last:
        items[row] = moved
        index[moved] = row
        for array in arrays:
            array[row] = array[last]
    for array in arrays:
        array[last] = 0


def _sorted_best(scores: FloatArray, rows: IntArray, m: int) -> IntArray:
    """``rows`` (ascending) ordered by decreasing score (ties: lower row first), cut to ``m``."""
    if rows.shape[0] > 4 * m and rows.shape[0] > _SMALL:
        values = scores[rows]
        cut = -np.partition(-values, m - 1)[m - 1]  # the m-th largest
        above = rows[values > cut]
        rows = np.concatenate((above, rows[values == cut][: m - above.shape[0]]))
    order = np.argsort(-scores[rows], kind="stable")
    best: IntArray = rows[order[:m]]
    return best


def best_rows(scores: FloatArray, m: int) -> IntArray:
    """Rows of the ``m`` largest finite scores, best first (ties: lower row first).

    Fewer rows if there are fewer finite scores.

    Examples
    --------
    >>> best_rows(np.array([0.1, 3.0, np.nan, 2.0, -np.inf]), 3).tolist()
    [1, 3, 0]
    """
    n = scores.shape[0]
    if m <= 0 or n == 0:
        return _EMPTY_ROWS
    if n > _SMALL and 8 * m < n:
        stride = max(2, int(math.sqrt(n / m) / 2))
        sample = scores[::stride]
        size = sample.shape[0]
        if size > m:
            threshold = np.partition(sample, size - m)[size - m]
            if math.isfinite(threshold):
                rows = np.flatnonzero(scores >= threshold)
                # Heavy ties at the threshold would make the candidate set large; then the
                # argpartition in _sorted_best still bounds the sort.
                return _sorted_best(scores, rows, m)
    rows = np.flatnonzero(np.isfinite(scores))
    return _sorted_best(scores, rows, m) if rows.shape[0] else _EMPTY_ROWS


def select(
    scores: FloatArray,
    index: Mapping[Any, int],
    k: int,
    exclude: Iterable[Hashable],
    positive_only: bool = False,
) -> tuple[list[int], list[float]]:
    """The rows and scores of the ``k`` best items not in ``exclude``, best first.

    ``scores`` is a scratch vector (excluded rows are overwritten) with
    ``scores[index[item]]`` the score of ``item``. With ``positive_only`` only rows scoring
    above 0 are candidates (they are gathered first: a partition over a vector full of equal
    values is several times slower). Masking costs one dict lookup per excluded item;
    skipping them after ranking instead was measured slower whenever a user's history holds
    the most popular items, the common case.

    Examples
    --------
    >>> select(np.array([1.0, 3.0, 2.0]), {"a": 0, "b": 1, "c": 2}, 2, {"b"})
    ([2, 0], [2.0, 1.0])
    >>> select(np.array([0.0, 3.0, 2.0]), {"a": 0, "b": 1, "c": 2}, 3, (), positive_only=True)
    ([1, 2], [3.0, 2.0])
    """
    n = scores.shape[0]
    if k <= 0 or n == 0:
        return [], []
    if not isinstance(exclude, Sized) or len(exclude):
        masked = np.fromiter(map(index.get, exclude, repeat(n)), dtype=np.intp)
        scores[masked[masked < n]] = -np.inf
    if positive_only:
        candidates = np.flatnonzero(scores > 0.0)
        picked = candidates[best_rows(scores[candidates], k)]
    else:
        picked = best_rows(scores, k)
    return picked.tolist(), scores[picked].tolist()


class DecayClock:
    """What a model that decays with a growth scale (``_scale``: the weight of its next
    event; ``_renormalise``: divide everything by it once it grows large) gains:
    :meth:`discount`. Popularity and ItemKNN keep such a clock."""

    _scale: float
    _RENORMALISE_AT: ClassVar[float] = 2.0**64

    def _renormalise(self) -> None:  # pragma: no cover - every model with a clock has one
        raise NotImplementedError

    def discount(self, factor: float) -> None:
        """Weigh everything learned so far ``factor`` times what it weighed, at once (0 <
        factor <= 1): the events that follow count 1 / factor times more than before against
        it. The drift reaction's lever when the evidence says the past is mostly wrong.

        >>> from stream.models.popularity import Popularity
        >>> model = Popularity(half_life=100.0)
        >>> model.discount(0.5)
        >>> model._scale
        2.0
        """
        if not 0 < factor <= 1:
            raise ValueError(f"discount factor must be in (0, 1], got {factor}")
        self._scale /= factor
        if self._scale > self._RENORMALISE_AT:
            self._renormalise()
