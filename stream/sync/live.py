"""The worker's side of the sync: publish each shard's deltas, apply everyone else's.

No Kafka here: the worker injects a reader of the model-updates topic (every partition,
from the beginning) and a ``send(key, value)`` that goes through its record sink, so a delta
collected before a checkpoint is flushed before that checkpoint is written (the worker's
flush -> checkpoint -> commit order).

Exactly once, across restarts:

- *Applied deltas*: each shard's :class:`~stream.sync.SyncState` (in its checkpoint) holds,
  per source shard, the last source offset applied; the topic is read from its beginning
  and anything at or before it is dropped as a duplicate.
- *Shards attached later* (a rebalance): no delta is kept in memory. Attaching rewinds the
  reader and reads the topic again from its beginning; a record is offered to each shard once
  (per shard, the next offset of each model-updates partition it was offered), so the shards
  already attached skip the re-read records (counted as ``reread``, not as duplicates).
- *Own deltas*: a shard restored from a checkpoint re-learns the events after it. The deltas
  it published after that checkpoint are already on the topic: their boundaries (last source
  offsets) are replayed, the re-learned changes collected at each one and dropped, not sent
  again; the triggers resume after the last one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from stream.core import Pipeline
from stream.settings import StreamSettings
from stream.sync.delta import DeltaError, ShardDelta
from stream.sync.interval import light_interval
from stream.sync.shard import ShardSync, SyncState

__all__ = ["SyncError", "SyncStats", "UpdatesReader", "WorkerSync"]

logger = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


class SyncError(RuntimeError):
    """The sync cannot bring a shard up to date without risking its exactly-once state."""


class UpdatesReader(Protocol):
    """What the sync needs of a topic reader (:class:`stream.kafka.reader.TopicReader`)."""

    def poll(self, timeout_ms: int | None = None) -> Sequence[_Record]: ...

    def caught_up(self) -> bool: ...

    def highwaters(self) -> dict[int, int]: ...

    def behind(self, marks: dict[int, int]) -> bool: ...

    def rewind(self, offsets: dict[int, int] | None = None) -> None: ...


class _Record(Protocol):
    @property
    def value(self) -> bytes | None: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


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
    # Deltas of another events topic (another deployment sharing the model-updates topic).
    foreign: int = 0
    lag_seconds: float = 0.0  # sender's collect -> applied here, of the last delta applied
    lag_events: int = 0  # events learned here and not yet shared (highest over shards)
    # Records read again from the topic's beginning to bring a shard attached later up to date
    # (the shards attached before skip them: not duplicates).
    reread: int = 0
    reread_bytes: int = 0


def _offered_of(state: SyncState, topic: str) -> dict[int, int]:
    """The shard's record, in its :class:`SyncState` (so in its checkpoint), of the
    model-updates ``topic``'s records it was offered: partition -> the next offset. The same
    dict is kept up to date as records are offered (an older state starts one)."""
    offered = getattr(state, "offered", None)
    if not isinstance(offered, dict):
        offered = state.offered = {}
    if getattr(state, "replaying", False):
        # Checkpointed while it replayed its own deltas: those lie past its mark, and the
        # replay must be planned again from them.
        offered.clear()
    return offered.setdefault(topic, {})


def _lowest(offered: list[dict[int, int]]) -> dict[int, int]:
    """Per partition, the lowest next offset of all ``offered`` (a partition missing from one
    of them: from its beginning, so left out)."""
    if not offered or not all(offered):
        return {}
    common = set.intersection(*(set(o) for o in offered))
    return {p: min(o[p] for o in offered) for p in common}


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
        self.evidence = settings.model_sync_evidence  # decisions on every shard's evaluations
        # An attach runs in the rebalance callback: it must end well within the group's
        # max.poll.interval.ms, or this member is dropped from the group mid-attach.
        self.attach_budget_s = settings.max_poll_interval_ms / 1000 / 2
        self.reader, self.send, self.clock = reader, send, clock
        self.events_topic, self.group = settings.events_topic, settings.group_id
        self.updates_topic = settings.model_updates_topic
        self.shards: dict[TopicPartition, ShardSync] = {}
        self.stats = SyncStats()
        # Per model-updates partition, the offset after the last record read (first reads
        # versus re-reads); per shard, the same for what it was offered. Nothing per delta.
        self._read_upto: dict[int, int] = {}
        self._offered: dict[TopicPartition, dict[int, int]] = {}
        # While shards attach: (last offset, full) of each one's own deltas after its
        # checkpoint, from the re-read (what it replays); empty otherwise.
        self._boundaries: dict[TopicPartition, list[tuple[int, bool]]] = {}
        self._replay: dict[TopicPartition, list[tuple[int, bool]]] = {}
        self._last_sent: dict[TopicPartition, float] = {}
        # The shards catching up (begin_attach .. catch_up), and that catch-up's progress.
        self._attaching: dict[TopicPartition, ShardSync] = {}
        self._attach_marks: dict[int, int] | None = None
        self._attach_started, self._attach_reread, self._rewound = 0.0, 0, False
        self._attach_polled = False  # a poll since the last begin_attach (fresh marks)
        self._marks_checked = False  # restored shards' marks checked against the topic's end
        self.last_attach_s = 0.0  # seconds the last attach took, from its begin_attach
        # Why a delta was collected and never queued (publish's send raised), or None: from
        # then on, nothing past it is safe. ``on_lost`` hears it at once (the worker commits
        # nothing more and stops); ``lost_at``: the shard and the delta's first offset.
        self.lost: str | None = None
        self.lost_at: tuple[TopicPartition, int] | None = None
        self.on_lost: Callable[[str], None] | None = None

    # --- shards -------------------------------------------------------------------------

    def attach(self, tp: TopicPartition, pipeline: Pipeline, start: int | None = None) -> None:
        """Sync ``pipeline``, the shard of ``tp`` (new or restored): :meth:`attach_all`."""
        self.attach_all({tp: pipeline}, {} if start is None else {tp: start})

    def attach_all(
        self,
        pipelines: Mapping[TopicPartition, Pipeline],
        starts: Mapping[TopicPartition, int] | None = None,
        deadline: float | None = None,
    ) -> None:
        """Sync each pipeline, the shard of its partition (new or restored), at once:
        :meth:`begin_attach`, then :meth:`catch_up` until they are synced.

        Raises :class:`SyncError` when the topic cannot be read to its end by ``deadline``
        (``time.monotonic()``; default: :attr:`attach_budget_s`, half of
        ``STREAM_MAX_POLL_INTERVAL_MS``, from now): going on would leave replays unplanned
        and apply deltas twice. (The worker does not wait: it catches up between polls.)
        """
        if not pipelines:
            return
        started = time.monotonic()
        deadline = started + self.attach_budget_s if deadline is None else deadline
        self.begin_attach(pipelines, starts)
        try:
            while self._attaching:
                if time.monotonic() >= deadline:
                    raise SyncError(
                        "model updates: the topic was not read to its end within "
                        f"{self.attach_budget_s:g}s (half of STREAM_MAX_POLL_INTERVAL_MS): a "
                        "shard attached now would apply deltas twice; raise "
                        "STREAM_MAX_POLL_INTERVAL_MS or shorten the topic's retention"
                    )
                self.catch_up(0.0)
        except BaseException:
            for tp in list(self._attaching):  # not synced: its replay is not planned
                self.detach(tp)
            raise

    def begin_attach(
        self,
        pipelines: Mapping[TopicPartition, Pipeline],
        starts: Mapping[TopicPartition, int] | None = None,
    ) -> None:
        """Start syncing each pipeline, the shard of its partition (new or restored): the
        topic is read again from its beginning, once for all of them (and for any still
        attaching); each applies every delta it does not hold yet and replays the
        boundaries of its own published ones. They are synced once :meth:`catch_up` has
        read to the topic's end; until then they must learn nothing (the worker holds their
        events) and publish nothing.

        ``starts`` gives, for a *new* shard of a partition that may have had an owner before
        (no checkpoint here), the source offset its first event will come from (the group's
        committed offset): the previous owner's deltas ending before it are applied as any
        other shard's, those at or after it are replayed (their events are learned again).
        """
        attaching = {
            tp: ShardSync(pipeline, *tp, full_every=self.full_every, evidence=self.evidence)
            for tp, pipeline in pipelines.items()
        }
        if not attaching:
            return
        for tp, shard in attaching.items():
            self.detach(tp)
            self.shards[tp] = shard
            # What a restored shard was offered before its checkpoint (its state holds it):
            # the re-read starts there instead of at the topic's beginning. New: everything.
            self._offered[tp] = _offered_of(shard.state, self.updates_topic)
            self._boundaries[tp] = []
            if starts is not None and tp in starts:
                shard.adopt_before = starts[tp]
        if not self._attaching:
            self._attach_started, self._attach_reread = time.monotonic(), self.stats.reread
        self._attaching.update(attaching)
        # From the lowest offset any shard still needs (the shards attached before were
        # offered everything read so far, so never past the reader's position): with
        # checkpoints, the oldest checkpoint's, not the topic's beginning.
        start = _lowest(list(self._offered.values()))
        self._rewound = bool(self._read_upto) or bool(start)
        if self._rewound:
            self.reader.rewind(start)  # the shards attached before skip what they were offered
        self._attach_marks, self._attach_polled, self._marks_checked = None, False, False

    @property
    def attaching(self) -> frozenset[TopicPartition]:
        """The partitions whose shards are still catching up (:meth:`begin_attach`)."""
        return frozenset(self._attaching)

    def catch_up(self, budget_s: float) -> list[TopicPartition]:
        """Read the topic for the attaching shards for about ``budget_s`` seconds (at least
        one poll): up to where it ended at the (re)start of the reader, then up to the high
        watermarks of a fetch made after that (the deltas a killed owner of an attaching
        partition published are on the topic by now: its session timed out before the
        reassignment; the other shards keep publishing, so not up to a moving end). Returns
        the partitions synced by this call (all attaching ones at once, or none)."""
        if not self._attaching:
            return []
        until, polled = time.monotonic() + budget_s, False
        while True:
            if self._attach_polled and not self._marks_checked:
                self._drop_stale_marks()
            if self._attach_marks is None and self._attach_polled and self.reader.caught_up():
                self._attach_marks = self.reader.highwaters()
            if self._attach_marks is not None and not self.reader.behind(self._attach_marks):
                return self._finish_attach()
            if polled and time.monotonic() >= until:
                return []
            self.poll(timeout_ms=100)
            polled = self._attach_polled = True

    def _drop_stale_marks(self) -> None:
        """A restored shard's mark past the topic's end (the topic was deleted and created
        again since its checkpoint) would skip every record below it: such a shard reads from
        the beginning instead (the dedupe by source offsets drops what it holds)."""
        high = self.reader.highwaters()
        if not high:
            return  # no fetch answered yet
        self._marks_checked = True
        stale = [
            tp
            for tp in self._attaching
            if any(o > high.get(p, o) for p, o in self._offered[tp].items())
        ]
        if not stale:
            return
        logger.warning(
            "model updates: %s read the topic up to %s before their checkpoints, past its end "
            "now %s (a new topic of the same name?): reading it from its beginning",
            ", ".join(f"{t}[{p}]" for t, p in stale),
            [dict(self._offered[tp]) for tp in stale],
            high,
        )
        for tp in stale:
            self._offered[tp].clear()
        self.reader.rewind(_lowest(list(self._offered.values())))
        self._attach_marks, self._attach_polled = None, False

    def _finish_attach(self) -> list[TopicPartition]:
        self.last_attach_s = time.monotonic() - self._attach_started
        attaching, self._attaching = self._attaching, {}
        boundaries, self._boundaries = self._boundaries, {}
        for shard in attaching.values():
            shard.adopt_before = None
        if self._rewound:
            logger.info(
                "model updates: read the topic again from its beginning for %s (%d record(s) "
                "read before, %.1fs)",
                ", ".join(f"{t}[{p}]" for t, p in attaching),
                self.stats.reread - self._attach_reread,
                time.monotonic() - self._attach_started,
            )
        for tp, shard in attaching.items():
            self._replay_own(tp, shard, boundaries[tp])
        return list(attaching)

    def _replay_own(
        self, tp: TopicPartition, shard: ShardSync, boundaries: list[tuple[int, bool]]
    ) -> None:
        """Plan the replay of the shard's own deltas published after its checkpoint."""
        replay = sorted(boundaries)
        # A delta published after the checkpoint without a new event in between (the time
        # trigger, a shutdown) holds exactly what the checkpoint has pending: drop it now.
        learned = shard.state.last_offset
        upto = learned if learned is not None else shard.state.published
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
        # A checkpoint taken before the replay ends must not skip these own deltas at its
        # restore (its offered mark is past them): it reads from the beginning instead.
        shard.state.replaying = bool(replay)
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
        self._attaching.pop(tp, None)
        self._boundaries.pop(tp, None)
        self._replay.pop(tp, None)
        self._offered.pop(tp, None)
        self._last_sent.pop(tp, None)

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
                    shard.state.replaying = False
            return
        if shard.events_pending >= self.every_events:
            self.publish(tp)

    def poll(self, timeout_ms: int = 0) -> int:
        """Apply what the other shards published; share the shards whose interval is over.
        Returns the records read (none while no shard is attached: the first one attached
        reads the topic from its beginning anyway)."""
        if not self.shards:
            self.stats.lag_events = 0
            return 0
        records = self.reader.poll(timeout_ms)
        for record in records:
            self._read_one(record)
        now = self.clock()
        lag = 0
        for tp, shard in self.shards.items():
            if tp in self._replay or tp in self._boundaries:  # (attaching: replay not planned)
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
        """Collect and send the shard's delta now (when it learned anything; never while it
        catches up: it has learned nothing, and what its checkpoint left pending may be on
        the topic already)."""
        if tp in self._attaching or tp in self._replay:
            return  # (replaying: what it learned is in its deltas on the topic already)
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
            self.group,
        )
        value = delta.encode()
        try:
            self.send(f"{tp[0]}:{tp[1]}".encode(), value)
        except BaseException as exc:
            # Collected (the shard's pending changes are cleared, its shared mark moved past
            # them) and not queued: nothing may be committed or checkpointed past it from now
            # on, or those changes are lost to every other shard (the worker stops unsafe).
            self.lost = (
                f"a model delta of {tp[0]}[{tp[1]}] (offsets {delta.first_offset}-"
                f"{delta.last_offset}) could not be sent: {type(exc).__name__}: {exc}"
            )
            self.lost_at = (tp, delta.first_offset)
            if self.on_lost is not None:
                self.on_lost(self.lost)
            raise
        self.stats.published += 1
        self.stats.published_bytes += len(value)

    def publish_all(self) -> None:
        """Every shard's pending changes, now (before a final or revoke checkpoint)."""
        for tp in list(self.shards):
            if tp not in self._replay:
                self.publish(tp, full=True)

    def _read_one(self, record: _Record) -> None:
        """Offer one record to every shard that was not offered it yet."""
        value = record.value
        if value is None:
            return
        partition, offset = record.partition, record.offset
        first = offset >= self._read_upto.get(partition, 0)
        if first:
            self._read_upto[partition] = offset + 1
            self.stats.received += 1
            self.stats.received_bytes += len(value)
        else:
            self.stats.reread += 1
            self.stats.reread_bytes += len(value)
        offered_to: list[tuple[TopicPartition, ShardSync]] = []
        for tp, shard in self.shards.items():
            offered = self._offered.setdefault(tp, {})
            if offset >= offered.get(partition, 0):
                offered[partition] = offset + 1
                offered_to.append((tp, shard))
        if not offered_to:
            return
        try:
            delta = ShardDelta.decode(value)
        except DeltaError as exc:
            if first:  # (counted and logged once, not again at each re-read)
                self.stats.invalid += 1
                logger.warning("model updates: dropped an undecodable record: %s", exc)
            return
        foreign = delta.source_topic != self.events_topic or (
            delta.group and delta.group != self.group
        )
        if foreign:
            if first:
                if not self.stats.foreign:
                    logger.warning(
                        "model updates: the topic carries deltas of events topic %r (group "
                        "%r), not %r (group %r): another deployment shares it (give each its "
                        "own STREAM_MODEL_UPDATES_TOPIC); they are skipped",
                        delta.source_topic,
                        delta.group,
                        self.events_topic,
                        self.group,
                    )
                self.stats.foreign += 1
            return
        for tp, shard in offered_to:
            boundaries = self._boundaries.get(tp)
            adopt = shard.adopt_before
            if adopt is not None and delta.source == tp and delta.last_offset < adopt:
                pass  # a previous owner's, before this shard's start: applied (ShardSync)
            elif boundaries is not None and delta.source == tp:
                # Its own deltas after its checkpoint (a full one closing the checkpoint's
                # last light one ends at the same offset).
                state = shard.state
                done = state.published
                if delta.last_offset > done or (
                    state.heavy_pending and delta.last_offset == done and delta.full
                ):
                    boundaries.append((delta.last_offset, delta.full))
            self._apply(shard, delta)

    def _apply(self, shard: ShardSync, delta: ShardDelta) -> None:
        try:
            outcome = shard.apply_one(delta)
        except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as exc:
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
