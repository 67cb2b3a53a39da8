"""Model updates: the drift reaction and the promotion policy, measured.

``python benchmarks/updates.py [--events N] [--seed S] [--scale X] [--skip-streams]`` prints:

1. abrupt and gradual drift (``producers.synthetic``, drift at half the stream), reactions
   on and off: the served model's detection delay, false alarms (served-model detections and
   reactions before the drift), windowed HR@10 before the drift and the events until it is back
   to 90 % of it, promotions and reactions;
   and ``reset*``: a fresh pipeline over the events after the drift only (every model
   rebuilt at the change from post-drift data): how soon *any* reaction that cannot map the
   old items to the new ones could be back, against the same pre-drift level;
2. the quality suite's streams (``benchmarks/streams.py``, held-out ones included, no injected
   drift): HR@10 of what was served with reactions on vs off, reactions and promotions;
3. two copies of one model under different seeds (no real difference): promotions per 100k
   events between them.

Figures, not assertions: the targets are in issue 13.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams import STREAMS

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.core import Pipeline, PipelineConfig
from stream.events import Event
from stream.models.registry import MODEL_REGISTRY
from stream.settings import StreamSettings

SAMPLE = 100  # events between two samples of the served windowed HR


@dataclass
class Run:
    """What one pass measured."""

    events: int = 0
    evaluated: int = 0
    served_hits: float = 0.0
    # (event, served model, its windowed HR@K)
    samples: list[tuple[int, str, float | None]] = field(default_factory=list)
    served_detections: list[int] = field(default_factory=list)
    reactions: list[int] = field(default_factory=list)
    promotions: list[tuple[int, str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def served_hr(self) -> float:
        return self.served_hits / max(self.evaluated, 1)


def drive(pipeline: Pipeline, events: list[Event]) -> Run:
    """Run the pipeline; measure what was *served* (whichever model it was at the time)."""
    run = Run()
    started = time.perf_counter()
    for result in pipeline.run(events):
        n = pipeline.run_count
        if result.evaluated:
            # The recommendation of this event's user was made by the model served before it.
            served_now = result.promotions[0].from_model if result.promotions else pipeline.served
            run.evaluated += 1
            run.served_hits += pipeline.evaluators[served_now].recent_hit_rate(1) or 0.0
            for d in result.drifts:
                if d.model == served_now and d.metric == "miss":
                    run.served_detections.append(n)
        run.reactions += [n for _ in result.reactions]
        run.promotions += [(n, p.from_model, p.to_model) for p in result.promotions]
        if n % SAMPLE == 0:
            served = pipeline.served
            run.samples.append((n, served, pipeline.evaluators[served].windowed().hit_rate))
    run.events = pipeline.run_count
    run.seconds = time.perf_counter() - started
    return run


def settings(**overrides: Any) -> StreamSettings:
    return StreamSettings(_env_file=None, **overrides)


def drift_figures(run: Run, drift_at: int, window: int) -> dict[str, Any]:
    before = [hr for n, _, hr in run.samples if drift_at - window <= n <= drift_at and hr]
    pre = sum(before) / len(before) if before else None
    detected = [n for n in run.served_detections if n > drift_at]
    recovered = None
    if pre:
        # Back once the served windowed HR is >= 90 % of the pre-drift level after it fell.
        fell = False
        for n, _, hr in run.samples:
            if n <= drift_at or hr is None:
                continue
            if hr < 0.9 * pre:
                fell = True
            elif fell:
                recovered = n - drift_at
                break
    return {
        "pre": pre,
        "delay": detected[0] - drift_at if detected else None,
        "false_alarms": len([n for n in run.served_detections if n <= drift_at]),
        "false_reactions": len([n for n in run.reactions if n <= drift_at]),
        "recovery": recovered,
        "end": run.samples[-1][2] if run.samples else None,
    }


def fmt(value: float | int | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def permuted(events: list[Event], at: int, seed: int, width: int = 0) -> list[Event]:
    """An abrupt (``width`` 0) or gradual change of tastes injected into any stream: from event
    ``at`` on, each item id stands for another item (a random permutation of the catalogue), so
    everything learned about items is wrong at once; gradual: the share of permuted events
    ramps from 0 to 1 over ``width`` events."""
    items = sorted({e.item_id for e in events if e.item_id is not None})
    shuffled = items[:]
    rng = random.Random(seed)
    rng.shuffle(shuffled)
    mapping = dict(zip(items, shuffled, strict=True))
    out = events[:at]
    for n, e in enumerate(events[at:]):
        if e.item_id is not None and (width == 0 or rng.random() < min(1.0, n / width)):
            e = e.model_copy(update={"item_id": mapping[e.item_id]})
        out.append(e)
    return out


def drift_streams(n: int, seed: int, held_out: list[str]) -> list[tuple[str, list[Event], int]]:
    drift_at = n // 2
    found = []
    for kind in ("abrupt", "gradual"):
        config = SyntheticConfig(
            n_events=n, seed=seed, drift_at=drift_at, drift_kind=kind, ratings_fraction=0.1
        )
        events = [Event.model_validate(e) for e in SyntheticStream(config).events()]
        found.append((f"synthetic {kind}", events, drift_at))
    for name in held_out:
        events = STREAMS[name].events(seed, 1.0)
        at = len(events) // 2
        found.append((f"{name} permuted", permuted(events, at, seed), at))
        width = len(events) // 10
        found.append((f"{name} gradual", permuted(events, at, seed, width), at))
    return found


def drift_section(n: int, seed: int, held_out: list[str]) -> None:
    print(f"[drift] seed {seed}; figures of the served model (synthetic: {n:,} events)")
    print(
        "  stream                      reaction  delay  false alarms/reactions  HR@10 pre  "
        "back to 90% after  end     reactions  promotions (event: from->to)"
    )
    for kind, events, drift_at in drift_streams(n, seed, held_out):
        pre: float | None = None
        for reaction in (False, True):
            s = settings(drift_reaction=reaction)
            run = drive(Pipeline.from_settings(s), events)
            f = drift_figures(run, drift_at, s.metric_window)
            recovery = "-" if f["recovery"] is None else f"{f['recovery']:,} events"
            if f["recovery"] is None and f["pre"]:
                recovery = f"not in {len(events) - drift_at:,}"
            promotions = ", ".join(f"{e:,}: {a}->{b}" for e, a, b in run.promotions) or "-"
            pre = f["pre"] if reaction else pre
            print(
                f"  {kind:<27} {'on' if reaction else 'off':<9} {fmt(f['delay']):>5}  "
                f"{f['false_alarms']:>12}/{f['false_reactions']:<10} {fmt(f['pre']):>9}  "
                f"{recovery:>17}  {fmt(f['end'])}  {len(run.reactions):>9}  {promotions}",
                flush=True,
            )
        # What a reset could do: a fresh pipeline on the events after the drift (as if every
        # model were rebuilt at the change from post-drift data only): the bound on recovery
        # for any reaction that cannot map old items to new ones.
        reset = drive(Pipeline.from_settings(settings(drift_reaction=False)), events[drift_at:])
        back = next(
            (
                n
                for n, _, hr in reset.samples
                # (from 1,000 events on: a window of a few evaluations is noise)
                if n >= 1_000 and pre and hr is not None and hr >= 0.9 * pre
            ),
            None,
        )
        at5k = [hr for n, _, hr in reset.samples if n == 5_000]
        print(
            f"  {kind:<27} {'reset*':<9} {'-':>5}  {'-':>12}/{'-':<10} {fmt(pre):>9}  "
            f"{'-' if back is None else f'{back:,} events':>17}  "
            f"{fmt(reset.samples[-1][2] if reset.samples else None)}  "
            f"(at +5,000: {fmt(at5k[0] if at5k else None)})"
            + ("" if back else f"; not back in {len(events) - drift_at:,}"),
            flush=True,
        )


def streams_section(seed: int, scale: float) -> None:
    print(f"\n[no injected drift] the quality suite's streams, seed {seed}, scale {scale:g}")
    print(
        "  stream            held out  events   HR@10 off  HR@10 on  change  reactions  "
        "promotions (on/off)"
    )
    for spec in STREAMS.values():
        try:
            events = spec.events(seed, scale)
        except Exception as exc:  # a stream whose data cannot be fetched here
            print(f"  {spec.name:<17} skipped: {exc}")
            continue
        off = drive(Pipeline.from_settings(settings(drift_reaction=False)), events)
        on = drive(Pipeline.from_settings(settings(drift_reaction=True)), events)
        change = (on.served_hr - off.served_hr) / off.served_hr if off.served_hr else 0.0
        print(
            f"  {spec.name:<17} {'yes' if spec.held_out else 'no':<9} {len(events):>7,}  "
            f"{off.served_hr:9.4f}  {on.served_hr:8.4f}  {change:+6.1%}  {len(on.reactions):>9}  "
            f"{len(on.promotions)}/{len(off.promotions)}",
            flush=True,
        )


def seeds_section(n: int, seed: int) -> None:
    print(f"\n[same model, two seeds] {n:,} events per stream: promotions between them")
    # Seeded models only (knn is deterministic: two copies would be identical).
    pairs: list[tuple[str, Any]] = [
        (name, lambda s, name=name: MODEL_REGISTRY[name](settings(seed=s)))
        for name in ("bpr", "biased_mf")
    ]
    total_events = 0
    total = 0
    for stream_name in ("clusters", "popularity_churn", "repeat_purchase"):
        events = STREAMS[stream_name].events(seed, n / 50_000)[:n]
        for model, factory in pairs:
            config = PipelineConfig.from_settings(settings(models=("popularity",)))
            config = PipelineConfig(
                **{
                    **{f: getattr(config, f) for f in config.__dataclass_fields__},
                    "recommender": model,
                }
            )
            pipeline = Pipeline(config, {model: factory(seed), f"{model}_b": factory(seed + 1)})
            run = drive(pipeline, events)
            total += len(run.promotions)
            total_events += run.events
            print(
                f"  {stream_name:<17} {model:<9} {run.events:>8,} events  "
                f"{len(run.promotions)} promotion(s)",
                flush=True,
            )
    print(
        f"  => {total * 100_000 / max(total_events, 1):.2f} promotions per 100k events "
        f"({total} over {total_events:,})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=60_000, help="events of the drift runs")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0, help="scale of the suite's streams")
    parser.add_argument("--seed-events", type=int, default=100_000)
    parser.add_argument(
        "--held-out", default="popularity_churn,mixed", help="suite streams to inject drift in"
    )
    parser.add_argument("--skip-drift", action="store_true")
    parser.add_argument("--skip-streams", action="store_true")
    parser.add_argument("--skip-seeds", action="store_true")
    ns = parser.parse_args(argv)
    if not ns.skip_drift:
        drift_section(ns.events, ns.seed, [n for n in ns.held_out.split(",") if n])
    if not ns.skip_streams:
        streams_section(ns.seed, ns.scale)
    if not ns.skip_seeds:
        seeds_section(ns.seed_events, ns.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
