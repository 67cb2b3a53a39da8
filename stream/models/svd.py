"""PureSVD rebuilt from a sliding window: truncated SVD of the window's user-item matrix."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from stream.models._ranking import FloatArray, IntArray
from stream.models.rebuilt import Pair, RebuiltRecommender, Snapshot, encode_window

__all__ = ["PureSVD"]

logger = logging.getLogger(__name__)

# Below this many users or items a dense SVD is exact and faster than ARPACK.
_DENSE_BELOW = 300


@dataclass(frozen=True, slots=True, eq=False)
class _Factors(Snapshot):
    """Item factors ``V`` (items x factors): a user's scores are ``x_u V V^T``."""

    factors: npt.NDArray[np.float32]

    def score(self, rows: IntArray, weights: FloatArray) -> FloatArray:
        v = self.factors
        return (v @ (weights.astype(np.float32) @ v[rows])).astype(np.float64)


class PureSVD(RebuiltRecommender):
    """PureSVD (Cremonesi et al., 2010), rebuilt from the last ``window`` interactions.

    A build takes the window's binary user-item matrix ``X`` (1 where the user interacted with
    the item at least once in the window) and its ``n_factors`` leading right singular vectors
    ``V`` (``scipy.sparse.linalg.svds``, ARPACK, started from a vector drawn from ``seed``: the
    same window gives the same build). A user's scores are ``x_u V V^T``, where ``x_u`` is the
    user's *live* recent history (1 per item, their last ``history`` items), so their events
    since the build count at once (fold-in); a user the build never saw is served as soon as
    one of their items is in it. The rebuild schedule and the swap are
    :class:`~stream.models.rebuilt.RebuiltRecommender`'s.

    Parameters
    ----------
    n_factors
        Singular vectors kept (fewer when the window has fewer users or items).
    window, every, min_events, history, background, nice, recency, seed
        See :class:`~stream.models.rebuilt.RebuiltRecommender`.

    Examples
    --------
    >>> model = PureSVD(n_factors=1, min_events=6, background=False)
    >>> for user, item in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "z"),
    ...                    ("d", "x")]:
    ...     model.learn_one(user, item, 1.0, {"implicit": True})
    >>> model.version, model.rebuilds[0]["events_in_window"]
    (1, 6)
    >>> model.top_k("d", 1, exclude={"x"})
    [Scored(item='y', score=0.485..., reason='people with your recent items chose it')]
    """

    def __init__(
        self,
        n_factors: int = 32,
        window: int = 100_000,
        every: int = 10_000,
        min_events: int = 1_000,
        history: int = 100,
        background: bool = True,
        nice: int = 15,
        recency: float = 0.9,
        seed: int | None = None,
    ) -> None:
        if n_factors < 1:
            raise ValueError("n_factors must be at least 1")
        self.n_factors = n_factors
        super().__init__(
            window=window,
            every=every,
            min_events=min_events,
            history=history,
            background=background,
            nice=nice,
            recency=recency,
            seed=seed,
        )

    def build(self, pairs: Sequence[Pair]) -> Snapshot:
        users, items, keys = encode_window(pairs)
        shape = (int(users.max()) + 1, len(keys))
        x = sp.csr_matrix((np.ones(users.shape[0]), (users, items)), shape=shape)
        x.data[:] = 1.0  # duplicates were summed: an interaction counts once
        k = min(self.n_factors, min(shape) - 1)
        if k < 1:
            vt = np.zeros((0, shape[1]))
        elif min(shape) < _DENSE_BELOW:
            vt = np.linalg.svd(x.toarray(), full_matrices=False)[2][:k]
        else:
            v0 = np.random.default_rng(self.seed).uniform(-1.0, 1.0, min(shape))
            vt = svds(x, k=k, v0=v0, return_singular_vectors="vh")[2]
        factors = np.ascontiguousarray(vt.T, dtype=np.float32)
        factors.flags.writeable = False
        index: dict[Hashable, int] = {item: row for row, item in enumerate(keys)}
        return _Factors(tuple(keys), index, factors)
