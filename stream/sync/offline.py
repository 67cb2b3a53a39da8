"""Shards in one process: ``stream evaluate --partitions`` and the parity tests.

The events are split as Kafka splits the events topic (kafka-python's default partitioner on
the user id, :func:`stream.kafka.partitioner.partition_of`), each shard runs its own
:class:`~stream.core.Pipeline` as the worker runs one per partition, and every
``sync_events`` events a shard learned its delta goes through the worker's encoding and is
applied by every shard (its own sender skips it), with no transport delay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from stream.core import Pipeline, StepResult
from stream.events import Event, Source
from stream.kafka.partitioner import partition_of
from stream.sync.delta import ShardDelta
from stream.sync.shard import ShardSync

__all__ = ["LocalShards"]

logger = logging.getLogger(__name__)


class LocalShards:
    """``partitions`` pipelines fed by the user-key partitioner, sharing item state.

    Examples
    --------
    >>> from stream.settings import StreamSettings
    >>> s = StreamSettings(models=("popularity", "knn"), recommender="knn")
    >>> shards = LocalShards(lambda: Pipeline.from_settings(s), 2, sync_events=1)
    >>> for t, (u, i) in enumerate([("ann", "x"), ("bob", "y"), ("cat", "z")]):
    ...     _ = shards.process_one(Event(user_id=u, item_id=i, event_type="click", timestamp=t))
    >>> shards.share_all()
    >>> [p.models["popularity"].n_items for p in shards.pipelines]
    [3, 3]
    """

    def __init__(
        self,
        new_pipeline: Callable[[], Pipeline],
        partitions: int,
        sync_events: int,
        topic: str = "file",
        full_every: int = 1,
        evidence: bool = False,
    ) -> None:
        if partitions < 1 or sync_events < 0:
            raise ValueError("partitions must be >= 1 and sync_events >= 0")
        self.topic = topic
        self.partitions = partitions
        self.sync_events = sync_events
        # ``evidence``: decide promotions and drift reactions on every shard's evaluations
        # (STREAM_MODEL_SYNC_EVIDENCE; only with a sync and someone to share with).
        evidence = evidence and sync_events > 0 and partitions > 1
        self.shards = [
            ShardSync(new_pipeline(), topic, p, full_every, evidence) for p in range(partitions)
        ]
        self.offsets = [0] * partitions
        self.delta_records = 0
        self.delta_bytes = 0

    @property
    def pipelines(self) -> list[Pipeline]:
        return [s.pipeline for s in self.shards]

    def process_one(self, event: Event) -> StepResult:
        """Route ``event`` to its user's shard, process it there, share when due."""
        p = partition_of(event.user_id, self.partitions, self.topic)
        shard, offset = self.shards[p], self.offsets[p]
        result = shard.pipeline.process_one(event, Source(self.topic, p, offset))
        shard.note_one(offset)
        self.offsets[p] = offset + 1
        if self.sync_events and shard.events_pending >= self.sync_events:
            self.share(shard)
        return result

    def share(self, sender: ShardSync, full: bool | None = None) -> None:
        """``sender``'s delta, encoded and decoded as the worker would, applied everywhere."""
        delta = sender.collect_one(full)
        if delta is None:
            return
        data = delta.encode()
        self.delta_records += 1
        self.delta_bytes += len(data)
        received = ShardDelta.decode(data)
        for shard in self.shards:
            shard.apply_one(received)

    def share_all(self) -> None:
        """Every shard's pending delta, shared (the end of a run: all deltas applied)."""
        if self.sync_events:
            for shard in self.shards:
                self.share(shard, full=True)
