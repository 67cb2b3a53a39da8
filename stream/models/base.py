"""The one interface every recommender here implements.

Every model is a River ranker (``learn_one(user, item, y, x=None)``, ``predict_one``,
``rank``), so River's own ``reco`` models plug in and ours can be used from River. On top of
River's interface, :meth:`Recommender.top_k` ranks the whole catalogue with a vectorised
numpy operation (River's ``rank`` is one Python call per item) and never grows the model
for an unknown user or item; :meth:`Recommender.forget_user` serves privacy requests.

``x`` passed to ``learn_one`` by the pipeline carries ``{"event_type": str, "implicit": bool,
"timestamp": float}``; ``y`` is the rating for rating events and the configured weight for
implicit ones.
"""

from __future__ import annotations

import abc
import typing
from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

from river.reco.base import Ranker

__all__ = ["Recommender", "Scored", "delta_item", "delta_value", "scored_many"]


def interaction_weight(y: float, x: dict[str, typing.Any] | None) -> float:
    """How much an interaction counts for the counting models (popularity, KNN).

    A rating (``x["implicit"]`` false) counts 1 whatever its value; an implicit event, or a
    plain River call without ``x``, counts its target ``y`` (never below 0).

    >>> interaction_weight(4.5, {"implicit": False}), interaction_weight(3.0, None)
    (1.0, 3.0)
    """
    return 1.0 if x is not None and not x.get("implicit", True) else max(float(y), 0.0)


class Scored(NamedTuple):
    """A ranked item with its score and, where the model can say, why it was recommended."""

    item: Hashable
    score: float
    reason: str | None = None


def scored_many(
    items: Iterable[Hashable], scores: Iterable[float], reasons: Iterable[str | None]
) -> list[Scored]:
    """``[Scored(i, s, r) for i, s, r in zip(items, scores, reasons)]``, built by the C tuple
    constructor instead of ``NamedTuple``'s Python-level ``__new__`` (about half the cost;
    rankings build tens of these per event).

    >>> scored_many(["a", "b"], [2.0, 1.0], [None, "why"])
    [Scored(item='a', score=2.0, reason=None), Scored(item='b', score=1.0, reason='why')]
    """
    new = tuple.__new__
    return [new(Scored, entry) for entry in zip(items, scores, reasons, strict=True)]


class Recommender(Ranker):  # type: ignore[misc]
    """Base class: a River ``Ranker`` with a vectorised, side-effect-free ``top_k``.

    Subclasses set ``predicts_ratings = True`` when ``predict_one`` estimates a rating on the
    scale it learned (then the evaluator reports MAE/RMSE for them).
    """

    predicts_ratings: typing.ClassVar[bool] = False
    # Whether top_k costs the same at any catalogue size and may feed candidate retrieval
    # (stream/retrieval.py): such a model is ranked with top_k in both retrieval modes.
    retrieves: typing.ClassVar[bool] = False

    @abc.abstractmethod
    def top_k(self, user: Hashable, k: int, exclude: Iterable[Hashable] = ()) -> list[Scored]:
        """The ``k`` best items for ``user`` not in ``exclude``, best first.

        A deeper list begins with the shallower one (``top_k(u, k, e) == top_k(u, m, e)[:k]``
        for ``m >= k``, ties included): the pipeline ranks a blend's components once, deep
        enough for the blend, and evaluates each on the head of that list.

        Must not create state for an unknown ``user`` (cold users get whatever the model can
        offer, possibly an empty list) and must cost O(1) Python calls in the catalogue size.
        """

    @abc.abstractmethod
    def forget_user(self, user: Hashable) -> None:
        """Remove everything the model keeps about ``user`` (privacy requests)."""

    def forget_item(self, item: Hashable) -> None:
        """Remove everything the model keeps about ``item`` (the item cap, STREAM_MAX_ITEMS).

        Afterwards the model neither recommends ``item`` nor holds a reference to it (in a
        user's history, a neighbour list, a similarity); seen again, it is a new item. The
        default raises: a model keeping per-item state must say how it lets go of it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot forget an item")

    def forget_items(self, items: Iterable[Hashable]) -> None:
        """:meth:`forget_item` for each of ``items``; models whose references to an item
        take a sweep of their state override it to sweep once for all of them."""
        for item in items:
            self.forget_item(item)

    @property
    @abc.abstractmethod
    def n_users(self) -> int:
        """Users the model has learned about."""

    @property
    @abc.abstractmethod
    def n_items(self) -> int:
        """Items the model can recommend."""

    def rank(
        self, user: Hashable, items: set[Hashable], x: dict[str, typing.Any] | None = None
    ) -> list[Hashable]:
        """River's ``rank``: the given items by decreasing preference (vectorised via ``top_k``)."""
        items = set(items)
        ranked = [s.item for s in self.top_k(user, self.n_items + len(items)) if s.item in items]
        seen = set(ranked)
        # Items the model does not know keep their (arbitrary but stable) order at the end.
        return ranked + sorted((i for i in items if i not in seen), key=str)

    def top_k_among(
        self,
        user: Hashable,
        k: int,
        candidates: Sequence[Hashable],
        exclude: Iterable[Hashable] = (),
    ) -> list[Scored]:
        """The ``k`` best of ``candidates`` for ``user`` not in ``exclude``, best first.

        The second stage of two-stage recommendation (:mod:`stream.retrieval`): the same
        scores and order as :meth:`top_k`, restricted to ``candidates`` (so with every known
        item as a candidate it equals :meth:`top_k`, and a deeper list begins with the
        shallower one). This default ranks the whole catalogue and filters it, which is exact
        but not cheaper than :meth:`top_k`; the models served by default (popularity, knn,
        sequence, biased_mf / funk_mf, blend) score only the candidates instead.
        """
        if k <= 0 or not candidates:
            return []
        excluded = exclude if isinstance(exclude, set | frozenset | dict) else set(exclude)
        wanted = {c for c in candidates if c not in excluded}
        out: list[Scored] = []
        if not wanted:
            return out
        for scored in self.top_k(user, self.n_items, excluded):
            if scored.item in wanted:
                out.append(scored)
                if len(out) == k:
                    break
        return out

    def retrieve_one(
        self, user: Hashable, n: int, exclude: Iterable[Hashable] = ()
    ) -> list[Hashable]:
        """The items of ``top_k(user, n, exclude)`` (a retrieval source may skip the scores
        and reasons)."""
        return [s.item for s in self.top_k(user, n, exclude)]


def delta_item(item: typing.Any) -> Hashable:
    """An item id as read back from an item-state delta (:mod:`stream.sync`): JSON has no
    tuples, so a list becomes one again.

    >>> delta_item(["a", 1]), delta_item("x")
    (('a', 1), 'x')
    """
    return tuple(item) if isinstance(item, list) else typing.cast(Hashable, item)


def delta_value(value: float, digits: int = 10) -> float:
    """A float of an item-state delta, cut to ``digits`` significant digits: the deltas go
    through Kafka as text, and the last digits of a float64 weigh more than the rest after
    compression (10 digits leave a relative error of 5e-11 per entry; factor changes, which
    asynchronous SGD makes approximate anyway, use 6).

    >>> delta_value(1 / 3), delta_value(1 / 3, 6)
    (0.3333333333, 0.333333)
    """
    return float(f"{value:.{digits}g}")


def wire_floats(values: typing.Any, growth: float, ticks: int) -> typing.Any:
    """Decayed counts of an item-state delta as they travel: float32 when the decay clock
    moves a value by more than 1,024 times float32's rounding (2 ** -24) over the delta's own
    ``ticks`` events, float64 (exact) otherwise.

    With decay the receivers' ages of an event are off by up to the shards' interval anyway
    (what the other shards learned in it), so the 6e-8 of a float32 is far below what the
    merge already carries and saves a third of a co-occurrence's bytes; without decay (or a
    half-life so long that the interval moves them by little) counts stay float64 and a P-shard run
    still equals one partition's bit for bit. Values that float32 cannot hold (an overflow,
    or a non-zero that would become 0) keep float64.

    >>> import numpy as np
    >>> v = np.array([1 / 3, 2.0])
    >>> wire_floats(v, 2.0 ** (1 / 5_000), 10).dtype, wire_floats(v, 1.0, 10).dtype
    (dtype('float32'), dtype('float64'))
    >>> wire_floats(v, 2.0 ** (1 / 1e12), 10_000).dtype  # moves less than float32 rounds
    dtype('float64')
    >>> wire_floats(v, 2.0 ** (1 / 5e6), 10).dtype  # moves it, but not 1,024 times as much
    dtype('float64')
    >>> wire_floats(np.array([1e-60, 1.0]), 2.0 ** (1 / 5_000), 10).dtype
    dtype('float64')
    """
    import numpy as np

    if (growth - 1.0) * max(ticks, 1) <= 2.0**-14:
        return values
    small = values.astype(np.float32)
    tiny = np.abs(values) < np.finfo(np.float32).tiny  # (would lose precision or become 0)
    if not bool(np.all(np.isfinite(small))) or bool(np.any(tiny & (values != 0))):
        return values
    return small


def delta_items(delta: dict[str, typing.Any]) -> int | None:
    """The checks every counting model's ``check_item_delta`` starts with: ``ticks`` a count
    of events, ``items`` (the version-2 form) a list. Returns how many items it names, None
    for a version-1 delta (rows of items and values). ValueError otherwise.

    >>> delta_items({"ticks": 3, "items": ["a", "b"]})
    2
    >>> delta_items({"ticks": -1})
    Traceback (most recent call last):
    ...
    ValueError: a delta's ticks: not a count
    """
    if not isinstance(delta.get("ticks"), int) or delta["ticks"] < 0:
        raise ValueError("a delta's ticks: not a count")
    if "items" not in delta:
        return None
    if not isinstance(delta["items"], list):
        raise ValueError("a delta's items: not a list")
    return len(delta["items"])


def delta_column(
    value: typing.Any, length: int | None, name: str, *, index_below: int | None = None
) -> typing.Any:
    """A numeric column of an item-state delta, checked before anything of the delta is
    applied (``check_item_delta``): one dimension, ``length`` entries (when given), finite
    values, or integer indices in ``[0, index_below)``. ValueError otherwise.

    >>> delta_column([1.0, 2.0], 2, "counts").tolist()
    [1.0, 2.0]
    >>> delta_column([1.0, float("nan")], 2, "counts")
    Traceback (most recent call last):
    ...
    ValueError: a delta's counts: not 2 finite numbers
    """
    import numpy as np

    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros((0, 0))
    ok = array.ndim == 1 and (length is None or len(array) == length)
    if ok and index_below is not None:
        ok = bool(
            np.all(array == np.floor(array)) and np.all(array >= 0) and np.all(array < index_below)
        )
        what = f"indices below {index_below}"
    else:
        ok = ok and bool(np.all(np.isfinite(array)))
        what = f"{'' if length is None else f'{length} '}finite numbers"
    if not ok:
        raise ValueError(f"a delta's {name}: not {what}")
    return array
