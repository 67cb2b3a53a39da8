"""Offline evaluation: the worker's core on a file, in time order, without Kafka.

``python -m stream evaluate PATH --format F [--report DIR]`` runs the very same
:class:`~stream.core.Pipeline` the live worker runs (test-then-learn, same models, same
settings), so a model can be judged on a user's own log before it is deployed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from stream.core import Pipeline
from stream.events import DriftRecord, Event, ModelMetrics, PromotionRecord, ReactionRecord
from stream.settings import StreamSettings, load_settings
from stream.updates import model_versions, rebuilds_of

__all__ = [
    "EvaluationResult",
    "drift_summary",
    "evaluate",
    "evaluate_partitioned",
    "print_table",
    "run_evaluate",
    "updates_summary",
]

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    """Everything an offline run measured."""

    events: int
    k: int
    default_model: str
    models: dict[str, ModelMetrics]
    events_per_second: dict[str, float]
    total_events_per_second: float
    drifts: list[DriftRecord]
    # Per model: the event index and windowed HR@K / RMSE sampled along the stream.
    series: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    rejected: int = 0
    # Every SERIES_EVERY events: (event, served model, {model: windowed HR@K}).
    served_series: list[tuple[int, str, dict[str, float | None]]] = field(default_factory=list)
    promotions: list[PromotionRecord] = field(default_factory=list)
    reactions: list[ReactionRecord] = field(default_factory=list)
    rebuilds: list[dict[str, Any]] = field(default_factory=list)
    served_model: str = ""  # served at the end (``default_model`` unless promoted)
    model_versions: dict[str, int] = field(default_factory=dict)
    # Users / items held at the end and what the memory limits removed (STREAM_USER_TTL_SECONDS,
    # STREAM_MAX_USERS, STREAM_MAX_ITEMS): the counts of the metrics record.
    memory: dict[str, int] = field(default_factory=dict)
    # ``evaluate --partitions``: partitions, sync_events, delta_records, delta_bytes.
    sync: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.json`` document (keys are a contract: ``hr@10``, ``ndcg@10``, ...)."""
        k = self.k
        return {
            "events": self.events,
            "k": k,
            "default_model": self.default_model,
            "models": {
                name: {
                    f"hr@{k}": m.hit_rate,
                    f"ndcg@{k}": m.ndcg,
                    f"mrr@{k}": m.mrr,
                    "mae": m.mae,
                    "rmse": m.rmse,
                    "coverage": m.coverage,
                    "evaluated": m.evaluated,
                    "rated": m.rated,
                    "events_per_second": self.events_per_second.get(name),
                }
                for name, m in self.models.items()
            },
            "events_per_second": self.total_events_per_second,
            "drifts": [
                {
                    "model": d.model,
                    "metric": d.metric,
                    "event": d.event,
                    "detector": d.detector,
                    "timestamp": d.timestamp,
                }
                for d in self.drifts
            ],
            "rejected": self.rejected,
            "memory": self.memory,
            "served_model": self.served_model or self.default_model,
            "series": [
                {"event": n, "model": name, f"hr@{k}": hr, "served": name == served}
                for n, served, values in self.served_series
                for name, hr in values.items()
            ],
            "promotions": [
                {
                    "event": p.event,
                    "from": p.from_model,
                    "to": p.to_model,
                    "metric": p.metric,
                    "from_value": p.from_value,
                    "to_value": p.to_value,
                    "lead_events": p.lead_events,
                    "model_version": p.model_version,
                }
                for p in self.promotions
            ],
            "reactions": [
                {
                    "event": r.event,
                    "model": r.model,
                    "detected_at_event": r.detected_at_event,
                    "before": r.before,
                    "recent": r.recent,
                    "actions": r.actions,
                }
                for r in self.reactions
            ],
            "rebuilds": self.rebuilds,
            "model_versions": self.model_versions,
            **({"sync": self.sync} if self.sync else {}),
        }


SERIES_EVERY = 1_000  # events between two rows of metrics.json's ``series``


def evaluate(
    events: Iterable[Event],
    settings: StreamSettings,
    sample_every: int = 200,
    pipeline: Pipeline | None = None,
) -> EvaluationResult:
    """Test-then-learn over ``events`` (already in the order to replay them)."""
    if settings.rebuild_background is None:
        # Offline runs are reproducible: full rebuilds run inline unless the setting says not.
        settings = settings.model_copy(update={"rebuild_background": False})
    pipe = pipeline if pipeline is not None else Pipeline.from_settings(settings)
    series: dict[str, dict[str, list[float | None]]] = {
        name: {"event": [], "hit_rate": [], "rmse": []} for name in pipe.models
    }
    served_series: list[tuple[int, str, dict[str, float | None]]] = []
    promotions: list[PromotionRecord] = []
    reactions: list[ReactionRecord] = []
    started = time.perf_counter()
    for result in pipe.run(events, topic="file"):
        n = pipe.run_count
        promotions += result.promotions
        reactions += result.reactions
        if n % sample_every == 0:
            for name, evaluator in pipe.evaluators.items():
                window = evaluator.windowed()
                series[name]["event"].append(float(n))
                series[name]["hit_rate"].append(window.hit_rate)
                series[name]["rmse"].append(window.rmse)
        if n % SERIES_EVERY == 0:
            served_series.append((n, pipe.served, _windowed_hr(pipe)))
        del result
    if pipe.run_count % SERIES_EVERY:
        served_series.append((pipe.run_count, pipe.served, _windowed_hr(pipe)))
    elapsed = max(time.perf_counter() - started, 1e-9)
    record = pipe.metrics_record()
    return EvaluationResult(
        events=pipe.run_count,
        k=settings.top_k,
        default_model=settings.recommender,
        models=record.cumulative_metrics,
        events_per_second={
            name: pipe.run_count / max(sec, 1e-9)
            for name, sec in pipe.model_seconds.items()
            if name in pipe.models
        },
        total_events_per_second=pipe.run_count / elapsed,
        drifts=list(pipe.drift.detections),
        series=series,
        served_series=served_series,
        promotions=promotions,
        reactions=reactions,
        rebuilds=rebuilds_of(pipe.models),
        served_model=pipe.served,
        model_versions=model_versions(pipe.models),
        memory=record.model_dump(
            include={"users", "items", "users_expired_ttl", "users_expired_cap", "items_evicted"}
        ),
    )


def evaluate_partitioned(
    events: Iterable[Event],
    settings: StreamSettings,
    partitions: int,
    sync_events: int | None = None,
    topic: str = "file",
) -> EvaluationResult:
    """Test-then-learn over ``events`` split into ``partitions`` shards as Kafka splits the
    events topic (kafka-python's default partitioner on the user id), one pipeline per
    shard as the worker runs them, sharing item state through :mod:`stream.sync`.

    Each shard shares a delta every ``sync_events`` events it learned (default
    ``settings.model_sync_events``, ``auto`` derived from ``partitions`` by
    :func:`~stream.sync.interval.light_interval`; 0, or ``STREAM_MODEL_SYNC=false``: isolated
    shards, as the worker runs them then) and the others apply
    it at once, through the same encoding, merge rules and dedupe as the worker. The metrics of the
    shards are merged (:func:`~stream.core.merge_metrics`) as the worker merges them.
    """
    from stream.core import merge_metrics
    from stream.sync.interval import light_interval
    from stream.sync.offline import LocalShards

    if settings.rebuild_background is None:
        settings = settings.model_copy(update={"rebuild_background": False})
    every = light_interval(settings, partitions) if sync_events is None else sync_events
    if partitions == 1 or (sync_events is None and settings.model_sync is False):
        every = 0  # nobody to share with, or STREAM_MODEL_SYNC=false: as the worker would
    shards = LocalShards(
        lambda: Pipeline.from_settings(settings),
        partitions,
        every,
        topic,
        settings.model_sync_full_every,
        settings.model_sync_evidence,
    )
    promotions: list[PromotionRecord] = []
    reactions: list[ReactionRecord] = []
    started = time.perf_counter()
    n = 0
    for event in events:
        result = shards.process_one(event)
        n += 1
        promotions += result.promotions
        reactions += result.reactions
        del result
    shards.share_all()
    elapsed = max(time.perf_counter() - started, 1e-9)
    pipes = shards.pipelines
    record = merge_metrics([p.metrics_record() for p in pipes])
    seconds: dict[str, float] = {}
    for pipe in pipes:
        for name, sec in pipe.model_seconds.items():
            if name in pipe.models:
                seconds[name] = seconds.get(name, 0.0) + sec
    return EvaluationResult(
        events=n,
        k=settings.top_k,
        default_model=settings.recommender,
        models=record.cumulative_metrics,
        events_per_second={name: n / max(sec, 1e-9) for name, sec in seconds.items()},
        total_events_per_second=n / elapsed,
        drifts=[d for p in pipes for d in p.drift.detections],
        promotions=promotions,
        reactions=reactions,
        served_model=max(record.served, key=lambda m: record.served[m]),
        sync={
            "partitions": partitions,
            "sync_events": every,
            "delta_records": shards.delta_records,
            "delta_bytes": shards.delta_bytes,
        },
    )


def _windowed_hr(pipe: Pipeline) -> dict[str, float | None]:
    return {
        name: (e.windowed_rank()[0] if e.evaluated else None) for name, e in pipe.evaluators.items()
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def print_table(result: EvaluationResult, out: TextIO | None = None) -> None:
    """Models side by side, then the drift points (to ``out``, default stdout)."""
    out = sys.stdout if out is None else out
    k = result.k
    header = ["model", f"HR@{k}", f"NDCG@{k}", f"MRR@{k}", "MAE", "RMSE", "coverage", "events/s"]
    rows = []
    for name, m in result.models.items():
        marker = " *" if name == (result.served_model or result.default_model) else ""
        rows.append(
            [
                name + marker,
                _fmt(m.hit_rate),
                _fmt(m.ndcg),
                _fmt(m.mrr),
                _fmt(m.mae),
                _fmt(m.rmse),
                _fmt(m.coverage, 3),
                _rate(result.events_per_second.get(name)),
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(
        f"{result.events:,} events, {result.total_events_per_second:,.0f} events/s overall "
        f"(* = published recommender at the end)",
        file=out,
    )
    for row in [header, *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ),
            file=out,
        )
    print(updates_summary(result), file=out)
    memory = result.memory
    if (
        memory.get("users_expired_ttl")
        or memory.get("users_expired_cap")
        or memory.get("items_evicted")
    ):
        print(
            f"memory limits: {memory['users']:,} users and {memory['items']:,} items held at "
            f"the end; {memory['users_expired_ttl']:,} users expired by the TTL, "
            f"{memory['users_expired_cap']:,} by the cap; {memory['items_evicted']:,} items "
            "evicted",
            file=out,
        )
    if result.sync:
        print(sync_summary(result), file=out)
    print(drift_summary(result.drifts), file=out)


def sync_summary(result: EvaluationResult) -> str:
    """``evaluate --partitions``: the shards, the light-delta interval used, the traffic.

    >>> r = EvaluationResult(1000, 10, "knn", {}, {}, 1.0, [])
    >>> r.sync = {"partitions": 8, "sync_events": 5, "delta_records": 210, "delta_bytes": 150000}
    >>> print(sync_summary(r))
    8 partitions: a delta every 5 events per shard; 210 deltas, 150.0 bytes per event
    """
    sync = result.sync
    every = sync.get("sync_events", 0)
    shared = f"a delta every {every} events per shard" if every else "no sync (isolated shards)"
    return (
        f"{sync.get('partitions', 1)} partitions: {shared}; {sync.get('delta_records', 0):,} "
        f"deltas, {sync.get('delta_bytes', 0) / max(result.events, 1):.1f} bytes per event"
    )


def updates_summary(result: EvaluationResult) -> str:
    """Promotions, drift reactions and rebuilds in a few lines."""
    served = result.served_model or result.default_model
    lines = [
        f"served at the end: {served}; {len(result.promotions)} promotion(s), "
        f"{len(result.reactions)} drift reaction(s), {len(result.rebuilds)} rebuild(s)"
    ]
    for p in result.promotions[:10]:
        lines.append(
            f"  event {p.event:,}: {p.from_model} -> {p.to_model} ({p.metric} {p.from_value:.4f} "
            f"-> {p.to_value:.4f})"
        )
    if len(result.promotions) > 10:
        lines.append("  ... (all in metrics.json)")
    return "\n".join(lines)


def drift_summary(drifts: list[DriftRecord], shown: int = 5) -> str:
    """Drift detections per model and metric: how many, and at which events (the first
    ``shown``), one line each; the full list is in ``metrics.json``.

    >>> from stream.events import DriftRecord
    >>> ds = [DriftRecord(detector="adwin", model="knn", metric="miss", event=e, timestamp=0.0)
    ...       for e in (1200, 5100, 9000)]
    >>> print(drift_summary(ds, shown=2))
    drift detected 3 times (adwin):
      knn          miss       3 at events 1,200, 5,100, ...
    """
    if not drifts:
        return "no drift detected"
    by_series: dict[tuple[str, str], list[int]] = {}
    for d in drifts:
        by_series.setdefault((d.model, d.metric), []).append(d.event)
    detectors = ", ".join(sorted({d.detector for d in drifts}))
    lines = [f"drift detected {len(drifts)} time{'s' if len(drifts) != 1 else ''} ({detectors}):"]
    for (model, metric), events in by_series.items():
        at = ", ".join(f"{e:,}" for e in events[:shown]) + (", ..." if len(events) > shown else "")
        plural = "s" if len(events) != 1 else ""
        lines.append(f"  {model:<12} {metric:<10} {len(events)} at event{plural} {at}")
    return "\n".join(lines)


def run_evaluate(ns: argparse.Namespace) -> int:
    """``python -m stream evaluate``: read, evaluate, print, optionally write the report."""
    from producers.emitter import with_progress
    from producers.formats import FormatError, nothing_read, parse_column_map, read_events

    settings = load_settings()
    path: Path = ns.path
    if ns.partitions < 1:
        print(f"error: --partitions must be at least 1, got {ns.partitions}", file=sys.stderr)
        return 2
    if not path.is_file():
        what = "not a file" if path.exists() else "no such file"
        print(f"error: {what}: {path}", file=sys.stderr)
        return 2
    delimiter = "\t" if ns.delimiter.lower() in ("tab", "\\t") else ns.delimiter
    progress = not ns.quiet and sys.stderr.isatty()
    redirect: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if progress:
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm()
    try:
        reader = read_events(
            path,
            ns.format,
            limit=ns.limit,
            columns=parse_column_map(ns.columns),
            event_type=ns.event_type,
            delimiter=delimiter,
            rating_range=(settings.rating_min, settings.rating_max),
            max_event_bytes=settings.max_event_bytes,
        )
        events = with_progress(
            reader, enabled=progress, total=lambda: reader.expected, desc="evaluating"
        )
        with redirect:
            if ns.partitions > 1:
                result = evaluate_partitioned(events, settings, ns.partitions)
            else:
                result = evaluate(events, settings)
    except FormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    result.rejected = reader.rejected
    empty = nothing_read(reader, result.events)
    if empty is not None:
        print(f"error: {empty}", file=sys.stderr)
        return 2
    print_table(result)
    if reader.rejected:
        print(f"{reader.rejected} malformed lines skipped (see warnings above)", file=sys.stderr)
    if ns.report is not None:
        from stream.report import write_report

        try:
            write_report(result, ns.report)
        except OSError as exc:
            print(f"error: cannot write the report to {ns.report}: {exc}", file=sys.stderr)
            return 1
        print(f"report written to {ns.report}/index.html", file=sys.stderr)
    json.dumps(result.to_json())  # fail here, not in a report consumer, if not serialisable
    return 0
