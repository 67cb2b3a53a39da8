"""Recency-weighted popularity: what everyone interacts with now."""

from __future__ import annotations

import bisect
import logging
import typing
from collections.abc import Hashable, Iterable

import numpy as np

from stream.models._ranking import DecayClock
from stream.models.base import (
    Recommender,
    Scored,
    delta_column,
    delta_item,
    delta_items,
    interaction_weight,
    wire_floats,
)

__all__ = ["Popularity"]

logger = logging.getLogger(__name__)

# Counts are stored multiplied by a global factor that grows by 2**(1/half_life) per event;
# past this they are divided back (O(items), every ~64 half-lives).
_RENORMALISE_AT = 2.0**64


class Popularity(DecayClock, Recommender):
    """Items ranked by an exponentially decayed count of their interactions.

    An interaction ``half_life`` events ago counts half as much as one now. Each event adds
    its weight times a global factor that grows by ``2 ** (1 / half_life)`` per event, so an
    update is O(1) and the ranking needs no decay pass; the stored counts are divided back
    when the factor gets large. Implicit events add their weight ``max(y, 0)`` (a purchase
    counts as much as five views by default); rating events add 1 whatever the rating, since
    the rating is an opinion about the item while this model ranks what gets interacted with.
    Without ``x`` the event counts as implicit.

    Decay scales every count alike, so only the incremented item changes place, and stored
    counts only grow: the ``head`` best items are kept sorted (a list, the item moving up by
    a slice shift as long as the places it gains) and an item outside the head enters it
    only when its own count passes the head's last, which then leaves. :meth:`top_k` walks
    the head, skipping excluded items; only when exclusions leave fewer than ``k`` of it
    (a user who interacted with most of the head) does it sort every count. So both
    :meth:`learn_one` and :meth:`top_k` cost the same at 2,000 items as at a million; the
    head is also the "trending" source of candidate retrieval (:mod:`stream.retrieval`).

    The counts are aggregates over all users: the model keeps nothing per user, so
    :meth:`forget_user` has nothing to remove. Scores are in "recent events": the decayed
    weighted count of the item.

    Parameters
    ----------
    half_life
        Events after which an interaction weighs half as much.
    head
        Best items kept sorted (more than a user's history plus the deepest ranking asked).

    Examples
    --------
    >>> model = Popularity(half_life=2.0)
    >>> for item in ["a", "a", "b", "c", "c", "c"]:
    ...     model.learn_one("someone", item, 1.0, {"implicit": True})
    >>> [(s.item, round(s.score, 2)) for s in model.top_k("anyone", 2)]
    [('c', 2.21), ('a', 0.43)]
    >>> [s.item for s in model.top_k("anyone", 2, exclude={"c"})]
    ['a', 'b']
    """

    # Item counts added since the last :meth:`item_delta` (scaled like ``_counts``), or None
    # while no delta is asked for; class-level so older pickles read None.
    _item_sync: dict[Hashable, float] | None = None
    _sync_events = 0  # ``_events`` at the last delta

    retrieves = True

    def __init__(self, half_life: float = 5_000.0, head: int = 1_000) -> None:
        super().__init__(seed=None)
        if not half_life > 0:
            raise ValueError(f"half_life must be positive, got {half_life}")
        if head < 1:
            raise ValueError(f"head must be at least 1, got {head}")
        self.half_life = half_life
        self.head = head
        self._growth = 2.0 ** (1.0 / half_life)
        self._scale = 1.0
        # Scaled counts of every item; ``_keys`` holds the ``head`` largest negated in
        # ascending order (best first), ``_ranked`` those items in the same order.
        self._counts: dict[Hashable, float] = {}
        self._keys: list[float] = []
        self._ranked: list[Hashable] = []
        self._events = 0

    def set_half_life(self, half_life: float) -> None:
        """Decay at a new rate from the next event on (what was learned keeps its weight)."""
        if not half_life > 0:
            raise ValueError(f"half_life must be positive, got {half_life}")
        self.half_life = half_life
        self._growth = 2.0 ** (1.0 / half_life)

    @property
    def events(self) -> int:
        """Events learned from."""
        return self._events

    @property
    def n_users(self) -> int:
        """Always 0: the model keeps no per-user state."""
        return 0

    @property
    def n_items(self) -> int:
        return len(self._counts)

    def learn_one(
        self,
        user: Hashable,
        item: Hashable,
        y: float,
        x: dict[str, typing.Any] | None = None,
    ) -> None:
        weight = interaction_weight(y, x)
        self._events += 1
        self._scale *= self._growth
        if self._scale > _RENORMALISE_AT:
            self._renormalise()
        sync = self._item_sync
        if sync is not None:  # changes shared with other shards (stream.sync)
            sync[item] = sync.get(item, 0.0) + weight * self._scale
        old = self._counts.get(item)
        if old is None:
            new = weight * self._scale
            self._counts[item] = new
            self._enter(item, new)
            return
        if weight <= 0.0:
            return
        new = old + weight * self._scale
        self._counts[item] = new
        self._raise(item, old, new)

    def _raise(self, item: Hashable, old: float, new: float) -> None:
        """Move ``item`` up the head now that its stored count went from ``old`` to ``new``."""
        keys, ranked = self._keys, self._ranked
        here = self._place(item, old)
        if here is None:  # outside the head: it enters only by passing the head's last
            self._enter(item, new)
            return
        # Up to before the first item with a count >= new (ties: the item goes after them).
        at = bisect.bisect_right(keys, -new, 0, here)
        if at < here:
            keys[at + 1 : here + 1] = keys[at:here]
            ranked[at + 1 : here + 1] = ranked[at:here]
            ranked[at] = item
        keys[at] = -new

    def _place(self, item: Hashable, count: float) -> int | None:
        """Where ``item`` (stored count ``count``) is in the head, or None if outside it."""
        keys, ranked = self._keys, self._ranked
        here = bisect.bisect_left(keys, -count)
        end = len(keys)
        while here < end and keys[here] == -count:  # equal counts: find the item among them
            if ranked[here] == item:
                return here
            here += 1
        return None

    def _enter(self, item: Hashable, count: float) -> None:
        """Put an item from outside the head into it if it scores above the head's last."""
        keys, ranked = self._keys, self._ranked
        if len(keys) >= self.head and -keys[-1] >= count:
            return
        at = bisect.bisect_right(keys, -count)
        keys.insert(at, -count)
        ranked.insert(at, item)
        if len(keys) > self.head:
            del keys[-1], ranked[-1]

    def __setstate__(self, state: dict[str, typing.Any]) -> None:
        # Pickled before the head existed (older checkpoints): every item was in the ranked
        # lists, best first; their first ``head`` are the head.
        self.__dict__.update(state)
        head = self.__dict__.setdefault("head", 1_000)
        del self._keys[head:], self._ranked[head:]

    def _renormalise(self) -> None:
        scale = self._scale
        self._keys = [key / scale for key in self._keys]
        self._counts = {item: count / scale for item, count in self._counts.items()}
        if self._item_sync is not None:
            self._item_sync = {item: count / scale for item, count in self._item_sync.items()}
        self._scale = 1.0

    def score_of(self, item: Hashable) -> float:
        """The decayed weighted count of ``item`` (0.0 for an unknown item)."""
        return self._counts.get(item, 0.0) / self._scale

    def predict_one(
        self, user: Hashable, item: Hashable, x: dict[str, typing.Any] | None = None
    ) -> float:
        """The item's decayed count: the same for every user."""
        return self.score_of(item)

    def top_k(self, user: Hashable, k: int, exclude: Iterable[Hashable] = ()) -> list[Scored]:
        if not isinstance(exclude, set | frozenset | dict):
            exclude = set(exclude)
        out: list[Scored] = []
        if k <= 0:
            return out
        scale = self._scale
        new = tuple.__new__  # the C constructor: NamedTuple's own __new__ is Python-level
        for key, item in zip(self._keys, self._ranked, strict=True):
            if key >= 0.0:  # the rest were only seen with weight 0
                break
            if item in exclude:
                continue
            out.append(new(Scored, (item, -key / scale, "popular now")))
            if len(out) == k:
                return out
        if len(self._ranked) < len(self._counts):
            return self._beyond_head(out, k, exclude)
        return out

    def _beyond_head(
        self,
        out: list[Scored],
        k: int,
        exclude: set[Hashable] | frozenset[Hashable] | dict[Hashable, typing.Any],
    ) -> list[Scored]:
        """The rest of a top-K the head could not fill (more excluded items than the head
        spares): one sort of every count, O(catalogue), taken only in that rare case."""
        have = {s.item for s in out}
        scale = self._scale
        rest = sorted(
            (
                (-count, item)
                for item, count in self._counts.items()
                if count > 0.0 and item not in have and item not in exclude
            ),
            key=lambda entry: entry[0],
        )
        for key, item in rest:
            out.append(Scored(item, -key / scale, "popular now"))
            if len(out) == k:
                break
        return out

    def forget_user(self, user: Hashable) -> None:
        """Nothing to do: only aggregated counts are kept, no per-user data."""

    def retrieve_one(
        self, user: Hashable, n: int, exclude: Iterable[Hashable] = ()
    ) -> list[Hashable]:
        """The trending items: those of ``top_k(user, n, exclude)``, read off the head."""
        if not isinstance(exclude, set | frozenset | dict):
            exclude = set(exclude)
        out: list[Hashable] = []
        if n <= 0:
            return out
        for key, item in zip(self._keys, self._ranked, strict=True):
            if key >= 0.0:
                return out
            if item not in exclude:
                out.append(item)
                if len(out) == n:
                    return out
        if len(self._ranked) < len(self._counts):
            return [s.item for s in self.top_k(user, n, exclude)]
        return out

    def forget_item(self, item: Hashable) -> None:
        self.forget_items((item,))

    def forget_items(self, items: Iterable[Hashable]) -> None:
        """Drop the items' counts (one pass over the ranking for all of them)."""
        gone = {item for item in items if self._counts.pop(item, None) is not None}
        if self._item_sync is not None:  # unshared counts of an evicted item leave with it
            for item in gone:
                self._item_sync.pop(item, None)
        if gone and any(item in gone for item in self._ranked):
            self._refill_head()

    def _refill_head(self) -> None:
        """The head again from every count (one sort): after an eviction from the head, an
        item outside it may now belong in it."""
        best = self.known_items()[: self.head]
        self._ranked = best
        self._keys = [-self._counts[item] for item in best]

    def known_items(self) -> list[Hashable]:
        """Every item the model counts, the most popular now first (one sort, O(catalogue))."""
        counts = self._counts
        head = {item: None for item in self._ranked if item in counts}
        rest = sorted((i for i in counts if i not in head), key=lambda i: -counts[i])
        return [*head, *rest]

    # --- sharing item state across shards (stream.sync) ---------------------------------

    @property
    def sync_tracking(self) -> bool:
        """Whether :meth:`item_delta` tracks changes (its first call starts it)."""
        return self._item_sync is not None

    def item_delta(self) -> dict[str, typing.Any]:
        """What this shard added since the last call, as plain data (tracking starts on the
        first call, which returns what was learned so far).

        ``items`` and ``counts`` (an array: float32 when the decay over the delta's events
        moves a count far more than float32 rounds, float64 and exact otherwise, see
        :func:`~stream.models.base.wire_floats`) are the items and their added counts
        in "decayed count as of now" (scale-free), and ``ticks`` the events learned since the
        last call: the receiver advances its decay clock by them, so every shard's clock is
        the total number of events learned by all.
        """
        pending = dict(self._counts) if self._item_sync is None else self._item_sync
        self._item_sync = {}
        scale = self._scale
        ticks = self._events - self._sync_events
        self._sync_events = self._events
        counts = np.fromiter(pending.values(), dtype=np.float64, count=len(pending)) / scale
        return {
            "ticks": ticks,
            "items": list(pending),
            "counts": wire_floats(counts, self._growth, ticks),
        }

    def check_item_delta(self, delta: dict[str, typing.Any]) -> None:
        """ValueError when :meth:`apply_item_delta` could not apply ``delta`` whole."""
        n = delta_items(delta)
        if n is not None:
            counts = delta_column(delta.get("counts"), n, "counts")
            if counts.size and counts.min() < 0:
                raise ValueError("a delta's counts: negative")

    def apply_item_delta(self, delta: dict[str, typing.Any]) -> None:
        """Add another shard's :meth:`item_delta`: advance the decay clock by its events,
        then add its counts (they are not part of this shard's next delta)."""
        self._scale *= self._growth ** int(delta["ticks"])
        if self._scale > _RENORMALISE_AT:
            self._renormalise()
        scale = self._scale
        if "items" not in delta:  # a version-1 delta: [item, count] rows
            for item, count in delta["counts"]:
                self._add_scaled(delta_item(item), float(count) * scale)
            return
        amounts = (np.asarray(delta["counts"], dtype=np.float64) * scale).tolist()
        for item, amount in zip(delta["items"], amounts, strict=True):
            self._add_scaled(delta_item(item), amount)

    def _add_scaled(self, item: Hashable, amount: float) -> None:
        """``_counts[item] += amount`` (``amount >= 0``), keeping the head sorted."""
        old = self._counts.get(item)
        if old is None:
            self._counts[item] = amount
            self._enter(item, amount)
            return
        if amount <= 0.0:
            return
        new = self._counts[item] = old + amount
        self._raise(item, old, new)

    def item_delta_light(self) -> dict[str, typing.Any]:
        """A light delta (``STREAM_MODEL_SYNC_FULL_EVERY``) is the whole :meth:`item_delta`:
        counts are the fast-moving part and cheap to send."""
        return self.item_delta()
