"""The worker's side of the sync: publish each shard's deltas, apply everyone else's.

No Kafka here: the worker injects a reader of the model-updates topic (every partition,
from the beginning) and a ``send(key, value)`` that goes through its record sink, so a delta
collected before a checkpoint is flushed before that checkpoint is written (the worker's
flush -> checkpoint -> commit order).

Exactly once, across restarts:

- *Applied deltas*: each shard's :class:`~stream.sync.SyncState` (in its checkpoint) holds,
  per source shard, the last source offset applied; the topic is read from its beginning
  and anything at or before it is dropped as a duplicate.
- *Own deltas*: a shard restored from a checkpoint re-learns the events after it. The deltas
  it published after that checkpoint are already on the topic: their boundaries (last source
  offsets) are replayed, the re-learned changes collected at each one and dropped, not sent
  again; the triggers resume after the last one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from stream.core import Pipeline
from stream.settings import StreamSettings
from stream.sync.delta import DeltaError, ShardDelta
from stream.sync.interval import light_interval
from stream.sync.shard import ShardSync

__all__ = ["SyncStats", "UpdatesReader", "WorkerSync"]

logger = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


class UpdatesReader(Protocol):
    """What the sync needs of a topic reader (:class:`stream.kafka.reader.TopicReader`)."""

    def poll(self, timeout_ms: int | None = None) -> Sequence[_Record]: ...

    def caught_up(self) -> bool: ...

    def highwaters(self) -> dict[int, int]: ...

    def behind(self, marks: dict[int, int]) -> bool: ...


class _Record(Protocol):
    @property
    def value(self) -> bytes | None: ...


@dataclass
class SyncStats:
    """Running totals, for Prometheus."""

    published: int = 0
    published_bytes: int = 0
    received: int = 0
    received_bytes: int = 0
    applied: int = 0
    duplicates: int = 0
    invalid: int = 0
    replayed: int = 0
    lag_seconds: float = 0.0  # sender's collect -> applied here, of the last delta applied
    lag_events: int = 0  # events learned here and not yet shared (highest over shards)


class WorkerSync:
    """Every shard of one worker, syncing through the model-updates topic."""

    def __init__(
        self,
        settings: StreamSettings,
        reader: UpdatesReader,
        send: Callable[[bytes, bytes], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.every_events = light_interval(settings, settings.events_partitions)  # see worker
        self.every_s = settings.model_sync_ms / 1000
        self.full_every = settings.model_sync_full_every
        self.reader, self.send, self.clock = reader, send, clock
        self.shards: dict[TopicPartition, ShardSync] = {}
        self.stats = SyncStats()
        self._log: list[ShardDelta] = []  # every delta read: a shard attached later applies them
        # (last offset, full) of the deltas seen per source
        self._boundaries: dict[TopicPartition, list[tuple[int, bool]]] = {}
        self._replay: dict[TopicPartition, list[tuple[int, bool]]] = {}
        self._last_sent: dict[TopicPartition, float] = {}

    # --- shards -------------------------------------------------------------------------

    def catch_up(self, timeout_s: float = 30.0) -> bool:
        """Read the topic up to where it ended when the reader started."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll(timeout_ms=100)
            if self.reader.caught_up():
                return True
            if time.monotonic() >= deadline:
                logger.warning("model updates: not caught up after %gs; going on", timeout_s)
                return False

    def attach(self, tp: TopicPartition, pipeline: Pipeline) -> None:
        """Sync ``pipeline``, the shard of ``tp`` (new or restored): it applies every delta
        it does not hold yet and replays the boundaries of its own published ones."""
        self.catch_up()
        # And up to the latest high watermark: the deltas a killed owner of this partition
        # published are on the topic by now (its session timed out before the reassignment).
        # (Up to the marks of a fetch made now: the other shards keep publishing.)
        deadline = time.monotonic() + 10.0
        self.poll(timeout_ms=100)
        marks = self.reader.highwaters()
        while self.reader.behind(marks) and time.monotonic() < deadline:
            self.poll(timeout_ms=100)
        shard = ShardSync(pipeline, *tp, full_every=self.full_every)
        self.shards[tp] = shard
        for delta in self._log:
            self._apply(shard, delta)
        done = shard.state.published
        # (A full delta closing the checkpoint's last light one ends at the same offset.)
        closing = shard.state.heavy_pending
        replay = sorted(
            b
            for b in self._boundaries.get(tp, ())
            if b[0] > done or (closing and b[0] == done and b[1])
        )
        # A delta published after the checkpoint without a new event in between (the time
        # trigger, a shutdown) holds exactly what the checkpoint has pending: drop it now.
        learned = shard.state.last_offset
        upto = learned if learned is not None else done
        while replay and replay[0][0] <= upto:
            if learned is not None and replay[0][0] < learned:
                logger.error(
                    "%s[%d]: a delta ending at %d was published after a checkpoint that had "
                    "learned up to %d",
                    *tp,
                    replay[0][0],
                    learned,
                )
            shard.collect_one(full=replay[0][1])
            self.stats.replayed += 1
            replay.pop(0)
        if replay:
            self._replay[tp] = replay
            logger.info(
                "%s[%d]: %d delta(s) published after its checkpoint; re-learning up to "
                "offset %d without publishing them again",
                *tp,
                len(replay),
                replay[-1][0],
            )
        self._last_sent[tp] = self.clock()

    def detach(self, tp: TopicPartition) -> None:
        self.shards.pop(tp, None)
        self._replay.pop(tp, None)

    # --- per event and per poll ---------------------------------------------------------

    def after_one(self, tp: TopicPartition, offset: int) -> None:
        """The shard of ``tp`` learned the event at ``offset``: share when due."""
        shard = self.shards.get(tp)
        if shard is None:
            return
        shard.note_one(offset)
        replay = self._replay.get(tp)
        if replay:
            if offset >= replay[0][0]:
                if offset > replay[0][0]:
                    logger.error(
                        "%s[%d]: re-learning passed the boundary %d of a published delta "
                        "(at %d): its changes are shared again",
                        *tp,
                        replay[0][0],
                        offset,
                    )
                shard.collect_one(full=replay[0][1])  # on the topic already
                self.stats.replayed += 1
                replay.pop(0)
                while replay and replay[0][0] <= offset:  # a full one closing a light one
                    shard.collect_one(full=replay[0][1])
                    self.stats.replayed += 1
                    replay.pop(0)
                if not replay:
                    del self._replay[tp]
            return
        if shard.events_pending >= self.every_events:
            self.publish(tp)

    def poll(self, timeout_ms: int = 0) -> int:
        """Apply what the other shards published; share the shards whose interval is over.
        Returns the records read."""
        records = self.reader.poll(timeout_ms)
        for record in records:
            if record.value is None:
                continue
            self.stats.received += 1
            self.stats.received_bytes += len(record.value)
            try:
                delta = ShardDelta.decode(record.value)
            except DeltaError as exc:
                self.stats.invalid += 1
                logger.warning("model updates: dropped an undecodable record: %s", exc)
                continue
            self._log.append(delta)
            self._boundaries.setdefault(delta.source, []).append((delta.last_offset, delta.full))
            for shard in self.shards.values():
                self._apply(shard, delta)
        now = self.clock()
        lag = 0
        for tp, shard in self.shards.items():
            if tp in self._replay:
                continue
            if not shard.events_pending and not shard.state.heavy_pending:
                continue
            if now - self._last_sent.get(tp, now) >= self.every_s:
                # A quiet shard shares everything: what waits for a full delta too.
                self.publish(tp, full=True)
            lag = max(lag, shard.events_pending)
        self.stats.lag_events = lag
        return len(records)

    def publish(self, tp: TopicPartition, full: bool | None = None) -> None:
        """Collect and send the shard's delta now (when it learned anything)."""
        shard = self.shards[tp]
        self._last_sent[tp] = self.clock()
        delta = shard.collect_one(full)
        if delta is None:
            return
        delta = ShardDelta(
            delta.source_topic,
            delta.source_partition,
            delta.first_offset,
            delta.last_offset,
            delta.events,
            delta.models,
            self.clock(),
            delta.full,
        )
        value = delta.encode()
        self.send(f"{tp[0]}:{tp[1]}".encode(), value)
        self.stats.published += 1
        self.stats.published_bytes += len(value)

    def publish_all(self) -> None:
        """Every shard's pending changes, now (before a final or revoke checkpoint)."""
        for tp in list(self.shards):
            if tp not in self._replay:
                self.publish(tp, full=True)

    def _apply(self, shard: ShardSync, delta: ShardDelta) -> None:
        try:
            outcome = shard.apply_one(delta)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            # A delta that decodes but does not fit the models (a foreign or corrupt writer):
            # never a crash loop on a topic read from its beginning; counted and logged loudly,
            # since the models it reached before failing may hold part of it.
            self.stats.invalid += 1
            logger.error(
                "model updates: a delta from %s:%d (offsets %d-%d) could not be applied, its "
                "models may hold part of it: %r",
                delta.source_topic,
                delta.source_partition,
                delta.first_offset,
                delta.last_offset,
                exc,
            )
            return
        if outcome == "applied":
            self.stats.applied += 1
            if delta.created:
                self.stats.lag_seconds = max(0.0, self.clock() - delta.created)
        elif outcome == "duplicate":
            self.stats.duplicates += 1
