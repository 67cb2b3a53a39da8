"""The live worker: wires the Kafka edges to the core, one event at a time.

consume -> decode/validate -> (per partition) evaluate, learn, recommend -> encode -> publish.

State is sharded by partition of the events topic: each assigned partition has its own
:class:`~stream.core.Pipeline` (models, history, evaluators, drift detectors). Events are keyed
by user, so a user's events and everything learned from them live in one shard, and a shard
moves with its partition on a rebalance (restored from its checkpoint when one exists).

Offsets are committed only after the outputs of the events they cover were flushed and, when
checkpoints are on, only for offsets a written checkpoint covers.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from stream.checkpoint import CheckpointStore
from stream.checkpoint_fork import FORK_AVAILABLE, ForkedSaves, SaveOutcome
from stream.core import Pipeline, merge_metrics
from stream.drift import drift_counts
from stream.events import (
    DeadLetter,
    DriftRecord,
    MetricsRecord,
    PromotionRecord,
    ReactionRecord,
    Rejected,
    Source,
    decode_one,
)
from stream.kafka import Backoff, BrokerUnavailableError, RawRecord
from stream.kafka.admin import COMPACTED, TopicError, ensure_topics
from stream.kafka.reader import TopicReader
from stream.kafka.sink import DeliveryError, DeliveryFailure, OutputTooLargeError, RecordSink
from stream.kafka.source import EventSource
from stream.log_sampler import LogSampler
from stream.monitoring import HealthState, MetricsServer, SyncMetrics, WorkerMetrics
from stream.restore import apply_settings, check_restorable
from stream.settings import StreamSettings
from stream.sync.interval import light_interval, sync_enabled
from stream.sync.live import WorkerSync

__all__ = ["RunSummary", "Worker", "json_bytes", "topic_layout"]

logger = logging.getLogger(__name__)

_END = 2**62  # an offset after every offset: "everything published before"

TopicPartition = tuple[str, int]

# Consecutive failed checkpoints of one partition after which the worker reports not ready
# (one failure can be a blip; the next one means nothing is being made safe).
CHECKPOINT_FAILURES_UNREADY = 2
# /readyz's reason while new shards read the model-updates topic (their events wait).
ATTACHING = "model sync: reading the model-updates topic for new partitions"


def json_bytes(record: BaseModel) -> bytes:
    """``record.model_dump_json().encode()``, the same bytes, without the str round trip and
    the keyword handling (8.4 instead of 10.0 us for a 10-item recommendation, once per event:
    ``benchmarks/worker_edges.py``)."""
    return record.__pydantic_serializer__.to_json(record)


def topic_layout(
    s: StreamSettings, events_partitions: int | None = None
) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """The topics the worker creates when missing: partitions, and configs by topic
    (``events_partitions``: the events topic's as the broker reports it, if known)."""
    sizes = {
        s.events_topic: s.events_partitions,
        s.recommendations_topic: 1,
        s.metrics_topic: 1,
        s.dead_letter_topic: 1,
    }
    if sync_enabled(s, events_partitions) and (s.model_sync is True or events_partitions):
        # (auto: once the events topic's partitions are known, see Worker.run)
        sizes[s.model_updates_topic] = 1  # one partition: every shard reads it in one order
    # Latest top-K per user: compaction keeps one record per key and the tombstone of a
    # forgotten user deletes theirs (``stream serve`` reads the topic as a table).
    return sizes, {s.recommendations_topic: COMPACTED}


@dataclass
class RunSummary:
    """What a run did, for the CLI's final line and for tests."""

    consumed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    recommendations: int = 0
    metrics_records: int = 0
    drifts: list[DriftRecord] = field(default_factory=list)
    promotions: list[PromotionRecord] = field(default_factory=list)
    reactions: list[ReactionRecord] = field(default_factory=list)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    stopped_by: str = ""
    last_metrics: MetricsRecord | None = None
    # Records consumed whose offsets were never committed: a restart consumes them again.
    uncommitted: int = 0

    def served_model(self, default: str) -> str:
        """The model served at the last metrics record (the most shards'), else ``default``."""
        served = None if self.last_metrics is None else self.last_metrics.served
        return max(served, key=lambda n: served[n]) if served else default

    def accuracy_line(self, model: str) -> str:
        """The served model's HR@K, windowed and cumulative, from the last metrics record.

        >>> from stream.events import ModelMetrics
        >>> s = RunSummary(last_metrics=MetricsRecord(
        ...     k=10, events=5000, evaluated=4000, window=1000,
        ...     window_metrics={"blend": ModelMetrics(hit_rate=0.09, evaluated=4000)},
        ...     cumulative_metrics={"blend": ModelMetrics(hit_rate=0.08, evaluated=4000)}))
        >>> s.accuracy_line("blend")
        'served model blend: HR@10 0.0900 over the last 1,000 evaluated events, 0.0800 cumulative (4,000 evaluated)'
        """  # noqa: E501
        record = self.last_metrics
        cumulative = None if record is None else record.cumulative_metrics.get(model)
        if record is None or cumulative is None or not cumulative.evaluated:
            return f"served model {model}: no accuracy yet (no event was evaluated)"
        window = record.window_metrics.get(model)

        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        in_window = min(record.window, cumulative.evaluated)  # the window slides over evaluations
        return (
            f"served model {model}: HR@{record.k} "
            f"{fmt(None if window is None else window.hit_rate)} over the last {in_window:,} "
            f"evaluated events, {fmt(cumulative.hit_rate)} cumulative "
            f"({cumulative.evaluated:,} evaluated)"
        )


class Worker:
    """Consume events, run the core per partition, publish recommendations and metrics.

    Parameters
    ----------
    settings
        The run's settings.
    registry
        Where Prometheus metrics are registered (a fresh one if omitted).
    pipeline_factory
        Builds the empty state of a new shard (defaults to ``Pipeline.from_settings``).
    """

    # A flood of bad records logs the first few per reason, then a summary this often (the
    # counters and the dead-letter topic stay exact).
    LOG_FIRST_PER_REASON = 5
    LOG_SUMMARY_EVERY_S = 60.0
    # A long run says how it is doing this often (one INFO line).
    PROGRESS_EVERY_S = 60.0
    # Longest stretch the loop reads the model-updates topic for attaching shards while other
    # partitions have events (five times that while none has).
    ATTACH_SLICE_S = 0.2

    def __init__(
        self,
        settings: StreamSettings,
        registry: CollectorRegistry | None = None,
        pipeline_factory: Callable[[], Pipeline] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = WorkerMetrics(self.registry)
        self.health = HealthState()
        self._new_pipeline = pipeline_factory or (lambda: Pipeline.from_settings(settings))
        self.shards: dict[TopicPartition, Pipeline] = {}
        self.checkpoints = CheckpointStore.from_settings(settings)
        # Checkpoints written by forked children (STREAM_CHECKPOINT_MODE), None: inline.
        self._forks: ForkedSaves | None = None
        if self.checkpoints is not None and (
            settings.checkpoint_mode == "fork"
            or (settings.checkpoint_mode == "auto" and FORK_AVAILABLE)
        ):
            self._forks = ForkedSaves(self.checkpoints)
        # Next offset to consume per partition, for what has been processed (not yet safe).
        self._positions: dict[TopicPartition, int] = {}
        self._pending_drifts: list[DriftRecord] = []
        self._pending_promotions: list[PromotionRecord] = []
        self._pending_reactions: list[ReactionRecord] = []
        self._stop_reason = ""
        # Set when what is in memory may no longer match the offsets: nothing more is
        # checkpointed or committed by this process (the restart re-consumes from the last
        # safe point).
        self._unsafe = ""
        self._checkpointed: dict[TopicPartition, int] = {}  # offset of each shard's last save
        # Per partition, the first offset not yet committed (what a restart resumes from).
        self._safe_from: dict[TopicPartition, int] = {}
        # Per partition, consecutive failed checkpoints and the last error.
        self._checkpoint_failures: dict[TopicPartition, tuple[int, str]] = {}
        self._last_checkpoint_error = ""
        self._server: MetricsServer | None = None
        self._source: EventSource | None = None
        self._sink: RecordSink | None = None
        self._sync: WorkerSync | None = None  # the model sync (stream.sync), when on
        self._sync_reader: TopicReader | None = None
        # With the sync: the new shards of assigned partitions without a checkpoint, synced
        # at the assignment with the restored ones (one re-read of the model-updates topic
        # for all), until their first event makes them shards.
        self._synced_new: dict[TopicPartition, Pipeline] = {}
        self._sync_partitions: int | None = None  # events topic partitions the interval is for
        self._warned_unsynced = False  # STREAM_MODEL_SYNC=auto off, partitions added since
        # Partitions paused while their new shards catch up on the model-updates topic.
        self._paused: set[TopicPartition] = set()
        self._batch_seconds = 0.0  # how long the last poll batch took to learn
        # Registered with the sync off too (at 0): the dashboard's sync panels have data.
        self._sync_metrics = SyncMetrics(self.registry)
        self._since_metrics = 0
        self._last_metrics_at = time.monotonic()
        self._last_gauges_at = 0.0
        self._since_checkpoint = 0
        self._last_checkpoint_at = time.monotonic()
        self._last_flush_at = time.monotonic()
        # Per-event counters of the current poll batch, added to Prometheus once per batch
        # (a labelled inc() is ~3 us; the values are the same at every batch's end).
        self._batch_processed: Counter[str] = Counter()
        self._batch_published: Counter[str] = Counter()
        self._batch_last_timestamp: float | None = None
        self.summary = RunSummary()
        self._progress_at = time.monotonic()
        self._progress_consumed = 0
        self._dead_letter_log = LogSampler(
            logger,
            "dead letters",
            first=self.LOG_FIRST_PER_REASON,
            interval_s=self.LOG_SUMMARY_EVERY_S,
        )
        self._error_log = LogSampler(
            logger,
            "processing errors",
            first=self.LOG_FIRST_PER_REASON,
            interval_s=self.LOG_SUMMARY_EVERY_S,
            level=logging.ERROR,
        )

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        """This worker in metrics records: ``client_id@host:pid``."""
        return f"{self.settings.client_id}@{socket.gethostname()}:{os.getpid()}"

    @property
    def server_port(self) -> int | None:
        """The port ``/metrics`` is served on (None when off)."""
        return None if self._server is None else self._server.port

    def request_stop(self, reason: str = "requested") -> None:
        """Finish the current batch, flush, commit and return from :meth:`run`."""
        if not self._stop_reason:
            logger.info("stopping: %s", reason)
            self._stop_reason = reason

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self, max_events: int | None = None, idle_timeout: float | None = None) -> RunSummary:
        """Run until ``max_events`` records were consumed, ``idle_timeout`` seconds passed
        without a record, or a stop was requested (SIGTERM/SIGINT)."""
        s = self.settings
        if self.checkpoints is not None:
            self.checkpoints.check_writable()
            check_restorable(self.checkpoints, s)
        if s.metrics_port:
            self._server = MetricsServer(self.registry, self.health, s.metrics_host, s.metrics_port)
            self._server.start()
            logger.info("serving /metrics, /healthz, /readyz on port %d", self._server.port)
        try:
            sizes, configs = topic_layout(s)
            found = ensure_topics(
                s,
                sizes,
                timeout_s=s.broker_wait_seconds,
                wait_setting="STREAM_BROKER_WAIT_SECONDS",
                configs=configs,
            )
            partitions = found.get(s.events_topic)
            sync = sync_enabled(s, partitions)
            if sync and s.model_updates_topic not in found:
                # STREAM_MODEL_SYNC=auto on an events topic found with several partitions.
                sync = self._ensure_updates_topic()
            self._sink = RecordSink(s, on_wait=self._on_flush_wait)
            if sync:
                self._start_sync()
                self._follow_partitions(partitions)
            elif s.model_sync == "auto" and s.model_sync_events:
                logger.info(
                    "model sync off: events topic %s has %s partition "
                    "(STREAM_MODEL_SYNC=auto shares item state across several)",
                    s.events_topic,
                    partitions,
                )
            self._source = EventSource(
                s, [s.events_topic], on_assigned=self._on_assigned, on_revoked=self._on_revoked
            )
            self.metrics.declare_models(list(s.models), ["miss", "abs_error"], s.drift_detector)
            try:
                self._loop(max_events, idle_timeout)
            except BaseException as exc:
                # An event may be half applied (learned, outputs not sent, offset not moved):
                # a checkpoint now would learn it twice after the restart.
                if self.checkpoints is not None and not self._unsafe:
                    self._unsafe = f"stopped by {type(exc).__name__}"
                raise
        finally:
            self._shutdown()
        return self.summary

    def _loop(self, max_events: int | None, idle_timeout: float | None) -> None:
        assert self._source is not None
        last_record_at = time.monotonic()
        while not self._stop_reason:
            self.health.tick()
            budget = None if max_events is None else max_events - self.summary.consumed
            if budget is not None and budget <= 0:
                self.request_stop(f"max events ({max_events}) consumed")
                break
            batch = self._source.poll_batch(self.settings.poll_timeout_ms)
            self._update_readiness()
            if self._source.broker_lost or not self._source.assignment():
                # Joining the group takes seconds: a worker is idle only once it has partitions
                # (and a broker; failing checkpoints, though not ready, do not stop the clock).
                last_record_at = time.monotonic()
            if self._sync is not None and (self._sync.attaching or self._paused):
                # Held first, then cut to the budget: a cut batch ends the run (it reaches
                # max_events), so no partition goes on past records it skipped.
                batch = self._hold_attaching(batch)
                last_record_at = time.monotonic()  # (catching up is not idle)
            if budget is not None:
                batch = batch[:budget]
            if self._sync is not None:
                self._sync.poll()
                if self._sync.attaching:
                    self._catch_up(busy=bool(batch))
            if batch:
                last_record_at = time.monotonic()
                try:
                    self._handle_batch(batch)
                finally:
                    self._observe_batch()
                self._batch_seconds = time.monotonic() - last_record_at
            # On every poll, empty ones too: an idle worker still reports on time.
            self._maybe_publish_metrics()
            self._collect_checkpoints()
            if batch:
                self._make_safe(force_checkpoint=False)
            else:
                if self._positions:
                    # Quiet topic: what the last batches left unflushed is made safe on time.
                    self._make_safe(force_checkpoint=False)
                if idle_timeout is not None and time.monotonic() - last_record_at >= idle_timeout:
                    self.request_stop(f"idle for {idle_timeout:g}s")
            self._maybe_refresh_gauges()
        self.summary.stopped_by = self._stop_reason

    def _shutdown(self) -> None:
        try:
            self._collect_checkpoints(block=True)
            if self._sink is not None and self._source is not None and self.summary.consumed:
                self._publish_metrics()
                if self._sync is not None and not self._unsafe:
                    self._sync.publish_all()  # flushed before the final checkpoint
                self._make_safe(force_checkpoint=True)
        except Exception:
            logger.exception("final flush/commit failed; uncommitted events will be re-consumed")
        finally:
            self._dead_letter_log.flush()
            self._error_log.flush()
            if self._source is not None:
                self._source.close()  # revokes: the partitions' shards are dropped and counted
            self._drop(list(self._positions))
            if self._sink is not None:
                self._sink.close()
            if self._sync_reader is not None:
                self._sync_reader.close()
            if self._server is not None:
                self._server.stop()
            self._set_ready(False, "stopped")
            if self._forks is not None:
                self._forks.close()
            if self.summary.uncommitted:
                logger.error(
                    "%d consumed record(s) are not yet safe: their offsets were not committed "
                    "(%s), so the next run consumes them again",
                    self.summary.uncommitted,
                    self._unsafe or self._last_checkpoint_error or "the commit failed",
                )

    def _handle_batch(self, batch: list[RawRecord]) -> None:
        """Handle ``batch``; with the model sync (no shard catching up), apply the other
        shards' deltas as they arrive, not only between batches: a batch of
        ``STREAM_MAX_POLL_RECORDS`` takes a second or more, and a delta applied a batch late is
        that much staler (measured: two live workers, 2.3 s median from publish to apply,
        against the interval's few events). The reader's fetches run in the client's IO
        thread; a poll here hands over what they brought, every ``STREAM_MODEL_SYNC_POLL_MS``
        (each costs ~0.8 ms of CPU: every 20 ms, the former period, ~4 % of a core)."""
        sync = self._sync
        if sync is None or sync.attaching or not self.settings.model_sync_poll_ms:
            for record in batch:
                self._handle_one(record)
            return
        every_s = self.settings.model_sync_poll_ms / 1000
        next_at = time.monotonic() + every_s
        for record in batch:
            self._handle_one(record)
            now = time.monotonic()
            if now >= next_at:
                sync.poll()
                next_at = now + every_s

    # --- per record ---------------------------------------------------------------------------

    def _handle_one(self, record: RawRecord) -> None:
        started = time.perf_counter()
        s = self.settings
        tp = (record.topic, record.partition)
        source = Source(record.topic, record.partition, record.offset)
        self.summary.consumed += 1
        decoded = decode_one(
            record.key,
            record.value,
            max_bytes=s.max_event_bytes,
            rating_range=(s.rating_min, s.rating_max),
        )
        if isinstance(decoded, Rejected):
            self._dead_letter(decoded, source)
        else:
            shard = self._shard(tp, record.offset)
            try:
                result = shard.process_one(decoded, source)
            except Exception as exc:  # a model bug must not take the stream down
                self._error_log.log_one(
                    type(exc).__name__, "processing failed at %s", source, exc_info=True
                )
                self._dead_letter(
                    Rejected("processing_error", repr(exc)[:300], record.key, record.value),
                    source,
                    decoded.event_type,
                )
            else:
                if self._sync is not None:
                    self._sync.after_one(tp, record.offset)
                self._publish_result(result.recommendation, decoded.user_id, source, record)
                self._batch_processed[decoded.event_type] += 1
                self.summary.processed += 1
                for drift in result.drifts:
                    self.metrics.observe_drift(drift)
                    self._pending_drifts.append(drift)
                    self.summary.drifts.append(drift)
                for reaction in result.reactions:
                    self.metrics.observe_reaction(reaction)
                    self._pending_reactions.append(reaction)
                    self.summary.reactions.append(reaction)
                for promotion in result.promotions:
                    self.metrics.observe_promotion(promotion)
                    self._pending_promotions.append(promotion)
                    self.summary.promotions.append(promotion)
                self._batch_last_timestamp = decoded.timestamp
        self._safe_from.setdefault(tp, record.offset)
        self._positions[tp] = record.offset + 1
        self._since_metrics += 1
        self._since_checkpoint += 1
        if self._since_metrics >= s.metrics_every_events or self._pending_promotions:
            # A promotion is published at once: consumers see the switch when it happens.
            self._publish_metrics()
        self.metrics.processing.observe(time.perf_counter() - started)

    def _publish_result(
        self, recommendation: object, user_id: str, source: Source, record: RawRecord
    ) -> None:
        assert self._sink is not None
        s = self.settings
        key = user_id.encode()
        if recommendation is None:
            # A forgotten user: a tombstone removes their recommendations from a compacted topic.
            self._sink.send(s.recommendations_topic, key, None)
            return
        value = json_bytes(recommendation)  # type: ignore[arg-type]
        try:
            self._sink.send(s.recommendations_topic, key, value)
        except OutputTooLargeError as exc:
            self._dead_letter(
                Rejected("output_too_large", str(exc)[:300], record.key, record.value), source
            )
            return
        self.summary.recommendations += 1
        self._batch_published[recommendation.model] += 1  # type: ignore[attr-defined]

    def _dead_letter(self, rejected: Rejected, source: Source, event_type: str = "unknown") -> None:
        assert self._sink is not None
        self._dead_letter_log.log_one(
            rejected.reason, "dead letter %s at %s: %s", rejected.reason, source, rejected.detail
        )
        letter = DeadLetter.of(rejected, source)
        try:
            self._sink.send(
                self.settings.dead_letter_topic, rejected.key, letter.model_dump_json().encode()
            )
        except OutputTooLargeError:
            # base64 of a near-1 MiB input does not fit: keep the letter, point at the original.
            size = len(rejected.value or b"")
            letter.value_b64 = None
            letter.detail = f"{letter.detail} (value of {size} bytes left out: see {source})"
            self._sink.send(
                self.settings.dead_letter_topic, rejected.key, letter.model_dump_json().encode()
            )
        self.metrics.dead_letters.labels(rejected.reason).inc()
        self.metrics.events.labels(event_type, "dead_lettered").inc()
        self.summary.dead_lettered += 1

    def _observe_batch(self) -> None:
        """Add the poll batch's counts to Prometheus; the event lag of its last event."""
        for event_type, n in self._batch_processed.items():
            self.metrics.events.labels(event_type, "processed").inc(n)
        for model, n in self._batch_published.items():
            self.metrics.recommendations.labels(model).inc(n)
        self._batch_processed.clear()
        self._batch_published.clear()
        if self._batch_last_timestamp is not None:
            now = time.time()
            self.metrics.event_lag.set(now - self._batch_last_timestamp)
            self.metrics.last_event.set(now)
            self._batch_last_timestamp = None

    def _shard(self, tp: TopicPartition, offset: int) -> Pipeline:
        shard = self.shards.get(tp)
        if shard is None:
            synced = self._synced_new.pop(tp, None)
            if synced is not None:
                shard = self.shards[tp] = synced
                return shard
            shard = self.shards[tp] = self._new_pipeline()
            if self._sync is not None:
                self._sync.attach(tp, shard, start=offset)
        return shard

    # --- batches, metrics, safety ------------------------------------------------------------

    def _maybe_publish_metrics(self) -> None:
        if time.monotonic() - self._last_metrics_at >= self.settings.metrics_every_seconds:
            self._publish_metrics()

    def _make_safe(self, force_checkpoint: bool) -> None:
        """Flush outputs, then commit what is safe: everything flushed (no checkpoints) or
        exactly what the checkpoint just written covers.

        Without checkpoints this happens every ``commit_interval_ms``; with them, whenever a
        checkpoint is due (``checkpoint_every_*``), and outputs are flushed at the interval.
        """
        assert self._sink is not None and self._source is not None
        if self._unsafe:
            return
        s = self.settings
        now = time.monotonic()
        checkpoint_due = self.checkpoints is not None and (
            force_checkpoint
            or self._since_checkpoint >= s.checkpoint_every_events
            or now - self._last_checkpoint_at >= s.checkpoint_every_seconds
        )
        # A flush waits for the broker's acknowledgements and a commit is a round trip: once
        # per poll batch they cost the events that arrive meanwhile tens of milliseconds.
        flush_due = force_checkpoint or now - self._last_flush_at >= s.commit_interval_ms / 1000
        if not (checkpoint_due or flush_due) or not self._flush_outputs():
            return
        self._last_flush_at = time.monotonic()  # after the flush, which may have waited
        if self.checkpoints is None:
            self._commit(self._shared_positions())
        elif checkpoint_due and self._forks is not None and not force_checkpoint:
            # Committed by _collect_checkpoints once each child has written its file.
            self._checkpoint(list(self._positions), background=True)
        elif checkpoint_due:
            self._commit(self._checkpoint(list(self._positions)))

    def _shared_positions(self) -> dict[TopicPartition, int]:
        """What is safe to commit without checkpoints: everything processed and flushed, and,
        with the model sync, no further than each shard's last full delta (its changes up to
        there are all published). A partition moved after a crash then starts exactly where
        its previous owner's shared learning ends: it adopts every delta before that offset
        and re-learns the rest, instead of losing the part of a delta before the commit."""
        positions = dict(self._positions)
        if self._sync is None:
            return positions
        safe = {}
        for tp, position in positions.items():
            shard = self._sync.shards.get(tp)
            if shard is not None and (shard.events_pending or shard.state.heavy_pending):
                # Learning not (fully) published yet: no further than the last full delta.
                # (Nothing pending: every event learned is in full deltas, and the records
                # after them were dead letters, safe as they are.)
                position = min(position, shard.state.shared_upto + 1)
            if position > self._safe_from.get(tp, position - 1):
                safe[tp] = position
        return safe

    def _commit(self, safe: dict[TopicPartition, int]) -> None:
        assert self._source is not None
        if safe and self._source.commit(safe):
            self.summary.committed.update(safe)
            self._safe_from.update(safe)

    def _on_flush_wait(self, broker_connected: bool) -> None:
        """A flush is waiting for the broker: the loop is alive, and not ready while the
        broker is gone (the next poll restores readiness once it is back)."""
        self.health.tick()
        if not broker_connected:
            self._set_ready(False, "Kafka broker unreachable: outputs waiting to be flushed")

    def _flush_outputs(self) -> bool:
        """Wait until every output sent so far is acknowledged; re-send failed ones.

        While the broker is away this keeps retrying with backoff (readiness says why), so no
        offset is committed past an undelivered output. Returns False only when a stop was
        requested before the outputs were delivered (their events will be consumed again).
        """
        assert self._sink is not None
        backoff = Backoff(max_s=min(10.0, self.settings.reconnect_backoff_max_s))
        pending: list[DeliveryFailure] = []  # taken from the sink, not yet re-sent
        while True:
            try:
                self._sink.flush()
            except DeliveryError as exc:
                pending += self._sink.take_failures()
                self._set_ready(False, f"outputs undelivered: {exc}")
                if backoff.attempts == 0:
                    logger.warning(
                        "%d output record(s) not delivered (%s); re-sending until the broker "
                        "accepts them, no offsets are committed meanwhile",
                        len(pending),
                        exc,
                    )
            else:
                if not pending:
                    if backoff.attempts:
                        logger.info("outputs delivered after %d retries", backoff.attempts)
                    return True
            if self._stop_reason and backoff.attempts >= 3:
                logger.error(
                    "stopping with %d undelivered output(s): nothing more is checkpointed or "
                    "committed, their events will be consumed again",
                    len(pending),
                )
                self._unsafe = "outputs undelivered at stop"
                return False
            self.health.tick()
            backoff.sleep()
            while pending:
                failure = pending[0]
                try:
                    self._sink.send(failure.topic, failure.key, failure.value)
                except BrokerUnavailableError:
                    break  # keep the rest for the next round
                except OutputTooLargeError:
                    logger.error(
                        "an output to %s is now refused as too large; stopping without "
                        "committing past it",
                        failure.topic,
                    )
                    self._unsafe = "output refused"
                    self.request_stop("an output cannot be delivered")
                    return False
                pending.pop(0)

    def _checkpoint(
        self, partitions: list[TopicPartition], background: bool = False
    ) -> dict[TopicPartition, int]:
        """Write (``background``: start writing) a checkpoint of each partition; returns the
        offsets now covered by a written checkpoint (none of those started in the background)."""
        assert self.checkpoints is not None
        written: dict[TopicPartition, int] = {}
        if self._forks is not None and not background:
            # A save in flight ends first: files of a partition are written one at a time.
            self._collect_checkpoints(block=True, partitions=partitions)
        for tp in partitions:
            if tp not in self.shards or tp not in self._positions:
                continue
            if self._checkpointed.get(tp) == self._positions[tp]:
                # Nothing learned since the last checkpoint (e.g. shutdown, then revoke): a
                # second identical file would only push an older good one out of the rotation.
                written[tp] = self._positions[tp]
                continue
            if background:
                assert self._forks is not None
                if self._forks.busy(tp):
                    continue  # never two snapshots of a partition at once
                try:
                    pause = self._forks.start(tp, self.shards[tp], self._positions[tp])
                except OSError as exc:
                    self._checkpoint_failed(tp, f"cannot fork: {type(exc).__name__}: {exc}")
                else:
                    logger.debug("checkpoint of %s[%d] forked (pause %.1f ms)", *tp, pause * 1e3)
                continue
            try:
                self.checkpoints.save(tp, self.shards[tp], self._positions[tp])
            except OSError as exc:
                self._checkpoint_failed(tp, f"{type(exc).__name__}: {exc}")
                continue
            self._checkpoint_ok(tp, self._positions[tp])
            written[tp] = self._positions[tp]
        if written:
            self.metrics.checkpoint_last.set(time.time())
        self._since_checkpoint = 0
        self._last_checkpoint_at = time.monotonic()
        failing = self._failing_checkpoints()
        if failing:
            self._set_ready(False, failing)
        return written

    def _checkpoint_failed(self, tp: TopicPartition, error: str) -> None:
        logger.error("checkpoint of %s[%d] failed; offsets not committed: %s", *tp, error)
        self.metrics.checkpoints.labels("failed").inc()
        failures = self._checkpoint_failures.get(tp, (0, ""))[0] + 1
        self._last_checkpoint_error = f"checkpoint failed: {error}"
        self._checkpoint_failures[tp] = (failures, error)

    def _checkpoint_ok(self, tp: TopicPartition, next_offset: int) -> None:
        self.metrics.checkpoints.labels("ok").inc()
        self._checkpoint_failures.pop(tp, None)
        self._checkpointed[tp] = next_offset

    def _collect_checkpoints(
        self, block: bool = False, partitions: list[TopicPartition] | None = None
    ) -> None:
        """Record the forked saves that ended and commit the offsets each written file covers.

        Its outputs were flushed before the fork, so the offset is safe once the file exists.
        """
        if self._forks is None:
            return
        outcomes: list[SaveOutcome] = self._forks.poll(block, partitions)
        safe: dict[TopicPartition, int] = {}
        for outcome in outcomes:
            tp = outcome.tp
            if outcome.error is not None:
                self._checkpoint_failed(tp, outcome.error)
                continue
            logger.debug(
                "checkpoint of %s[%d] at offset %d written by a child in %.0f ms (pause %.1f ms)",
                *tp, outcome.next_offset, outcome.seconds * 1e3, outcome.pause_seconds * 1e3,
            )  # fmt: skip
            self._checkpoint_ok(tp, outcome.next_offset)
            if tp in self._positions:
                safe[tp] = outcome.next_offset
        if safe:
            self.metrics.checkpoint_last.set(time.time())
            if not self._unsafe and self._source is not None:
                self._commit(safe)
        if outcomes:
            failing = self._failing_checkpoints()
            if failing:
                self._set_ready(False, failing)

    def _failing_checkpoints(self) -> str:
        """Why readiness is false because checkpoints keep failing ("" while they do not)."""
        failing = sorted(
            (tp, n, error)
            for tp, (n, error) in self._checkpoint_failures.items()
            if n >= CHECKPOINT_FAILURES_UNREADY
        )
        if not failing:
            return ""
        unsafe = sum(
            self._positions.get(tp, 0) - self._safe_from.get(tp, 0) for tp, _, _ in failing
        )
        (topic, partition), n, error = failing[0]
        return (
            f"checkpoints failing ({len(failing)} partition(s); {topic}[{partition}]: {n} in a "
            f"row, last {error}); {unsafe} consumed record(s) not yet safe"
        )

    def _publish_metrics(self) -> None:
        assert self._sink is not None
        self._since_metrics = 0
        self._last_metrics_at = time.monotonic()
        if self.shards:
            record = merge_metrics([p.metrics_record() for p in self.shards.values()])
        elif self._source is not None and self._source.assignment():
            # Partitions but no event yet: a record of the empty state says so on time.
            record = self._new_pipeline().metrics_record()
        else:
            return
        record.worker_id = self.worker_id
        record.partitions = {}
        for topic, partition in sorted(self.shards):
            record.partitions.setdefault(topic, []).append(partition)
        record.drifts = self._pending_drifts
        record.promotions = self._pending_promotions
        record.reactions = self._pending_reactions
        self._pending_drifts, self._pending_promotions, self._pending_reactions = [], [], []
        if record.drifts:  # one line per metrics record, not one per detection
            logger.info(
                "drift detected %d time(s) since the last metrics record: %s",
                len(record.drifts),
                drift_counts(record.drifts),
            )
        self._sink.send(self.settings.metrics_topic, None, record.model_dump_json().encode())
        self.metrics.observe_accuracy(record)
        self._observe_serving(record)
        self.summary.metrics_records += 1
        self.summary.last_metrics = record

    def _observe_serving(self, record: MetricsRecord) -> None:
        version = max((p.updates.model_version for p in self.shards.values()), default=1)
        self.metrics.observe_serving(record.served, list(self.settings.models), version)

    def _maybe_refresh_gauges(self) -> None:
        now = time.monotonic()
        if now - self._last_gauges_at < 1.0 or self._source is None:
            return
        self._dead_letter_log.maybe_summarise()
        self._error_log.maybe_summarise()
        self._maybe_log_progress(now)
        self._last_gauges_at = now
        self.metrics.observe_lag(self._source.lag())
        if self._sync is not None:
            self._sync_metrics.observe(self._sync.stats)
            self._follow_partitions(self._source.partition_count(self.settings.events_topic))
        elif self.settings.model_sync == "auto" and not self._warned_unsynced:
            self._warn_if_partitions_added()
        if self.shards:
            record = merge_metrics([p.metrics_record() for p in self.shards.values()])
            self.metrics.observe_accuracy(record)
            self._observe_serving(record)

    def _maybe_log_progress(self, now: float) -> None:
        elapsed = now - self._progress_at
        if elapsed < self.PROGRESS_EVERY_S:
            return
        s = self.summary
        rate = (s.consumed - self._progress_consumed) / elapsed
        self._progress_at, self._progress_consumed = now, s.consumed
        if not s.consumed:
            return
        lag = sum(self._source.lag().values()) if self._source is not None else 0
        logger.info(
            "progress: consumed %s (%s/s over the last %.0fs), processed %s, dead-lettered %s, "
            "lag %s; %s",
            f"{s.consumed:,}",
            f"{rate:,.0f}",
            elapsed,
            f"{s.processed:,}",
            f"{s.dead_lettered:,}",
            f"{lag:,}",
            s.accuracy_line(self._served_name()),
        )

    def _served_name(self) -> str:
        """The served model (of the first shard when shards differ)."""
        for pipeline in self.shards.values():
            return pipeline.served
        return self.settings.recommender

    def _update_readiness(self) -> None:
        assert self._source is not None
        if self._source.broker_lost:
            ready, reason = False, "Kafka broker unreachable"
        elif not self._source.assignment():
            ready, reason = False, "no partitions assigned"
        elif failing := self._failing_checkpoints():
            ready, reason = False, failing
        elif self._sync is not None and self._sync.attaching:
            ready, reason = False, ATTACHING
        else:
            ready, reason = True, ""
        self._set_ready(ready, reason)

    def _set_ready(self, ready: bool, reason: str) -> None:
        """Readiness for /readyz and the ``stream_worker_ready`` gauge, always together."""
        self.health.set_ready(ready, reason)
        self.metrics.ready.set(1 if ready else 0)

    # --- rebalances --------------------------------------------------------------------------

    def _on_assigned(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Restore the shards of newly assigned partitions; returns offsets to seek to."""
        seek: dict[TopicPartition, int] = {}
        synced: dict[TopicPartition, Pipeline] = {}  # attached to the sync together
        for tp in partitions:
            if tp in self.shards or tp in self._synced_new:
                continue
            restored = self.checkpoints.load(tp) if self.checkpoints is not None else None
            if restored is None:
                if self._sync is not None:
                    synced[tp] = self._synced_new[tp] = self._new_pipeline()
                continue
            pipeline, offset = restored
            where = f"the checkpoint of {tp[0]}[{tp[1]}]"
            pipeline, plan = apply_settings(pipeline, self.settings, where)
            if plan.applied:
                logger.warning(
                    "settings changed since %s, applied: %s",
                    where,
                    "; ".join(str(c) for c in plan.applied),
                )
            self.shards[tp] = pipeline
            synced[tp] = pipeline
            self._positions[tp] = self._checkpointed[tp] = self._safe_from[tp] = offset
            seek[tp] = offset
            logger.info("restored %s[%d] from checkpoint at offset %d", *tp, offset)
        if self._sync is not None and synced:
            # The new shards catch up with the other shards' item state between polls (the
            # loop holds their events meanwhile, see _hold_attaching), not in this callback:
            # reading a long topic here would outlast the group's poll interval.
            self._sync.begin_attach(synced, self._new_shard_starts(synced))
            self._set_ready(False, ATTACHING)
        return seek

    def _hold_attaching(self, batch: list[RawRecord]) -> list[RawRecord]:
        """The records of ``batch`` whose shards are synced. The partitions of shards still
        catching up are paused, and set back to their first record held here, so those
        events are fetched again once the shard holds the item state it must learn on; the
        paused partitions whose shards are synced are resumed."""
        assert self._sync is not None and self._source is not None
        held = self._sync.attaching
        pause, resume = held - self._paused, self._paused - held
        if pause:
            self._source.pause(pause)
            self._paused |= pause
        if resume:
            self._source.resume(resume)
            self._paused -= resume
        first: dict[TopicPartition, int] = {}
        kept = []
        for record in batch:
            tp = (record.topic, record.partition)
            if tp in held:
                first.setdefault(tp, record.offset)
            else:
                kept.append(record)
        for tp, offset in first.items():
            self._source.seek(tp, offset)
        return kept

    def _catch_up(self, busy: bool) -> None:
        """Read the model-updates topic for the attaching shards for a slice of time (short
        while other partitions have events to learn), then resume the partitions synced."""
        assert self._sync is not None
        # While other partitions have events, about as long as their last batch took (the
        # catch-up takes about half the loop), within ATTACH_SLICE_S; longer when idle.
        slice_s = min(self.ATTACH_SLICE_S, max(0.01, self._batch_seconds))
        synced = self._sync.catch_up(slice_s if busy else 5 * self.ATTACH_SLICE_S)
        resume = self._paused.intersection(synced)
        if resume and self._source is not None:
            self._source.resume(resume)
        self._paused -= resume
        if synced and not self._sync.attaching:
            logger.info(
                "model sync: %s synced with the other shards' item state (%.1fs)",
                ", ".join(f"{t}[{p}]" for t, p in sorted(synced)),
                self._sync.last_attach_s,
            )
            if self.health.reason == ATTACHING:
                self._set_ready(True, "")

    def _new_shard_starts(
        self, synced: dict[TopicPartition, Pipeline]
    ) -> dict[TopicPartition, int]:
        """Where each new shard's first event will come from (the group's committed offset):
        what a previous owner of the partition published before it is that shard's to apply
        (:meth:`WorkerSync.attach_all`). Nothing committed: the start of the topic with
        ``auto_offset_reset=earliest``, its end (everything published before) with latest."""
        new = [tp for tp in synced if tp in self._synced_new]
        if not new or self._source is None:
            return {}
        committed = self._source.committed(new)
        nothing = 0 if self.settings.auto_offset_reset == "earliest" else _END
        return {tp: nothing if committed.get(tp) is None else int(committed[tp] or 0) for tp in new}

    def _on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Make the revoked partitions' work safe, then drop their shards."""
        if self._sink is None or self._source is None or self._unsafe:
            if self._unsafe:
                logger.warning("not committing revoked partitions: %s", self._unsafe)
            self._drop(partitions)
            return
        try:
            if self._sync is not None:
                for tp in partitions:
                    if tp in self._sync.shards:
                        self._sync.publish(tp, full=True)  # nothing may wait for a next delta
            self._sink.flush()
            if self.checkpoints is not None:
                safe = self._checkpoint([tp for tp in partitions if tp in self._positions])
            else:
                safe = {tp: self._positions[tp] for tp in partitions if tp in self._positions}
            self._commit(safe)
        except Exception:
            logger.exception("could not make revoked partitions safe; they will be re-consumed")
        self._drop(partitions)

    def _drop(self, partitions: list[TopicPartition]) -> None:
        if self._forks is not None:
            # No child may still write a partition this worker no longer owns.
            self._collect_checkpoints(block=True, partitions=partitions)
        for tp in partitions:
            self._checkpointed.pop(tp, None)
            self._checkpoint_failures.pop(tp, None)
            self.shards.pop(tp, None)
            self._synced_new.pop(tp, None)
            self._paused.discard(tp)
            if self._sync is not None:
                self._sync.detach(tp)
            position = self._positions.pop(tp, None)
            safe_from = self._safe_from.pop(tp, None)
            if position is not None and safe_from is not None:
                self.summary.uncommitted += max(0, position - safe_from)
        self.metrics.forget_partitions(partitions)

    # --- model sync (stream.sync) ---------------------------------------------------------

    def _start_sync(self) -> None:
        """The model-updates reader (each attach reads the topic from its beginning); publish
        through the sink."""
        s, sink = self.settings, self._sink
        assert sink is not None
        self._sync_reader = TopicReader(
            s, s.model_updates_topic, from_beginning=True, topic_wait_s=s.broker_wait_seconds
        )

        def send(key: bytes, value: bytes) -> None:
            sink.send(s.model_updates_topic, key, value)

        self._sync = WorkerSync(s, self._sync_reader, send)
        self._sync.on_lost = self._on_lost_delta

    def _on_lost_delta(self, reason: str) -> None:
        """A model delta was collected and never sent: its changes exist nowhere else, so a
        commit or checkpoint past its events (in the loop, at a revoke, at the stop) would
        lose them for every other shard. Nothing is made safe from now on, and the worker
        stops (its uncommitted events make the exit code 1)."""
        logger.error("%s: stopping without committing or checkpointing past it", reason)
        self._unsafe = reason
        self._set_ready(False, reason)
        self.request_stop("a model delta could not be sent")

    def _ensure_updates_topic(self) -> bool:
        """Create the model-updates topic for STREAM_MODEL_SYNC=auto. A cluster that refuses
        (no create ACL, auto-creation off) leaves the sync off with an error line, rather than
        stopping a deployment that ran before the sync was on by default."""
        s = self.settings
        try:
            ensure_topics(
                s,
                {s.model_updates_topic: 1},
                timeout_s=s.broker_wait_seconds,
                wait_setting="STREAM_BROKER_WAIT_SECONDS",
            )
        except TopicError as exc:
            logger.error(
                "model sync off: %s. Each of the events topic's partitions learns alone; "
                "create STREAM_MODEL_UPDATES_TOPIC (%s, one partition) to share item state, "
                "or set STREAM_MODEL_SYNC=false",
                exc,
                s.model_updates_topic,
            )
            return False
        return True

    def _warn_if_partitions_added(self) -> None:
        """With STREAM_MODEL_SYNC=auto decided off (one partition at start), say once that
        partitions added since are separate models until a restart turns the sync on."""
        assert self._source is not None
        count = self._source.partition_count(self.settings.events_topic)
        if count is not None and sync_enabled(self.settings, count):
            self._warned_unsynced = True
            logger.warning(
                "events topic %s now has %d partitions: each learns alone until the workers "
                "restart (STREAM_MODEL_SYNC=auto decides at start; set STREAM_MODEL_SYNC=true "
                "to share item state from the first partition on)",
                self.settings.events_topic,
                count,
            )

    def _follow_partitions(self, count: int | None) -> None:
        """Size the light-delta interval for ``count`` partitions of the events topic (at
        start, then as the consumer's metadata sees partitions added: with
        STREAM_MODEL_SYNC_EVENTS=auto the interval follows the shard count)."""
        if self._sync is None or not count or count == self._sync_partitions:
            return
        every = light_interval(self.settings, count)
        if self._sync_partitions is not None and every != self._sync.every_events:
            logger.warning(
                "events topic %s: %d partitions, not %d: a light delta every %d events per "
                "shard from now on (was %d)",
                self.settings.events_topic,
                count,
                self._sync_partitions,
                every,
                self._sync.every_events,
            )
        elif self._sync_partitions is None:
            logger.info(
                "model sync: %d partitions, a delta every %d events per shard (every %dth full)",
                count,
                every,
                self.settings.model_sync_full_every,
            )
        self._sync_partitions = count
        self._sync.every_events = every
