"""The quality suite (issue #10): every model, the default and two yardsticks on seven streams.

For each stream of :data:`streams.STREAMS` (structurally different seeded generators plus
MovieLens-100K; the ones held out from tuning are marked) one pass of
:func:`stream.evaluate.evaluate` (test-then-learn, the worker's own
:class:`~stream.core.Pipeline`) scores, on the same events:

- every model of ``stream.models.MODEL_REGISTRY`` (blends last), built by ``build_models``
  from ``StreamSettings`` defaults plus ``--set NAME=VALUE`` overrides; the default
  recommender is whatever ``StreamSettings`` says (``*`` in the tables);
- ``reference``: the issue's plain item-KNN reference, and ``reference_recency``: its
  recency-weighted variant (:mod:`reference`; yardsticks, not product models).

Per stream a table (HR@10, NDCG@10, MRR@10, RMSE, events/s), then a summary against the
issue's targets: the default's HR@10 >= 1.10 x the reference's and >= 1.05 x the best single
model of ours (neither the default, nor a blend, nor a yardstick), never below popularity; on
ML-100K also HR@10 >= 0.21 and the rating model's RMSE <= 0.9479 (at ``--scale`` 1 only).

    python benchmarks/quality.py [--streams a,b] [--scale F] [--seed N] [--set NAME=VALUE ...]
                                 [--json PATH|-] [--markdown]
                                 [--drift] [--rating] [--mf-search] [--retrieval] [--skip-suite]
                                 [--partitions 1,4,8]

``--retrieval`` adds, per stream, the default configuration (``StreamSettings`` defaults plus
``--set``) run once with ``retrieval=exact`` and once with ``retrieval=candidates``: every
default model's HR@10 in both, and whether the default recommender keeps >= 98 % of its exact
HR@10 (issue 11's target). ``--drift`` adds the drift and false-alarm runs, ``--rating`` the
ML-100K rating error against River (``--mf-search`` with the MF settings search); see
:mod:`quality_sections`.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import fmt, print_table, quiet_logging, settings_overrides, write_json
from pydantic import ValidationError
from quality_sections import (
    mf_search,
    print_drift,
    print_false_alarms,
    print_rating,
    river_reference,
)
from reference import PlainItemKNN, RecencyItemKNN
from streams import STREAMS, StreamSpec

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.core import Pipeline, PipelineConfig
from stream.evaluate import EvaluationResult, evaluate
from stream.events import Event
from stream.models import MODEL_REGISTRY, Blend, Recommender, build_models
from stream.settings import StreamSettings

__all__ = ["StreamRun", "Verdict", "main", "suite_pipeline", "suite_settings", "verdict"]

YARDSTICKS = ("reference", "reference_recency")
RATING_MODEL = "biased_mf"
TARGET_VS_REFERENCE = 1.10
TARGET_VS_BEST = 1.05
TARGET_ML100K_HR = 0.21
TARGET_ML100K_RMSE = 0.9479  # River's tutorial BiasedMF on ML-100K


# --- building and running -------------------------------------------------------------------


def _blend_names(settings: StreamSettings) -> set[str]:
    """Registry names whose model is a blend (built once, empty, to ask)."""
    return {n for n, build in MODEL_REGISTRY.items() if isinstance(build(settings), Blend)}


def suite_settings(overrides: dict[str, Any]) -> StreamSettings:
    """Every registered model (blends last), the default recommender, then ``overrides``.

    ``.env`` is ignored, so the figures are the code's defaults (plus ``--set``).
    """
    defaults = StreamSettings(_env_file=None, **overrides)
    blends = _blend_names(defaults)
    names = [n for n in MODEL_REGISTRY if n not in blends] + [
        n for n in MODEL_REGISTRY if n in blends
    ]
    # The blend fuses what the *default* configuration fuses (STREAM_BLEND unset: the other
    # default models), not every model the suite adds beside it.
    return StreamSettings(
        _env_file=None,
        **{
            "models": tuple(names),
            "recommender": defaults.recommender,
            "blend": defaults.blend_weights(),
            # Full rebuilds inline, as `stream evaluate` does: figures reproducible.
            "rebuild_background": False,
            **overrides,
        },
    )


def suite_pipeline(settings: StreamSettings) -> Pipeline:
    """The settings' models plus the two yardsticks, in one pipeline (one pass scores all)."""
    models: dict[str, Recommender] = build_models(settings)
    models["reference"] = PlainItemKNN(seed=settings.seed)
    models["reference_recency"] = RecencyItemKNN(seed=settings.seed)
    return Pipeline(PipelineConfig.from_settings(settings), models)


@dataclass
class StreamRun:
    """One stream of the suite, evaluated."""

    spec: StreamSpec
    result: EvaluationResult
    generate_seconds: float
    evaluate_seconds: float
    blends: frozenset[str]


def run_stream(spec: StreamSpec, seed: int, scale: float, settings: StreamSettings) -> StreamRun:
    started = time.perf_counter()
    events = spec.events(seed, scale)
    generated = time.perf_counter()
    pipeline = suite_pipeline(settings)
    blends = frozenset(n for n, m in pipeline.models.items() if isinstance(m, Blend))
    result = evaluate(events, settings, pipeline=pipeline)
    done = time.perf_counter()
    print(
        f"  ... {spec.name}: {len(events):,} events generated in {generated - started:.1f}s, "
        f"{len(result.models)} models evaluated in {done - generated:.0f}s",
        flush=True,
    )
    return StreamRun(spec, result, generated - started, done - generated, blends)


# --- verdicts -------------------------------------------------------------------------------


@dataclass
class Verdict:
    """The issue's targets on one stream (``None`` = could not be measured)."""

    default: str
    default_hr: float | None
    reference_hr: float | None
    recency_hr: float | None
    best: str | None
    best_hr: float | None
    popularity_hr: float | None
    rating_rmse: float | None = None

    @staticmethod
    def _ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    @property
    def vs_reference(self) -> float | None:
        return self._ratio(self.default_hr, self.reference_hr)

    @property
    def vs_best(self) -> float | None:
        return self._ratio(self.default_hr, self.best_hr)

    @property
    def beats_popularity(self) -> bool | None:
        if self.default_hr is None or self.popularity_hr is None:
            return None
        return self.default_hr >= self.popularity_hr

    def checks(self, ml100k: bool) -> dict[str, bool | None]:
        """Each target: met, missed, or ``None`` when not measured."""
        ref, best = self.vs_reference, self.vs_best
        out: dict[str, bool | None] = {
            "vs_reference": None if ref is None else ref >= TARGET_VS_REFERENCE,
            "vs_best": None if best is None else best >= TARGET_VS_BEST,
            "vs_popularity": self.beats_popularity,
        }
        if ml100k:
            hr, rmse = self.default_hr, self.rating_rmse
            out["ml100k_hr"] = None if hr is None else hr >= TARGET_ML100K_HR
            out["ml100k_rmse"] = None if rmse is None else rmse <= TARGET_ML100K_RMSE
        return out


def verdict(run: StreamRun) -> Verdict:
    """The default against the yardsticks, the best single model of ours, and popularity.

    "Ours" excludes the default itself, any blend and the yardsticks.
    """
    models, default = run.result.models, run.result.default_model

    def hr(name: str) -> float | None:
        m = models.get(name)
        return None if m is None else m.hit_rate

    singles = [n for n in models if n != default and n not in run.blends and n not in YARDSTICKS]
    best = max(singles, key=lambda n: hr(n) or 0.0, default=None)
    rating = models.get(RATING_MODEL)
    return Verdict(
        default=default,
        default_hr=hr(default),
        reference_hr=hr("reference"),
        recency_hr=hr("reference_recency"),
        best=best,
        best_hr=None if best is None else hr(best),
        popularity_hr=hr("popularity"),
        rating_rmse=None if rating is None else rating.rmse,
    )


# --- tables ---------------------------------------------------------------------------------


def _print_stream(run: StreamRun) -> None:
    result = run.result
    k = result.k
    rows = [
        [
            name + (" *" if name == result.default_model else ""),
            fmt(m.hit_rate),
            fmt(m.ndcg),
            fmt(m.mrr),
            fmt(m.rmse),
            fmt(result.events_per_second.get(name), 0),
        ]
        for name, m in result.models.items()
    ]
    held = " (held out)" if run.spec.held_out else ""
    print_table(
        ["model", f"HR@{k}", f"NDCG@{k}", f"MRR@{k}", "RMSE", "events/s"],
        rows,
        title=(
            f"{run.spec.name}{held}: {run.spec.description}; {result.events:,} events "
            f"(* = default recommender)"
        ),
    )


def _mark(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


SUMMARY_HEADER = [
    "stream",
    "default HR@10",
    "reference",
    "x ref (>=1.10)",
    "recency ref",
    "best of ours",
    "x best (>=1.05)",
    "popularity",
    ">= pop",
    "verdict",
]


def _summary_rows(runs: list[StreamRun]) -> list[list[str]]:
    rows = []
    for run in runs:
        v = verdict(run)
        checks = v.checks(run.spec.name == "ml100k")
        known = [c for c in checks.values() if c is not None]
        rows.append(
            [
                run.spec.name + (" (held out)" if run.spec.held_out else ""),
                fmt(v.default_hr),
                fmt(v.reference_hr),
                f"{fmt(v.vs_reference, 2)} {_mark(checks['vs_reference'])}",
                fmt(v.recency_hr),
                f"{v.best or '-'} {fmt(v.best_hr)}",
                f"{fmt(v.vs_best, 2)} {_mark(checks['vs_best'])}",
                fmt(v.popularity_hr),
                _mark(checks["vs_popularity"]),
                "PASS" if known and all(known) else "FAIL",
            ]
        )
    return rows


def _print_summary(runs: list[StreamRun], scale: float, markdown: bool) -> None:
    default = runs[0].result.default_model
    rows = _summary_rows(runs)
    print_table(
        SUMMARY_HEADER,
        rows,
        title=f"Summary: default recommender {default!r} against the targets of issue #10",
    )
    for run in runs:
        if run.spec.name != "ml100k":
            continue
        v = verdict(run)
        checks = v.checks(True)
        note = "" if scale >= 1.0 else f" (at --scale {scale}: the targets are for the whole log)"
        print(
            f"  ml100k: default HR@10 {fmt(v.default_hr)} (target >= {TARGET_ML100K_HR}) "
            f"{_mark(checks['ml100k_hr'])}; {RATING_MODEL} RMSE {fmt(v.rating_rmse)} "
            f"(target <= {TARGET_ML100K_RMSE}) {_mark(checks['ml100k_rmse'])}{note}"
        )
    passed = sum(1 for r in rows if r[-1] == "PASS")
    print(f"  targets met on {passed} of {len(rows)} streams")
    if markdown:
        print("\n| " + " | ".join(SUMMARY_HEADER) + " |")
        print("|" + "---|" * len(SUMMARY_HEADER))
        for row in rows:
            print("| " + " | ".join(row) + " |")


def _stream_json(run: StreamRun) -> dict[str, Any]:
    v = verdict(run)
    return {
        "held_out": run.spec.held_out,
        "description": run.spec.description,
        "generate_seconds": run.generate_seconds,
        "evaluate_seconds": run.evaluate_seconds,
        **run.result.to_json(),
        "summary": {
            "default": v.default,
            "default_hr@10": v.default_hr,
            "reference_hr@10": v.reference_hr,
            "reference_recency_hr@10": v.recency_hr,
            "best_single": v.best,
            "best_single_hr@10": v.best_hr,
            "popularity_hr@10": v.popularity_hr,
            "default_vs_reference": v.vs_reference,
            "default_vs_best": v.vs_best,
            f"{RATING_MODEL}_rmse": v.rating_rmse,
            "checks": v.checks(run.spec.name == "ml100k"),
        },
    }


# --- optional sections ----------------------------------------------------------------------


def _synthetic(n: int, seed: int, drift_at: int | None) -> list[Event]:
    config = SyntheticConfig(n_events=n, seed=seed, drift_at=drift_at, ratings_fraction=0.1)
    return [Event.model_validate(e) for e in SyntheticStream(config).events()]


def _drift_sections(ns: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    n, seed = ns.drift_events, ns.seed
    drift_at = n // 2
    settings = suite_settings(overrides)
    print(f"\n[drift] synthetic, {n:,} events, seed {seed}, abrupt drift at {drift_at:,}")
    drift_settings = suite_settings({**overrides, "metric_window": ns.window})
    drifted = evaluate(
        _synthetic(n, seed, drift_at), drift_settings, pipeline=suite_pipeline(drift_settings)
    )
    report: dict[str, Any] = {"drift": print_drift(drifted, drift_at, ns.window)}
    print(f"\n[false alarms] {ns.seeds} seeds without drift", flush=True)
    runs = [
        (s, evaluate(_synthetic(n, s, None), settings, pipeline=suite_pipeline(settings)))
        for s in range(seed, seed + ns.seeds)
    ]
    report["false_alarms"] = print_false_alarms(runs, settings.recommender)
    return report


def _rating_pipeline(settings: StreamSettings) -> Pipeline:
    """Only the models that predict ratings (the rating section needs nothing else)."""
    models = {n: m for n, m in build_models(settings).items() if m.predicts_ratings}
    if not models:
        raise ValueError("no configured model predicts ratings")
    config = replace(PipelineConfig.from_settings(settings), recommender=next(iter(models)))
    return Pipeline(config, models)


def _rating_section(
    ns: argparse.Namespace, overrides: dict[str, Any], runs: list[StreamRun]
) -> dict[str, Any]:
    events = STREAMS["ml100k"].events(ns.seed, 1.0)
    ml = next((r.result for r in runs if r.spec.name == "ml100k" and ns.scale >= 1.0), None)
    if ml is None:
        settings = suite_settings(overrides)
        ml = evaluate(events, settings, pipeline=_rating_pipeline(settings))
    print("\n[rating] River's own BiasedMF, tutorial parameters, same time order ...", flush=True)
    river = river_reference(events)
    search = None
    if ns.mf_search:
        print("\n  biased_mf settings search (RMSE; one setting varied at a time):", flush=True)
        search = mf_search(events, overrides)
    print_rating(ml, river, search)
    return {"river": river, "search": search}


# --- main -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--streams", default=",".join(STREAMS), metavar="A,B",
        help=f"streams to run (default: all of {', '.join(STREAMS)})",
    )  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every stream's size")
    parser.add_argument("--seed", type=int, default=7, help="seed of every generator")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a StreamSettings override for every run, e.g. --set knn_history=30 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--json", default=None, metavar="PATH", help="also write JSON (- = stdout)")
    parser.add_argument("--markdown", action="store_true", help="the summary as Markdown too")
    parser.add_argument("--skip-suite", action="store_true", help="only the sections asked for")
    parser.add_argument("--drift", action="store_true", help="drift and false-alarm runs")
    parser.add_argument("--drift-events", type=int, default=50_000, help="events of drift runs")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the false-alarm runs")
    parser.add_argument("--window", type=int, default=2_000, help="metric_window of drift runs")
    parser.add_argument(
        "--retrieval",
        action="store_true",
        help="the default models under STREAM_RETRIEVAL=exact and =candidates, per stream",
    )
    parser.add_argument("--rating", action="store_true", help="ML-100K rating error vs River")
    parser.add_argument("--mf-search", action="store_true", help="with --rating: MF search")
    parser.add_argument(
        "--partitions", default=None, metavar="P,Q",
        help="also the default configuration split into P shards sharing item state "
        "(evaluate --partitions), e.g. 1,4,8; see quality_partitions.py",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    names = [n.strip() for n in ns.streams.split(",") if n.strip()]
    unknown = [n for n in names if n not in STREAMS]
    if unknown or not names:
        print(f"error: --streams: unknown {unknown}; known: {', '.join(STREAMS)}", file=sys.stderr)
        return 2
    if not ns.scale > 0:
        print(f"error: --scale must be positive, got {ns.scale}", file=sys.stderr)
        return 2
    try:
        overrides = settings_overrides(ns.set)
        settings = suite_settings(overrides)
    except (ValueError, ValidationError) as exc:
        print(f"error: --set: {exc}", file=sys.stderr)
        return 2
    quiet_logging()
    started = time.perf_counter()
    report: dict[str, Any] = {
        "seed": ns.seed,
        "scale": ns.scale,
        "overrides": overrides,
        "models": list(settings.models),
        "recommender": settings.recommender,
        "yardsticks": list(YARDSTICKS),
        "streams": {},
    }
    print(
        f"default recommender: {settings.recommender}; models: {', '.join(settings.models)}, "
        f"yardsticks: {', '.join(YARDSTICKS)}; seed {ns.seed}, scale {ns.scale}",
        flush=True,
    )
    runs: list[StreamRun] = []
    if not ns.skip_suite:
        for name in names:
            run = run_stream(STREAMS[name], ns.seed, ns.scale, settings)
            _print_stream(run)
            runs.append(run)
            report["streams"][name] = _stream_json(run)
        _print_summary(runs, ns.scale, ns.markdown)
    if ns.partitions:
        from quality_partitions import partitions_section

        report["partitions"] = partitions_section(
            names, ns.seed, ns.scale, overrides, ns.partitions
        )
    if ns.retrieval:
        report["retrieval"] = retrieval_section(names, ns.seed, ns.scale, overrides)
    if ns.drift:
        report.update(_drift_sections(ns, overrides))
    if ns.rating or ns.mf_search:
        report["ml100k_rating"] = _rating_section(ns, overrides, runs)
    report["seconds"] = time.perf_counter() - started
    print(f"\nsuite time: {report['seconds']:.0f}s")
    if ns.json:
        write_json(ns.json, report)
    return 0


# --- exact ranking vs candidate retrieval (issue 11) ----------------------------------------

RETRIEVAL_TARGET = 0.98  # candidates keep at least this share of the exact HR@10


def retrieval_section(
    names: list[str], seed: int, scale: float, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Per stream: the default models' HR@10 and events/s under each retrieval mode."""
    out: dict[str, Any] = {}
    rows: list[list[str]] = []
    for name in names:
        events = STREAMS[name].events(seed, scale)
        per_mode: dict[str, EvaluationResult] = {}
        for mode in ("exact", "candidates"):
            settings = StreamSettings(
                _env_file=None, **{"rebuild_background": False, **overrides, "retrieval": mode}
            )
            per_mode[mode] = evaluate(events, settings)
        exact, cand = per_mode["exact"], per_mode["candidates"]
        default = StreamSettings(_env_file=None, **overrides).recommender
        entry: dict[str, Any] = {"models": {}}
        for model in exact.models:
            a = exact.models[model].hit_rate
            b = cand.models[model].hit_rate
            entry["models"][model] = {"exact": a, "candidates": b}
            ratio = b / a if a and b is not None else None
            mark = ""
            if model == default:
                ok = ratio is not None and ratio >= RETRIEVAL_TARGET
                entry["default_ratio"], entry["ok"] = ratio, ok
                mark = _mark(ok)
            rows.append(
                [
                    name,
                    model + ("*" if model == default else ""),
                    fmt(a),
                    fmt(b),
                    fmt(ratio, 3),
                    mark,
                ]
            )
        entry["events_per_second"] = {
            "exact": exact.total_events_per_second,
            "candidates": cand.total_events_per_second,
        }
        rows.append(
            [
                name,
                "(events/s)",
                f"{exact.total_events_per_second:,.0f}",
                f"{cand.total_events_per_second:,.0f}",
                "",
                "",
            ]
        )
        out[name] = entry
        print(f"  ... retrieval: {name} done", flush=True)
    print_table(
        ["stream", "model", "HR@10 exact", "HR@10 candidates", "cand/exact", ">= 0.98"],
        rows,
        title=f"Exact ranking vs candidate retrieval (default models, scale {scale})",
    )
    return out


if __name__ == "__main__":
    sys.exit(main())
