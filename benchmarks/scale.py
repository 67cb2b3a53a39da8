"""Cost per event against the catalogue size (issue 11): exact ranking vs candidate retrieval.

For each catalogue size (known items) a :class:`~stream.core.Pipeline` from ``StreamSettings``
defaults (``--set`` overrides) is warmed in three steps, then one fixed block of events is
timed:

1. *catalogue*: ``size - active`` filler items are learned once each (by the models directly,
   without evaluation: cheap), by a pool of filler users, so the models know ``size`` items;
2. *warm-up*: ``--warm`` events of a seeded synthetic stream over ``--active`` items go
   through ``process_one`` (test-then-learn, the worker's path);
3. *block*: the next ``--events`` events of that same stream, timed (CPU time of the
   process, so other load on the machine inflates it less than wall time); every size and
   mode times the same events. HR@10 is the served model's over the block.

Steps 2 and 3 run once per retrieval mode (``exact``, ``candidates``) on a copy of the same
catalogue. The table prints µs/event, HR@10 and the ratio to the smallest size's cost; the
target is ``candidates`` at 200k <= 1.5 x at 2k.

    python benchmarks/scale.py [--sizes 2000,20000,200000,1000000] [--events 5000]
                               [--warm 20000] [--active 2000] [--modes exact,candidates]
                               [--set NAME=VALUE ...] [--json PATH|-]

Sections are functions (:func:`core_section`), so other figures (memory, checkpoints) can be
added as sections of their own. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import fmt, print_table, quiet_logging, settings_overrides, write_json

from producers.synthetic import SyntheticStream
from stream.core import Pipeline
from stream.events import Event, Source
from stream.settings import StreamSettings

__all__ = ["CoreRun", "core_section", "main", "warmed_catalogue"]

FILL_USERS = 1_000


@dataclass(frozen=True, slots=True)
class CoreRun:
    """One size and mode: µs per event over the block, and the served model's HR@K on it."""

    size: int
    mode: str
    known_items: int
    us_per_event: float
    hit_rate: float | None
    evaluated: int


def stream_events(n: int, active: int, seed: int) -> list[Event]:
    """The seeded synthetic stream every size replays (warm-up, then the timed block)."""
    users = max(active // 2, 100)
    raw = SyntheticStream(n_events=n, n_users=users, n_items=active, seed=seed).events()
    return [Event.model_validate(e) for e in raw]


def warmed_catalogue(settings: StreamSettings, size: int, active: int) -> Pipeline:
    """A pipeline whose models know ``size`` items: ``size - active`` fillers learned directly
    (step 1), no events evaluated yet."""
    pipeline = Pipeline.from_settings(settings)
    learners = pipeline._learners
    x = {"event_type": "view", "implicit": True, "timestamp": 0.0}
    for i in range(max(size - active, 0)):
        user, item = f"fill{i % FILL_USERS}", f"c{i}"
        for _, model in learners:
            model.learn_one(user, item, 1.0, x)
    return pipeline


def _replay(pipeline: Pipeline, events: list[Event], start: int) -> None:
    for offset, event in enumerate(events, start=start):
        pipeline.process_one(event, Source("scale", 0, offset))


def time_block(pipeline: Pipeline, warm: list[Event], block: list[Event]) -> tuple[float, Any]:
    """Warm, then time ``block``: (µs per event, (hits, evaluations) of the served model)."""
    _replay(pipeline, warm, 0)
    name = pipeline.served
    before = pipeline.evaluators[name].cumulative()
    before_n = pipeline.evaluators[name].evaluated
    gc.collect()
    started = time.process_time()  # CPU time: the machine may be shared
    _replay(pipeline, block, len(warm))
    spent = time.process_time() - started
    after = pipeline.evaluators[name].cumulative()
    after_n = pipeline.evaluators[name].evaluated
    hits = (after.hit_rate or 0.0) * after_n - (before.hit_rate or 0.0) * before_n
    return spent / len(block) * 1e6, (hits, after_n - before_n)


def core_section(
    settings: StreamSettings,
    sizes: list[int],
    modes: list[str],
    n_events: int,
    n_warm: int,
    active: int,
    seed: int,
) -> list[CoreRun]:
    """Core µs/event and HR@K per catalogue size and retrieval mode."""
    events = stream_events(n_warm + n_events, active, seed)
    warm, block = events[:n_warm], events[n_warm:]
    runs: list[CoreRun] = []
    for size in sizes:
        started = time.perf_counter()
        base = warmed_catalogue(settings, size, active)
        print(
            f"  {size:,} items: catalogue learned in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
        for mode in modes:
            pipeline = copy.deepcopy(base)
            pipeline.config = replace(pipeline.config, retrieval=mode)  # type: ignore[arg-type]
            pipeline._setup_retrieval()
            us, (hits, evaluated) = time_block(pipeline, warm, block)
            runs.append(
                CoreRun(
                    size,
                    mode,
                    pipeline.n_items,
                    us,
                    hits / evaluated if evaluated else None,
                    evaluated,
                )
            )
            print(f"    {mode}: {us:,.0f} µs/event", file=sys.stderr)
            del pipeline
        del base
    return runs


def print_core(runs: list[CoreRun]) -> None:
    smallest = {r.mode: r.us_per_event for r in runs if r.size == min(x.size for x in runs)}
    rows = [
        [
            f"{r.size:,}",
            r.mode,
            f"{r.known_items:,}",
            f"{r.us_per_event:,.0f}",
            f"{1e6 / r.us_per_event:,.0f}",
            fmt(r.hit_rate),
            f"{r.us_per_event / smallest[r.mode]:.2f}x",
        ]
        for r in runs
    ]
    print_table(
        [
            "known items",
            "retrieval",
            "models know",
            "core CPU µs/event",
            "events/s",
            "HR@10 (served)",
            "vs smallest",
        ],
        rows,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,20000,200000,1000000", metavar="N,N")
    parser.add_argument("--modes", default="exact,candidates", metavar="A,B")
    parser.add_argument("--events", type=int, default=5_000, help="timed events per run")
    parser.add_argument("--warm", type=int, default=20_000, help="events replayed before timing")
    parser.add_argument("--active", type=int, default=2_000, help="items the stream touches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", metavar="PATH", help="the figures as JSON too (- = stdout)")
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    quiet_logging()
    try:
        sizes = [int(v) for v in ns.sizes.split(",") if v]
    except ValueError:
        print(f"error: --sizes: not a comma list of integers: {ns.sizes!r}", file=sys.stderr)
        return 2
    modes = [m for m in ns.modes.split(",") if m]
    if not set(modes) <= {"exact", "candidates"} or not modes:
        print(f"error: --modes: exact and/or candidates, got {ns.modes!r}", file=sys.stderr)
        return 2
    try:
        overrides = settings_overrides(ns.set)
        settings = StreamSettings(_env_file=None, **overrides)  # type: ignore[call-arg]
    except ValueError as exc:
        print(f"error: --set: {exc}", file=sys.stderr)
        return 2
    print(
        f"Core cost per event vs catalogue size: {ns.events:,} timed events after {ns.warm:,} "
        f"(stream over {ns.active:,} items), models {','.join(settings.models)}, "
        f"served {settings.recommender}",
    )
    runs = core_section(settings, sizes, modes, ns.events, ns.warm, ns.active, ns.seed)
    print_core(runs)
    for mode in modes:
        by_size = {r.size: r.us_per_event for r in runs if r.mode == mode}
        if 2_000 in by_size and 200_000 in by_size:
            ratio = by_size[200_000] / by_size[2_000]
            print(f"{mode}: 200k / 2k = {ratio:.2f}x (target <= 1.5x)")
    if ns.json:
        write_json(ns.json, {"core": [_row(r) for r in runs]})
    return 0


def _row(run: CoreRun) -> dict[str, Any]:
    return {name: getattr(run, name) for name in CoreRun.__slots__}


if __name__ == "__main__":
    sys.exit(main())
