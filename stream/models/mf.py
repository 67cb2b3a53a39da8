"""Matrix factorisation: River's ``reco.BiasedMF`` / ``reco.FunkMF`` with a vectorised top-K."""

from __future__ import annotations

import logging
import typing
from collections.abc import Hashable, Iterable, Sequence, Sized
from itertools import repeat
from typing import Any, Literal

import numpy as np
from river import optim, reco

from stream.models._ranking import FloatArray, best_rows, grow, select
from stream.models.base import Recommender, Scored, scored_many

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
