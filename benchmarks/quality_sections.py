"""The quality benchmark's optional sections: drift, false alarms, ML-100K rating error.

Moved from ``benchmarks/quality.py`` (issue #3) when the default run became the quality
suite; ``quality.py --drift`` and ``--rating`` / ``--mf-search`` run them.

- **Drift**: a ``producers.synthetic`` stream with an abrupt drift at its midpoint. Per model:
  delay of the first drift record after the drift, windowed HR@10 before it, at its trough, at
  the end, and the events until the windowed HR@10 is back to >= 95% of its pre-drift value.
- **False alarms**: the stream without drift for several seeds: drift records per 10k events.
- **ML-100K rating error**: MAE/RMSE of the rating models against River's tutorial (BiasedMF,
  10 factors, progressive validation: MAE 0.7486 / RMSE 0.9479), River's own BiasedMF with the
  tutorial's parameters on our event order, and a greedy search over the MF settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from _common import fmt, print_table

from stream.evaluate import EvaluationResult, evaluate
from stream.events import Event
from stream.settings import StreamSettings

__all__ = [
    "RIVER_TUTORIAL",
    "DriftFigures",
    "drift_figures",
    "mf_search",
    "print_drift",
    "print_false_alarms",
    "print_rating",
    "river_reference",
]

RIVER_TUTORIAL = {"mae": 0.7486, "rmse": 0.9479}
RECOVERED = 0.95


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


def print_drift(result: EvaluationResult, drift_at: int, window: int) -> dict[str, Any]:
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


def print_false_alarms(runs: list[tuple[int, EvaluationResult]], default: str) -> dict[str, Any]:
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


def river_reference(events: list[Event]) -> dict[str, float]:
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
    settings = StreamSettings(
        _env_file=None, **{**overrides, "models": ("biased_mf",), "recommender": "biased_mf", **mf}
    )
    result = evaluate(events, settings)
    m = result.models["biased_mf"]
    return {**mf, "mae": m.mae, "rmse": m.rmse, "hr@10": m.hit_rate}


def mf_search(events: list[Event], overrides: dict[str, Any]) -> dict[str, Any]:
    """Greedy coordinate search on biased_mf's RMSE: from the defaults and from River's
    tutorial parameters, vary one setting at a time, keep any improvement."""
    defaults = StreamSettings(_env_file=None, **overrides)
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


def print_rating(
    ml: EvaluationResult, river: dict[str, float], search: dict[str, Any] | None
) -> None:
    """The ML-100K MAE / RMSE table: River's published and rerun figures, then ours."""
    rows = [
        ["River tutorial (published)", fmt(RIVER_TUTORIAL["mae"]), fmt(RIVER_TUTORIAL["rmse"])],
        ["River BiasedMF, our order", fmt(river["mae"]), fmt(river["rmse"])],
        ["  same, clipped to [1, 5]", fmt(river["mae_clipped"]), fmt(river["rmse_clipped"])],
    ]
    rows += [
        [f"ours: {name} (defaults)", fmt(m.mae), fmt(m.rmse)]
        for name, m in ml.models.items()
        if m.rmse is not None
    ]
    if search is not None:
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
