"""The topic reader: every partition of one topic, assigned by hand, no consumer group.

For the commands that print or materialise a topic (``stream tail``, ``stream serve``): nothing
is committed, so a restart reads again from where it is told to start. The "end" of a partition
is the high watermark reported by a first fetch: ``end_offsets()``, ``seek_to_end()`` and
``auto_offset_reset='latest'`` are wrong on the embedded broker (BROKER.md), the high watermark
is right on every broker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaConsumer
from kafka import errors as kafka_errors
from kafka.structs import TopicPartition as KafkaTopicPartition

from stream.kafka import Backoff, BrokerUnavailableError, RawRecord, build_client
from stream.settings import StreamSettings

__all__ = ["TopicNotFoundError", "TopicReader"]

logger = logging.getLogger(__name__)


class TopicNotFoundError(LookupError):
    """The topic is not in the broker's metadata."""


class TopicReader:
    """Read one topic from its beginning or from its end, keeping track of how far behind.

    Parameters
    ----------
    settings
        Connection and fetch settings.
    topic
        The topic to read (every partition).
    from_beginning
        Start at each partition's first offset; otherwise at its high watermark when the
        reader starts (records produced later are returned).
    topic_wait_s
        How long to wait for the topic to show up in metadata.

    Notes
    -----
    Not thread-safe (kafka-python's consumer is not): one thread polls; the figures it keeps
    (:attr:`start_marks`, :meth:`lag`) are plain values others may read.
    """

    def __init__(
        self,
        settings: StreamSettings,
        topic: str,
        *,
        from_beginning: bool = True,
        topic_wait_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self._consumer = self._connect()
        try:
            partitions = self._partitions(topic_wait_s)
        except BaseException:
            self._consumer.close()
            raise
        self._tps = [KafkaTopicPartition(topic, p) for p in partitions]
        self._consumer.assign(self._tps)
        self._consumer.seek_to_beginning(*self._tps)
        self._skip_to_end = not from_beginning
        # High watermark of every partition when the reader started, learnt from fetches.
        self.start_marks: dict[int, int] = {}
        self._positions: dict[int, int] = {}
        self._highwater: dict[int, int] = {}

    @property
    def partitions(self) -> list[int]:
        """The partitions read."""
        return [tp.partition for tp in self._tps]

    def _connect(self) -> KafkaConsumer:
        s = self.settings
        backoff = Backoff(
            max_s=min(5.0, s.reconnect_backoff_max_s), deadline_s=s.broker_wait_seconds
        )
        while True:
            try:
                return build_client(
                    KafkaConsumer,
                    **s.kafka_common(),
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    allow_auto_create_topics=False,
                    fetch_max_wait_ms=s.fetch_max_wait_ms,
                    max_poll_records=s.max_poll_records,
                    bootstrap_timeout_ms=backoff.attempt_timeout_ms(5_000),
                )
            except kafka_errors.KafkaTimeoutError as exc:
                if backoff.expired():
                    raise BrokerUnavailableError(
                        f"no Kafka broker reachable at {s.bootstrap_servers} after "
                        f"{backoff.elapsed():.0f}s ({exc}); is it running? "
                        "(STREAM_BOOTSTRAP_SERVERS, STREAM_BROKER_WAIT_SECONDS)"
                    ) from None
                if backoff.attempts == 0:
                    logger.warning(
                        "Kafka broker at %s unreachable; retrying for up to %gs "
                        "(STREAM_BROKER_WAIT_SECONDS)",
                        s.bootstrap_servers,
                        s.broker_wait_seconds,
                    )
                backoff.sleep()

    def _partitions(self, wait_s: float) -> list[int]:
        deadline = time.monotonic() + wait_s
        while True:
            found: Any = self._consumer.partitions_for_topic(self.topic)
            if found:
                return sorted(int(p) for p in found)
            if time.monotonic() >= deadline:
                known = sorted(t for t in self._consumer.topics() if not t.startswith("__"))
                shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
                raise TopicNotFoundError(
                    f"topic {self.topic!r} not found at {self.settings.bootstrap_servers} "
                    f"(topics: {shown or 'none'})"
                )
            time.sleep(0.2)

    def poll(self, timeout_ms: int | None = None) -> list[RawRecord]:
        """The next records (possibly none), in offset order per partition."""
        timeout = self.settings.poll_timeout_ms if timeout_ms is None else timeout_ms
        batches = self._consumer.poll(timeout_ms=timeout)
        out: list[RawRecord] = []
        for batch in batches.values():
            out.extend(
                RawRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                for r in batch
            )
        self._observe()
        if self._skip_to_end:
            if len(self.start_marks) < len(self._tps):
                return []  # records before the end: not asked for
            for tp in self._tps:
                self._consumer.seek(tp, self.start_marks[tp.partition])
                self._positions[tp.partition] = self.start_marks[tp.partition]
            self._skip_to_end = False
            logger.debug("%s: starting at the end %s", self.topic, self.start_marks)
            return []
        return out

    def _observe(self) -> None:
        for tp in self._tps:
            high = self._consumer.highwater(tp)
            if high is None:
                continue  # no fetch answered for this partition yet
            self._highwater[tp.partition] = int(high)
            self.start_marks.setdefault(tp.partition, int(high))
            self._positions[tp.partition] = int(self._consumer.position(tp, timeout_ms=1_000))

    def positioned(self) -> bool:
        """Whether every partition's start is known (from now on, :meth:`poll` returns what
        follows it)."""
        return len(self.start_marks) == len(self._tps) and not self._skip_to_end

    def caught_up(self) -> bool:
        """Whether every partition was read up to its high watermark at the start."""
        if len(self.start_marks) < len(self._tps) or self._skip_to_end:
            return False
        return all(self._positions.get(p, 0) >= mark for p, mark in self.start_marks.items())

    def lag(self) -> int | None:
        """Records behind the latest known high watermarks (``None`` before the first fetch)."""
        if len(self._highwater) < len(self._tps):
            return None
        return sum(max(0, high - self._positions.get(p, 0)) for p, high in self._highwater.items())

    def behind(self, marks: dict[int, int]) -> bool:
        """Whether any partition is still before its offset in ``marks`` (e.g. the
        :meth:`highwaters` of an earlier moment)."""
        return any(self._positions.get(p, 0) < mark for p, mark in marks.items())

    def highwaters(self) -> dict[int, int]:
        """The latest known high watermark of each partition (from fetch responses)."""
        return dict(self._highwater)

    def rewind(self, offsets: dict[int, int] | None = None) -> None:
        """Read again from each partition's first offset (``beginning_offsets``, right on every
        broker), or from ``offsets[partition]`` where given. :meth:`caught_up` then means read
        up to the latest high watermarks known at the rewind (the topic's end then), not those
        of the reader's start."""
        offsets = offsets or {}
        first = [tp for tp in self._tps if tp.partition not in offsets]
        if first:
            self._consumer.seek_to_beginning(*first)
        self._positions.clear()
        for tp in self._tps:
            if tp.partition in offsets:
                self._consumer.seek(tp, offsets[tp.partition])
                self._positions[tp.partition] = offsets[tp.partition]
        self._skip_to_end = False
        self.start_marks = dict(self._highwater)

    def close(self) -> None:
        """Close the consumer (nothing to commit)."""
        self._consumer.close()
