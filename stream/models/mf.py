"""Matrix factorisation: River's ``reco.BiasedMF`` / ``reco.FunkMF`` with a vectorised top-K."""

from __future__ import annotations

import logging
import typing
from collections.abc import Hashable, Iterable, Sequence, Sized
from itertools import repeat
from typing import Any, Literal

import numpy as np
from river import optim, reco

from stream.models._ranking import FloatArray, best_rows, grow, remove_row, select
from stream.models.base import Recommender, Scored, delta_column, delta_item, scored_many

__all__ = ["MatrixFactorization"]

logger = logging.getLogger(__name__)

MFKind = Literal["biased", "funk"]

_REASON_USER = "matches your taste"
_REASON_BIAS = "liked by many"


class MatrixFactorization(Recommender):
    """Online matrix factorisation learned by River, ranked with one matrix product.

    All learning is River's own ``learn_one`` (SGD on the squared error) on a
    :class:`river.reco.BiasedMF` (``kind="biased"``: global mean, user and item biases, latent
    factors) or :class:`river.reco.FunkMF` (``kind="funk"``: latent factors only). A numpy copy
    of the item factors (and biases) is updated for the items each event touched, so
    :meth:`top_k` is ``items @ user (+ biases)``.

    River's models are rating regressors and collapse to "everything is liked" on positive-only
    data, so an implicit event (``x["implicit"]``) is learned as its weight ``y`` followed by
    ``negative_samples`` items learned with ``y = 0``. The negatives are drawn uniformly from
    the items the model knows (not by popularity: popular items are the ones users do come
    back to, and pushing them down hurts more than it teaches) with the model's own seeded
    ``random.Random``; a draw of the event's own item is skipped. A rating event is learned
    as its rating, without negatives, and so is an event without ``x`` (a plain River call).

    Scores and :meth:`predict_one` are the model's prediction. Neither grows River's
    ``defaultdict`` tables: an unknown user is ranked by item biases alone (``biased``) or
    not at all (``funk``, an empty list), and predicted the global mean (``biased``) plus the
    item bias, or 0 (``funk``). :meth:`forget_user` deletes the user's factors and bias.

    Parameters
    ----------
    kind
        ``"biased"`` or ``"funk"``.
    n_factors
        Latent factors.
    learning_rate
        SGD learning rate of the latent factors.
    bias_learning_rate
        SGD learning rate of the biases (``biased`` only).
    l2
        L2 regularisation of factors and biases.
    init_std
        Standard deviation of the normal initialisation of the factors.
    negative_samples
        Negatives learned after each implicit event.
    seed
        Seeds the factor initialisation and the negative sampling.

    Examples
    --------
    >>> model = MatrixFactorization("biased", n_factors=4, negative_samples=1, seed=1)
    >>> for user, item in [("ann", "x"), ("bob", "x"), ("ann", "y"), ("cat", "z")] * 20:
    ...     model.learn_one(user, item, 1.0, {"implicit": True})
    >>> [s.item for s in model.top_k("bob", 2, exclude={"x"})]
    ['y', 'z']
    >>> round(model.predict_one("bob", "y") - model.predict_one("bob", "z"), 2) > 0
    True
    >>> model.top_k("nobody", 1)[0].reason
    'liked by many'
    """

    predicts_ratings = True

    # Per item changed since the last :meth:`item_delta`: its (vector, bias) before the
    # change; None while no delta is asked for (class-level so older pickles read None).
    _item_sync: dict[Hashable, tuple[FloatArray, float]] | None = None
    _sync_mean: tuple[float, float] = (0.0, 0.0)  # (n, sum) of the global mean at the last one
    # Items learned since the last light delta (or whose float16 rest is still large): the
    # only ones whose bias change can have reached _LIGHT_MIN_BIAS since. None: scan them all.
    _light_due: set[Hashable] | None = None

    def __init__(
        self,
        kind: MFKind = "biased",
        n_factors: int = 16,
        learning_rate: float = 0.05,
        bias_learning_rate: float = 0.01,
        l2: float = 0.01,
        init_std: float = 0.1,
        negative_samples: int = 4,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        if kind not in ("biased", "funk"):
            raise ValueError(f"kind must be 'biased' or 'funk', got {kind!r}")
        if n_factors < 1 or negative_samples < 0:
            raise ValueError("n_factors must be >= 1 and negative_samples >= 0")
        self.kind = kind
        self.n_factors = n_factors
        self.learning_rate = learning_rate
        self.bias_learning_rate = bias_learning_rate
        self.l2 = l2
        self.init_std = init_std
        self.negative_samples = negative_samples
        initializer = optim.initializers.Normal(mu=0.0, sigma=init_std, seed=seed)
        self.river_model: Any
        if kind == "biased":
            self.river_model = reco.BiasedMF(
                n_factors=n_factors,
                bias_optimizer=optim.SGD(bias_learning_rate),
                latent_optimizer=optim.SGD(learning_rate),
                l2_bias=l2,
                l2_latent=l2,
                latent_initializer=initializer,
                seed=seed,
            )
        else:
            self.river_model = reco.FunkMF(
                n_factors=n_factors,
                optimizer=optim.SGD(learning_rate),
                l2=l2,
                initializer=initializer,
                seed=seed,
            )
        self._biased = kind == "biased"
        self._index: dict[Hashable, int] = {}
        self._items: list[Hashable] = []
        self._vectors: FloatArray = np.zeros((0, n_factors))
        self._biases: FloatArray = np.zeros(0)

    # River's tables, exposed read-only for summaries (``stream checkpoint export``).
    @property
    def u_latents(self) -> dict[Hashable, Any]:
        return typing.cast(dict[Hashable, Any], self.river_model.u_latents)

    @property
    def i_latents(self) -> dict[Hashable, Any]:
        return typing.cast(dict[Hashable, Any], self.river_model.i_latents)

    @property
    def u_biases(self) -> dict[Hashable, float] | None:
        return (
            typing.cast(dict[Hashable, float], self.river_model.u_biases) if self._biased else None
        )

    @property
    def i_biases(self) -> dict[Hashable, float] | None:
        return (
            typing.cast(dict[Hashable, float], self.river_model.i_biases) if self._biased else None
        )

    @property
    def n_users(self) -> int:
        return len(self.river_model.u_latents)

    @property
    def n_items(self) -> int:
        return len(self._items)

    # --- learning -----------------------------------------------------------------------

    def learn_one(
        self,
        user: Hashable,
        item: Hashable,
        y: float,
        x: dict[str, typing.Any] | None = None,
    ) -> None:
        mf = self.river_model
        mf.learn_one(user, item, y)
        self._mirror(item)
        if x is None or not x.get("implicit", False) or not self.negative_samples:
            return
        items, draw = self._items, self._rng.randrange
        n = len(items)
        if n < 2:
            return
        for _ in range(self.negative_samples):
            negative = items[draw(n)]
            if negative == item:
                continue
            mf.learn_one(user, negative, 0.0)
            self._mirror(negative)

    def _mirror(self, item: Hashable) -> None:
        row = self._index.get(item)
        if row is None:
            row = len(self._items)
            self._index[item] = row
            self._items.append(item)
            self._vectors = grow(self._vectors, row + 1)
            if self._biased:
                self._biases = grow(self._biases, row + 1)
        sync = self._item_sync
        if sync is not None and item not in sync:  # the value before this shard's change
            sync[item] = (
                self._vectors[row].copy(),
                float(self._biases[row]) if self._biased else 0.0,
            )
        if sync is not None and self._light_due is not None:
            self._light_due.add(item)
        self._vectors[row] = self.river_model.i_latents[item]
        if self._biased:
            self._biases[row] = self.river_model.i_biases[item]

    # --- prediction ---------------------------------------------------------------------

    def predict_one(
        self, user: Hashable, item: Hashable, x: dict[str, typing.Any] | None = None
    ) -> float:
        mf = self.river_model
        u_vec = mf.u_latents.get(user)
        i_vec = mf.i_latents.get(item)
        if u_vec is not None and i_vec is not None:
            return float(mf.predict_one(user, item))
        if not self._biased:
            return 0.0
        # The expected value over the random initialisation of the missing vector: no product.
        return float(mf.global_mean.get() + mf.u_biases.get(user, 0.0) + mf.i_biases.get(item, 0.0))

    def top_k(self, user: Hashable, k: int, exclude: Iterable[Hashable] = ()) -> list[Scored]:
        n = len(self._items)
        if n == 0 or k <= 0:
            return []
        mf = self.river_model
        u_vec = mf.u_latents.get(user)
        if u_vec is not None:
            scores = self._vectors[:n] @ u_vec
            reason = _REASON_USER
            if self._biased:
                scores += self._biases[:n]
                scores += mf.global_mean.get() + mf.u_biases[user]
        elif self._biased:
            scores = self._biases[:n] + mf.global_mean.get()
            reason = _REASON_BIAS
        else:
            return []
        rows, values = select(scores, self._index, k, exclude)
        items = self._items
        return scored_many([items[r] for r in rows], values, repeat(reason, len(rows)))

    def forget_user(self, user: Hashable) -> None:
        """Delete the user's latent vector (and bias): nothing else is per user."""
        self.river_model.u_latents.pop(user, None)
        if self._biased:
            self.river_model.u_biases.pop(user, None)

    def forget_item(self, item: Hashable) -> None:
        self.forget_items((item,))

    def forget_items(self, items: Iterable[Hashable]) -> None:
        """Pop the items from River's tables and from the numpy copy.

        The copy stays dense: the last row moves into the freed one (nothing else refers to
        rows), so ranking and negative sampling never meet a hole.
        """
        mf = self.river_model
        for item in items:
            if self._item_sync is not None:  # unshared changes of an evicted item leave with it
                self._item_sync.pop(item, None)
            mf.i_latents.pop(item, None)
            if self._biased:
                mf.i_biases.pop(item, None)
            arrays = (self._vectors, self._biases) if self._biased else (self._vectors,)
            remove_row(self._index, self._items, item, arrays)

    # --- sharing item state across shards (stream.sync) ---------------------------------

    @property
    def sync_tracking(self) -> bool:
        """Whether :meth:`item_delta` tracks changes (its first call starts it)."""
        return self._item_sync is not None

    def item_delta(self) -> dict[str, typing.Any]:
        """This shard's changes to the item state since the last call, as plain data
        (tracking starts on the first call, which returns everything learned so far).

        ``items`` are the items changed, ``steps`` / ``step`` their vector changes (int8
        rows times a float32 step per row; an item new here: its whole vector), except those
        whose components all moved by less than ``_FULL_MIN_CHANGE`` and bias by less than
        ``_LIGHT_MIN_BIAS``: they stay pending until their change adds up (an item not
        shared yet always goes), ``biases``
        their bias changes (float32), ``mean`` is ``[weight, sum]`` added to the global
        mean (``biased``). The receiver adds them to its own values: asynchronous SGD, each
        shard learning on item factors at most one sync interval behind the others'. User
        factors are not shared.
        """
        mf, pending = self.river_model, self._item_sync
        if pending is None:
            zero = np.zeros(self.n_factors)
            pending = dict.fromkeys(self._items, (zero, 0.0))
        self._light_due = set()
        names = list(pending)
        changes = np.zeros((len(names), self.n_factors))
        befores = np.zeros((len(names), self.n_factors))
        biases = np.zeros(len(names))
        index = self._index
        for at, (item, (vector, bias)) in enumerate(pending.items()):
            row = index[item]
            befores[at] = vector
            changes[at] = self._vectors[row] - vector
            if self._biased:
                biases[at] = self._biases[row] - bias
        # Rows that moved little wait until they add up (the sampled negatives' small pushes,
        # about half the rows): an item new to the stream (nothing shared of it yet, its
        # "before" all zeros) always goes, so every receiver knows the catalogue.
        small = (np.abs(changes).max(axis=1, initial=0.0) < _FULL_MIN_CHANGE) & (
            np.abs(biases) < _LIGHT_MIN_BIAS
        )
        held = small & np.any(befores != 0.0, axis=1)
        self._item_sync = {names[i]: pending[names[i]] for i in np.flatnonzero(held).tolist()}
        sent = np.flatnonzero(~held)
        items = [names[i] for i in sent.tolist()]
        out: dict[str, typing.Any] = {
            "items": items,
            **_quantise(changes[sent]),
            "biases": biases[sent].astype(np.float32),
        }
        if self._biased:
            n0, sum0 = self._sync_mean
            n, total = _mean_state(mf.global_mean)
            self._sync_mean = (n, total)
            out["mean"] = [n - n0, total - sum0]
        return out

    def apply_item_delta(self, delta: dict[str, typing.Any]) -> None:
        """Add another shard's :meth:`item_delta` to this shard's item factors, biases and
        global mean (not part of this shard's next delta)."""
        mf, pending = self.river_model, self._item_sync
        rows: typing.Any = delta["items"]
        if "biases" in delta and "steps" not in delta and "vectors" not in delta:
            rows = self._apply_known(rows, None, delta["biases"])  # the items new here remain
        elif "biases" in delta:  # version 2 on: columns
            changes = _dequantise(delta)
            self._check_width(rows, changes)
            rows = self._apply_known(rows, changes, delta["biases"])
        for raw, change, db in rows:
            item = delta_item(raw)
            vector = np.array(change, dtype=np.float64)
            if item in mf.i_latents:
                mf.i_latents[item] = mf.i_latents[item] + vector
            else:  # new here: the sender's vector (its initialisation and what it learned)
                mf.i_latents[item] = vector
            if self._biased:
                mf.i_biases[item] = mf.i_biases.get(item, 0.0) + float(db)
            if pending is not None and item in pending:  # keep only this shard's own change
                before, bias = pending[item]
                pending[item] = (before + vector, bias + float(db))
            self._item_sync = None
            try:
                self._mirror(item)
            finally:
                self._item_sync = pending
        if self._biased and "mean" in delta:
            weight, total = (float(v) for v in delta["mean"])
            if weight > 0:
                mf.global_mean.update(total / weight, weight)
                n0, sum0 = self._sync_mean
                self._sync_mean = (n0 + weight, sum0 + total)

    def check_item_delta(self, delta: dict[str, typing.Any]) -> None:
        """Raise ``ValueError`` when :meth:`apply_item_delta` could not apply ``delta`` whole
        (the sync checks every model's part before it applies any)."""
        rows = delta.get("items")
        if not isinstance(rows, list):
            raise ValueError("a delta's items: not a list")
        if "biases" in delta:
            delta_column(delta["biases"], len(rows), "biases")
            if "steps" in delta or "vectors" in delta:
                changes = _dequantise(delta)
                self._check_width(rows, changes)
                if not np.all(np.isfinite(changes)):
                    raise ValueError("a delta's factor changes: not finite")
        else:  # version 1: [item, vector, bias] rows
            for row in rows:
                if len(row) != 3 or len(row[1]) != self.n_factors:
                    raise ValueError(f"a delta row not of {self.n_factors} factors: {row!r:.80}")

    def _check_width(self, rows: typing.Any, changes: FloatArray) -> None:
        if len(rows) and (changes.ndim != 2 or changes.shape[1] != self.n_factors):
            # A sender with other STREAM_MF_FACTORS (e.g. deltas from before a restart that
            # changed them): refused whole, before any row is touched.
            raise ValueError(
                f"a delta of {changes.shape[-1]} factors for a model of {self.n_factors}"
            )

    def _apply_known(
        self, items: list[typing.Any], changes: FloatArray | None, biases: typing.Any
    ) -> list[tuple[typing.Any, np.ndarray, float]]:
        """A delta's columns added to the items known here at once (one array operation, not
        one per item): vector ``changes`` (None: a light delta, biases only) and bias changes.
        Returns the rows of the items new here, for :meth:`apply_item_delta`'s general path
        (a light delta's with a zero vector until a full delta brings the sender's)."""
        mf, pending, index = self.river_model, self._item_sync, self._index
        latents = mf.i_latents
        names = [tuple(i) if type(i) is list else i for i in items]  # delta_item, inlined
        dbs = np.asarray(biases, dtype=np.float64)
        if dbs.shape != (len(names),) or (changes is not None and len(changes) != len(names)):
            raise ValueError(f"an item delta of {len(names)} items with {dbs.shape} biases")
        at = [index.get(item, -1) if item in latents else -1 for item in names]
        ks = [k for k, row in enumerate(at) if row >= 0]
        rows, changed = [at[k] for k in ks], dbs.tolist()
        if changes is not None and ks:
            vectors = np.array([latents[names[k]] for k in ks], dtype=np.float64)
            vectors += changes[ks]
            self._vectors[rows] = vectors
            for k, vector in zip(ks, vectors, strict=True):
                latents[names[k]] = vector
        if self._biased and ks:
            ib = mf.i_biases
            values = [ib.get(names[k], 0.0) + changed[k] for k in ks]
            self._biases[rows] = values
            for k, value in zip(ks, values, strict=True):
                ib[names[k]] = value
        if pending:  # keep only this shard's own change
            for k in ks:
                item = names[k]
                if item in pending:
                    before, bias = pending[item]
                    vector = before if changes is None else before + changes[k]
                    pending[item] = (vector, bias + changed[k])
        zero = np.zeros(self.n_factors)
        return [
            (items[k], zero if changes is None else changes[k], changed[k])
            for k, row in enumerate(at)
            if row < 0
        ]

    def item_delta_light(self) -> dict[str, typing.Any]:
        """The item biases changed since the last delta (what moves fastest with what is
        popular now), for a light delta (``STREAM_MODEL_SYNC_FULL_EVERY``): those that moved
        by at least ``_LIGHT_MIN_BIAS`` since the last delta, as float16 (the hot items; the
        small pushes of negative samples wait); the rest, the vector changes and the global
        mean wait for the next full :meth:`item_delta`, so nothing is lost. A receiver new
        to an item starts it with a zero vector (its score is then its biases) until that
        full delta brings the sender's vector."""
        pending = self._item_sync
        if pending is None or not self._biased:
            return self.item_delta() if pending is None else {"items": [], "biases": _NO_BIAS}
        if not pending:
            return {"items": [], "biases": np.zeros(0, dtype=np.float16)}
        index, due = self._index, self._light_due
        # Only the items learned since the last light delta can have moved far enough (an
        # applied delta moves an item's bias and its pending value alike); in pending's order.
        names = list(pending) if due is None else [item for item in pending if item in due]
        befores = np.fromiter((pending[item][1] for item in names), float, len(names))
        moved = self._biases[[index[item] for item in names]] - befores
        # Smaller ones wait for the full delta; float16 is what receivers will add.
        at = np.flatnonzero(np.abs(moved) >= _LIGHT_MIN_BIAS)
        sent = moved[at].astype(np.float16)
        items = [names[i] for i in at.tolist()]
        rows = [index[item] for item in items]
        # What the next scan would find of the sent ones (float16's rest), the same sums:
        rest = self._biases[rows] - (befores[at] + sent.astype(np.float64))
        self._light_due = {items[i] for i in np.flatnonzero(np.abs(rest) >= _LIGHT_MIN_BIAS)}
        for item, change in zip(items, sent.astype(np.float64).tolist(), strict=True):
            # The vector change stays pending, and so does float16's rounding of the bias.
            vector, before = pending[item]
            pending[item] = (vector, before + change)
        return {"items": items, "biases": sent}

    def top_k_among(
        self,
        user: Hashable,
        k: int,
        candidates: Sequence[Hashable],
        exclude: Iterable[Hashable] = (),
    ) -> list[Scored]:
        """:meth:`top_k` over ``candidates`` only: the same prediction for each (one product
        of the candidates' factors with the user's), ranked with the same tie-break (row)."""
        if k <= 0 or not candidates:
            return []
        index = self._index
        rows = np.fromiter(map(index.get, candidates, repeat(-1)), dtype=np.intp)
        if not isinstance(exclude, Sized) or len(exclude):
            masked = np.fromiter(map(index.get, exclude, repeat(-1)), dtype=np.intp)
            rows = rows[~np.isin(rows, masked)]
        rows = np.unique(rows[rows >= 0])  # by row: ties break as in top_k
        if rows.shape[0] == 0:
            return []
        mf = self.river_model
        u_vec = mf.u_latents.get(user)
        if u_vec is not None:
            scores = self._vectors[rows] @ u_vec
            reason = _REASON_USER
            if self._biased:
                scores += self._biases[rows]
                scores += mf.global_mean.get() + mf.u_biases[user]
        elif self._biased:
            scores = self._biases[rows] + mf.global_mean.get()
            reason = _REASON_BIAS
        else:
            return []
        best = best_rows(scores, k)
        items = self._items
        picked = rows[best].tolist()
        return scored_many(
            [items[r] for r in picked], scores[best].tolist(), repeat(reason, len(best))
        )


_NO_BIAS = np.zeros(0, dtype=np.float32)
# Bias changes below this wait for the full delta (a fifth of a typical positive step at the
# default learning rate; most negative samples' pushes are smaller).
_LIGHT_MIN_BIAS = 0.01
# A full delta holds back an item whose factor components all moved by less than this (and
# its bias by less than _LIGHT_MIN_BIAS) since it was last shared: the change stays pending
# and goes once it adds up (measured, P = 8: half of a full delta's rows are below 0.01, the
# median row moves 0.0101). So a receiver's copy of a sender's contribution to an item is
# behind by less than this per component, besides the interval (README: staleness bound).
_FULL_MIN_CHANGE = 0.01


def _quantise(changes: FloatArray) -> dict[str, np.ndarray]:
    """Factor changes as int8 ``steps`` of a float32 ``step`` per row, rounded to the nearest
    step: each component within half a step (1/254 of the row's largest change) per delta.
    Asynchronous SGD is approximate anyway; every receiver adds the same rounded change, so
    the receivers agree with each other, and differ from the sender by a sum of unbiased
    roundings (a random walk far below the SGD's own noise)."""
    peak = np.abs(changes).max(axis=1) if changes.size else np.zeros(changes.shape[0])
    step = (peak / 127.0).astype(np.float32)
    safe = np.where(step > 0, step, 1.0).astype(np.float64)
    steps = np.rint(changes / safe[:, None]).clip(-127, 127).astype(np.int8)
    return {"steps": steps, "step": step}


def _dequantise(delta: dict[str, typing.Any]) -> FloatArray:
    """The factor changes of a delta: int8 ``steps`` x ``step`` (float16 ``vectors``, as
    this version first wrote them, also read)."""
    if "steps" in delta:
        step = np.asarray(delta["step"], dtype=np.float64)
        changes: FloatArray = np.asarray(delta["steps"], dtype=np.float64) * step[:, None]
        return changes
    return np.asarray(delta["vectors"], dtype=np.float64)


def _mean_state(mean: Any) -> tuple[float, float]:
    """``(weight, weighted sum)`` of a ``river.stats.Mean`` (its public ``n`` and ``get``)."""
    n = float(mean.n)
    return n, n * float(mean.get())
