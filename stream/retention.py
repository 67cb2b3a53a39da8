"""Bounded memory: which users expire and which items are evicted, at O(1) per event.

:class:`Retention` only decides; the :class:`~stream.core.Pipeline` removes what it names
from its history and from every model (``forget_user`` / ``forget_items``). It knows nothing
of models, Kafka or Prometheus: the counts it keeps reach the metrics records, and the worker
exports them.

- **TTL** (event time): a user whose last event is more than ``ttl_seconds`` older than the
  newest event time seen is expired. Users are kept in an ordered dict by last arrival, so
  expiry pops from its old end; with out-of-order timestamps a user behind a fresher one
  waits until that one goes (and the event's own user is always checked).
- **User cap** (LRU): past ``max_users`` the least recently seen user is expired.
- **Item cap** (LRU): past ``max_items`` the least recently seen items are evicted, a batch of
  ``1 + max_items // 32`` at once, so a model's sweep of references to them is amortised.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Literal

__all__ = ["Expired", "Retention"]

logger = logging.getLogger(__name__)

Expired = tuple[Hashable, Literal["ttl", "cap"]]


class Retention:
    """Last-seen bookkeeping of users and items, and the expiry counters.

    Off (no bookkeeping, nothing kept) until a limit is set.

    Examples
    --------
    >>> r = Retention(ttl_seconds=10.0, max_users=2)
    >>> r.expired_before("a", 0.0), r.seen_one("a", "x", 0.0)
    ([], ([], []))
    >>> r.seen_one("b", "x", 5.0), r.seen_one("c", "y", 6.0)
    (([], []), (['a'], []))
    >>> r.expired_before("c", 15.5)
    ['b']
    >>> r.expired_ttl, r.expired_cap, r.held_users
    (1, 1, 1)
    """

    def __init__(
        self,
        ttl_seconds: float | None = None,
        max_users: int | None = None,
        max_items: int | None = None,
    ) -> None:
        self.ttl_seconds: float | None = None
        self.max_users: int | None = None
        self.max_items: int | None = None
        # Last event time per user, least recently seen first; items likewise (no value).
        self._users: OrderedDict[Hashable, float] = OrderedDict()
        self._items: OrderedDict[Hashable, None] = OrderedDict()
        self.newest = -math.inf
        self.expired_ttl = 0
        self.expired_cap = 0
        self.evicted_items = 0
        self.configure(ttl_seconds, max_users, max_items)

    def configure(
        self,
        ttl_seconds: float | None,
        max_users: int | None,
        max_items: int | None,
        users: Iterable[Hashable] = (),
        items: Iterable[Hashable] = (),
    ) -> None:
        """Set the limits (``None``, or a TTL of 0: off).

        ``users`` / ``items`` are what the pipeline holds already (a restored checkpoint):
        those not tracked yet are adopted as seen at the newest event time (least recent
        first, in the given order), so a limit switched on later applies to them too.
        """
        if ttl_seconds is not None and not ttl_seconds >= 0:
            raise ValueError(f"ttl_seconds must be >= 0 or None, got {ttl_seconds}")
        for name, cap in (("max_users", max_users), ("max_items", max_items)):
            if cap is not None and cap < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {cap}")
        self.ttl_seconds = ttl_seconds or None
        self.max_users, self.max_items = max_users, max_items
        if self.tracks_users:
            now = self.newest if math.isfinite(self.newest) else 0.0
            known = self._users
            adopted = [u for u in users if u not in known]
            for user in adopted:
                known[user] = now
                known.move_to_end(user, last=False)
        else:
            self._users.clear()
        if self.max_items is not None:
            known_items = self._items
            for item in [i for i in items if i not in known_items]:
                known_items[item] = None
                known_items.move_to_end(item, last=False)
        else:
            self._items.clear()

    @property
    def tracks_users(self) -> bool:
        return self.ttl_seconds is not None or self.max_users is not None

    @property
    def active(self) -> bool:
        """Whether any limit is set (the pipeline skips all of this otherwise)."""
        return self.tracks_users or self.max_items is not None

    @property
    def held_users(self) -> int:
        """Users tracked (the pipeline's users, when a user limit is set)."""
        return len(self._users)

    @property
    def held_items(self) -> int:
        return len(self._items)

    def expired_before(self, user: Hashable, timestamp: float) -> list[Hashable]:
        """Users expired by the TTL now that an event of ``user`` at ``timestamp`` arrives.

        Called before the event is learned: when ``user`` is among them, they are a cold user
        for this event.
        """
        if timestamp > self.newest:
            self.newest = timestamp
        ttl = self.ttl_seconds
        if ttl is None:
            return []
        cutoff = self.newest - ttl
        users = self._users
        gone: list[Hashable] = []
        while users:
            oldest, last = next(iter(users.items()))
            if last >= cutoff:
                break
            users.popitem(last=False)
            gone.append(oldest)
        last_seen = users.get(user)
        if last_seen is not None and last_seen < cutoff:  # out of order: not at the old end
            del users[user]
            gone.append(user)
        self.expired_ttl += len(gone)
        return gone

    def seen_one(
        self, user: Hashable, item: Hashable, timestamp: float
    ) -> tuple[list[Hashable], list[Hashable]]:
        """Record the event; the users expired by the cap and the items evicted by theirs."""
        over_users: list[Hashable] = []
        if self.tracks_users:
            users = self._users
            users[user] = max(timestamp, users.pop(user, timestamp))
            cap = self.max_users
            if cap is not None:
                while len(users) > cap:
                    over_users.append(users.popitem(last=False)[0])
                self.expired_cap += len(over_users)
        over_items: list[Hashable] = []
        cap = self.max_items
        if cap is not None:
            items = self._items
            if item in items:
                items.move_to_end(item)
            else:
                items[item] = None
            if len(items) > cap:  # also when a restore adopted more than a lowered cap
                for _ in range(min(len(items) - cap + cap // 32, len(items) - 1)):
                    over_items.append(items.popitem(last=False)[0])
                self.evicted_items += len(over_items)
        return over_users, over_items

    def discard_user(self, user: Hashable) -> None:
        """``user`` left by other means (a privacy request): no longer tracked."""
        self._users.pop(user, None)

    def discard_item(self, item: Hashable) -> None:
        self._items.pop(item, None)
