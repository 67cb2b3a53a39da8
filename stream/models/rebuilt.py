"""Full updates: models rebuilt from a sliding window of recent events, in the background.

A :class:`RebuiltRecommender` keeps the last ``window`` ``(user, item)`` interactions and, every
``every`` events (the first time once ``min_events`` were learned) or when asked
(:meth:`~RebuiltRecommender.request_rebuild`), builds an immutable :class:`Snapshot` from a copy
of the window. The build runs in a background thread — numpy / scipy code that releases the GIL
(BLAS, LAPACK, ARPACK), limited to one BLAS thread and at a lower CPU priority (``nice``, on
Linux), so the event loop keeps its core — and is swapped in at the first event after it
finished, by one attribute assignment, with ``version + 1``. Between rebuilds a user's score
comes from their *live* recent history (``history`` items, updated on every event: a cheap
fold-in), so a new event of theirs counts at once; an item new since the last build waits for
the next one.

With ``background=False`` a build runs inline, at the event that triggers it: results are then
reproducible (``stream evaluate`` does this unless ``STREAM_REBUILD_BACKGROUND`` says
otherwise); in the background the swap happens at the first event after the build finished,
which depends on timing.

Builds of every rebuilt model of the process run one at a time (one lock): on a small machine
two concurrent builds would only slow each other and the loop.
"""

from __future__ import annotations

import abc
import logging
import os
import sys
import threading
import time
import typing
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat

import numpy as np
from threadpoolctl import threadpool_limits

from stream.models._ranking import FloatArray, IntArray, select
from stream.models.base import Recommender, Scored, interaction_weight, scored_many

__all__ = ["RebuiltRecommender", "Snapshot", "encode_window"]

logger = logging.getLogger(__name__)

# Rebuild records kept (one every ``every`` events: 1,000 cover 20M events at the default).
_KEEP_REBUILDS = 1_000
# One build at a time in the whole process (and one BLAS thread each: see threadpool_limits).
_BUILD_LOCK = threading.Lock()

Pair = tuple[Hashable, Hashable]


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """A built model: immutable, shared by reference, swapped in whole.

    ``items[r]`` is the item of row ``r`` (``index`` the reverse). Subclasses hold what was
    built and implement :meth:`score`; this base is the empty build (it scores nothing).
    """

    items: tuple[Hashable, ...]
    index: dict[Hashable, int]

    def score(self, rows: IntArray, weights: FloatArray) -> FloatArray:
        """Every row's score for a user whose recent items are ``rows`` (with ``weights``)."""
        return np.zeros(len(self.items))


EMPTY = Snapshot((), {})


def encode_window(pairs: Sequence[Pair]) -> tuple[IntArray, IntArray, list[Hashable]]:
    """The window as (user codes, item codes, items by code), codes by first appearance.

    >>> users, items, keys = encode_window([("a", "x"), ("b", "y"), ("a", "y")])
    >>> users.tolist(), items.tolist(), keys
    ([0, 1, 0], [0, 1, 1], ['x', 'y'])
    """
    user_codes: dict[Hashable, int] = {}
    item_codes: dict[Hashable, int] = {}
    n = len(pairs)
    # setdefault(key, len(codes)) numbers keys by first appearance in one C call per pair.
    users = np.fromiter(
        (user_codes.setdefault(u, len(user_codes)) for u, _ in pairs), dtype=np.intp, count=n
    )
    items = np.fromiter(
        (item_codes.setdefault(i, len(item_codes)) for _, i in pairs), dtype=np.intp, count=n
    )
    return users, items, list(item_codes)


class _Build:
    """One build in flight: a daemon thread and its outcome (read once the thread is done)."""

    def __init__(
        self, job: typing.Callable[[], Snapshot], started_at: int, reason: str, nice: int = 0
    ) -> None:
        self.started_at = started_at
        self.nice = nice
        self.reason = reason
        self.events_in_window = 0
        self.result: Snapshot | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._job = job
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        with _BUILD_LOCK, threadpool_limits(limits=1, user_api="blas"):
            started = time.perf_counter()
            try:
                self.result = self._job()
            except Exception as exc:  # reported by the model on the loop's thread
                self.error = exc
            self.seconds = time.perf_counter() - started

    def start(self) -> None:
        self._thread = threading.Thread(target=self._background, name="stream-rebuild", daemon=True)
        self._thread.start()

    def _background(self) -> None:
        _lower_priority(self.nice)
        self.run()

    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done()


def _lower_priority(nice: int) -> None:
    """A lower CPU priority (a higher ``nice``) for the calling thread: the loop keeps its core.

    Linux only: there the nice value is per thread (``setpriority`` with a thread id); elsewhere
    a thread id is not a process id and the call could hit another process.
    """
    if nice <= 0:
        return
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:  # a sandbox may refuse; the build still runs
        logger.debug("could not lower the rebuild thread's priority: %s", exc)


class RebuiltRecommender(Recommender):
    """Base class of the models rebuilt from a sliding window (see the module docstring).

    Subclasses implement :meth:`build` (a pure function of the window's pairs, run off the
    loop's thread) and may set ``reason``. Users are scored from their live recent history:
    ``score = snapshot.score(rows of their recent items known to the snapshot, recency ** age)``
    (age 0 for the newest); only items scoring above 0 are recommended; a user with no recent
    item the snapshot knows (a stranger, or only new items) gets an empty list and 0.0
    predictions. The pipeline fills short lists from popularity.

    Attributes
    ----------
    version
        0 until the first build is swapped in, then +1 at each swap.
    rebuilds
        One record per swapped-in build: ``{"event": events learned when it started,
        "version", "seconds": its duration, "reason", "events_in_window"}`` (the last 1,000).

    Parameters
    ----------
    window
        Interactions kept for the next build (the most recent ones).
    every
        A build starts every this many events learned.
    min_events
        The first build starts once this many events were learned.
    history
        Recent distinct items kept per user (their live fold-in).
    background
        Build in a background thread (swap at the first event after it finished); ``False``:
        inline, at the event that triggers it (reproducible; the loop waits).
    nice
        The background build thread's nice value (Linux; 0 = the loop's priority): higher keeps
        more of the CPU for the loop on a busy machine, and makes the build take longer there.
    recency
        Scoring: the user's most recent item counts 1, each older one this times the next.
    seed
        Seeds what the build draws (e.g. the starting vector of the SVD).
    """

    reason: typing.ClassVar[str] = "people with your recent items chose it"

    def __init__(
        self,
        window: int = 100_000,
        every: int = 10_000,
        min_events: int = 1_000,
        history: int = 100,
        background: bool = True,
        nice: int = 15,
        recency: float = 0.9,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        if min(window, every, min_events, history) < 1:
            raise ValueError("window, every, min_events and history must be at least 1")
        if not 0 <= nice <= 19:
            raise ValueError(f"nice must be in 0..19, got {nice}")
        if not 0.0 < recency <= 1.0:
            raise ValueError(f"recency must be in (0, 1], got {recency}")
        self.nice = nice
        self.recency = recency
        # The weight of the d-th most recent history item (index d - 1).
        self._recent_weights = recency ** np.arange(history, dtype=np.float64)
        self.window = window
        self.every = every
        self.min_events = min_events
        self.history = history
        self.background = background
        self.version = 0
        self.rebuilds: list[dict[str, typing.Any]] = []
        self._events = 0
        self._window: deque[Pair] = deque(maxlen=window)
        self._history: dict[Hashable, dict[Hashable, None]] = {}
        self._snapshot = EMPTY
        self._building: _Build | None = None
        self._last_start: int | None = None
        self._requested: str | None = None
        self._changes = 0  # bumps on every change that can move a score (cache key)
        self._cached: tuple[Hashable, int, FloatArray | None] | None = None
        # Items forgotten (forget_items) -> the event count then: masked in the current build
        # until a build started after that replaces it.
        self._evicted: dict[Hashable, int] = {}

    # --- the build ----------------------------------------------------------------------

    @abc.abstractmethod
    def build(self, pairs: Sequence[Pair]) -> Snapshot:
        """Build a snapshot from the window's ``(user, item)`` pairs (oldest first).

        Runs in a background thread: use only its arguments and constructor parameters.
        """

    @property
    def events(self) -> int:
        """Events learned from."""
        return self._events

    @property
    def window_events(self) -> int:
        """Interactions in the window the next build will use."""
        return len(self._window)

    @property
    def building(self) -> bool:
        """Whether a build is running."""
        return self._building is not None

    def request_rebuild(self, reason: str = "on demand") -> None:
        """Rebuild from the current window as soon as possible.

        In the background: now, or as soon as the running build is swapped in. Inline: now.
        """
        self._requested = reason
        self._poll()

    def wait_for_rebuild(self, timeout: float | None = None) -> bool:
        """Swap in the running build and any requested after it, waiting for them (up to
        ``timeout`` seconds in all); whether none is left running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._poll()
        while self._building is not None:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not self._building.wait(left):
                return False
            self._poll()
        return True

    def _poll(self) -> None:
        """Swap a finished build in; start the next one if one is due."""
        build = self._building
        if build is not None:
            if not build.done():
                return
            self._building = None
            self._finish(build)
        due = self._requested
        if due is None and self._events >= self.min_events:
            if self._last_start is None:
                due = "first build"
            elif self._events - self._last_start >= self.every:
                due = f"every {self.every} events"
        if due is None or not self._window:
            return
        self._requested = None
        self._start(due)

    def _start(self, reason: str) -> None:
        pairs = list(self._window)  # a copy: the loop goes on appending to the window
        build = _Build(lambda: self.build(pairs), self._events, reason, self.nice)
        build.events_in_window = len(pairs)
        self._last_start = self._events
        if self.background:
            self._building = build
            build.start()
        else:
            build.run()
            self._finish(build)

    def _finish(self, build: _Build) -> None:
        if build.result is None:
            logger.error(
                "%s rebuild (%s) started at event %d failed, keeping version %d: %r",
                type(self).__name__,
                build.reason,
                build.started_at,
                self.version,
                build.error,
            )
            return
        self._snapshot = build.result  # the swap: one assignment of an immutable snapshot
        self._evicted = {i: at for i, at in self._evicted.items() if at >= build.started_at}
        self.version += 1
        self._changes += 1
        self.rebuilds.append(
            {
                "event": build.started_at,
                "version": self.version,
                "seconds": round(build.seconds, 4),
                "reason": build.reason,
                "events_in_window": build.events_in_window,
            }
        )
        del self.rebuilds[:-_KEEP_REBUILDS]
        logger.info(
            "%s version %d: built from %d events in %.2fs (%s, started at event %d)",
            type(self).__name__,
            self.version,
            build.events_in_window,
            build.seconds,
            build.reason,
            build.started_at,
        )

    # --- learning -----------------------------------------------------------------------

    def learn_one(
        self,
        user: Hashable,
        item: Hashable,
        y: float,
        x: dict[str, typing.Any] | None = None,
    ) -> None:
        self._events += 1
        if interaction_weight(y, x) > 0.0:
            self._window.append((user, item))
            hist = self._history.get(user)
            if hist is None:
                hist = self._history[user] = {}
            hist.pop(item, None)
            hist[item] = None
            if len(hist) > self.history:
                del hist[next(iter(hist))]
            self._changes += 1
        self._poll()

    # --- scoring ------------------------------------------------------------------------

    def _user_scores(self, user: Hashable) -> FloatArray | None:
        cached = self._cached
        if cached is not None and cached[1] == self._changes and cached[0] == user:
            return cached[2]
        found = self._compute_scores(user)
        self._cached = (user, self._changes, found)
        return found

    def _compute_scores(self, user: Hashable) -> FloatArray | None:
        hist = self._history.get(user)
        snapshot = self._snapshot
        if not hist or not snapshot.items:
            return None
        n = len(snapshot.items)
        rows = np.fromiter(map(snapshot.index.get, hist, repeat(n)), dtype=np.intp)
        weights = self._recent_weights[len(hist) - 1 :: -1]  # the newest item last, weighs 1
        known = rows < n
        if not known.any():
            return None
        scores = snapshot.score(rows[known], weights[known])
        if self._evicted:
            index = snapshot.index
            scores[[index[i] for i in self._evicted if i in index]] = 0.0
        return scores

    def predict_one(
        self, user: Hashable, item: Hashable, x: dict[str, typing.Any] | None = None
    ) -> float:
        """The user's score for ``item`` (0.0 for a stranger or an item not in the build)."""
        row = self._snapshot.index.get(item)
        scores = self._user_scores(user) if row is not None else None
        return 0.0 if scores is None or row is None else float(scores[row])

    def top_k(self, user: Hashable, k: int, exclude: Iterable[Hashable] = ()) -> list[Scored]:
        scores = self._user_scores(user)
        if scores is None or k <= 0:
            return []
        snapshot = self._snapshot
        rows, values = select(scores.copy(), snapshot.index, k, exclude, positive_only=True)
        items = snapshot.items
        return scored_many([items[r] for r in rows], values, repeat(self.reason, len(rows)))

    def forget_user(self, user: Hashable) -> None:
        """Drop the user's recent history and their interactions from the window.

        The built snapshot is an aggregate over the window's users (item factors); the user's
        interactions leave it at the next build.
        """
        self._history.pop(user, None)
        if any(u == user for u, _ in self._window):
            self._window = deque((p for p in self._window if p[0] != user), maxlen=self.window)
        self._changes += 1
        self._cached = None

    @property
    def n_users(self) -> int:
        return len(self._history)

    @property
    def n_items(self) -> int:
        """Items the current build can recommend."""
        index = self._snapshot.index
        return len(self._snapshot.items) - sum(i in index for i in self._evicted)

    def forget_item(self, item: Hashable) -> None:
        self.forget_items((item,))

    def forget_items(self, items: Iterable[Hashable]) -> None:
        """Drop the items from the histories and the window (one sweep for all of them); the
        current build still holds them, so they are masked in it until the next build."""
        gone = set(items)
        if not gone:
            return
        for hist in self._history.values():
            for item in hist.keys() & gone:
                del hist[item]
        if any(i in gone for _, i in self._window):
            self._window = deque((p for p in self._window if p[1] not in gone), maxlen=self.window)
        index = self._snapshot.index
        for item in gone:
            if item in index:
                self._evicted[item] = self._events
        self._changes += 1
        self._cached = None

    def __setstate__(self, state: dict[str, typing.Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_evicted", {})  # a checkpoint from before forget_items

    # --- pickling -----------------------------------------------------------------------

    def __getstate__(self) -> dict[str, typing.Any]:
        """A running build (a thread) is not pickled: the restored model starts it again."""
        state = self.__dict__.copy()
        build = state.pop("_building")
        state["_building"] = None
        if build is not None and state["_requested"] is None:
            state["_requested"] = build.reason
        state["_cached"] = None
        return state
