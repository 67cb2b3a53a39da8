"""Prometheus metrics and the worker's HTTP endpoints (``/metrics``, ``/healthz``, ``/readyz``).

Metric objects live on a :class:`WorkerMetrics` built with a ``CollectorRegistry`` passed in,
never at module level, so tests and several workers in one process do not collide.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from stream.events import DriftRecord, MetricsRecord, PromotionRecord, ReactionRecord

__all__ = ["HealthState", "MetricsServer", "SyncMetrics", "WorkerMetrics"]

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class WorkerMetrics:
    """Every metric the worker exports (names are a contract with ``deploy/``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter(
            "stream_events",
            "Records consumed, by event type and outcome.",
            ["event_type", "outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "stream_dead_letters",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.processing = Histogram(
            "stream_processing_seconds",
            "Per event: evaluate, learn, recommend and hand the outputs to the producer.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.event_lag = Gauge(
            "stream_event_lag_seconds",
            "Wall clock minus the event timestamp of the last processed event.",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "stream_consumer_lag",
            "Records behind the partition's high watermark.",
            ["topic", "partition"],
            registry=registry,
        )
        self.hit_rate = Gauge(
            "stream_model_hit_rate",
            "Windowed hit-rate@K (test-then-learn).",
            ["model", "k"],
            registry=registry,
        )
        self.ndcg = Gauge(
            "stream_model_ndcg", "Windowed NDCG@K.", ["model", "k"], registry=registry
        )
        self.mrr = Gauge("stream_model_mrr", "Windowed MRR@K.", ["model", "k"], registry=registry)
        self.mae = Gauge(
            "stream_model_mae", "Windowed mean absolute rating error.", ["model"], registry=registry
        )
        self.rmse = Gauge(
            "stream_model_rmse",
            "Windowed root mean squared rating error.",
            ["model"],
            registry=registry,
        )
        self.drifts = Counter(
            "stream_drift_detections",
            "Drift detections.",
            ["model", "metric", "detector"],
            registry=registry,
        )
        self.users = Gauge("stream_known_users", "Users with history.", registry=registry)
        self.items = Gauge("stream_known_items", "Items the recommender knows.", registry=registry)
        self.recommendations = Counter(
            "stream_recommendations_published",
            "Recommendation records sent.",
            ["model"],
            registry=registry,
        )
        self.last_event = Gauge(
            "stream_last_event_timestamp_seconds",
            "Wall-clock time the last event was processed.",
            registry=registry,
        )
        self.ready = Gauge(
            "stream_worker_ready",
            "1 when the consumer has partitions and the broker answers.",
            registry=registry,
        )
        self.checkpoints = Counter(
            "stream_checkpoints",
            "Checkpoints written, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.checkpoint_last = Gauge(
            "stream_checkpoint_last_success_timestamp_seconds",
            "When the last checkpoint was written.",
            registry=registry,
        )
        self.promotions = Counter(
            "stream_promotions",
            "Champion / challenger promotions of the served recommender.",
            ["from", "to"],
            registry=registry,
        )
        self.served = Gauge(
            "stream_served_model",
            "Shards (partitions) serving each model: 1 for the served one with one partition.",
            ["model"],
            registry=registry,
        )
        self.served_version = Gauge(
            "stream_served_model_version",
            "Highest model_version served (1 + promotions + rebuilt versions swapped in).",
            registry=registry,
        )
        self.reactions = Counter(
            "stream_drift_reactions",
            "Drift reactions (a detection on the served model confirmed by a drop in its HR@K).",
            ["model"],
            registry=registry,
        )
        # Pre-create label sets so dashboards show zeros instead of "no data".
        self.events.labels("unknown", "dead_lettered")
        self.ready.set(0)
        for outcome in ("ok", "failed"):
            self.checkpoints.labels(outcome)
        # Bounded memory (STREAM_USER_TTL_SECONDS, STREAM_MAX_USERS, STREAM_MAX_ITEMS).
        self.users_expired = Counter(
            "stream_users_expired",
            "Users forgotten by every model because of the memory limits (ttl: inactive "
            "longer than STREAM_USER_TTL_SECONDS in event time; cap: past STREAM_MAX_USERS).",
            ["reason"],
            registry=registry,
        )
        self.items_evicted = Counter(
            "stream_items_evicted",
            "Least recently seen items evicted from every model past STREAM_MAX_ITEMS.",
            registry=registry,
        )
        for reason in ("ttl", "cap"):
            self.users_expired.labels(reason)
        # The records carry running totals: what was counted so far, to add the difference.
        self._memory_counts: dict[str, int] = {}

    def declare_models(self, models: list[str], metrics: list[str], detector: str) -> None:
        """Pre-create drift counters at zero, so ``increase()`` sees the first detection."""
        for model in models:
            self.served.labels(model)
            self.reactions.labels(model)
            for metric in metrics:
                self.drifts.labels(model, metric, detector)

    def observe_serving(self, served: Mapping[str, int], models: list[str], version: int) -> None:
        """The served-model gauge (every model, 0 when not served) and the served version."""
        for model in dict.fromkeys([*models, *served]):
            self.served.labels(model).set(served.get(model, 0))
        self.served_version.set(version)

    def observe_promotion(self, promotion: PromotionRecord) -> None:
        self.promotions.labels(promotion.from_model, promotion.to_model).inc()

    def observe_reaction(self, reaction: ReactionRecord) -> None:
        self.reactions.labels(reaction.model).inc()

    def observe_accuracy(self, record: MetricsRecord) -> None:
        k = str(record.k)
        for name, m in record.window_metrics.items():
            if m.hit_rate is not None:
                self.hit_rate.labels(name, k).set(m.hit_rate)
                self.ndcg.labels(name, k).set(m.ndcg or 0.0)
                self.mrr.labels(name, k).set(m.mrr or 0.0)
            if m.mae is not None:
                self.mae.labels(name).set(m.mae)
                self.rmse.labels(name).set(m.rmse or 0.0)
        self.users.set(record.users)
        self.items.set(record.items)
        self.observe_memory(record)

    def observe_memory(self, record: MetricsRecord) -> None:
        """Expiry counters from a record's running totals (of every shard, merged).

        A total that went down (a shard revoked, a restore) is taken as the new base. The
        users held are ``stream_known_users`` (set with the accuracy).
        """
        for key, counter in (
            ("users_expired_ttl", self.users_expired.labels("ttl")),
            ("users_expired_cap", self.users_expired.labels("cap")),
            ("items_evicted", self.items_evicted),
        ):
            total = getattr(record, key)
            added = total - self._memory_counts.get(key, 0)
            if added > 0:
                counter.inc(added)
            self._memory_counts[key] = total

    def observe_drift(self, drift: DriftRecord) -> None:
        self.drifts.labels(drift.model, drift.metric, drift.detector).inc()

    def observe_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), value in lag.items():
            self.consumer_lag.labels(topic, str(partition)).set(value)

    def forget_partitions(self, partitions: list[tuple[str, int]]) -> None:
        """Drop the lag series of partitions this worker no longer owns (no stale lag)."""
        for topic, partition in partitions:
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(topic, str(partition))


class HealthState:
    """Liveness (the loop ticked recently) and readiness (assigned and connected)."""

    def __init__(self, stall_after_s: float = 120.0, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._stall_after = stall_after_s
        self._last_tick = clock()
        self.ready = False
        self.reason = "starting"

    def tick(self) -> None:
        self._last_tick = self._clock()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        self.ready, self.reason = ready, reason

    def live(self) -> tuple[bool, str]:
        idle = self._clock() - self._last_tick
        if idle > self._stall_after:
            return False, f"processing loop stalled for {idle:.0f}s"
        return True, "ok"


class MetricsServer:
    """A small threaded HTTP server: ``/metrics``, ``/healthz``, ``/readyz``.

    ``port=0`` picks a free port (see :attr:`port`).
    """

    def __init__(
        self, registry: CollectorRegistry, health: HealthState, host: str = "0.0.0.0", port: int = 0
    ) -> None:
        self.registry, self.health = registry, health
        handler = self._handler()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, why = server.health.live()
                    self._reply(200 if ok else 503, why.encode() + b"\n")
                elif path == "/readyz":
                    ready = server.health.ready
                    why = "ready" if ready else server.health.reason or "not ready"
                    self._reply(200 if ready else 503, why.encode() + b"\n")
                else:
                    self._reply(404, b"not found: try /metrics, /healthz, /readyz\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("http %s", format % args)

        return Handler

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class SyncMetrics:
    """The model sync's figures (``stream_sync_*``), from the running totals of a
    :class:`stream.sync.live.SyncStats` (counters grow by what changed since the last call)."""

    _COUNTERS = {
        "published": ("stream_sync_deltas_published_total", "item-state deltas published"),
        "published_bytes": ("stream_sync_published_bytes_total", "bytes of deltas published"),
        "received": ("stream_sync_deltas_received_total", "deltas read from the topic"),
        "received_bytes": ("stream_sync_received_bytes_total", "bytes of deltas read"),
        "applied": ("stream_sync_deltas_applied_total", "deltas applied to a shard"),
        "duplicates": (
            "stream_sync_deltas_duplicate_total",
            "deltas dropped by a shard as already applied (same source, offsets)",
        ),
        "invalid": ("stream_sync_deltas_invalid_total", "undecodable model-updates records"),
        "foreign": (
            "stream_sync_deltas_foreign_total",
            "deltas of another events topic or consumer group on the model-updates topic, skipped",
        ),
        "replayed": (
            "stream_sync_deltas_replayed_total",
            "own deltas re-learned after a restart and not published again",
        ),
        "reread": (
            "stream_sync_deltas_reread_total",
            "records read again from the topic's beginning for a shard attached later",
        ),
        "reread_bytes": ("stream_sync_reread_bytes_total", "bytes of those records"),
    }

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counters = {
            field: Counter(name.removesuffix("_total"), doc, registry=registry)
            for field, (name, doc) in self._COUNTERS.items()
        }
        self._seen: dict[str, float] = dict.fromkeys(self._COUNTERS, 0.0)
        self.lag_events = Gauge(
            "stream_sync_lag_events",
            "events a shard of this worker learned and has not shared yet (highest)",
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "stream_sync_lag_seconds",
            "from another shard collecting a delta to this worker applying it (last applied)",
            registry=registry,
        )

    def observe(self, stats: Any) -> None:
        for field, counter in self._counters.items():
            value = float(getattr(stats, field))
            if value > self._seen[field]:
                counter.inc(value - self._seen[field])
                self._seen[field] = value
        self.lag_events.set(stats.lag_events)
        self.lag_seconds.set(stats.lag_seconds)
