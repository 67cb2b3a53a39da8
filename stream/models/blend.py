"""A weighted fusion of other recommenders' rankings."""

from __future__ import annotations

import copy
import logging
import math
import typing
from collections.abc import Hashable, Iterable

import numpy as np

from stream.models.base import Recommender, Scored, scored_many
from stream.models.fusion import LearnedFusion

__all__ = ["Blend"]

logger = logging.getLogger(__name__)

DEPTH = 3  # each component contributes its top ``DEPTH * k``
# Components weighing less than this share of the heaviest one are left out of the fusion: they
# could only reorder ties, and ranking them again for every published top-K costs as much as
# ranking the ones that matter.
MIN_SHARE = 0.01


class Blend(Recommender):
    """Weighted reciprocal-rank fusion of the components' top-K lists.

    An item at (1-based) rank ``r`` of component ``c``'s top ``3k`` earns
    ``weights[c] / (rank_constant + r)``; items are ranked by their total. Ranks, unlike
    scores, need no calibration between a popularity count, a cosine sum and a predicted
    rating. The reason of an item is the reason its largest contributor gave (or that
    component's name).

    With ``learns_components=False`` :meth:`learn_one` does nothing: the pipeline learns the
    component instances itself (they are shared with the pipeline's other models), so a
    blend must not learn them a second time. With ``True`` (the default) the blend owns its
    components and learns each of them. :meth:`forget_user` always forwards to the
    components (forgetting twice is harmless).

    Parameters
    ----------
    components
        Name -> recommender.
    weights
        Name -> weight; components without a (positive) weight are not consulted.
    learns_components
        Whether :meth:`learn_one` feeds the components.
    rank_constant
        Damps the head of each ranking (60 is the usual choice for reciprocal-rank fusion).
    learning_rate
        Rate of the online weights (:meth:`observe_one`); 0 keeps ``weights`` fixed.
    half_life
        Evaluated events after which an outcome counts half in the online weights.
    k
        The K the components' outcomes are scored at (and, for a blend that learns its own
        components, the depth it ranks them at to learn).
    fusion
        ``"rrf"``: weighted reciprocal-rank fusion (the weights above); ``"learned"``: a
        linear model over each component's rank of an item, learned online from each
        evaluated event (:class:`~stream.models.fusion.LearnedFusion`; the Hedge weights
        are then not used, the priors only start it).
    fusion_rate
        Step size of the learned fusion.

    With online weights a stand-alone blend learns from its components' rankings without any
    exclusions (it knows no user history); inside a pipeline the blend over the pipeline's
    models learns from exactly the rankings they were evaluated on.

    Examples
    --------
    >>> from stream.models.popularity import Popularity
    >>> from stream.models.knn import ItemKNN
    >>> blend = Blend({"knn": ItemKNN(), "popularity": Popularity()},
    ...               {"knn": 1.0, "popularity": 0.3})
    >>> for user, item in [("a", "x"), ("a", "y"), ("b", "x"), ("c", "z"), ("d", "z")]:
    ...     blend.learn_one(user, item, 1.0, {"implicit": True})
    >>> [(s.item, s.reason) for s in blend.top_k("b", 2, exclude={"x"})]
    [('y', 'because you interacted with x'), ('z', 'popular now')]
    """

    def __init__(
        self,
        components: dict[str, Recommender],
        weights: dict[str, float],
        learns_components: bool = True,
        rank_constant: float = 60.0,
        learning_rate: float = 0.0,
        half_life: float = 500.0,
        k: int = 10,
        fusion: str = "rrf",
        fusion_rate: float = 0.05,
    ) -> None:
        super().__init__(seed=None)
        unknown = [name for name in weights if name not in components]
        if unknown:
            raise ValueError(f"weights name unknown components: {unknown}")
        if not rank_constant >= 0:
            raise ValueError(f"rank_constant must be >= 0, got {rank_constant}")
        if not (learning_rate >= 0 and half_life > 0 and k >= 1):
            raise ValueError("learning_rate must be >= 0, half_life > 0 and k >= 1")
        if fusion not in ("rrf", "learned") or not fusion_rate >= 0:
            raise ValueError(f"fusion must be rrf or learned (got {fusion!r}), fusion_rate >= 0")
        self.components = components
        self.weights = weights
        self.learns_components = learns_components
        self.rank_constant = rank_constant
        self.learning_rate = learning_rate
        self.half_life = half_life
        self.k = k
        self.fusion = fusion
        self.fusion_rate = fusion_rate
        self._keep = 2.0 ** (-1.0 / half_life)
        self._active = [
            (n, c, float(weights[n])) for n, c in components.items() if weights.get(n, 0.0) > 0
        ]
        self._learned: LearnedFusion | None = None
        if fusion == "learned":
            self._learned = LearnedFusion([w for _, _, w in self._active], DEPTH * k, fusion_rate)
        self._last: tuple[int, list[typing.Sequence[Scored]], dict[Hashable, typing.Any]] | None
        self._last = None  # the learned fusion's last candidates (what observe_one learns on)
        self._gains = [0.0] * len(self._active)  # decayed prequential gains, per active component
        self.updates = 0  # outcomes the weights learned from
        # The model sync (stream.sync): own gains since the last delta, and their outcomes
        # (None: not tracking; the first item_delta starts it).
        self._sync_gains: dict[str, float] | None = None
        self._sync_ticks = 0
        self._consulted = self._heavy()

    def _heavy(self) -> list[tuple[str, Recommender, float]]:
        if self.fusion == "learned":  # fuses every active component
            return list(self._active)
        top = max((weight for _, _, weight in self._active), default=0.0)
        return [entry for entry in self._active if entry[2] >= MIN_SHARE * top]

    def __setstate__(self, state: dict[str, typing.Any]) -> None:
        # Blends pickled before online weights existed (older checkpoints) learn from now on.
        self.__dict__.update(state)
        defaults = {
            "learning_rate": 0.0,
            "half_life": 500.0,
            "k": 10,
            "updates": 0,
            "fusion": "rrf",
            "fusion_rate": 0.05,
            "_learned": None,
            "_last": None,
        }
        for name, value in defaults.items():
            self.__dict__.setdefault(name, value)
        self.__dict__.setdefault("_keep", 2.0 ** (-1.0 / self.half_life))
        self.__dict__.setdefault("_gains", [0.0] * len(self._active))
        # Pickled before the weights' evidence was shared: tracking starts empty, never with
        # the gains it had (a restored shard with the sync on would send them again).
        self.__dict__.setdefault("_sync_gains", {})
        self.__dict__.setdefault("_sync_ticks", 0)
        self._consulted = self._heavy()

    @classmethod
    def _unit_test_params(cls) -> typing.Iterator[dict[str, typing.Any]]:
        # River's checks build every estimator from these; a blend needs a component.
        from stream.models.popularity import Popularity

        yield {"components": {"popularity": Popularity()}, "weights": {"popularity": 1.0}}

    def clone(
        self, new_params: dict[str, typing.Any] | None = None, include_attributes: bool = False
    ) -> Blend:
        """A fresh blend over fresh clones of the components (River's ``clone`` would deep-copy
        them, learned state included)."""
        params: dict[str, typing.Any] = {
            "components": {n: c.clone() for n, c in self.components.items()},
            "weights": dict(self.weights),
            "learns_components": self.learns_components,
            "rank_constant": self.rank_constant,
            "learning_rate": self.learning_rate,
            "half_life": self.half_life,
            "k": self.k,
            "fusion": self.fusion,
            "fusion_rate": self.fusion_rate,
        }
        params.update(new_params or {})
        return Blend(**params)

    @property
    def n_users(self) -> int:
        return max((c.n_users for c in self.components.values()), default=0)

    @property
    def n_items(self) -> int:
        return max((c.n_items for c in self.components.values()), default=0)

    def learn_one(
        self,
        user: Hashable,
        item: Hashable,
        y: float,
        x: dict[str, typing.Any] | None = None,
    ) -> None:
        if self.learns_components:
            if self.learns_online:
                depth = DEPTH * self.k
                self.observe_one({n: c.top_k(user, depth) for n, c, _ in self._active}, item)
            for component in self.components.values():
                component.learn_one(user, item, y, x)

    def carry_weights(self, other: Blend) -> None:
        """Continue from ``other``'s learned weights (a restore that keeps the same components
        rebuilds the blend over the restored instances); nothing happens if they differ."""
        if [n for n, _, _ in other._active] != [n for n, _, _ in self._active]:
            return
        self._active = [
            (name, component, weight)
            for (name, component, _), (_, _, weight) in zip(
                self._active, other._active, strict=True
            )
        ]
        self._gains = list(other._gains)
        self.updates = other.updates
        sync = getattr(other, "_sync_gains", None)  # what waits to be shared (stream.sync)
        self._sync_gains = None if sync is None else dict(sync)
        self._sync_ticks = getattr(other, "_sync_ticks", 0)
        self._consulted = self._heavy()
        if self._learned is not None and other._learned is not None:
            self._learned = copy.deepcopy(other._learned)
            self._learned.learning_rate = self.fusion_rate

    @property
    def current_weights(self) -> dict[str, float]:
        """The weights the fusion uses now (learned ones when ``learning_rate`` > 0)."""
        return {name: weight for name, _, weight in self._active}

    def observe_one(
        self, rankings: typing.Mapping[str, typing.Sequence[Scored]], item: Hashable
    ) -> None:
        """Learn the weights from one outcome: the components' rankings made *before* the user
        chose ``item`` (for a blend over shared models the pipeline passes the rankings it
        evaluated them on, so this costs no extra ranking).

        Exponential weights (Hedge) over the components' prequential gains: component ``c``
        gains ``1 / log2(1 + r)`` when ``item`` is at rank ``r <= k`` of its list (the NDCG of
        a single relevant item), else 0; ``G_c`` is the sum of its gains, each older outcome
        counting ``2 ** (-1 / half_life)`` times the next, so the weights follow drift; the
        fusion weight is ``prior_c * exp(-learning_rate * (1 - G_c / max G))``. The gains are
        taken relative to the leader's, so the same rate works whether hit rates are 0.5 or
        0.005: a component with half the leader's gains weighs ``exp(-learning_rate / 2)`` of
        its prior; equal components keep their prior ratio.

        A learned fusion (``fusion="learned"``) learns its linear model instead
        (:meth:`LearnedFusion.update_one`).
        """
        if self._learned is not None:
            self._observe_learned(rankings, item)
            return
        if not self.learning_rate or not self._active:
            return
        k = self.k
        keep = self._keep
        gains = self._gains
        sync = self._sync_gains
        for m, (name, _, _) in enumerate(self._active):
            gain = 0.0
            for rank, scored in enumerate(rankings[name][:k], start=1):
                if scored.item == item:
                    gain = 1.0 / math.log2(1.0 + rank)
                    break
            gains[m] = gains[m] * keep + gain
            if sync is not None:  # this shard's own evidence, for the other shards
                sync[name] = sync.get(name, 0.0) * keep + gain
        self.updates += 1
        if sync is not None:
            self._sync_ticks += 1
        self._reweigh()

    def _reweigh(self) -> None:
        """The fusion weights from the gains (see :meth:`observe_one`)."""
        gains = self._gains
        top = max(gains, default=0.0)
        if top <= 0.0:
            return
        rate = self.learning_rate / top
        self._active = [
            (name, component, self.weights[name] * math.exp(rate * (g - top)))
            for (name, component, _), g in zip(self._active, gains, strict=True)
        ]
        self._consulted = self._heavy()

    @property
    def active(self) -> list[tuple[str, Recommender]]:
        """The consulted components (positive weight), in fusion order."""
        return [(name, component) for name, component, _ in self._active]

    def _fused(
        self, rankings: typing.Mapping[str, typing.Sequence[Scored]], depth: int
    ) -> dict[Hashable, list[typing.Any]]:
        # item -> [total, best contribution, reason of the best contributor]
        if self._learned is not None:
            return self._fused_learned(rankings, depth)
        fused: dict[Hashable, list[typing.Any]] = {}
        constant = self.rank_constant
        for name, _, weight in self._consulted:
            for rank, scored in enumerate(rankings[name][:depth], start=1):
                share = weight / (constant + rank)
                entry = fused.get(scored.item)
                if entry is None:
                    fused[scored.item] = [share, share, scored.reason or name]
                else:
                    entry[0] += share
                    if share > entry[1]:
                        entry[1], entry[2] = share, scored.reason or name
        return fused

    def predict_one(
        self, user: Hashable, item: Hashable, x: dict[str, typing.Any] | None = None
    ) -> float:
        """The item's fused score over the components' full rankings (O(catalogue): the
        pipeline never calls it; :meth:`top_k` fuses only the heads)."""
        depth = max(self.n_items, 1)
        rankings = {name: c.top_k(user, depth) for name, c, _ in self._consulted}
        entry = self._fused(rankings, depth).get(item)
        return 0.0 if entry is None else float(entry[0])

    def top_k(self, user: Hashable, k: int, exclude: Iterable[Hashable] = ()) -> list[Scored]:
        if k <= 0:
            return []
        if not isinstance(exclude, set | frozenset | dict):
            exclude = set(exclude)
        depth = DEPTH * k
        return self.fuse({name: c.top_k(user, depth, exclude) for name, c, _ in self._consulted}, k)

    def fuse(self, rankings: typing.Mapping[str, typing.Sequence[Scored]], k: int) -> list[Scored]:
        """The top ``k`` fused from rankings the caller already has, one per active component.

        ``rankings[name]`` must be ``component.top_k(user, m, exclude)`` for some
        ``m >= DEPTH * k`` (only its first ``DEPTH * k`` count, and a top-``m`` list begins
        with the top-``DEPTH * k``), so this equals :meth:`top_k` without ranking again: the
        pipeline ranks each component once per event, for its evaluation and for the blend.
        """
        if k <= 0:
            return []
        fused = self._fused(rankings, DEPTH * k)
        best = sorted(fused.items(), key=lambda kv: -kv[1][0])[:k]
        return scored_many(
            [item for item, _ in best], [e[0] for _, e in best], [e[2] for _, e in best]
        )

    def forget_user(self, user: Hashable) -> None:
        self._last = None
        for component in self.components.values():
            component.forget_user(user)

    def forget_item(self, item: Hashable) -> None:
        self.forget_items((item,))

    def forget_items(self, items: Iterable[Hashable]) -> None:
        """Forwarded to the components (a blend keeps nothing per item itself)."""
        items = list(items)
        self._last = None  # it may list them
        for component in self.components.values():
            component.forget_items(items)

    def top_k_among(
        self,
        user: Hashable,
        k: int,
        candidates: typing.Sequence[Hashable],
        exclude: Iterable[Hashable] = (),
    ) -> list[Scored]:
        """:meth:`top_k` with every component ranked over ``candidates`` only (a blend over
        the pipeline's own models fuses the rankings the pipeline made instead)."""
        if k <= 0:
            return []
        if not isinstance(exclude, set | frozenset | dict):
            exclude = set(exclude)
        depth = DEPTH * k
        return self.fuse(
            {
                name: c.top_k_among(user, depth, candidates, exclude)
                for name, c, _ in self._consulted
            },
            k,
        )

    @property
    def consulted(self) -> list[str]:
        """The components :meth:`fuse` reads (the active ones not too light to matter)."""
        return [name for name, _, _ in self._consulted]

    @property
    def learns_online(self) -> bool:
        """Whether :meth:`observe_one` learns anything (online weights or a learned fusion)."""
        learned = self._learned is not None and self._learned.learning_rate > 0
        return learned or bool(self.learning_rate)

    def __getstate__(self) -> dict[str, typing.Any]:
        state = self.__dict__.copy()
        state["_last"] = None  # rankings of one event: nothing a checkpoint needs
        return state

    def _fused_learned(
        self, rankings: typing.Mapping[str, typing.Sequence[Scored]], depth: int
    ) -> dict[Hashable, list[typing.Any]]:
        assert self._learned is not None
        names = [name for name, _, _ in self._active]
        lists = [rankings[name] for name in names]
        fused = self._learned.fused(lists, depth, names)
        self._last = (depth, lists, fused)
        return fused

    def _observe_learned(
        self, rankings: typing.Mapping[str, typing.Sequence[Scored]], item: Hashable
    ) -> None:
        assert self._learned is not None
        depth = DEPTH * self.k
        lists = [rankings[name] for name, _, _ in self._active]
        last = self._last
        # Inside a pipeline the rankings are the very lists the evaluation just fused.
        if (
            last is not None
            and last[0] == depth
            and len(last[1]) == len(lists)
            and all(a is b for a, b in zip(last[1], lists, strict=True))
        ):
            fused = last[2]
        else:
            fused = self._learned.fused(lists, depth)
        heads = [ranking[:depth] for ranking in lists]
        if self._learned.update_one(heads, fused, item):
            self.updates += 1
        self._last = None

    # --- sharing the weights' evidence across shards (stream.sync) ----------------------

    @property
    def sync_tracking(self) -> bool:
        """Whether :meth:`item_delta` tracks this shard's own gains (its first call starts it)."""
        return self._sync_gains is not None

    def item_delta(self) -> dict[str, typing.Any]:
        """The prequential gains this shard's outcomes added to the Hedge weights since the
        last call (tracking starts on the first call, which returns the gains so far), named
        per component, in gains as of now, and ``ticks`` the outcomes they came from.

        Not item state, but like it not per user: a receiver decays its own gains by the
        sender's ticks and adds these (:meth:`apply_item_delta`), so every shard weighs its
        components by every shard's outcomes, as one partition would, instead of by its own
        1/P of them. A learned fusion (``fusion="learned"``) shares nothing.
        """
        if self._learned is not None or not self.learning_rate:
            return {"ticks": 0, "names": [], "gains": np.zeros(0)}
        pending = self._sync_gains
        if pending is None:
            pending = {name: g for (name, _, _), g in zip(self._active, self._gains, strict=True)}
        ticks = self._sync_ticks
        self._sync_gains, self._sync_ticks = {}, 0
        names = list(pending)
        gains = np.fromiter(pending.values(), np.float64, len(names))
        return {"ticks": ticks, "names": names, "gains": gains}

    def apply_item_delta(self, delta: dict[str, typing.Any]) -> None:
        """Another shard's :meth:`item_delta`: decay the gains by its outcomes, add its gains,
        and weigh the components again (not part of this shard's next delta)."""
        if self._learned is not None or not self.learning_rate:
            return
        ticks, gains = int(delta["ticks"]), np.asarray(delta["gains"], dtype=np.float64)
        if ticks < 0 or not np.isfinite(gains).all() or (gains < 0).any():
            raise ValueError(f"blend gains delta with {ticks} ticks and gains {gains.tolist()}")
        decay = self._keep**ticks
        added = dict(zip(delta["names"], gains.tolist(), strict=True))
        self._gains = [
            g * decay + added.get(name, 0.0)
            for (name, _, _), g in zip(self._active, self._gains, strict=True)
        ]
        pending = self._sync_gains
        if pending:  # this shard's own evidence ages with the others' outcomes too
            for name in pending:
                pending[name] *= decay
        self._reweigh()
