"""Build the Grafana dashboard of the stream worker from plain Python data.

Run ``python deploy/grafana/build_dashboard.py`` after editing this file; the JSON it writes
(``deploy/grafana/dashboards/stream-reco.json``) is committed, and
``tests/deploy/test_grafana_dashboard.py`` fails when it is out of date (``--check`` does the
same from the command line). Metric names are the contract in ``docs/TEAM_NOTES.md``.

>>> dashboard = build_dashboard()
>>> dashboard["uid"], len(promql_expressions(dashboard)) > 20
('stream-reco', True)
>>> substitute('rate(x{model=~"$model"}[$__rate_interval])', rate_interval="30s")
'rate(x{model=~".+"}[30s])'
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DASHBOARD_PATH",
    "DATASOURCE",
    "build_dashboard",
    "iter_panels",
    "main",
    "promql_expressions",
    "render",
    "substitute",
]

logger = logging.getLogger(__name__)

DASHBOARD_PATH = Path(__file__).resolve().parent / "dashboards" / "stream-reco.json"

# Every panel, target and annotation points at the `datasource` template variable, so the
# dashboard also imports into a Grafana whose Prometheus has another uid; the provisioned
# data source (uid `prometheus`, default) is what the variable picks in docker compose.
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

# Label filters added to every worker series: the `instance` variable (all by default).
_INSTANCE = 'instance=~"$instance"'
_MODEL = 'model=~"$model"'

_GRID_WIDTH = 24


def _sel(metric: str, *matchers: str) -> str:
    """A series selector with the instance filter and extra matchers."""
    return f"{metric}{{{', '.join((*matchers, _INSTANCE))}}}"


def _target(ref: str, expr: str, legend: str, **extra: Any) -> dict[str, Any]:
    return {
        "refId": ref,
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": True,
        **extra,
    }


def _timeseries(
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    unit: str = "short",
    *,
    width: int = 12,
    height: int = 8,
    minimum: float | None = 0,
    maximum: float | None = None,
    draw: str = "line",
) -> dict[str, Any]:
    """A time-series panel; ``targets`` are ``(expr, legend)`` pairs."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "custom": {
            "drawStyle": draw,
            "lineInterpolation": "stepAfter" if draw == "line" else "linear",
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
        },
    }
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": width, "h": height},
        "targets": [
            _target(chr(ord("A") + i), expr, legend) for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def _stat(
    title: str,
    description: str,
    expr: str,
    legend: str,
    unit: str = "short",
    *,
    mappings: list[dict[str, Any]] | None = None,
    thresholds: Sequence[tuple[float | None, str]] = ((None, "green"),),
    width: int = 6,
) -> dict[str, Any]:
    """A single-value panel coloured by ``thresholds`` (``(from_value, colour)``)."""
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"w": width, "h": 4},
        "targets": [_target("A", expr, legend, instant=False)],
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "mappings": mappings or [],
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"value": value, "color": colour} for value, colour in thresholds],
                },
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "value_and_name",
        },
    }


def _row(title: str) -> dict[str, Any]:
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"w": _GRID_WIDTH, "h": 1},
    }


def _binary_mapping(one: str, zero: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "value",
            "options": {
                "1": {"text": one, "color": "green", "index": 0},
                "0": {"text": zero, "color": "red", "index": 1},
            },
        }
    ]


def _rate(metric: str, *matchers: str) -> str:
    return f"rate({_sel(metric, *matchers)}[$__rate_interval])"


def _panels() -> list[dict[str, Any]]:
    dead_lettered = "sum(" + _rate("stream_events_total", 'outcome="dead_lettered"') + ")"
    quantiles = [
        (
            "histogram_quantile({q}, sum by (le) ({r}))".format(
                q=q, r=_rate("stream_processing_seconds_bucket")
            ),
            f"p{round(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]
    red_green: list[tuple[float | None, str]] = [(None, "red"), (1, "green")]
    return [
        _row("Health"),
        _stat(
            "Worker ready",
            "1 when the consumer has partitions assigned and the broker answers (/readyz).",
            _sel("stream_worker_ready"),
            "{{instance}}",
            mappings=_binary_mapping("Ready", "Not ready"),
            thresholds=red_green,
        ),
        _stat(
            "Scrape up",
            "Prometheus reaches the worker's /metrics (job stream-worker).",
            _sel("up", 'job="stream-worker"'),
            "{{instance}}",
            mappings=_binary_mapping("Up", "Down"),
            thresholds=red_green,
        ),
        _stat(
            "Since last event",
            "Wall-clock seconds since the last event was processed.",
            f"time() - max({_sel('stream_last_event_timestamp_seconds')})",
            "last event",
            "s",
            thresholds=[(None, "green"), (60, "orange"), (300, "red")],
        ),
        _stat(
            "Last checkpoint age",
            "Seconds since the last successful checkpoint (no data: checkpoints are off).",
            f"time() - max({_sel('stream_checkpoint_last_success_timestamp_seconds')} > 0)",
            "checkpoint",
            "s",
            thresholds=[(None, "green"), (600, "orange"), (1800, "red")],
        ),
        _row("Throughput and latency"),
        _timeseries(
            "Events per second by type",
            "Records consumed per second, processed by event type, and dead-lettered.",
            [
                (
                    "sum by (event_type) ("
                    + _rate("stream_events_total", 'outcome="processed"')
                    + ")",
                    "{{event_type}}",
                ),
                (
                    dead_lettered,
                    "dead-lettered",
                ),
            ],
            "cps",
        ),
        _timeseries(
            "Processing latency per event",
            "Decode + evaluate + learn + recommend + send, quantiles of stream_processing_seconds.",
            quantiles,
            "s",
        ),
        _timeseries(
            "Consumer lag by partition",
            "Records between the consumer position and the high watermark (KEDA scales on it).",
            [
                (
                    f"max by (topic, partition) ({_sel('stream_consumer_lag')})",
                    "{{topic}}[{{partition}}]",
                )
            ],
            "short",
        ),
        _timeseries(
            "Event-time lag",
            "Wall clock minus the timestamp of the last processed event, per worker.",
            [(_sel("stream_event_lag_seconds"), "{{instance}}")],
            "s",
        ),
        _timeseries(
            "Recommendations published per second",
            "Top-K records sent to the recommendations topic, by model.",
            [(f"sum by (model) ({_rate('stream_recommendations_published_total')})", "{{model}}")],
            "cps",
            width=24,
        ),
        _row("Model quality (windowed, prequential: evaluated before learning)"),
        _timeseries(
            "Hit rate @K",
            "Share of events whose item was in the model's top-K before it learned the event.",
            [
                (
                    f"avg by (model, k) ({_sel('stream_model_hit_rate', _MODEL)})",
                    "{{model}} HR@{{k}}",
                )
            ],
            "percentunit",
            maximum=1,
        ),
        _timeseries(
            "NDCG @K",
            "Rank-discounted hit rate: 1 when the item is first in the top-K.",
            [(f"avg by (model, k) ({_sel('stream_model_ndcg', _MODEL)})", "{{model}} NDCG@{{k}}")],
            "percentunit",
            maximum=1,
        ),
        _timeseries(
            "MRR @K",
            "Mean reciprocal rank of the event's item in the top-K (0 when absent).",
            [(f"avg by (model, k) ({_sel('stream_model_mrr', _MODEL)})", "{{model}} MRR@{{k}}")],
            "percentunit",
            maximum=1,
        ),
        _timeseries(
            "Rating error (RMSE, MAE)",
            "Windowed errors of the rating models on rating events.",
            [
                (f"avg by (model) ({_sel('stream_model_rmse', _MODEL)})", "{{model}} RMSE"),
                (f"avg by (model) ({_sel('stream_model_mae', _MODEL)})", "{{model}} MAE"),
            ],
            "short",
        ),
        _row("Model updates"),
        _timeseries(
            "Served model",
            "1 for the model whose top-K is published (promotions switch it).",
            [(f"max by (model) ({_sel('stream_served_model')})", "{{model}}")],
            "short",
            width=8,
            maximum=1,
        ),
        _timeseries(
            "Served model version",
            "Grows by 1 at each promotion and each rebuilt version swapped into the served model.",
            [(f"max({_sel('stream_served_model_version')})", "model_version")],
            "short",
            width=8,
        ),
        _timeseries(
            "Promotions and drift reactions (cumulative)",
            "Promotions by the models they switched between; reactions to drift of the served "
            "model (faster decays, rebuilds of full models).",
            [
                # `or vector(0)`: the labelled counters have no series before the first one.
                (
                    f"sum by (from, to) ({_sel('stream_promotions_total')}) or vector(0)",
                    "{{from}} -> {{to}}",
                ),
                (
                    f"sum by (model) ({_sel('stream_drift_reactions_total')}) or vector(0)",
                    "reaction {{model}}",
                ),
            ],
            "short",
            width=8,
        ),
        _row("Drift and data quality"),
        _timeseries(
            "Drift detections (cumulative)",
            "Detections per model and error stream since the worker started; each step is also "
            "an annotation on every panel.",
            [
                (
                    "sum by (model, metric) ("
                    + _sel("stream_drift_detections_total", _MODEL)
                    + ")",
                    "{{model}} {{metric}}",
                )
            ],
            "short",
            width=8,
        ),
        _timeseries(
            "Dead letters per second by reason",
            "Records routed to the dead-letter topic; the reason is a short stable code.",
            [(f"sum by (reason) ({_rate('stream_dead_letters_total')})", "{{reason}}")],
            "cps",
            width=8,
        ),
        _timeseries(
            "Dead-letter share",
            "Dead letters / records consumed (alert above 1% for 5 minutes).",
            [
                (
                    f"sum({_rate('stream_dead_letters_total')})"
                    f" / sum({_rate('stream_events_total')})",
                    "dead-letter share",
                )
            ],
            "percentunit",
            width=8,
        ),
        _row("State"),
        _timeseries(
            "Users and items known",
            "Distinct users and items in the recommender's state, per worker.",
            [
                (_sel("stream_known_users"), "users {{instance}}"),
                (_sel("stream_known_items"), "items {{instance}}"),
            ],
            "short",
        ),
        _timeseries(
            "Checkpoints",
            "Checkpoints written per interval, by outcome.",
            [
                (
                    "sum by (outcome) (increase("
                    + _sel("stream_checkpoints_total")
                    + "[$__rate_interval]))",
                    "{{outcome}}",
                )
            ],
            "short",
            draw="bars",
        ),
        _timeseries(
            "Users expired, items evicted",
            "The memory limits at work (per second): users forgotten by STREAM_USER_TTL_SECONDS "
            "(ttl) or STREAM_MAX_USERS (cap), items evicted past STREAM_MAX_ITEMS. 0 with the "
            "limits off.",
            [
                (
                    "sum by (reason) (" + _rate("stream_users_expired_total") + ")",
                    "users expired ({{reason}})",
                ),
                (f"sum({_rate('stream_items_evicted_total')})", "items evicted"),
            ],
            "cps",
        ),
        _row("Model sync"),
        _timeseries(
            "Sync lag",
            "Model sync (STREAM_MODEL_SYNC): seconds from another shard collecting a delta to "
            "this worker applying it, and events a shard learned and has not shared yet "
            "(alert: lag above 60 s for 5 minutes). 0 with the sync off.",
            [
                (f"max by (instance) ({_sel('stream_sync_lag_seconds')})", "s {{instance}}"),
                (f"max by (instance) ({_sel('stream_sync_lag_events')})", "events {{instance}}"),
            ],
            "short",
            width=8,
        ),
        _timeseries(
            "Deltas per second",
            "Item-state deltas published and read, and the bytes they weigh (per second); "
            "re-read: records read again from the topic's beginning for a shard attached later "
            "(a rebalance).",
            [
                (f"sum({_rate('stream_sync_deltas_published_total')})", "published"),
                (f"sum({_rate('stream_sync_deltas_received_total')})", "received"),
                (f"sum({_rate('stream_sync_published_bytes_total')})", "bytes published"),
                (f"sum({_rate('stream_sync_received_bytes_total')})", "bytes received"),
                (f"sum({_rate('stream_sync_deltas_reread_total')})", "re-read"),
                (f"sum({_rate('stream_sync_reread_bytes_total')})", "bytes re-read"),
            ],
            "short",
            width=8,
        ),
        _timeseries(
            "Deltas applied / dropped",
            "Deltas applied to a shard, dropped as duplicates (already applied: a re-read after a "
            "restart), own deltas re-learned after a restart and not published again, "
            "undecodable records, and deltas of another events topic (a model-updates topic "
            "shared by two deployments: give each its own).",
            [
                (f"sum({_rate('stream_sync_deltas_applied_total')})", "applied"),
                (f"sum({_rate('stream_sync_deltas_duplicate_total')})", "duplicates"),
                (f"sum({_rate('stream_sync_deltas_replayed_total')})", "replayed"),
                (f"sum({_rate('stream_sync_deltas_invalid_total')})", "undecodable"),
                (f"sum({_rate('stream_sync_deltas_foreign_total')})", "foreign"),
            ],
            "cps",
            width=8,
        ),
    ]


def _layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give panels ids and grid positions, left to right, wrapping at 24 columns."""
    x = y = row_height = 0
    for number, panel in enumerate(panels, start=1):
        pos = panel["gridPos"]
        if x + pos["w"] > _GRID_WIDTH or panel["type"] == "row":
            if x:
                y += row_height
            x = row_height = 0
        pos["x"], pos["y"] = x, y
        panel["id"] = number
        x += pos["w"]
        row_height = max(row_height, pos["h"])
    return panels


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DATASOURCE,
        "definition": query,
        # A plain string: the one form every Grafana version since 7 reads (and migrates).
        "query": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".+",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
        "regex": "",
        "options": [],
    }


def build_dashboard() -> dict[str, Any]:
    """The dashboard as a dict (Grafana 10/11 JSON model)."""
    return {
        "uid": "stream-reco",
        "title": "Stream recommender",
        "description": "Streaming online-learning recommender: throughput, lag, accuracy, drift.",
        "tags": ["stream-reco", "kafka", "river"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "links": [],
        "templating": {
            "list": [
                {
                    "type": "datasource",
                    "name": "datasource",
                    "label": "Data source",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                _variable("instance", "Worker", "label_values(stream_worker_ready, instance)"),
                _variable("model", "Model", "label_values(stream_model_hit_rate, model)"),
            ]
        },
        "annotations": {
            "list": [
                {
                    "name": "Drift detections",
                    "datasource": DATASOURCE,
                    "enable": True,
                    "hide": False,
                    "iconColor": "orange",
                    # `changes` is a whole number (Grafana marks values >= 1 in some versions,
                    # > 0 in others); the 1m window equals the step, so each detection counts once.
                    "expr": "sum by (model, metric, detector) (changes("
                    + _sel("stream_drift_detections_total", _MODEL)
                    + "[1m]))",
                    "step": "1m",
                    "titleFormat": "Drift: {{model}} ({{metric}})",
                    "textFormat": "{{detector}} detector",
                    "tagKeys": "model,metric,detector",
                    "useValueForTime": False,
                },
                {
                    "name": "Firing alerts",
                    "datasource": DATASOURCE,
                    "enable": True,
                    "hide": False,
                    "iconColor": "red",
                    "expr": 'ALERTS{alertstate="firing", alertname=~"Stream.*"}',
                    "step": "1m",
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{severity}} {{instance}}",
                    "tagKeys": "alertname,severity",
                    "useValueForTime": False,
                },
            ]
        },
        "panels": _layout(_panels()),
    }


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def promql_expressions(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Every PromQL expression of the dashboard as ``(where, expr)``: panel targets,
    template-variable queries excluded (they are Grafana functions), annotations included."""
    dashboard = dashboard if dashboard is not None else build_dashboard()
    found: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if "expr" in annotation:
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    return found


def substitute(
    expr: str, rate_interval: str = "1m", model: str = ".+", instance: str = ".+"
) -> str:
    """Replace Grafana variables so that Prometheus can run ``expr`` directly (all selected)."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$model", model)
        .replace("$instance", instance)
    )


def render(dashboard: dict[str, Any] | None = None) -> str:
    """The committed JSON text: stable key order, two-space indent, final newline."""
    return json.dumps(dashboard or build_dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the dashboard JSON, or with ``--check`` fail when the committed file is stale."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=DASHBOARD_PATH)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(
                f"{args.output} is out of date: run python {Path(__file__).name}", file=sys.stderr
            )
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
