"""The evaluation report: ``metrics.json``, PNG plots with drift points, one HTML page."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from stream.evaluate import EvaluationResult

__all__ = ["write_report"]


def _plot(result: EvaluationResult, metric: str, label: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4), dpi=100)
    drawn = False
    for name, series in result.series.items():
        points = [
            (x, y) for x, y in zip(series["event"], series[metric], strict=True) if y is not None
        ]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        style = "-" if name == result.default_model else "--"
        ax.plot(xs, ys, style, label=name, linewidth=1.8 if name == result.default_model else 1.2)
        drawn = True
    for i, drift in enumerate(d for d in result.drifts if d.metric in _DRIFT_METRICS[metric]):
        ax.axvline(
            drift.event,
            color="red",
            alpha=0.35,
            linewidth=1,
            label="drift detected" if i == 0 else None,
        )
    if metric == "hit_rate":
        _mark_updates(result, ax)
    ax.set_xlabel("event")
    ax.set_ylabel(label)
    ax.set_title(f"{label} (rolling window) over the stream")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return drawn


def _mark_updates(result: EvaluationResult, ax: Any) -> None:
    """The served model's HR as one line, and promotions, reactions and rebuilds as marks."""
    points = [(n, values.get(served)) for n, served, values in result.served_series]
    shown = [(n, v) for n, v in points if v is not None]
    if shown:
        xs, ys = zip(*shown, strict=True)
        ax.plot(xs, ys, "-", color="black", alpha=0.5, linewidth=3, label="served", zorder=0)
    marks: list[tuple[list[int], str, str, str]] = [
        ([p.event for p in result.promotions], "green", "-", "promotion"),
        ([r.event for r in result.reactions], "orange", "-.", "drift reaction"),
        ([int(r.get("event") or 0) for r in result.rebuilds], "purple", ":", "rebuild"),
    ]
    for events, color, style, label in marks:
        for i, event in enumerate(events):
            ax.axvline(
                event, color=color, linestyle=style, linewidth=1.4, label=label if i == 0 else None
            )


_DRIFT_METRICS = {"hit_rate": {"miss"}, "rmse": {"abs_error"}}


def write_report(result: EvaluationResult, directory: Path) -> None:
    """Write ``metrics.json``, ``hit_rate.png``, ``rmse.png`` (with ratings), ``index.html``."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = result.to_json()
    (directory / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    plots = []
    k = result.k
    if _plot(result, "hit_rate", f"HR@{k}", directory / "hit_rate.png"):
        plots.append(("hit_rate.png", f"Rolling HR@{k}"))
    if _plot(result, "rmse", "RMSE", directory / "rmse.png"):
        plots.append(("rmse.png", "Rolling RMSE"))
    else:
        (directory / "rmse.png").unlink(missing_ok=True)
    (directory / "index.html").write_text(_html(doc, plots, directory))


def _html(doc: dict[str, object], plots: list[tuple[str, str]], directory: Path) -> str:
    k = doc["k"]
    models = doc["models"]
    assert isinstance(models, dict)
    cols = [f"hr@{k}", f"ndcg@{k}", f"mrr@{k}", "mae", "rmse", "coverage", "events_per_second"]

    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.0f}" if v > 100 else f"{v:.4f}"
        return html.escape(str(v))

    rows = "".join(
        "<tr><th>"
        + html.escape(name)
        + (" (default)" if name == doc["default_model"] else "")
        + "</th>"
        + "".join(f"<td>{cell(m.get(c))}</td>" for c in cols)
        + "</tr>"
        for name, m in models.items()
    )
    drifts = doc["drifts"]
    assert isinstance(drifts, list)
    promotions = doc["promotions"]
    rebuilds = doc["rebuilds"]
    reactions = doc["reactions"]
    assert isinstance(promotions, list) and isinstance(rebuilds, list)
    assert isinstance(reactions, list)
    update_rows = (
        "".join(
            f"<li>event {p['event']:,}: promoted {html.escape(p['to'])} over "
            f"{html.escape(p['from'])} ({html.escape(p['metric'])} {p['from_value']:.4f} &rarr; "
            f"{p['to_value']:.4f})</li>"
            for p in promotions
        )
        + "".join(
            f"<li>event {r['event']:,}: drift reaction on {html.escape(r['model'])} "
            f"(HR {r['recent']:.4f} vs {r['before']:.4f} before)</li>"
            for r in reactions
        )
        + "".join(
            f"<li>event {int(r.get('event') or 0):,}: {html.escape(str(r['model']))} rebuilt "
            f"(version {html.escape(str(r.get('version')))})</li>"
            for r in rebuilds
        )
        or "<li>none</li>"
    )
    drift_rows = (
        "".join(
            f"<li>event {d['event']:,}: {html.escape(d['model'])} / {html.escape(d['metric'])}"
            f" ({html.escape(d['detector'])})</li>"
            for d in drifts
        )
        or "<li>none</li>"
    )
    images = "".join(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
        f'{base64.b64encode((directory / name).read_bytes()).decode()}"/>'
        f"<figcaption>{html.escape(title)}; red lines: drift detected; green: promotion, "
        f"orange: drift reaction, purple: rebuild; grey: the served model</figcaption></figure>"
        for name, title in plots
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation report</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th:first-child{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Evaluation report</h1>
<p>{doc["events"]:,} events, test-then-learn, top-{k}.
Default model: <b>{html.escape(str(doc["default_model"]))}</b>; served at the end:
<b>{html.escape(str(doc["served_model"]))}</b>.</p>
<table><tr><th>model</th>{"".join(f"<th>{html.escape(c)}</th>" for c in cols)}</tr>{rows}</table>
<h2>Drift detected</h2><ul>{drift_rows}</ul>
<h2>Promotions, drift reactions, rebuilds</h2><ul>{update_rows}</ul>
{images}
</body></html>
"""
