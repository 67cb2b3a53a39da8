"""Per-event cost of the core (:meth:`stream.core.Pipeline.process_one`), with a fingerprint.

Builds a :class:`~stream.core.Pipeline` from ``StreamSettings`` defaults (models popularity,
knn, biased_mf, blend; recommender blend; K = 10) unless ``--set`` overrides them, decodes a
seeded synthetic stream (``producers.synthetic``) into events beforehand, and times
``process_one`` over all of them. Prints µs/event and events/s, the CPU seconds the pipeline
attributes to each model, each model's cumulative HR@K / NDCG@K, the drifts, and a SHA-256
fingerprint of everything the core produced (every recommendation with its scores and
reasons, the final metrics record, the drifts): two runs with the same options compute the
same thing exactly when their fingerprints agree. ``--profile N`` adds a cProfile table of
the N most expensive functions (cumulative and own time). Prints figures; asserts nothing.

    python benchmarks/core_profile.py [--events 30000] [--users 500] [--items 1000]
                                      [--seed 0] [--repeat 1] [--profile 30]
                                      [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import quiet_logging, settings_overrides

from producers.synthetic import SyntheticStream
from stream.core import Pipeline
from stream.events import Event, Source
from stream.settings import StreamSettings

__all__ = ["main", "synthetic_events"]


def synthetic_events(n: int, users: int, items: int, seed: int) -> list[Event]:
    """``n`` seeded synthetic events, validated into :class:`Event` objects."""
    stream = SyntheticStream(n_events=n, n_users=users, n_items=items, seed=seed)
    return [Event.model_validate(e) for e in stream.events()]


def _run(settings: StreamSettings, events: list[Event]) -> tuple[Pipeline, float, float, str]:
    """One pass: the pipeline after it, the wall and CPU seconds spent, a fingerprint."""
    pipeline = Pipeline.from_settings(settings)
    digest = hashlib.sha256()
    clock = time.perf_counter
    spent = 0.0
    cpu_started = time.process_time()
    outputs: list[Any] = []
    for offset, event in enumerate(events):
        source = Source("bench", 0, offset)
        started = clock()
        result = pipeline.process_one(event, source)
        spent += clock() - started
        outputs.append(result)
        if len(outputs) == 1_000:
            _digest(digest, outputs)
            outputs.clear()
    _digest(digest, outputs)
    cpu = time.process_time() - cpu_started  # includes the fingerprinting (small)
    digest.update(pipeline.metrics_record().model_dump_json(exclude={"created_at"}).encode())
    return pipeline, spent, cpu, digest.hexdigest()


def _digest(digest: Any, results: list[Any]) -> None:
    for r in results:
        rec = r.recommendation
        if rec is not None:
            digest.update(repr([(i.item_id, i.score, i.reason) for i in rec.items]).encode())
        digest.update(
            repr(
                (r.evaluated, [d.model_dump_json(exclude={"detected_at"}) for d in r.drifts])
            ).encode()
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="timed passes (best is reported)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile top N")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a StreamSettings override, e.g. --set negative_samples=2 (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    quiet_logging()

    try:
        settings = StreamSettings(_env_file=None, **settings_overrides(args.set))
    except ValueError as exc:  # pydantic's ValidationError included
        parser.error(str(exc))
    events = synthetic_events(args.events, args.users, args.items, args.seed)
    # A worker drops each event once handled; here all of them stay in memory, and without
    # this every full garbage collection would walk them (~20% of the time measured).
    gc.collect()
    gc.freeze()
    print(
        f"{len(events):,} synthetic events, {args.users:,} users, {args.items:,} items "
        f"(seed {args.seed}); models {', '.join(settings.models)}, recommender "
        f"{settings.recommender}, K={settings.top_k}"
    )

    best = best_cpu = float("inf")
    pipeline: Pipeline | None = None
    fingerprint = ""
    for _ in range(max(1, args.repeat)):
        pipeline, spent, cpu, fingerprint = _run(settings, events)
        best, best_cpu = min(best, spent), min(best_cpu, cpu)
    assert pipeline is not None
    n = len(events)
    print(
        f"\ncore: {best / n * 1e6:.1f} µs/event wall ({n / best:,.0f} events/s), "
        f"{best_cpu / n * 1e6:.1f} µs/event CPU (best of {args.repeat}; CPU time is the "
        "steadier figure on a shared machine)"
    )
    print(f"\n{'model':<12}{'µs/event':>10}{'HR@K':>8}{'NDCG@K':>8}{'evaluated':>11}")
    for name, seconds in pipeline.model_seconds.items():
        ev = pipeline.evaluators.get(name)
        cum = ev.cumulative() if ev is not None else None
        hr = f"{cum.hit_rate:.4f}" if cum and cum.hit_rate is not None else "-"
        ndcg = f"{cum.ndcg:.4f}" if cum and cum.ndcg is not None else "-"
        print(
            f"{name:<12}{seconds / n * 1e6:>10.1f}{hr:>8}{ndcg:>8}{ev.evaluated if ev else 0:>11,}"
        )
    drifts = [(d.model, d.metric, d.event) for d in pipeline.drift.detections]
    print(f"\ndrifts: {drifts}")
    print(f"fingerprint: {fingerprint}")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        _run(settings, events)
        profiler.disable()
        for key in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.profile)
            print(f"\n--- cProfile, sorted by {key} ---")
            print(out.getvalue().split("\n", 4)[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
