"""A seeded synthetic event stream with known structure and injected drift.

Items fall into ``K`` clusters (topics) of ~75 items; within a cluster, popularity is
Zipf-like. Each user prefers 1-2 clusters and takes their next item from them with probability
``in_cluster_prob`` (0.8), otherwise from a random cluster. Users act in interleaved sessions;
each interaction is a funnel on one item (``view`` → maybe ``click`` → maybe ``add_to_cart``
→ maybe ``purchase``, tuned to the ``event_mix`` proportions, 70/20/7/3 by default), or, for a
``ratings_fraction`` of events, a ``rating`` (high inside the user's clusters, low outside).
Some items only appear later in the stream. At ``drift_at`` (``abrupt``) or over
``drift_width`` events from there (``gradual``), every user's preferred clusters rotate to
different ones and the popularity order inside each cluster is reshuffled.

Everything is drawn from :class:`random.Random` seeded by ``seed``: the same seed gives the
same events, byte for byte. :attr:`SyntheticStream.ground_truth` exposes the structure (item
clusters, user preferences before and after the drift, item arrival) for tests, benchmarks and
an ideal recommender to compare against.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from producers.records import Record, encode_event

__all__ = [
    "GroundTruth",
    "SyntheticConfig",
    "SyntheticStream",
    "generate",
    "write_jsonl",
]

DriftKind = Literal["abrupt", "gradual"]
_IMPLICIT = ("view", "click", "add_to_cart", "purchase")
ITEMS_PER_CLUSTER = 75


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic stream (validated on construction; ``ValueError`` if wrong).

    ``n_clusters=None`` means about one cluster per 75 items (at least 3). ``drift_width``
    (gradual drift only) defaults to a tenth of the stream. ``events_per_second`` spaces the
    event timestamps, starting at ``start_time`` (epoch seconds).
    """

    n_events: int = 10_000
    n_users: int = 500
    n_items: int = 1_000
    n_clusters: int | None = None
    seed: int = 0
    in_cluster_prob: float = 0.8
    max_user_clusters: int = 2
    item_zipf: float = 1.0
    user_zipf: float = 0.5
    event_mix: tuple[float, float, float, float] = (0.70, 0.20, 0.07, 0.03)
    ratings_fraction: float = 0.0
    new_items_fraction: float = 0.1
    start_time: float = 1_700_000_000.0
    events_per_second: float = 10.0
    drift_at: int | None = None
    drift_kind: DriftKind = "abrupt"
    drift_width: int | None = None
    sessions: int = 8
    session_interactions: float = 4.0

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.n_events >= 0, "n_events must not be negative")
        need(self.n_users >= 1, "n_users must be at least 1")
        need(self.clusters >= 2, "n_clusters must be at least 2")
        need(self.n_items >= self.clusters, "n_items must be at least n_clusters")
        need(0.0 <= self.in_cluster_prob <= 1.0, "in_cluster_prob must be in [0, 1]")
        need(
            1 <= self.max_user_clusters < self.clusters,
            "max_user_clusters must be at least 1 and below n_clusters",
        )
        need(self.item_zipf >= 0 and self.user_zipf >= 0, "zipf exponents must not be negative")
        mix = self.event_mix
        need(
            len(mix) == 4 and mix[0] > 0 and all(a >= b >= 0 for a, b in itertools.pairwise(mix)),
            "event_mix (view, click, add_to_cart, purchase) must be non-increasing, view > 0",
        )
        need(0.0 <= self.ratings_fraction <= 1.0, "ratings_fraction must be in [0, 1]")
        need(0.0 <= self.new_items_fraction < 1.0, "new_items_fraction must be in [0, 1)")
        need(
            math.isfinite(self.start_time) and self.start_time >= 0,
            "start_time must be epoch seconds",
        )
        need(self.events_per_second > 0, "events_per_second must be positive")
        need(self.drift_at is None or self.drift_at >= 0, "drift_at must not be negative")
        need(self.drift_kind in ("abrupt", "gradual"), "drift_kind must be abrupt or gradual")
        need(self.drift_width is None or self.drift_width >= 1, "drift_width must be at least 1")
        need(self.sessions >= 1, "sessions must be at least 1")
        need(self.session_interactions >= 1, "session_interactions must be at least 1")

    @property
    def clusters(self) -> int:
        """The number of item clusters (``n_clusters`` or the default for ``n_items``)."""
        if self.n_clusters is not None:
            return self.n_clusters
        return max(3, round(self.n_items / ITEMS_PER_CLUSTER))

    @property
    def drift_end(self) -> int | None:
        """First event index fully in the new regime (``None`` without drift)."""
        if self.drift_at is None:
            return None
        if self.drift_kind == "abrupt":
            return self.drift_at
        width = self.drift_width if self.drift_width is not None else max(1, self.n_events // 10)
        return self.drift_at + width


@dataclass(frozen=True)
class GroundTruth:
    """The hidden structure of a synthetic stream.

    ``cluster_ranking[regime][c]`` lists cluster ``c``'s items, most popular first, before
    (regime 0) and after (regime 1) the drift; ``user_clusters[regime][user]`` the user's
    preferred clusters; ``item_appears_at[item]`` the first event index the item can occur at.
    """

    n_clusters: int
    item_cluster: Mapping[str, int]
    cluster_ranking: tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]
    user_clusters: tuple[Mapping[str, tuple[int, ...]], Mapping[str, tuple[int, ...]]]
    item_appears_at: Mapping[str, int]
    drift_at: int | None
    drift_end: int | None
    in_cluster_prob: float
    item_zipf: float
    zipf_weights: tuple[float, ...] = field(default=(), repr=False)

    def new_regime_probability(self, index: int) -> float:
        """Probability that an interaction starting at event ``index`` follows the new regime."""
        if self.drift_at is None or self.drift_end is None or index < self.drift_at:
            return 0.0
        if index >= self.drift_end:
            return 1.0
        return (index - self.drift_at) / (self.drift_end - self.drift_at)

    def regime(self, index: int) -> int:
        """The dominant regime at event ``index``: 0 before the drift, 1 after."""
        return int(self.new_regime_probability(index) >= 0.5)

    def clusters_of(self, user: str, index: int) -> tuple[int, ...]:
        """The clusters ``user`` prefers at event ``index`` (dominant regime)."""
        return self.user_clusters[self.regime(index)][user]

    def ideal_top_k(
        self, user: str, index: int, k: int = 10, exclude: Iterable[str] = ()
    ) -> list[str]:
        """The ``k`` items ``user`` most likely picks next at ``index``: the best possible top-K.

        A ceiling for recommenders (what a model that knew the ground truth would serve).
        """
        regime = self.regime(index)
        prefs = set(self.user_clusters[regime][user])
        excluded = set(exclude)
        scored: list[tuple[float, str]] = []
        for cluster, ranking in enumerate(self.cluster_ranking[regime]):
            share = (1.0 - self.in_cluster_prob) / self.n_clusters
            if cluster in prefs:
                share += self.in_cluster_prob / len(prefs)
            live = [i for i in ranking if self.item_appears_at[i] <= index]
            total = sum(self.zipf_weights[: len(live)])
            for pos, item in enumerate(live):
                if item not in excluded:
                    scored.append((share * self.zipf_weights[pos] / total, item))
        scored.sort(key=lambda s: (-s[0], s[1]))
        return [item for _, item in scored[:k]]


class _Session:
    __slots__ = ("left", "pending", "user")

    def __init__(self, user: str, left: int) -> None:
        self.user = user
        self.left = left
        self.pending: deque[tuple[str, str, float | None]] = deque()


class SyntheticStream:
    """A deterministic stream of Event-shaped dicts with a known structure.

    Parameters
    ----------
    config
        The stream's parameters; keyword ``overrides`` replace fields of it.

    Examples
    --------
    >>> stream = SyntheticStream(n_events=5, n_users=3, n_items=30, seed=1)
    >>> [e["event_type"] for e in stream.events()]
    ['view', 'view', 'view', 'view', 'view']
    >>> list(stream.events()) == list(stream.events())
    True
    >>> stream.ground_truth.n_clusters
    3
    """

    def __init__(self, config: SyntheticConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or SyntheticConfig(), **overrides)
        self.ground_truth = self._structure()

    # --- structure ----------------------------------------------------------------------------

    def _structure(self) -> GroundTruth:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}:structure")
        k = cfg.clusters
        items = [f"i{n}" for n in range(cfg.n_items)]
        rng.shuffle(items)
        members: list[list[str]] = [items[c::k] for c in range(k)]
        item_cluster = {item: c for c, group in enumerate(members) for item in group}

        before = tuple(tuple(rng.sample(group, len(group))) for group in members)
        after = tuple(tuple(rng.sample(group, len(group))) for group in members)

        appears = dict.fromkeys(items, 0)
        if cfg.n_events > 1:
            for ranking in before:
                # The most popular item of each cluster is there from the start, so every
                # cluster always has an item to draw; a share of the others arrives later.
                for item in ranking[1:]:
                    if rng.random() < cfg.new_items_fraction:
                        appears[item] = rng.randrange(1, cfg.n_events)

        users = [f"u{n}" for n in range(cfg.n_users)]
        prefs_before = {
            u: tuple(sorted(rng.sample(range(k), rng.randint(1, cfg.max_user_clusters))))
            for u in users
        }
        # Rotate along one random cycle through all clusters: a proper subset of clusters is
        # never mapped onto itself, so every user's preferences really change.
        cycle = rng.sample(range(k), k)
        shift = {cycle[i]: cycle[(i + 1) % k] for i in range(k)}
        prefs_after = {u: tuple(sorted(shift[c] for c in cs)) for u, cs in prefs_before.items()}
        if cfg.drift_at is None:
            prefs_after = prefs_before
            after = before

        largest = max(len(g) for g in members)
        weights = [1.0 / (r**cfg.item_zipf) for r in range(1, largest + 1)]
        return GroundTruth(
            n_clusters=k,
            item_cluster=item_cluster,
            cluster_ranking=(before, after),
            user_clusters=(prefs_before, prefs_after),
            item_appears_at=appears,
            drift_at=cfg.drift_at,
            drift_end=cfg.drift_end,
            in_cluster_prob=cfg.in_cluster_prob,
            item_zipf=cfg.item_zipf,
            zipf_weights=tuple(weights),
        )

    # --- events -------------------------------------------------------------------------------

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield the ``n_events`` events (a fresh, identical sequence on every call)."""
        cfg, truth = self.config, self.ground_truth
        rng = random.Random(f"{cfg.seed}:events")
        k = truth.n_clusters
        cum_item = list(itertools.accumulate(truth.zipf_weights))

        # Items available so far, per regime and cluster, kept in popularity order.
        rank = [
            {item: pos for ranking in regime for pos, item in enumerate(ranking)}
            for regime in truth.cluster_ranking
        ]
        live: list[list[list[str]]] = [[[] for _ in range(k)] for _ in range(2)]
        live_rank: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(2)]

        def arrive(item: str) -> None:
            c = truth.item_cluster[item]
            for regime in (0, 1):
                pos = bisect.bisect(live_rank[regime][c], rank[regime][item])
                live_rank[regime][c].insert(pos, rank[regime][item])
                live[regime][c].insert(pos, item)

        arrivals = sorted((at, item) for item, at in truth.item_appears_at.items())
        next_arrival = 0

        users = list(truth.user_clusters[0])
        activity = [1.0 / (r**cfg.user_zipf) for r in range(1, len(users) + 1)]
        rng.shuffle(users)  # which users are the most active is random too
        cum_user = list(itertools.accumulate(activity))

        view, click, cart, purchase = cfg.event_mix
        p_click, p_cart = click / view, (cart / click if click else 0.0)
        p_purchase = purchase / cart if cart else 0.0
        implicit_per_funnel = sum(cfg.event_mix) / view
        f = cfg.ratings_fraction
        p_rating = f * implicit_per_funnel / (1.0 - f + f * implicit_per_funnel)
        p_session_end = 1.0 / cfg.session_interactions

        def new_session() -> _Session:
            user = users[bisect.bisect(cum_user, rng.random() * cum_user[-1])]
            left = 1
            while rng.random() >= p_session_end:
                left += 1
            return _Session(user, left)

        def interact(session: _Session, index: int) -> None:
            regime = int(rng.random() < truth.new_regime_probability(index))
            prefs = truth.user_clusters[regime][session.user]
            cluster = rng.choice(prefs) if rng.random() < cfg.in_cluster_prob else rng.randrange(k)
            choices = live[regime][cluster]
            n = len(choices)
            pos = min(n - 1, bisect.bisect(cum_item, rng.random() * cum_item[n - 1]))
            item = choices[pos]
            session.left -= 1
            if rng.random() < p_rating:
                mean = 4.1 if cluster in prefs else 2.2
                stars = float(min(5, max(1, round(rng.gauss(mean, 0.9)))))
                session.pending.append((item, "rating", stars))
                return
            session.pending.append((item, "view", None))
            for kind, p in zip(_IMPLICIT[1:], (p_click, p_cart, p_purchase), strict=True):
                if rng.random() >= p:
                    break
                session.pending.append((item, kind, None))

        sessions = [new_session() for _ in range(cfg.sessions)]
        for index in range(cfg.n_events):
            while next_arrival < len(arrivals) and arrivals[next_arrival][0] <= index:
                arrive(arrivals[next_arrival][1])
                next_arrival += 1
            slot = rng.randrange(len(sessions))
            session = sessions[slot]
            if not session.pending:
                if session.left <= 0:
                    session = sessions[slot] = new_session()
                interact(session, index)
            item, kind, stars = session.pending.popleft()
            event: dict[str, Any] = {
                "user_id": session.user,
                "item_id": item,
                "event_type": kind,
                "timestamp": round(cfg.start_time + index / cfg.events_per_second, 3),
            }
            if stars is not None:
                event["rating"] = stars
            yield event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.events()

    def records(self) -> Iterator[Record]:
        """The events as records to send (key = user id, value = compact JSON)."""
        for index, event in enumerate(self.events()):
            yield Record(
                index + 1,
                float(event["timestamp"]),
                str(event["user_id"]).encode("utf-8"),
                encode_event(event),
            )


def generate(
    n_events: int, seed: int = 0, drift_at: int | None = None, **options: Any
) -> Iterator[dict[str, Any]]:
    """``n_events`` synthetic events (``options``: other :class:`SyntheticConfig` fields).

    >>> events = list(generate(1_000, seed=3, drift_at=500, n_items=300))
    >>> len(events), sorted({e["event_type"] for e in events})
    (1000, ['add_to_cart', 'click', 'purchase', 'view'])
    """
    config = SyntheticConfig(n_events=n_events, seed=seed, drift_at=drift_at, **options)
    return SyntheticStream(config).events()


def write_jsonl(events: Iterable[Mapping[str, Any]], path: str | Path) -> int:
    """Write events as compact JSON lines to ``path``; returns how many were written."""
    count = 0
    with open(path, "wb") as f:
        for event in events:
            f.write(encode_event(event) + b"\n")
            count += 1
    return count
