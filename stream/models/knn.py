"""Item-based neighbourhood collaborative filtering, updated one event at a time."""

from __future__ import annotations

import logging
import typing
from collections.abc import Hashable, Iterable
from itertools import chain, repeat
from typing import NamedTuple

import numpy as np

from stream.models._ranking import DecayClock, FloatArray, IntArray, grow, select
from stream.models.base import (
    Recommender,
    Scored,
    delta_column,
    delta_item,
    delta_items,
    interaction_weight,
    scored_many,
    wire_floats,
)

__all__ = ["ItemKNN"]

logger = logging.getLogger(__name__)

# A neighbour list is recomputed once the modifications of its item's co-occurrence row since
# the last computation reach this fraction of the row's size (bounded staleness, see ItemKNN).
_STALE_FRACTION = 0.25
# Scores are a dense vector over the catalogue while it holds at most this many items per
# (history x neighbors) contribution; beyond, a compact vector over the items reached.
_DENSE_FACTOR = 16
# With decay, stored weights carry a growing global factor; past this they are divided back.
_RENORMALISE_AT = 2.0**64


class ItemKNN(DecayClock, Recommender):
    """Item-to-item cosine neighbourhoods over the users' recent items.

    Each user is a vector of their last ``history`` distinct items, valued by the strongest
    event weight they gave each (implicit events: ``max(y, 0)``; rating events: 1, since
    this model ranks what users interact with next, not how they rate it). On every event
    the co-occurrences ``C[i][j] = sum_u w_ui w_uj`` between the event's item and the user's
    recent items grow by the change of the user's weight, and so do the squared norms
    ``N_i = sum_u w_ui ** 2``; the similarity is ``C[i][j] / sqrt(N_i N_j)``. Items that left
    a user's recent history no longer co-occur with that user's new items.

    Memory is bounded per item: when a co-occurrence row exceeds ``4 * neighbors`` entries it
    is cut to its ``2 * neighbors`` strongest. Each item keeps its ``neighbors`` most similar
    items, recomputed during ``learn_one`` once the modifications of its row reach a quarter
    of the row's size (so each row is recomputed O(log) times while it grows and every few
    events when it is hot). The norms of the neighbours are as of that moment; the item's own
    norm is applied when scoring, so it is always current. ``top_k`` and ``predict_one``
    therefore never change the model. The lists are rows of two ``items x neighbors`` arrays,
    so a user's neighbourhoods are gathered in one indexing operation; a shorter list is
    padded with the item itself at similarity 0, which leaves every score exactly as it was.

    With ``half_life`` set, co-occurrences and norms decay exponentially with the number of
    events learned (an event ``half_life`` events ago weighs half), so the neighbourhoods
    follow drift; the similarity, a ratio, is unaffected by the scale.

    The score of an item for a user is ``sum_h w_uh sim(h, item)`` over the user's recent
    items ``h``; the reason names the ``h`` contributing most. :meth:`forget_user` removes
    the user's history; the co-occurrence counts are aggregates over users and stay.

    Parameters
    ----------
    neighbors
        Most similar items kept per item.
    history
        Recent distinct items kept per user (and used to score).
    half_life
        Events after which a co-occurrence weighs half; ``None`` for no decay. The default
        was measured on a synthetic stream with an abrupt drift at 40k of 80k events (1k
        users, 2k items): HR@10 in the 10k events after the drift 0.049 / 0.123 / 0.165
        against 0.031 / 0.095 / 0.136 without decay, and 0.194 against 0.198 before it.
    seed
        Unused (the model is deterministic); accepted like every River ranker.
    alpha
        Asymmetric cosine: ``sim(h, j) = C_hj / (N_h ** alpha * N_j ** (1 - alpha))``; 0.5 is
        the cosine above; larger values normalise more by the history item ``h``, less by
        the candidate ``j`` (popular candidates are penalised less).
    distance_decay
        A co-occurrence of two items ``d`` positions apart in a user's recent history counts
        ``distance_decay ** d`` (1: every pair counts alike).
    recency
        Scoring: the most recent history item counts 1, each older one ``recency`` times the
        next (1: all alike).
    directed
        Count only ``h -> j`` for ``h`` before ``j`` (item-to-item transitions: the ``sequence``
        model), not both ways.
    binary
        Every interaction counts 1 instead of its event weight.

    Examples
    --------
    >>> model = ItemKNN(neighbors=5, history=5)
    >>> for user, item in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x")]:
    ...     model.learn_one(user, item, 1.0, {"implicit": True})
    >>> model.top_k("c", 1, exclude={"x"})
    [Scored(item='y', score=0.8164..., reason='because you interacted with x')]
    >>> model.top_k("stranger", 3)
    []
    """

    # Changes to share with other shards since the last :meth:`item_delta`, or None while
    # no delta is asked for; class-level so older pickles read None.
    _item_sync: _KnnChanges | None = None

    retrieves = True

    def __init__(
        self,
        neighbors: int = 50,
        history: int = 20,
        half_life: float | None = 20_000.0,
        seed: int | None = None,
        alpha: float = 0.5,
        distance_decay: float = 1.0,
        recency: float = 1.0,
        directed: bool = False,
        binary: bool = False,
    ) -> None:
        super().__init__(seed=seed)
        if neighbors < 1 or history < 1:
            raise ValueError("neighbors and history must be at least 1")
        if half_life is not None and not half_life > 0:
            raise ValueError(f"half_life must be positive or None, got {half_life}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not (0.0 < distance_decay <= 1.0 and 0.0 < recency <= 1.0):
            raise ValueError("distance_decay and recency must be in (0, 1]")
        self.neighbors = neighbors
        self.history = history
        self.half_life = half_life
        self.alpha = alpha
        self.distance_decay = distance_decay
        self.recency = recency
        self.directed = directed
        self.binary = binary
        # Factor of a co-occurrence d positions apart (index d), and of the d-th most recent
        # history item when scoring (index d - 1).
        self._apart = [distance_decay**d for d in range(history + 2)]
        self._recent = np.array([recency**d for d in range(history + 1)])
        self._growth = 1.0 if half_life is None else 2.0 ** (1.0 / half_life)
        self._scale = 1.0
        self._index: dict[Hashable, int] = {}
        self._items: list[Hashable] = []
        self._because: list[str] = []  # the reason naming each item, built once
        self._norms: FloatArray = np.zeros(0)
        self._co: list[dict[int, float]] = []
        self._pending: list[int] = []
        # Row i: item i's neighbours (padded with i), their similarities (padded with 0),
        # and how many are real.
        self._nbr_rows: IntArray = np.zeros((0, neighbors), dtype=np.intp)
        self._nbr_sims: FloatArray = np.zeros((0, neighbors))
        self._nbr_len: IntArray = np.zeros(0, dtype=np.intp)
        # Per user: item row -> weight, most recent last.
        self._history: dict[Hashable, dict[int, float]] = {}
        self._free: list[int] = []  # rows of forgotten items, reused (see forget_items)
        # The pipeline ranks the same user several times between two events (evaluation,
        # blend): the last user's scores are kept until the model changes.
        self._version = 0
        self._cached: tuple[Hashable, int, _Scores | None] | None = None

    def set_half_life(self, half_life: float | None) -> None:
        """Decay at a new rate from the next event on (``None``: stop decaying)."""
        if half_life is not None and not half_life > 0:
            raise ValueError(f"half_life must be positive or None, got {half_life}")
        self.half_life = half_life
        self._growth = 1.0 if half_life is None else 2.0 ** (1.0 / half_life)

    @property
    def n_users(self) -> int:
        return len(self._history)

    @property
    def n_items(self) -> int:
        return len(self._items) - len(self._free)

    # --- learning -----------------------------------------------------------------------

    def learn_one(
        self,
        user: Hashable,
        item: Hashable,
        y: float,
        x: dict[str, typing.Any] | None = None,
    ) -> None:
        weight = interaction_weight(y, x)
        self._version += 1
        j = self._row(item)
        sync = self._item_sync  # changes shared with other shards (stream.sync)
        if sync is not None and item not in sync.norms:
            sync.norms[item] = 0.0
        if weight <= 0.0:
            return
        if self.binary:
            weight = 1.0
        if self._growth != 1.0:
            self._scale *= self._growth
            if self._scale > _RENORMALISE_AT:
                self._renormalise()
        scale = self._scale
        if sync is not None:
            sync.ticks += 1
        hist = self._history.get(user)
        if hist is None:
            hist = self._history[user] = {}
        old = hist.pop(j, 0.0)
        new = max(old, weight)
        if new > old:
            delta = (new - old) * scale
            self._norms[j] += (new * new - old * old) * scale
            if sync is not None:
                sync.norms[item] += (new * new - old * old) * scale
                shared, items = sync.co, self._items
            co, pending, apart, directed = self._co, self._pending, self._apart, self.directed
            row_j = co[j]
            cap = 4 * self.neighbors
            d = len(hist)  # positions between the oldest remembered item and this one
            for i, w_i in hist.items():
                add = delta * w_i * apart[d]
                d -= 1
                if sync is not None:
                    pair = (items[i], item)
                    shared[pair] = shared.get(pair, 0.0) + add
                if not directed:
                    row_j[i] = row_j.get(i, 0.0) + add
                row_i = co[i]
                row_i[j] = row_i.get(j, 0.0) + add
                pending[i] += 1
                if len(row_i) > cap:
                    self._prune(i)
                    row_i = co[i]
                if pending[i] >= _STALE_FRACTION * len(row_i):
                    self._refresh(i)
            if not directed:
                pending[j] += len(hist)
                if len(row_j) > cap:
                    self._prune(j)
                if pending[j] and pending[j] >= _STALE_FRACTION * len(row_j):
                    self._refresh(j)
        hist[j] = new
        if len(hist) > self.history:
            del hist[next(iter(hist))]

    def _row(self, item: Hashable) -> int:
        row = self._index.get(item)
        if row is None and self._free:
            return self._reuse_row(item)
        if row is None:
            row = len(self._items)
            self._index[item] = row
            self._items.append(item)
            self._because.append(f"because you interacted with {item}")
            self._norms = grow(self._norms, row + 1)
            self._co.append({})
            self._pending.append(0)
            self._nbr_rows = grow(self._nbr_rows, row + 1)
            self._nbr_sims = grow(self._nbr_sims, row + 1)
            self._nbr_len = grow(self._nbr_len, row + 1)
            self._nbr_rows[row] = row
        return row

    def _prune(self, i: int) -> None:
        row = self._co[i]
        keep = 2 * self.neighbors
        cols = np.fromiter(row.keys(), dtype=np.intp, count=len(row))
        vals = np.fromiter(row.values(), dtype=np.float64, count=len(row))
        strongest = np.sort(np.argpartition(-vals, keep - 1)[:keep])  # keep insertion order
        self._co[i] = dict(zip(cols[strongest].tolist(), vals[strongest].tolist(), strict=True))
        self._pending[i] += len(row) - keep

    def _refresh(self, i: int) -> None:
        row = self._co[i]
        self._pending[i] = 0
        if not row:
            self._nbr_rows[i], self._nbr_sims[i], self._nbr_len[i] = i, 0.0, 0
            return
        cols = np.fromiter(row.keys(), dtype=np.intp, count=len(row))
        vals = np.fromiter(row.values(), dtype=np.float64, count=len(row))
        # N_i ** alpha is left out: it scales the whole row alike, so it is applied at query
        # time with the current norm.
        sims = vals / self._norms[cols] ** (1.0 - self.alpha)
        if cols.shape[0] > self.neighbors:
            top = np.argpartition(-sims, self.neighbors - 1)[: self.neighbors]
            cols, sims = cols[top], sims[top]
        length = cols.shape[0]
        self._nbr_rows[i, :length], self._nbr_rows[i, length:] = cols, i
        self._nbr_sims[i, :length], self._nbr_sims[i, length:] = sims, 0.0
        self._nbr_len[i] = length

    def _renormalise(self) -> None:
        scale = self._scale
        self._norms[: len(self._items)] /= scale
        for row in self._co:
            for j in row:
                row[j] /= scale
        # Neighbour lists hold C / N ** (1 - alpha): they move by scale ** alpha (and stay fresh).
        self._nbr_sims[: len(self._items)] /= scale**self.alpha
        if self._item_sync is not None:
            self._item_sync.rescale(1.0 / scale)
        self._scale = 1.0

    # --- scoring ------------------------------------------------------------------------

    def _user_scores(self, user: Hashable) -> _Scores | None:
        cached = self._cached
        if cached is not None and cached[1] == self._version and cached[0] == user:
            return cached[2]
        found = self._compute_scores(user)
        self._cached = (user, self._version, found)
        return found

    def _compute_scores(self, user: Hashable) -> _Scores | None:
        hist = self._history.get(user)
        if not hist:
            return None
        rows = np.fromiter(hist, dtype=np.intp, count=len(hist))
        if not self._nbr_len[rows].any():
            return None
        weights = np.fromiter(hist.values(), dtype=np.float64, count=len(hist))
        weights /= self._norms[rows] ** self.alpha
        if self.recency != 1.0:
            weights *= self._recent[len(hist) - 1 :: -1]
        # (history x neighbors): row h holds history item h's neighbours / contributions.
        idx = self._nbr_rows[rows]
        contrib = self._nbr_sims[rows] * weights[:, None]
        n = len(self._items)
        if n <= _DENSE_FACTOR * idx.size:
            scores = np.bincount(idx.ravel(), weights=contrib.ravel(), minlength=n)
            return _Scores(typing.cast(FloatArray, scores), idx, contrib, rows.tolist(), None)
        # A catalogue much larger than the neighbourhoods: score only the items they hold
        # (sorted rows, so ties break by row as in the dense vector; the same sums in the
        # same order), which keeps the cost flat in the catalogue size.
        found, positions = np.unique(idx.ravel(), return_inverse=True)
        scores = np.bincount(positions, weights=contrib.ravel(), minlength=found.shape[0])
        return _Scores(
            typing.cast(FloatArray, scores),
            positions.reshape(idx.shape),
            contrib,
            rows.tolist(),
            found,
        )

    def predict_one(
        self, user: Hashable, item: Hashable, x: dict[str, typing.Any] | None = None
    ) -> float:
        """The user's score for ``item`` (0.0 for an unknown user or item)."""
        row = self._index.get(item)
        found = self._user_scores(user) if row is not None else None
        if found is None or row is None:
            return 0.0
        if found.rows is None:
            return float(found.scores[row])
        at = int(np.searchsorted(found.rows, row))
        hit = at < found.rows.shape[0] and int(found.rows[at]) == row
        return float(found.scores[at]) if hit else 0.0

    def top_k(self, user: Hashable, k: int, exclude: Iterable[Hashable] = ()) -> list[Scored]:
        found = self._user_scores(user)
        if found is None or k <= 0:
            return []
        scores = found.scores.copy()
        if found.rows is not None:
            # Exclusions by row, vectorised: rows the compact vector does not hold score 0.
            scores[_positions(found.rows, self._index, exclude)] = -np.inf
            exclude = ()
        rows, values = select(scores, self._index, k, exclude, positive_only=True)
        if not rows:
            return []
        # The history item contributing most to each result: a (results x history) table
        # of the contributions, plus a last row where all the other candidates land.
        at = np.full(found.scores.shape[0], len(rows), dtype=np.intp)
        at[rows] = np.arange(len(rows))
        table = np.zeros((len(rows) + 1, len(found.history)))
        # Padding lands in the cell (own row, own column): no real contribution goes there.
        table[at[found.idx], np.arange(len(found.history))[:, None]] = found.contrib
        best = table[:-1].argmax(axis=1).tolist()
        if found.rows is not None:
            rows = found.rows[rows].tolist()
        items, because, hist = self._items, self._because, found.history
        return scored_many([items[r] for r in rows], values, [because[hist[b]] for b in best])

    def retrieve_one(
        self, user: Hashable, n: int, exclude: Iterable[Hashable] = ()
    ) -> list[Hashable]:
        """The neighbours of the user's recent items: those of ``top_k(user, n, exclude)``,
        without the reasons."""
        found = self._user_scores(user)
        if found is None or n <= 0:
            return []
        scores = found.scores.copy()
        if found.rows is not None:
            scores[_positions(found.rows, self._index, exclude)] = -np.inf
            exclude = ()
        rows, _ = select(scores, self._index, n, exclude, positive_only=True)
        if found.rows is not None:
            rows = found.rows[rows].tolist()
        items = self._items
        return [items[r] for r in rows]

    def forget_user(self, user: Hashable) -> None:
        """Drop the user's history (co-occurrence counts are aggregates and stay)."""
        self._history.pop(user, None)
        self._version += 1
        # The score cache names its user: it would carry them into the next checkpoint.
        self._cached = None

    # --- forgetting items (STREAM_MAX_ITEMS) ----------------------------------------------

    def forget_item(self, item: Hashable) -> None:
        self.forget_items((item,))

    def forget_items(self, items: Iterable[Hashable]) -> None:
        """Remove the items and every reference to their rows, then free the rows.

        One sweep for all of them: the users' histories, the co-occurrence rows of every
        other item (the only place a directed model keeps transitions *into* an item), and
        the neighbour lists, which are recomputed where they named a removed row. So a row
        handed to a new item later carries nothing of the old one.
        """
        items = list(items)
        rows = [r for r in (self._index.pop(i, None) for i in items) if r is not None]
        if not rows:
            return
        changes = self._item_sync
        if changes is not None:  # unshared changes of an evicted item leave with it
            gone = set(items)
            changes.norms = {i: v for i, v in changes.norms.items() if i not in gone}
            changes.co = {p: v for p, v in changes.co.items() if not gone.intersection(p)}
        dead = set(rows)
        for hist in self._history.values():
            for r in hist.keys() & dead:
                del hist[r]
        co = self._co
        for row in co:
            for j in row.keys() & dead:
                del row[j]
        n = len(self._items)
        removed = np.zeros(n, dtype=bool)
        removed[rows] = True
        for r in rows:
            co[r] = {}
            self._pending[r] = 0
            self._items[r] = None
            self._because[r] = ""
        self._norms[rows] = 0.0
        self._nbr_rows[rows] = np.array(rows, dtype=np.intp)[:, None]
        self._nbr_sims[rows] = 0.0
        self._nbr_len[rows] = 0
        for i in np.flatnonzero(removed[self._nbr_rows[:n]].any(axis=1)).tolist():
            self._refresh(i)
        self._free.extend(rows)
        self._version += 1
        self._cached = None

    def _reuse_row(self, item: Hashable) -> int:
        row: int = self._free.pop()
        self._index[item] = row
        self._items[row] = item
        self._because[row] = f"because you interacted with {item}"
        return row

    def __setstate__(self, state: dict[str, typing.Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_free", [])  # a checkpoint from before forget_items

    # --- sharing item state across shards (stream.sync) ---------------------------------

    @property
    def sync_tracking(self) -> bool:
        """Whether :meth:`item_delta` tracks changes (its first call starts it)."""
        return self._item_sync is not None

    def item_delta(self) -> dict[str, typing.Any]:
        """What this shard added to the item state since the last call, as plain data
        (tracking starts on the first call, which returns everything learned so far).

        ``items`` is the delta's item table; ``norms`` the added N_i of the items at
        ``norms_at``, ``co`` the added C_ij of the pairs ``co_at`` (rows of two places in the
        table; for an undirected model ``C_ji`` gets the same): arrays, scale-free (as of this
        shard's clock now; float32 when this model decays, float64 otherwise:
        :func:`~stream.models.base.wire_floats`), and ``ticks`` the events that advanced the decay
        clock. The neighbour lists and the users' histories are not shared: the lists are
        derived from the rows, the histories stay with their user's shard.
        """
        changes = self._item_sync
        if changes is None:
            changes = _KnnChanges()
            items = self._items
            for row, item in enumerate(items):
                changes.norms[item] = float(self._norms[row])
                for col, value in self._co[row].items():
                    if self.directed or col >= row:  # undirected: each pair once
                        changes.co[(item, items[col])] = value
                    elif (items[col], item) not in changes.co:
                        changes.co[(items[col], item)] = value
        self._item_sync = _KnnChanges()
        inverse = 1.0 / self._scale
        table: dict[Hashable, int] = {}
        at = table.setdefault
        norms_at = [at(i, len(table)) for i in changes.norms]
        pairs = [(at(i, len(table)), at(j, len(table))) for i, j in changes.co]
        index = np.dtype("<u2") if len(table) <= 65_536 else np.dtype("<i4")
        co_at = np.array(pairs, dtype=index).reshape(-1, 2)
        norms = np.fromiter(changes.norms.values(), np.float64, len(changes.norms)) * inverse
        co = np.fromiter(changes.co.values(), np.float64, len(changes.co)) * inverse
        growth, ticks = self._growth, changes.ticks
        return {
            "ticks": ticks,
            "items": list(table),
            "norms_at": np.array(norms_at, dtype=index),
            "norms": wire_floats(norms, growth, ticks),
            "co_at": co_at,
            "co": wire_floats(co, growth, ticks),
        }

    def check_item_delta(self, delta: dict[str, typing.Any]) -> None:
        """ValueError when :meth:`apply_item_delta` could not apply ``delta`` whole."""
        n = delta_items(delta)
        if n is not None:
            at = delta_column(delta.get("norms_at"), None, "norms_at", index_below=n)
            delta_column(delta.get("norms"), len(at), "norms")
            co = delta_column(delta.get("co"), None, "co")
            try:  # (n, 2) pairs of places in items
                pairs = np.asarray(delta.get("co_at"), dtype=np.float64).reshape(-1)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"a delta's co_at: {exc}") from None
            delta_column(pairs, 2 * len(co), "co_at", index_below=n)

    def apply_item_delta(self, delta: dict[str, typing.Any]) -> None:
        """Add another shard's :meth:`item_delta` (not part of this shard's next delta):
        advance the decay clock by its events, add its norms and co-occurrences, then prune
        and refresh the neighbour lists of the rows it touched as learning would."""
        ticks = int(delta["ticks"])
        if ticks and self._growth != 1.0:
            self._scale *= self._growth**ticks
            if self._scale > _RENORMALISE_AT:
                self._renormalise()
        scale, row_of, co, pending = self._scale, self._row, self._co, self._pending
        if "items" in delta:
            index = self._index
            items = [tuple(i) if type(i) is list else i for i in delta["items"]]  # delta_item
            rows = [index[i] if i in index else row_of(i) for i in items]  # new rows first
            at = np.asarray(rows, dtype=np.intp)
            norms_at = at[np.asarray(delta["norms_at"], dtype=np.intp)]
            np.add.at(self._norms, norms_at, np.asarray(delta["norms"], dtype=np.float64) * scale)
            pairs = at[np.asarray(delta["co_at"], dtype=np.intp)].reshape(-1, 2)
            entries: typing.Any = zip(
                pairs[:, 0].tolist(),
                pairs[:, 1].tolist(),
                (np.asarray(delta["co"], dtype=np.float64) * scale).tolist(),
                strict=True,
            )
        else:  # a version-1 delta: [item, value] and [i, j, value] rows
            for item, value in delta["norms"]:
                row = row_of(delta_item(item))  # first: a new row grows the arrays
                self._norms[row] += float(value) * scale
            entries = [
                (row_of(delta_item(a)), row_of(delta_item(b)), float(value) * scale)
                for a, b, value in delta["co"]
            ]
            pairs = np.array([(i, j) for i, j, _ in entries], dtype=np.intp).reshape(-1, 2)
        # The rows' sums in the order learning would make them; what each row was given
        # (its pending count) is counted once per delta, not once per pair.
        if self.directed:
            for i, j, add in entries:
                row = co[i]
                row[j] = row.get(j, 0.0) + add
            given = pairs[:, 0]
        else:
            for i, j, add in entries:
                row = co[i]
                row[j] = row.get(j, 0.0) + add
                row = co[j]
                row[i] = row.get(i, 0.0) + add
            given = pairs.ravel()
        counts = np.bincount(given, minlength=1)
        touched = np.flatnonzero(counts).tolist()
        for i, n in zip(touched, counts[touched].tolist(), strict=True):
            pending[i] += n
        cap = 4 * self.neighbors
        stale = []
        for i in touched:
            if len(co[i]) > cap:
                self._prune(i)
            if pending[i] >= _STALE_FRACTION * len(co[i]):
                stale.append(i)
        self._refresh_rows(stale)
        self._version += 1
        self._cached = None

    def _refresh_rows(self, rows: list[int]) -> None:
        """:meth:`_refresh` of each of ``rows`` (distinct), bit for bit, with one pass over
        all their entries (similarities and the short rows' lists in array operations; a
        row longer than its list still picks its neighbours alone, as :meth:`_refresh`)."""
        if not rows:
            return
        co, pending, k = self._co, self._pending, self.neighbors
        lens = np.fromiter((len(co[i]) for i in rows), np.intp, len(rows))
        total = int(lens.sum())
        cols = np.fromiter(chain.from_iterable(co[i].keys() for i in rows), np.intp, total)
        vals = np.fromiter(chain.from_iterable(co[i].values() for i in rows), np.float64, total)
        sims = vals / self._norms[cols] ** (1.0 - self.alpha)
        at = np.asarray(rows, dtype=np.intp)
        starts = np.cumsum(lens) - lens
        picked = [np.arange(total)[np.repeat(lens <= k, lens)]]  # the short rows' entries
        for r in np.flatnonzero(lens > k).tolist():
            start = int(starts[r])
            top = np.argpartition(-sims[start : start + int(lens[r])], k - 1)[:k]
            picked.append(top + start)
        chosen = np.concatenate(picked)
        owner = np.repeat(np.arange(len(rows)), lens)[chosen]
        # Place in the list: the order the short rows' entries have in the row, the order
        # of argpartition's pick in a long row.
        place = np.concatenate(
            [chosen[: len(picked[0])] - starts[owner[: len(picked[0])]]]
            + [np.arange(len(top)) for top in picked[1:]]
        )
        self._nbr_rows[at] = at[:, None]
        self._nbr_sims[at] = 0.0
        self._nbr_rows[at[owner], place] = cols[chosen]
        self._nbr_sims[at[owner], place] = sims[chosen]
        self._nbr_len[at] = np.minimum(lens, k)
        for i in rows:
            pending[i] = 0


class _KnnChanges:
    """Item-state changes of an :class:`ItemKNN` since its last delta (scaled like its state)."""

    __slots__ = ("co", "norms", "ticks")

    def __init__(self) -> None:
        self.ticks = 0
        self.norms: dict[Hashable, float] = {}
        self.co: dict[tuple[Hashable, Hashable], float] = {}

    def rescale(self, factor: float) -> None:
        self.norms = {i: v * factor for i, v in self.norms.items()}
        self.co = {p: v * factor for p, v in self.co.items()}


class _Scores(NamedTuple):
    """A user's score vector and where it came from (for the reasons)."""

    scores: FloatArray  # per item row, or per entry of ``rows`` when that is set
    idx: IntArray  # (history x neighbors): the position in ``scores`` of each contribution
    contrib: FloatArray  # (history x neighbors): the contributions (0 for padding)
    history: list[int]  # the user's recent item rows
    rows: IntArray | None  # the item row of each score (sorted), None: scores are per row


def _positions(rows: IntArray, index: dict[Hashable, int], items: Iterable[Hashable]) -> IntArray:
    """Where ``items`` are in the sorted ``rows`` (those not there are left out)."""
    wanted = np.fromiter(map(index.get, items, repeat(-1)), dtype=np.intp)
    at = np.minimum(np.searchsorted(rows, wanted), max(rows.shape[0] - 1, 0))
    found: IntArray = at[(rows[at] == wanted) & (wanted >= 0)]
    return found
