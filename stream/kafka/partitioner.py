"""Which partition of the events topic a user's events land in, as the producers send them.

The offline sharded evaluation (``stream evaluate --partitions P``) must split a file exactly
as Kafka splits the topic: kafka-python's own :class:`DefaultPartitioner` (murmur2 of the key,
as the Java client), called the way the producer calls it, on the key the producers use
(the user id, UTF-8).
"""

from __future__ import annotations

from kafka.partitioner.default import DefaultPartitioner

__all__ = ["partition_of"]

_PARTITIONER = DefaultPartitioner()


class _Layout:
    """The part of ``ClusterMetadata`` the partitioner reads: one topic, ``n`` partitions."""

    def __init__(self, topic: str, n: int) -> None:
        self._topic, self._partitions = topic, set(range(n))

    def topics(self) -> set[str]:
        return {self._topic}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions


def partition_of(user_id: str, partitions: int, topic: str = "events") -> int:
    """The partition kafka-python's default partitioner picks for a record keyed ``user_id``.

    >>> [partition_of(u, 4) for u in ("alice", "bob", "carol")]
    [1, 2, 2]
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    key = user_id.encode("utf-8", "surrogatepass")
    layout = _Layout(topic, partitions)
    return int(_PARTITIONER.partition(topic, user_id, key, None, None, layout))
