"""The quality suite's streams: seeded event logs from structurally different generators.

Each stream is a function ``(seed, scale=1.0) -> list[Event]`` (time-ordered; ``scale``
multiplies the number of events) registered in :data:`STREAMS` with a short description and
whether it is *held out*: the defaults may be tuned on the others (``clusters``,
``sequential``, ``ml100k``), never on these. The generators are written independently of one
another, so a model fitted to one generator's quirks does not get them for free elsewhere:

- ``clusters``: taste clusters (``producers.synthetic``, the demo's generator);
- ``sequential``: sessions walking a sparse item-to-item Markov chain;
- ``ml100k``: MovieLens-100K ratings;
- ``popularity_churn``: Zipf popularity over items that are born, peak and fade;
- ``mixed``: latent-factor users and items, half explicit ratings, half implicit events;
- ``sparse_catalogue``: 60k items in 500 categories under 25 departments, few events per item;
- ``repeat_purchase``: shoppers re-buying staples and browsing categories through a funnel.

Same seed, same events. ``python benchmarks/streams.py`` prints each stream's size and
generation time.
"""

from __future__ import annotations

import random
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml100k import DEFAULT_DIR, ensure_ml100k

from producers.formats import read_events
from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.events import Event, EventType

__all__ = [
    "STREAMS",
    "StreamSpec",
    "clusters",
    "mixed",
    "ml100k",
    "popularity_churn",
    "repeat_purchase",
    "sequential",
    "sparse_catalogue",
]

_START = 1_700_000_000.0
_FUNNEL = ("view", "click", "add_to_cart", "purchase")


@dataclass(frozen=True)
class StreamSpec:
    """A stream of the suite: its generator, whether it is held out from tuning, a summary."""

    name: str
    generate: Callable[[int, float], list[Event]]
    held_out: bool
    description: str

    def events(self, seed: int, scale: float = 1.0) -> list[Event]:
        return self.generate(seed, scale)


def _count(n: int, scale: float) -> int:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return max(1, round(n * scale))


def _event(
    user: int | str, item: int | str, kind: str, at: float, rating: float | None = None
) -> Event:
    return Event(
        user_id=f"u{user}",
        item_id=f"i{item}",
        event_type=typing.cast(EventType, kind),  # checked by Event's validation
        rating=rating,
        timestamp=round(at, 3),
    )


def _funnel(rng: np.random.Generator, p_next: tuple[float, float, float]) -> list[str]:
    """``view``, then each later step of the funnel with its probability, stopping at a miss."""
    steps = ["view"]
    for kind, p in zip(_FUNNEL[1:], p_next, strict=True):
        if rng.random() >= p:
            break
        steps.append(kind)
    return steps


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    return 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent


# --- clusters -------------------------------------------------------------------------------


def clusters(seed: int, scale: float = 1.0) -> list[Event]:
    """Taste clusters: ``producers.synthetic.SyntheticStream`` with its defaults.

    500 users, 1,000 items in about 13 clusters; each user prefers one or two clusters and
    picks inside them 80% of the time, items in a cluster follow a Zipf popularity, a tenth of
    the items arrive during the stream. Interactions go through the view -> click ->
    add_to_cart -> purchase funnel, 10% of them are star ratings (high inside the user's
    clusters, low outside). No drift. 50k events. The generator the defaults were first
    fitted to, so it is a tuning stream.
    """
    config = SyntheticConfig(n_events=_count(50_000, scale), seed=seed, ratings_fraction=0.1)
    return [Event.model_validate(e) for e in SyntheticStream(config).events()]


# --- sequential -----------------------------------------------------------------------------


def sequential(seed: int, scale: float = 1.0) -> list[Event]:
    """Sessions walking a sparse random Markov chain: the next item depends on the last.

    3,000 items, each with 2 to 5 likely successors (Dirichlet-skewed transition
    probabilities). 2,000 users (Zipf activity) run sessions of geometric length (mean 7
    steps); a session starts at one of the user's own five entry items (half the time) or at a
    globally popular item, then follows the chain, jumping to a random popular item 10% of the
    time. About a quarter of the views are followed by a click on the same item; eight
    sessions run interleaved. Implicit events only, 50k events. What a user did long ago says
    little: only the last item predicts the next.
    """
    rng = np.random.default_rng(seed)
    n_items, n_users, n_events = 3_000, 2_000, _count(50_000, scale)
    successors = [
        rng.choice(n_items, size=int(rng.integers(2, 6)), replace=False) for _ in range(n_items)
    ]
    transition = [np.cumsum(rng.dirichlet(np.full(len(s), 0.6))) for s in successors]
    popular = np.cumsum(_zipf_weights(n_items, 0.9)[rng.permutation(n_items)])
    popular /= popular[-1]
    entries = rng.integers(0, n_items, size=(n_users, 5))
    activity = np.cumsum(_zipf_weights(n_users, 0.6)[rng.permutation(n_users)])
    activity /= activity[-1]

    def popular_item() -> int:
        return int(np.searchsorted(popular, rng.random()))

    def new_session() -> list[int]:
        user = int(np.searchsorted(activity, rng.random()))
        start = int(entries[user, rng.integers(5)]) if rng.random() < 0.5 else popular_item()
        return [user, start, int(rng.geometric(1 / 7))]  # user, current item, steps left

    events: list[Event] = []
    sessions = [new_session() for _ in range(8)]
    pending: list[list[tuple[int, int, str]]] = [[] for _ in sessions]
    at = _START
    while len(events) < n_events:
        slot = int(rng.integers(len(sessions)))
        if not pending[slot]:
            session = sessions[slot]
            if session[2] <= 0:
                session = sessions[slot] = new_session()
            user, item = session[0], session[1]
            pending[slot].append((user, item, "view"))
            if rng.random() < 0.25:
                pending[slot].append((user, item, "click"))
            session[2] -= 1
            if rng.random() < 0.1:
                session[1] = popular_item()
            else:
                nxt = successors[item]
                session[1] = int(nxt[np.searchsorted(transition[item], rng.random())])
        user, item, kind = pending[slot].pop(0)
        at += float(rng.exponential(2.0))
        events.append(_event(user, item, kind, at))
    return events


# --- MovieLens-100K -------------------------------------------------------------------------


def ml100k(seed: int, scale: float = 1.0) -> list[Event]:
    """MovieLens-100K: 100,000 star ratings (1-5) of 1,682 movies by 943 users, time-ordered.

    Real data: long user histories (20 to 737 ratings), a strong popularity component and
    taste structure, every event a rating. ``seed`` is unused (the log is what it is);
    ``scale`` below 1 keeps the first part of the log in time order (the published targets
    are for the whole log). Fetched once into ``.data/`` by ``benchmarks/ml100k.py``.
    """
    del seed
    limit = _count(100_000, min(scale, 1.0))
    return list(read_events(ensure_ml100k(DEFAULT_DIR), "movielens-100k", limit=limit))


# --- popularity with churn ------------------------------------------------------------------


def popularity_churn(seed: int, scale: float = 1.0) -> list[Event]:
    """Heavy, short-lived popularity: items are born over time, peak and fade.

    4,000 items are born at uniformly random points of the stream; each has a Pareto
    "appeal" (a few hits, a long tail) and a short life (mean 4% of the stream): its
    attractiveness rises, peaks at a quarter of its life and fades to nothing. 3,000 users
    (Zipf activity) mostly follow what is trending now; their personal taste is weak (each
    likes 2 of 20 genres, which count 2.5x). Every interaction runs through the funnel view
    -> click (30%) -> add_to_cart (35%) -> purchase (50%). Implicit only, about 60k events.
    Rewards recency-weighted popularity; long memories hurt.
    """
    rng = np.random.default_rng(seed)
    n_items, n_users, n_genres = 4_000, 3_000, 20
    n_events = _count(60_000, scale)
    # Interactions (funnels average ~1.4 events), the timeline the items live on.
    horizon = max(1, round(n_events / 1.42))
    born = np.sort(rng.uniform(-0.03, 1.0, n_items)) * horizon
    life = rng.exponential(0.04 * horizon, n_items) + 0.005 * horizon
    appeal = rng.pareto(1.2, n_items) + 0.05
    genre = rng.integers(0, n_genres, n_items)
    taste = np.ones((n_users, n_genres))
    for u in range(n_users):
        taste[u, rng.choice(n_genres, 2, replace=False)] = 2.5
    activity = np.cumsum(_zipf_weights(n_users, 0.7)[rng.permutation(n_users)])
    activity /= activity[-1]

    events: list[Event] = []
    at = _START
    step, t = 50, 0
    live = np.zeros(0, dtype=np.intp)
    cum = np.zeros((n_genres, 0))
    while len(events) < n_events:
        if t % step == 0:
            age = (t - born) / life
            alive = (age > 0) & (age < 1)
            live = np.flatnonzero(alive)
            a = age[live]
            # Rises to its peak at a quarter of its life, then fades to 0 at its end.
            shape = np.where(a < 0.25, a / 0.25, (1 - a) / 0.75) ** 2
            weight = appeal[live] * shape
            # Per genre: cumulative weight of that genre's live items (for taste-weighted draws).
            in_genre = genre[live][None, :] == np.arange(n_genres)[:, None]
            cum = np.cumsum(weight[None, :] * in_genre, axis=1)
        t += 1
        if not live.size:
            continue
        user = int(np.searchsorted(activity, rng.random()))
        mass = cum[:, -1] * taste[user]
        g = int(np.searchsorted(np.cumsum(mass), rng.random() * mass.sum()))
        g = min(g, n_genres - 1)
        pos = int(np.searchsorted(cum[g], rng.random() * cum[g, -1], side="right"))
        item = int(live[min(pos, live.size - 1)])
        for kind in _funnel(rng, (0.30, 0.35, 0.5)):
            at += float(rng.exponential(1.0))
            events.append(_event(user, item, kind, at))
    return events[:n_events]


# --- mixed ratings and implicit events ------------------------------------------------------


def mixed(seed: int, scale: float = 1.0) -> list[Event]:
    """Latent factors behind both ratings and implicit choices, about half of each.

    1,000 users and 2,000 items with 8-dimensional Gaussian factors, user and item biases and
    an item popularity bias. A user (Zipf activity) picks an item by a softmax over
    affinity = 2 * factors' dot product + popularity bias (re-drawing up to three times
    when it is an item they already had). 60% of the picks (half of the events) are rated:
    3.6 + biases + 0.8 * dot product + noise, clipped to 1..5, in half stars for a third of the
    users and whole stars for the others; the other picks are implicit (view -> click 40% ->
    add_to_cart 25% -> purchase 40%). 50k events. Models must rank from both kinds of events
    and predict ratings from the rated ones.
    """
    rng = np.random.default_rng(seed)
    n_users, n_items, dim = 1_000, 2_000, 8
    n_events = _count(50_000, scale)
    # Factor scale dim ** -0.25: the dot product has unit variance.
    users = rng.normal(0.0, dim**-0.25, (n_users, dim))
    items = rng.normal(0.0, dim**-0.25, (n_items, dim))
    dot = users @ items.T
    user_bias = rng.normal(0.0, 0.4, n_users)
    item_bias = rng.normal(0.0, 0.3, n_items)
    pop_bias = rng.normal(0.0, 1.0, n_items)
    logits = 2.0 * dot + pop_bias[None, :]
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    cum = np.cumsum(prob, axis=1)
    cum /= cum[:, -1:]
    half_stars = rng.random(n_users) < 1 / 3
    activity = np.cumsum(_zipf_weights(n_users, 0.5)[rng.permutation(n_users)])
    activity /= activity[-1]
    seen: list[set[int]] = [set() for _ in range(n_users)]

    events: list[Event] = []
    at = _START
    while len(events) < n_events:
        user = int(np.searchsorted(activity, rng.random()))
        for _ in range(4):
            item = min(int(np.searchsorted(cum[user], rng.random())), n_items - 1)
            if item not in seen[user]:
                break
        seen[user].add(item)
        at += float(rng.exponential(1.0))
        if rng.random() < 0.6:  # a funnel averages 1.54 events: half the events are ratings
            raw = 3.6 + user_bias[user] + item_bias[item] + 0.8 * dot[user, item]
            raw += rng.normal(0.0, 0.6)
            stars = round(raw * 2) / 2 if half_stars[user] else float(round(raw))
            events.append(_event(user, item, "rating", at, float(min(5.0, max(1.0, stars)))))
        else:
            for kind in _funnel(rng, (0.4, 0.25, 0.4)):
                events.append(_event(user, item, kind, at))
                at += float(rng.exponential(0.3))
    return events[:n_events]


# --- a large sparse catalogue ---------------------------------------------------------------


def sparse_catalogue(seed: int, scale: float = 1.0) -> list[Event]:
    """A large, sparse catalogue with hierarchical taste: 60k items, few events per item.

    25 departments of 20 categories each (500 categories of Zipf-distributed sizes) hold
    60,000 items with a long-tailed (Zipf 0.9) popularity inside each category. 5,000 users
    (Zipf activity, so most have only a handful of events) each have a home department and two
    or three favourite categories in it: a pick falls in a favourite category 70% of the time,
    elsewhere in the home department 15%, anywhere 15%. Funnel view -> click 25% ->
    add_to_cart 20% -> purchase 40%. About 80k events on some 22k distinct items (3.6 per
    item): co-occurrences are thin and the category structure has to be found from them.
    """
    rng = np.random.default_rng(seed)
    n_items, n_users, n_depts, per_dept = 60_000, 5_000, 25, 20
    n_cats = n_depts * per_dept
    n_events = _count(80_000, scale)
    size = _zipf_weights(n_cats, 0.7)[rng.permutation(n_cats)]
    # Every category gets at least 10 items; the rest are spread by category size.
    counts = 10 + rng.multinomial(n_items - 10 * n_cats, size / size.sum())
    order = rng.permutation(n_items)
    starts = np.concatenate([[0], np.cumsum(counts)])
    cat_items = [order[starts[c] : starts[c + 1]] for c in range(n_cats)]
    cat_cum = []
    for c in range(n_cats):
        w = np.cumsum(_zipf_weights(counts[c], 0.9))
        cat_cum.append(w / w[-1])
    home = rng.integers(0, n_depts, n_users)
    favourites = [
        home[u] * per_dept + rng.choice(per_dept, int(rng.integers(2, 4)), replace=False)
        for u in range(n_users)
    ]
    activity = np.cumsum(_zipf_weights(n_users, 0.8)[rng.permutation(n_users)])
    activity /= activity[-1]

    events: list[Event] = []
    at = _START
    while len(events) < n_events:
        user = int(np.searchsorted(activity, rng.random()))
        r = rng.random()
        if r < 0.7:
            cat = int(rng.choice(favourites[user]))
        elif r < 0.85:
            cat = int(home[user] * per_dept + rng.integers(per_dept))
        else:
            cat = int(rng.integers(n_cats))
        pos = min(int(np.searchsorted(cat_cum[cat], rng.random())), counts[cat] - 1)
        item = int(cat_items[cat][pos])
        for kind in _funnel(rng, (0.25, 0.2, 0.4)):
            at += float(rng.exponential(1.0))
            events.append(_event(user, item, kind, at))
    return events[:n_events]


# --- repeat purchases -----------------------------------------------------------------------


def repeat_purchase(seed: int, scale: float = 1.0) -> list[Event]:
    """An e-commerce log: shoppers re-buy a few staples and browse categories through a funnel.

    5,000 products in 50 categories; 300 of them are staples (groceries, consumables) with a
    Zipf popularity. 2,500 shoppers (Zipf activity) each have three to six staples and two
    favourite categories. A visit is a re-buy (35%: one or two of their staples, viewed,
    carted and purchased) or a browse (a favourite category 75% of the time, else any: three to
    eight product views with Zipf popularity inside the category, clicks 35%, add_to_cart 20%,
    purchase 50%). Visits of different shoppers interleave in time (random.Random). About 70k
    events: staples repeat (re-interactions are not scored), first purchases of popular
    staples and in-category browsing are what can be predicted.
    """
    rng = random.Random(seed)
    n_items, n_cats, n_staples, n_users = 5_000, 50, 300, 2_500
    n_events = _count(70_000, scale)
    items = list(range(n_items))
    rng.shuffle(items)
    staples = items[:n_staples]
    staple_w = [1.0 / (r + 1) ** 0.9 for r in range(n_staples)]
    rest = items[n_staples:]
    by_cat = [rest[c::n_cats] for c in range(n_cats)]
    cat_w = [[1.0 / (r + 1) ** 1.0 for r in range(len(g))] for g in by_cat]
    shoppers = [
        (
            list(dict.fromkeys(rng.choices(staples, staple_w, k=rng.randint(3, 6)))),
            rng.sample(range(n_cats), 2),
        )
        for _ in range(n_users)
    ]
    activity = [1.0 / (r + 1) ** 0.6 for r in range(n_users)]
    order = list(range(n_users))
    rng.shuffle(order)

    def visit() -> list[tuple[int, int, str]]:
        user = rng.choices(order, activity)[0]
        mine, favourite = shoppers[user]
        steps: list[tuple[int, int, str]] = []
        if rng.random() < 0.35:
            for item in rng.sample(mine, min(len(mine), rng.randint(1, 2))):
                steps += [(user, item, k) for k in ("view", "add_to_cart", "purchase")]
            return steps
        cat = rng.choice(favourite) if rng.random() < 0.75 else rng.randrange(n_cats)
        for item in rng.choices(by_cat[cat], cat_w[cat], k=rng.randint(3, 8)):
            steps.append((user, item, "view"))
            if rng.random() < 0.35:
                steps.append((user, item, "click"))
                if rng.random() < 0.2:
                    steps.append((user, item, "add_to_cart"))
                    if rng.random() < 0.5:
                        steps.append((user, item, "purchase"))
        return steps

    events: list[Event] = []
    open_visits = [visit() for _ in range(6)]
    at = _START
    while len(events) < n_events:
        slot = rng.randrange(len(open_visits))
        if not open_visits[slot]:
            open_visits[slot] = visit()
        user, item, kind = open_visits[slot].pop(0)
        at += rng.expovariate(1.0)
        events.append(_event(user, item, kind, at))
    return events


# --- the registry ---------------------------------------------------------------------------


STREAMS: dict[str, StreamSpec] = {
    spec.name: spec
    for spec in (
        StreamSpec("clusters", clusters, False, "taste clusters (producers.synthetic), 50k"),
        StreamSpec("sequential", sequential, False, "sessions on a sparse Markov chain, 50k"),
        StreamSpec("ml100k", ml100k, False, "MovieLens-100K ratings, 100k"),
        StreamSpec("popularity_churn", popularity_churn, True, "Zipf items born and fading, 60k"),
        StreamSpec("mixed", mixed, True, "latent factors, half ratings half implicit, 50k"),
        StreamSpec("sparse_catalogue", sparse_catalogue, True, "60k items, 500 categories, 80k"),
        StreamSpec("repeat_purchase", repeat_purchase, True, "staple re-buys and browsing, 70k"),
    )
}
"""Every stream of the suite by name, tuning streams first."""


def main(argv: list[str] | None = None) -> int:
    """Print each stream's size, users, items, event types and generation time."""
    import argparse
    from collections import Counter

    parser = argparse.ArgumentParser(description="Sizes of the quality suite's streams")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0)
    ns = parser.parse_args(argv)
    for spec in STREAMS.values():
        started = time.perf_counter()
        events = spec.events(ns.seed, ns.scale)
        elapsed = time.perf_counter() - started
        kinds = Counter(e.event_type for e in events)
        items = Counter(e.item_id for e in events)
        print(
            f"{spec.name:<17} {len(events):>7,} events {len({e.user_id for e in events}):>6,} "
            f"users {len(items):>6,} items ({sum(items.values()) / len(items):.1f}/item) "
            f"{elapsed:5.2f}s  {dict(kinds)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
