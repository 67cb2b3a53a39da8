"""Per-event cost (µs) of each recommender's ``learn_one`` and ``top_k``, with HR@K on the side.

The models are built by the registry from ``StreamSettings`` (defaults unless overridden) and
fed a seeded synthetic stream (``producers.synthetic``: clustered tastes, Zipf popularity,
funnels of view/click/add_to_cart/purchase, 10% ratings) over ~2,000 items and 1,000 users.
After ``--warmup`` events learned without timing, each measured event is handled the way the
pipeline does: ``top_k(user, K, exclude=<items the user saw>)`` (timed, and scored as a hit
when the event's item is new to the user and in the list), then ``learn_one`` (timed). The
blend is built over the same instances as the other models and does not learn them, so its
``learn_one`` costs nothing and its ``top_k`` includes its components' ``top_k``.
Prints figures; asserts nothing.

    python benchmarks/models.py [--events 20000] [--warmup 30000] [--items 2000]
                                [--users 1000] [--models popularity,knn,...] [--k 10]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from collections.abc import Hashable
from typing import Any

from producers.synthetic import SyntheticStream
from stream.models import build_models, learns
from stream.settings import StreamSettings

__all__ = ["main"]

IMPLICIT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}


Event = tuple[str, str, float, dict[str, Any]]


def _events(n: int, users: int, items: int, seed: int) -> list[Event]:
    stream = SyntheticStream(
        n_events=n, n_users=users, n_items=items, seed=seed, ratings_fraction=0.1
    )
    out = []
    for e in stream.events():
        kind = e["event_type"]
        implicit = kind != "rating"
        y = IMPLICIT_WEIGHTS[kind] if implicit else float(e["rating"])
        x = {"event_type": kind, "implicit": implicit, "timestamp": float(e["timestamp"])}
        out.append((str(e["user_id"]), str(e["item_id"]), y, x))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000, help="measured events")
    parser.add_argument("--warmup", type=int, default=30_000, help="events learned first")
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--models", default="popularity,knn,biased_mf,funk_mf,blend", help="comma-separated"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a StreamSettings override, e.g. --set negative_samples=2 (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = dict(s.split("=", 1) for s in args.set)
    names = tuple(n.strip() for n in args.models.split(",") if n.strip())
    settings = StreamSettings(models=names, recommender=names[0], top_k=args.k, **overrides)
    models = build_models(settings)
    learners = [(n, m) for n, m in models.items() if learns(n, m)]
    events = _events(args.warmup + args.events, args.users, args.items, args.seed)
    print(
        f"{len(events):,} synthetic events ({args.warmup:,} warm-up), {args.users:,} users, "
        f"{args.items:,} items, K={args.k}; models: {', '.join(models)}"
    )

    history: dict[Hashable, dict[Hashable, None]] = {}
    for user, item, y, x in events[: args.warmup]:
        for _, model in learners:
            model.learn_one(user, item, y, x)
        history.setdefault(user, {})[item] = None

    clock = time.perf_counter
    learn_s = dict.fromkeys(models, 0.0)
    rank_s = dict.fromkeys(models, 0.0)
    hits = dict.fromkeys(models, 0)
    ranked = 0
    for user, item, y, x in events[args.warmup :]:
        seen = history.setdefault(user, {})
        evaluate = item not in seen
        ranked += evaluate
        for name, model in models.items():
            started = clock()
            top = model.top_k(user, args.k, seen)
            rank_s[name] += clock() - started
            if evaluate and any(s.item == item for s in top):
                hits[name] += 1
        for name, model in learners:
            started = clock()
            model.learn_one(user, item, y, x)
            learn_s[name] += clock() - started
        seen[item] = None

    n = args.events
    print(f"\n{'model':<12}{'learn_one µs':>14}{'top_k µs':>11}{'sum µs':>9}{'HR@K':>8}")
    for name in models:
        learn_us, rank_us = learn_s[name] / n * 1e6, rank_s[name] / n * 1e6
        hr = hits[name] / ranked if ranked else float("nan")
        print(f"{name:<12}{learn_us:>14.1f}{rank_us:>11.1f}{learn_us + rank_us:>9.1f}{hr:>8.3f}")
    total = sum(learn_s.values()) + sum(rank_s.values())
    print(f"{'all':<12}{'':>14}{'':>11}{total / n * 1e6:>9.1f}")
    for name, model in models.items():
        size = len(pickle.dumps(model)) if learns(name, model) else 0
        print(
            f"{name}: {model.n_users:,} users, {model.n_items:,} items"
            + (f", pickled {size / 1e6:.1f} MB" if size else " (shares its components)")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
