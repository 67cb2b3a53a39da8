"""What a full rebuild costs the event loop (issue #13): its duration, and the loop's rate.

For each rebuilt model (``svd``, ``ease`` by default) a core :class:`stream.core.Pipeline` runs the
default models plus that one (background rebuilds, no scheduled ones: ``rebuild_every`` and
``rebuild_min_events`` out of reach) over a synthetic stream (``--users`` x ``--items``). The
rebuilt model's window is first filled to ``--window`` events (the model alone learns the first
``--window - --warmup`` events, the whole pipeline the next ``--warmup``), then, alternately
(``--rounds`` times):

- **idle**: the pipeline processes ``--slice`` events, no build running;
- **building**: ``request_rebuild()``, then the pipeline processes events until the build is
  swapped in (``version + 1``).

It prints the build's duration (background, and the same build inline with nothing else
running), and the loop's events/s in each state (their medians over the rounds) and the loss.
Targets: loss < 10 % while a build runs, the build < 30 s. Other processes on the machine move
the figures: the idle and building slices alternate so both see the same load.

    python benchmarks/rebuild.py [--models svd,ease] [--window 100000] [--warmup 5000]
                                 [--slice 3000] [--rounds 3] [--users 5000] [--items 3000]
                                 [--set NAME=VALUE ...] [--json PATH|-]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import fmt, print_table, quiet_logging, settings_overrides, write_json

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.core import Pipeline
from stream.events import Event, Source
from stream.models import RebuiltRecommender
from stream.settings import StreamSettings

__all__ = ["main", "measure"]

TARGET_LOSS = 0.10
TARGET_SECONDS = 30.0
_DEFAULT_MODELS = StreamSettings.model_fields["models"].default


def _events(n: int, users: int, items: int, seed: int) -> Iterator[Event]:
    """Synthetic events without end (``n`` per seed, then the next seed)."""
    while True:
        config = SyntheticConfig(n_events=n, n_users=users, n_items=items, seed=seed)
        for raw in SyntheticStream(config).events():
            yield Event.model_validate(raw)
        seed += 1


def _x(event: Event) -> dict[str, Any]:
    return {"event_type": event.event_type, "implicit": True, "timestamp": event.timestamp}


def measure(name: str, args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """One model's figures: build seconds (background and inline), idle and building rates."""
    models = (*(m for m in _DEFAULT_MODELS if m != "blend"), name, "blend")
    settings = StreamSettings(
        _env_file=None,  # type: ignore[call-arg]
        **{
            "models": models,
            "rebuild_window": args.window,
            "rebuild_every": 10**9,
            "rebuild_min_events": 10**9,
            "rebuild_background": True,
            **overrides,
        },
    )
    pipe = Pipeline.from_settings(settings)
    model = pipe.models[name]
    assert isinstance(model, RebuiltRecommender)
    stream = _events(args.window + 2 * args.rounds * args.slice, args.users, args.items, args.seed)
    offset = 0

    def step(n: int | None) -> tuple[int, float]:
        """Process ``n`` events (``None``: until the running build is swapped in)."""
        nonlocal offset
        done, started = 0, time.perf_counter()
        target = model.version + 1
        while (done < n) if n is not None else (model.version < target):
            pipe.process_one(next(stream), Source("bench", 0, offset))
            offset += 1
            done += 1
        return done, time.perf_counter() - started

    for _ in range(args.window - args.warmup):
        event = next(stream)
        model.learn_one(event.user_id, event.item_id, 1.0, _x(event))
    step(args.warmup)
    idle: list[float] = []
    building: list[float] = []
    for _ in range(args.rounds):
        n, seconds = step(args.slice)
        idle.append(n / seconds)
        model.request_rebuild("benchmark")
        n, seconds = step(None)
        building.append(n / seconds)
        print(
            f"  {name}: idle {idle[-1]:,.0f} ev/s, building {building[-1]:,.0f} ev/s "
            f"({n:,} events, build {model.rebuilds[-1]['seconds']:.2f} s)",
            file=sys.stderr,
        )
    background_s = [r["seconds"] for r in model.rebuilds]
    inline_started = time.perf_counter()
    model.build(list(model._window))
    inline_s = time.perf_counter() - inline_started
    idle_rate, building_rate = statistics.median(idle), statistics.median(building)
    return {
        "model": name,
        "window_events": model.rebuilds[-1]["events_in_window"],
        "items_built": model.n_items,
        "build_seconds_background": statistics.median(background_s),
        "build_seconds_inline": inline_s,
        "idle_events_per_second": idle_rate,
        "building_events_per_second": building_rate,
        "loss": 1.0 - building_rate / idle_rate,
        "rounds": {"idle": idle, "building": building, "build_seconds": background_s},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="svd,ease")
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--slice", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", default=None, metavar="PATH|-")
    args = parser.parse_args(argv)
    quiet_logging()
    overrides = settings_overrides(args.set)
    results = [measure(name.strip(), args, overrides) for name in args.models.split(",")]
    rows = [
        [
            r["model"],
            fmt(r["window_events"]),
            fmt(r["items_built"]),
            fmt(r["build_seconds_background"], 2),
            fmt(r["build_seconds_inline"], 2),
            fmt(r["idle_events_per_second"], 0),
            fmt(r["building_events_per_second"], 0),
            f"{100 * r['loss']:.1f} %",
            "yes"
            if r["loss"] < TARGET_LOSS and r["build_seconds_background"] < TARGET_SECONDS
            else "no",
        ]
        for r in results
    ]
    print(
        f"Full rebuild over a {args.window:,}-event window, core Pipeline (default models + the "
        f"model), {args.users:,} users x {args.items:,} items, medians of {args.rounds} rounds"
    )
    print_table(
        [
            "model",
            "window",
            "items",
            "build s (bg)",
            "build s (inline)",
            "ev/s idle",
            "ev/s building",
            "loss",
            "targets met",
        ],
        rows,
    )
    print(f"targets: loss < {TARGET_LOSS:.0%} while a build runs, build < {TARGET_SECONDS:.0f} s")
    if args.json:
        write_json(args.json, {"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
