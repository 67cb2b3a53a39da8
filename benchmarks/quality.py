"""Recommendation quality and drift handling, offline, with the worker's own core (issue #3).

Everything runs through :func:`stream.evaluate.evaluate` (test-then-learn, the same
:class:`~stream.core.Pipeline` the worker runs), with ``StreamSettings`` defaults unless
``--set NAME=VALUE`` overrides them. Sections:

1. **Synthetic accuracy** (``producers.synthetic``, seeded, demo parameters: 500 users, 1,000
   items, 10% ratings): HR@10 / NDCG@10 / MAE / RMSE of every model and of a few blend
   weightings, and the default model's HR@10 against popularity's.
2. **Synthetic drift**: the same stream with an abrupt drift at the midpoint. Per model: delay of
   the first drift record after the drift, windowed HR@10 before it, at its trough, at the end,
   and the events until the windowed HR@10 is back to >= 95% of its pre-drift value.
3. **False alarms**: the stream without drift for several seeds: drift records per 10k events.
4. **ML-100K** (``.data/ml-100k/u.data``, fetched by ``benchmarks/ml100k.py``): the same models
   and blends, plus MAE/RMSE of the rating models against River's tutorial (BiasedMF, 10
   factors, progressive validation: MAE 0.7486 / RMSE 0.9479), River's own BiasedMF with the
   tutorial's parameters on our event order, and a greedy search over the MF settings.
5. Which model or blend is best on HR@10 on each dataset, and a suggested default.

Blend variants are extra :class:`~stream.models.blend.Blend` objects over the pipeline's own
model instances (as ``build_models`` builds ``blend``), so one pass scores them all.

    python benchmarks/quality.py [--synthetic-events 50000] [--seeds 3] [--skip-ml100k]
                                 [--skip-search] [--set NAME=VALUE ...] [--json PATH|-]

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import fmt, print_table, quiet_logging, write_json
from ml100k import DEFAULT_DIR, ensure_ml100k

from producers.formats import read_events
from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.core import Pipeline, PipelineConfig
from stream.evaluate import EvaluationResult, evaluate
from stream.events import Event
from stream.models import Recommender, build_models
from stream.models.blend import Blend
from stream.settings import StreamSettings

__all__ = ["BLEND_VARIANTS", "DriftFigures", "drift_figures", "main"]

ALL_MODELS = ("popularity", "knn", "biased_mf", "funk_mf", "blend")
RATING_MODELS = ("biased_mf", "funk_mf")
BLEND_VARIANTS: dict[str, dict[str, float]] = {
    "blend[knn+pop.1]": {"knn": 1.0, "popularity": 0.1},
    "blend[knn+mf]": {"knn": 1.0, "biased_mf": 0.5},
    "blend[knn+pop+mf]": {"knn": 1.0, "popularity": 0.3, "biased_mf": 0.5},
    "blend[knn+mf1]": {"knn": 1.0, "biased_mf": 1.0},
    "blend[knn+funk]": {"knn": 1.0, "funk_mf": 0.5},
}
"""Blend weightings scored next to the configured ``blend`` (settings.blend)."""

RIVER_TUTORIAL = {"mae": 0.7486, "rmse": 0.9479}
RECOVERED = 0.95


# --- building and running -------------------------------------------------------------------


def _settings(overrides: dict[str, Any], **more: Any) -> StreamSettings:
    """Defaults (env and .env ignored), then ``--set`` overrides, then this section's own."""
    return StreamSettings(_env_file=None, **{**overrides, **more})


def _pipeline(settings: StreamSettings, variants: dict[str, dict[str, float]]) -> Pipeline:
    """The settings' models plus one non-learning blend per variant over the same instances."""
    models: dict[str, Recommender] = build_models(settings)
    for name, weights in variants.items():
        if all(m in models for m in weights):
            models[name] = Blend(
                {m: models[m] for m in weights}, dict(weights), learns_components=False
            )
    return Pipeline(PipelineConfig.from_settings(settings), models)


def _run(
    events: list[Event], settings: StreamSettings, variants: dict[str, dict[str, float]]
) -> EvaluationResult:
    started = time.perf_counter()
    result = evaluate(events, settings, pipeline=_pipeline(settings, variants))
    print(
        f"  ... {result.events:,} events, {len(result.models)} models in "
        f"{time.perf_counter() - started:.0f}s",
        flush=True,
    )
    return result


def _synthetic(n: int, seed: int, drift_at: int | None) -> list[Event]:
    config = SyntheticConfig(n_events=n, seed=seed, drift_at=drift_at, ratings_fraction=0.1)
    return [Event.model_validate(e) for e in SyntheticStream(config).events()]


# --- tables -----------------------------------------------------------------------------------


def _accuracy_rows(result: EvaluationResult) -> list[list[str]]:
    best = max((m.hit_rate or 0.0) for m in result.models.values())
    rows = []
    for name, m in result.models.items():
        marker = " *" if name == result.default_model else ""
        marker += " (best)" if m.hit_rate is not None and m.hit_rate == best else ""
        rows.append(
            [
                name + marker,
                fmt(m.hit_rate),
                fmt(m.ndcg),
                fmt(m.mrr),
                fmt(m.mae),
                fmt(m.rmse),
                fmt(m.coverage, 3),
                fmt(result.events_per_second.get(name), 0),
            ]
        )
    return rows


def _print_accuracy(result: EvaluationResult, title: str) -> dict[str, Any]:
    k = result.k
    print_table(
        ["model", f"HR@{k}", f"NDCG@{k}", f"MRR@{k}", "MAE", "RMSE", "coverage", "events/s"],
        _accuracy_rows(result),
        title=f"{title} ({result.events:,} events; * = default recommender)",
    )
    default = result.models[result.default_model].hit_rate
    popularity = result.models["popularity"].hit_rate if "popularity" in result.models else None
    ratio = default / popularity if default is not None and popularity else None
    best = max(result.models, key=lambda n: result.models[n].hit_rate or 0.0)
    print(
        f"  default ({result.default_model}) HR@{k} / popularity HR@{k} = {fmt(ratio, 2)}; "
        f"best HR@{k}: {best} ({fmt(result.models[best].hit_rate)})"
    )
    return {
        "metrics": result.to_json()["models"],
        "default_vs_popularity": ratio,
        "best": best,
    }


# --- drift ------------------------------------------------------------------------------------


@dataclass
class DriftFigures:
    """How one model went through an injected drift (windowed HR@K sampled along the stream)."""

    first_detection: int | None
    metric: str | None
    detections_before: int
    pre: float | None
    trough: float | None
    trough_at: int | None
    end: float | None
    recovered_at: int | None

    def delay(self, drift_at: int) -> int | None:
        return None if self.first_detection is None else self.first_detection - drift_at

    def to_recover(self, drift_at: int) -> int | None:
        return None if self.recovered_at is None else self.recovered_at - drift_at


def drift_figures(result: EvaluationResult, model: str, drift_at: int) -> DriftFigures:
    """Detection and recovery of ``model`` around ``drift_at``.

    ``pre`` is the windowed HR@K at the drift; ``trough`` the lowest windowed HR@K after it;
    recovery is the first sample after the trough back at >= 95% of ``pre`` (0 events when the
    windowed HR@K never fell below that).

    >>> from stream.events import DriftRecord, ModelMetrics
    >>> r = EvaluationResult(events=10, k=10, default_model="m", models={"m": ModelMetrics()},
    ...     events_per_second={}, total_events_per_second=1.0,
    ...     drifts=[DriftRecord(detector="adwin", model="m", metric="miss", event=7, timestamp=0)],
    ...     series={"m": {"event": [2.0, 4.0, 6.0, 8.0, 10.0],
    ...                   "hit_rate": [0.2, 0.2, 0.1, 0.15, 0.2], "rmse": [None] * 5}})
    >>> f = drift_figures(r, "m", 4)
    >>> f.delay(4), f.trough, f.to_recover(4)
    (3, 0.1, 6)
    """
    series = result.series.get(model, {})
    points = [
        (int(e), h)
        for e, h in zip(series.get("event", []), series.get("hit_rate", []), strict=True)
        if e is not None and h is not None
    ]
    after = [d for d in result.drifts if d.model == model and d.event > drift_at]
    before = [d for d in result.drifts if d.model == model and d.event <= drift_at]
    first = min(after, key=lambda d: d.event) if after else None
    pre_points = [h for e, h in points if e <= drift_at]
    post = [(e, h) for e, h in points if e > drift_at]
    pre = pre_points[-1] if pre_points else None
    trough_at, trough = min(post, key=lambda p: p[1]) if post else (None, None)
    recovered_at = None
    if pre is not None and trough is not None and trough_at is not None:
        if trough >= RECOVERED * pre:
            recovered_at = drift_at
        else:
            recovered_at = next(
                (e for e, h in post if e > trough_at and h >= RECOVERED * pre), None
            )
    return DriftFigures(
        first_detection=None if first is None else first.event,
        metric=None if first is None else first.metric,
        detections_before=len(before),
        pre=pre,
        trough=trough,
        trough_at=trough_at,
        end=points[-1][1] if points else None,
        recovered_at=recovered_at,
    )


def _recovery(events: int | None, pre: float | None) -> str:
    if pre is None:
        return "-"
    return "never" if events is None else fmt(events)


def _print_drift(result: EvaluationResult, drift_at: int, window: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = []
    for name in result.models:
        f = drift_figures(result, name, drift_at)
        marker = " *" if name == result.default_model else ""
        rows.append(
            [
                name + marker,
                fmt(f.delay(drift_at)),
                f.metric or "-",
                fmt(f.detections_before),
                fmt(f.pre),
                fmt(f.trough),
                fmt(f.end),
                _recovery(f.to_recover(drift_at), f.pre),
            ]
        )
        out[name] = {
            "delay": f.delay(drift_at),
            "metric": f.metric,
            "detections_before_drift": f.detections_before,
            "hr_pre": f.pre,
            "hr_trough": f.trough,
            "hr_end": f.end,
            "events_to_recover": f.to_recover(drift_at),
        }
    k = result.k
    print_table(
        [
            "model",
            "delay",
            "metric",
            "before",
            f"HR@{k} pre",
            "trough",
            "end",
            "to 95%",
        ],
        rows,
        title=(
            f"Synthetic, abrupt drift at event {drift_at:,}: detection delay (events after the "
            f"drift), detections before it,\nwindowed HR@{k} (last {window:,} evaluated events) "
            "just before, at its lowest, at the end, events until back to >= 95% of pre"
        ),
    )
    print("  ('never' = not recovered by the end of the stream; '-' delay = not detected)")
    return out


def _print_false_alarms(runs: list[tuple[int, EvaluationResult]], default: str) -> dict[str, Any]:
    names = list(runs[0][1].models)
    warmup = 10_000
    rows = []
    out: dict[str, Any] = {}
    for name in names:
        have = [(s, r) for s, r in runs if name in r.models]
        per_seed = [sum(1 for d in r.drifts if d.model == name) for _, r in have]
        late = sum(
            sum(1 for d in r.drifts if d.model == name and d.event > warmup) for _, r in have
        )
        events = sum(r.events for _, r in have)
        late_events = sum(max(0, r.events - warmup) for _, r in have)
        rate = 10_000 * sum(per_seed) / events if events else None
        late_rate = 10_000 * late / late_events if late_events else None
        marker = " *" if name == default else ""
        rows.append(
            [name + marker, "/".join(str(c) for c in per_seed), fmt(rate, 2), fmt(late_rate, 2)]
        )
        out[name] = {"per_seed": per_seed, "per_10k": rate, "per_10k_after_warmup": late_rate}
    seeds = ", ".join(str(s) for s, _ in runs)
    print_table(
        ["model", "detections per seed", "per 10k events", f"per 10k after {warmup // 1000}k"],
        rows,
        title=f"False alarms: the same stream without drift, seeds {seeds}",
    )
    return out


# --- ML-100K rating search --------------------------------------------------------------------


def _river_reference(events: list[Event]) -> dict[str, float]:
    """River's own BiasedMF with the tutorial's parameters, progressive validation, our order."""
    from river import metrics, optim, reco

    model = reco.BiasedMF(
        n_factors=10,
        bias_optimizer=optim.SGD(0.025),
        latent_optimizer=optim.SGD(0.05),
        weight_initializer=optim.initializers.Zeros(),
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=73),
        l2_bias=0.0,
        l2_latent=0.0,
    )
    mae, rmse, c_mae, c_rmse = metrics.MAE(), metrics.RMSE(), metrics.MAE(), metrics.RMSE()
    for e in events:
        assert e.rating is not None
        y_pred = model.predict_one(e.user_id, e.item)
        clipped = min(5.0, max(1.0, y_pred))
        mae.update(e.rating, y_pred)
        rmse.update(e.rating, y_pred)
        c_mae.update(e.rating, clipped)
        c_rmse.update(e.rating, clipped)
        model.learn_one(e.user_id, e.item, e.rating)
    return {
        "mae": mae.get(),
        "rmse": rmse.get(),
        "mae_clipped": c_mae.get(),
        "rmse_clipped": c_rmse.get(),
    }


MF_KEYS = ("mf_factors", "mf_learning_rate", "mf_bias_learning_rate", "mf_l2", "mf_init_std")
MF_GRID: dict[str, tuple[float, ...]] = {
    "mf_learning_rate": (0.005, 0.01, 0.02, 0.05),
    "mf_bias_learning_rate": (0.005, 0.01, 0.025, 0.05),
    "mf_l2": (0.0, 0.01, 0.03, 0.1),
    "mf_init_std": (0.01, 0.05, 0.1),
    "mf_factors": (10, 16, 32),
}


def _mf_run(events: list[Event], overrides: dict[str, Any], mf: dict[str, Any]) -> dict[str, Any]:
    settings = _settings(overrides, models=("biased_mf",), recommender="biased_mf", **mf)
    result = evaluate(events, settings)
    m = result.models["biased_mf"]
    return {**mf, "mae": m.mae, "rmse": m.rmse, "hr@10": m.hit_rate}


def _mf_search(events: list[Event], overrides: dict[str, Any]) -> dict[str, Any]:
    """Greedy coordinate search on biased_mf's RMSE: from the defaults and from River's
    tutorial parameters, vary one setting at a time, keep any improvement."""
    defaults = _settings(overrides)
    start_default = {k: getattr(defaults, k) for k in MF_KEYS}
    start_river = {
        "mf_factors": 10,
        "mf_learning_rate": 0.05,
        "mf_bias_learning_rate": 0.025,
        "mf_l2": 0.0,
        "mf_init_std": 0.1,
    }
    tried: list[dict[str, Any]] = []
    seen: dict[tuple[Any, ...], dict[str, Any]] = {}

    def score(mf: dict[str, Any], label: str) -> dict[str, Any]:
        key = tuple(mf[k] for k in MF_KEYS)
        if key not in seen:
            row = _mf_run(events, overrides, mf)
            row["label"] = label
            seen[key] = row
            tried.append(row)
            print(
                f"  {label:<28} "
                + " ".join(f"{k.removeprefix('mf_')}={mf[k]}" for k in MF_KEYS)
                + f"  MAE {fmt(row['mae'])} RMSE {fmt(row['rmse'])} HR@10 {fmt(row['hr@10'])}",
                flush=True,
            )
        return seen[key]

    best = score(start_default, "current defaults")
    river = score(start_river, "River tutorial parameters")
    if (river["rmse"] or 9.0) < (best["rmse"] or 9.0):
        best = river
    for key, values in MF_GRID.items():
        current = {k: best[k] for k in MF_KEYS}
        for value in values:
            row = score({**current, key: value}, f"vary {key.removeprefix('mf_')}")
            if (row["rmse"] or 9.0) < (best["rmse"] or 9.0):
                best = row
    return {
        "tried": tried,
        "best": best,
        "defaults": seen[tuple(start_default[k] for k in MF_KEYS)],
    }


# --- main -------------------------------------------------------------------------------------


def _suggest(best_by_dataset: dict[str, dict[str, float | None]]) -> str | None:
    """The model whose HR@K, relative to each dataset's best, is highest on average."""
    names = set.intersection(*(set(hrs) for hrs in best_by_dataset.values()))
    scores: dict[str, float] = {}
    for name in names:
        rel = []
        for hrs in best_by_dataset.values():
            top = max((v or 0.0) for v in hrs.values()) or 1.0
            rel.append((hrs[name] or 0.0) / top)
        scores[name] = sum(rel) / len(rel)
    if not scores:
        return None
    print_table(
        ["model", "mean HR@10 / best HR@10"],
        [[n, f"{s:.3f}"] for n, s in sorted(scores.items(), key=lambda kv: -kv[1])],
        title="HR@10 relative to the best model of each dataset, averaged over the datasets",
    )
    return max(scores, key=lambda n: scores[n])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic-events", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7, help="first synthetic seed")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for the false-alarm runs")
    parser.add_argument("--window", type=int, default=2_000, help="metric_window of drift runs")
    parser.add_argument("--skip-ml100k", action="store_true")
    parser.add_argument("--skip-search", action="store_true", help="no MF settings search")
    parser.add_argument("--ml100k", type=Path, default=None, help="path of u.data")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a StreamSettings override for every run, e.g. --set mf_factors=10 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--json", default=None, metavar="PATH", help="also write JSON (- = stdout)")
    ns = parser.parse_args(argv)
    quiet_logging()
    overrides: dict[str, Any] = dict(s.split("=", 1) for s in ns.set)
    report: dict[str, Any] = {"overrides": overrides}
    hr_by_dataset: dict[str, dict[str, float | None]] = {}

    n, seed = ns.synthetic_events, ns.seed
    drift_at = n // 2
    base = _settings(overrides, models=ALL_MODELS)
    default = _settings(overrides)
    print(
        f"default recommender: {default.recommender}; default models: {', '.join(default.models)};"
        f" blend weights {default.blend}"
    )

    print(f"\n[1/4] synthetic, {n:,} events, seed {seed}, no drift", flush=True)
    no_drift = _run(_synthetic(n, seed, None), base, BLEND_VARIANTS)
    report["synthetic"] = _print_accuracy(no_drift, "Synthetic, no drift")
    hr_by_dataset["synthetic"] = {k: m.hit_rate for k, m in no_drift.models.items()}

    print(f"\n[2/4] synthetic, {n:,} events, seed {seed}, abrupt drift at {drift_at:,}", flush=True)
    drift_settings = _settings(overrides, models=ALL_MODELS, metric_window=ns.window)
    drifted = _run(_synthetic(n, seed, drift_at), drift_settings, BLEND_VARIANTS)
    _print_accuracy(drifted, "Synthetic with drift (cumulative)")
    report["synthetic_drift"] = _print_drift(drifted, drift_at, ns.window)

    print(f"\n[3/4] false alarms: {ns.seeds} seeds without drift", flush=True)
    runs = [(seed, no_drift)]
    for s in range(seed + 1, seed + ns.seeds):
        runs.append((s, _run(_synthetic(n, s, None), base, BLEND_VARIANTS)))
    report["false_alarms"] = _print_false_alarms(runs, base.recommender)

    if not ns.skip_ml100k:
        path = ns.ml100k or ensure_ml100k(DEFAULT_DIR)
        events = list(read_events(path, "movielens-100k"))
        print(f"\n[4/4] ML-100K: {len(events):,} ratings from {path}", flush=True)
        ml = _run(events, base, BLEND_VARIANTS)
        report["ml100k"] = _print_accuracy(ml, "ML-100K (every rating is an interaction)")
        hr_by_dataset["ml100k"] = {k: m.hit_rate for k, m in ml.models.items()}
        print("\n  River's own BiasedMF, tutorial parameters, on the same (time-sorted) order ...")
        river = _river_reference(events)
        rows = [
            ["River tutorial (published)", fmt(RIVER_TUTORIAL["mae"]), fmt(RIVER_TUTORIAL["rmse"])],
            ["River BiasedMF, our order", fmt(river["mae"]), fmt(river["rmse"])],
            ["  same, clipped to [1, 5]", fmt(river["mae_clipped"]), fmt(river["rmse_clipped"])],
        ]
        rows += [
            [f"ours: {name} (defaults)", fmt(ml.models[name].mae), fmt(ml.models[name].rmse)]
            for name in RATING_MODELS
            if name in ml.models
        ]
        search: dict[str, Any] | None = None
        if not ns.skip_search:
            print("\n  biased_mf settings search (RMSE; one setting varied at a time):", flush=True)
            search = _mf_search(events, overrides)
            b = search["best"]
            rows.append(["ours: biased_mf (best found)", fmt(b["mae"]), fmt(b["rmse"])])
        print_table(["ML-100K rating error", "MAE", "RMSE"], rows, title="ML-100K MAE / RMSE")
        if search is not None:
            b = search["best"]
            print(
                "  best biased_mf settings found: "
                + ", ".join(f"STREAM_{k.upper()}={b[k]}" for k in MF_KEYS)
                + f" (HR@10 {fmt(b['hr@10'])} vs {fmt(search['defaults']['hr@10'])} at defaults)"
            )
        report["ml100k_rating"] = {"river": river, "published": RIVER_TUTORIAL, "search": search}

    print("\n== best on HR@10 ==")
    for dataset, hrs in hr_by_dataset.items():
        top = max(hrs, key=lambda m: hrs[m] or 0.0)
        print(f"  {dataset:<10} {top} ({fmt(hrs[top])}); default {base.recommender} "
              f"({fmt(hrs.get(base.recommender))})")  # fmt: skip
    suggestion = _suggest(hr_by_dataset)
    report["suggested_default"] = suggestion
    if suggestion:
        weights = BLEND_VARIANTS.get(suggestion)
        how = (
            f" (STREAM_BLEND='{json.dumps(weights)}', STREAM_RECOMMENDER=blend)" if weights else ""
        )
        print(f"\n  suggested default recommender: {suggestion}{how}")
    if ns.json:
        write_json(ns.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
