"""The event source: a consumer-group member that hands out raw records and commits offsets.

Offsets are committed only when the caller says so (:meth:`EventSource.commit`), explicitly,
synchronously, and never backwards. Rebalance callbacks let the caller make its work safe
before partitions move.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import KafkaConsumer
from kafka import errors as kafka_errors
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.structs import OffsetAndMetadata
from kafka.structs import TopicPartition as KafkaTopicPartition

from stream.kafka import (
    Backoff,
    BrokerUnavailableError,
    RawRecord,
    TopicPartition,
    UnreadableRecordsError,
    build_client,
)
from stream.settings import StreamSettings

__all__ = [
    "AssignedCallback",
    "EventSource",
    "OffsetRegressionError",
    "RevokedCallback",
    "cached_partition_count",
    "failing_fetch",
]

logger = logging.getLogger(__name__)

RevokedCallback = Callable[[list[TopicPartition]], None]
AssignedCallback = Callable[[list[TopicPartition]], Mapping[TopicPartition, int] | None]

# A broker silent for this long is reported as lost (shorter gaps are routine reconnects).
_LOST_AFTER_S = 3.0
_COMMIT_ATTEMPT_MS = 10_000


class OffsetRegressionError(ValueError):
    """A commit would move a partition's committed offset backwards."""


def _plain(partitions: Iterable[Any]) -> list[TopicPartition]:
    return sorted((str(tp.topic), int(tp.partition)) for tp in partitions)


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Runs the caller's callbacks off kafka-python's IO thread.

    kafka-python 3 calls rebalance listeners on its IO thread, where a blocking consumer call
    (such as the commit a caller makes before giving a partition up) raises. The callback runs
    in a helper thread while this coroutine yields to the IO loop, so heartbeats and the
    caller's commit keep flowing; the caller's own thread is blocked in ``poll``/``close``.
    """

    def __init__(self, source: EventSource) -> None:
        self._source = source

    async def _in_thread(self, fn: Callable[[list[TopicPartition]], Any], arg: Any) -> Any:
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = fn(_plain(arg))
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=target, name="stream-rebalance", daemon=True)
        thread.start()
        while thread.is_alive():
            await self._source._io_sleep(0.005)
        if "error" in outcome:
            self._source._callback_error = outcome["error"]
            raise outcome["error"]
        return outcome.get("value")

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            logger.info("partitions revoked: %s", _plain(revoked))
        if revoked and self._source._on_revoked is not None:
            await self._in_thread(self._source._on_revoked, revoked)

    async def on_partitions_lost(self, lost: Any) -> None:
        if lost:
            logger.warning("partitions lost (left the group): %s", _plain(lost))
        callback = self._source._on_lost or self._source._on_revoked
        if lost and callback is not None:
            await self._in_thread(callback, lost)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        source = self._source
        plain = _plain(assigned)
        logger.info("partitions assigned: %s", plain)
        for tp in plain:
            # The group's committed offset is the authority for a freshly assigned partition.
            source._committed.pop(tp, None)
        if not assigned or source._on_assigned is None:
            return
        seeks = await self._in_thread(source._on_assigned, assigned)
        for tp, offset in (seeks or {}).items():
            source._consumer.seek(KafkaTopicPartition(*tp), int(offset))
            logger.info("%s[%d] starts at offset %d", tp[0], tp[1], offset)


class EventSource:
    """Consume ``topics`` as a member of the settings' consumer group; bytes in, bytes out.

    Parameters
    ----------
    settings
        Connection, group id, ``auto_offset_reset`` and group timeouts.
    topics
        Topics to subscribe to.
    on_assigned
        Called with newly assigned partitions, before their records are fetched; may return
        ``{partition: offset}`` to start from (e.g. restored from a checkpoint).
    on_revoked
        Called with partitions about to be taken away (rebalance, close): the last moment to
        flush outputs and :meth:`commit` their offsets.
    on_lost
        Called with partitions already lost (this member was evicted; a commit will fail).
        Defaults to ``on_revoked``.
    unavailable_timeout_s
        How long the broker may stay unreachable (at start, between polls, during a commit)
        before :class:`~stream.kafka.BrokerUnavailableError`; ``None`` waits forever.
    cooperative
        Incremental cooperative rebalancing (KIP-429, sticky): a rebalance revokes only the
        partitions that move, so the others keep being consumed and keep their in-memory
        state. ``False`` uses the eager range assignor (every rebalance revokes everything).

    Notes
    -----
    :meth:`commit` refuses to move a partition backwards (:class:`OffsetRegressionError`),
    like Quix Streams' checkpoints. The floor is what this source committed since the partition
    was last assigned or :meth:`seek`-ed. Lag comes from ``highwater`` (fetch responses), not
    ``end_offsets``, which is wrong on Tansu.
    """

    def __init__(
        self,
        settings: StreamSettings,
        topics: list[str],
        *,
        on_assigned: AssignedCallback | None = None,
        on_revoked: RevokedCallback | None = None,
        on_lost: RevokedCallback | None = None,
        unavailable_timeout_s: float | None = None,
        cooperative: bool = True,
    ) -> None:
        if not topics:
            raise ValueError("EventSource needs at least one topic")
        self.settings = settings
        self.topics = list(topics)
        self.unavailable_timeout_s = unavailable_timeout_s
        self.cooperative = cooperative
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_lost = on_lost
        self._committed: dict[TopicPartition, int] = {}
        self._callback_error: BaseException | None = None
        self._down_since: float | None = None
        self._down_reported = False
        self._closed = False
        self._consumer = self._connect()
        self._consumer.subscribe(self.topics, listener=_Listener(self))

    # --- connection -------------------------------------------------------------------------

    def _config(self, bootstrap_timeout_ms: int = 5_000) -> dict[str, Any]:
        s = self.settings
        return {
            **s.kafka_common(),
            "group_id": s.group_id,
            "enable_auto_commit": False,
            # The worker creates its topics itself (partitions, configs) before it subscribes;
            # a consumer's metadata request must never create one with the broker's defaults
            # (it did, reconnecting to a restarted broker before the topic was made again).
            "allow_auto_create_topics": False,
            "auto_offset_reset": s.auto_offset_reset,
            "session_timeout_ms": s.session_timeout_ms,
            "heartbeat_interval_ms": s.heartbeat_interval_ms,
            "max_poll_interval_ms": s.max_poll_interval_ms,
            "max_poll_records": s.max_poll_records,
            "fetch_max_wait_ms": s.fetch_max_wait_ms,
            "bootstrap_timeout_ms": bootstrap_timeout_ms,
            "partition_assignment_strategy": (
                (CooperativeStickyAssignor,) if self.cooperative else (RangePartitionAssignor,)
            ),
        }

    def _backoff(self) -> Backoff:
        return Backoff(
            max_s=min(5.0, self.settings.reconnect_backoff_max_s),
            deadline_s=self.unavailable_timeout_s,
        )

    def _connect(self) -> KafkaConsumer:
        backoff = self._backoff()
        servers = self.settings.bootstrap_servers
        while True:
            try:
                consumer = build_client(
                    KafkaConsumer, **self._config(backoff.attempt_timeout_ms(5_000))
                )
            except kafka_errors.KafkaTimeoutError as exc:
                if backoff.expired():
                    raise BrokerUnavailableError(
                        f"no Kafka broker reachable at {servers} after {backoff.elapsed():.0f}s "
                        f"({exc})"
                    ) from None
                if backoff.attempts == 0:
                    logger.warning(
                        "Kafka broker at %s unreachable; retrying %s",
                        servers,
                        "forever"
                        if backoff.deadline_s is None
                        else f"for up to {backoff.deadline_s:g}s",
                    )
                backoff.sleep()
                continue
            if backoff.attempts:
                logger.info("Kafka broker at %s reachable after %.1fs", servers, backoff.elapsed())
            return consumer

    async def _io_sleep(self, seconds: float) -> None:
        # Yield to kafka-python's IO loop (only valid inside a coroutine it runs).
        await self._consumer._net.sleep(seconds)

    def _broker_connected(self) -> bool:
        client = self._consumer._client
        return any(client.connected(b.node_id) for b in client.cluster.brokers())

    def _watch_connection(self) -> None:
        """One log line when the broker is lost and one when it is back; give up at the
        deadline. kafka-python itself reconnects with exponential backoff."""
        now = time.monotonic()
        if self._broker_connected():
            if self._down_reported and self._down_since is not None:
                logger.info(
                    "Kafka broker at %s is back after %.1fs",
                    self.settings.bootstrap_servers,
                    now - self._down_since,
                )
            self._down_since = None
            self._down_reported = False
            return
        if self._down_since is None:
            self._down_since = now
        down_for = now - self._down_since
        if not self._down_reported and down_for >= _LOST_AFTER_S:
            logger.warning(
                "lost the Kafka broker at %s; reconnecting (backoff up to %gs)",
                self.settings.bootstrap_servers,
                self.settings.reconnect_backoff_max_s,
            )
            self._down_reported = True
        if self.unavailable_timeout_s is not None and down_for >= self.unavailable_timeout_s:
            raise BrokerUnavailableError(
                f"Kafka broker at {self.settings.bootstrap_servers} unreachable for "
                f"{down_for:.0f}s (limit {self.unavailable_timeout_s:g}s)"
            )

    # --- consuming --------------------------------------------------------------------------

    def poll_batch(self, timeout_ms: int | None = None) -> list[RawRecord]:
        """Records fetched within ``timeout_ms`` (settings' ``poll_timeout_ms`` by default),
        in offset order per partition; ``[]`` when there are none.

        Rebalance callbacks run inside this call; an exception they raise is re-raised here.
        """
        timeout = self.settings.poll_timeout_ms if timeout_ms is None else timeout_ms
        try:
            batches = self._consumer.poll(timeout_ms=timeout)
        except kafka_errors.UnsupportedCodecError as exc:
            raise UnreadableRecordsError(
                f"cannot read the records of {failing_fetch(self._consumer)}: {exc}. Every Kafka "
                "codec (gzip, snappy, lz4, zstd) is readable once python-snappy, lz4 and "
                "zstandard are installed (dependencies of stream-reco: reinstall it)"
            ) from None
        except kafka_errors.KafkaError:
            error, self._callback_error = self._callback_error, None
            if error is not None:
                raise error from None
            raise
        records = [
            RawRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
            for batch in batches.values()
            for r in batch
        ]
        if records:
            if self._down_reported:
                self._watch_connection()
            else:
                self._down_since = None
        else:
            self._watch_connection()
        return records

    @property
    def broker_lost(self) -> bool:
        """Whether the broker is unreachable: from the "lost the Kafka broker" log line (a few
        seconds without a connection) until the "is back" one."""
        return self._down_reported

    def assignment(self) -> set[TopicPartition]:
        """The partitions this member holds now."""
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Fetch ``tp`` from ``offset`` next; also lowers the commit floor of ``tp`` to it."""
        self._consumer.seek(KafkaTopicPartition(*tp), offset)
        self._committed.pop(tp, None)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch nothing more from ``partitions`` until :meth:`resume` (they stay assigned;
        records already fetched for them are not returned)."""
        tps = [KafkaTopicPartition(*tp) for tp in partitions]
        if tps:
            self._consumer.pause(*tps)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch from paused ``partitions`` again, from their positions."""
        tps = [KafkaTopicPartition(*tp) for tp in partitions]
        if tps:
            self._consumer.resume(*tps)

    def position(self, tp: TopicPartition) -> int | None:
        """The offset of the next record to fetch from ``tp``, if known."""
        try:
            pos = self._consumer.position(KafkaTopicPartition(*tp), timeout_ms=0)
        except (kafka_errors.IllegalStateError, kafka_errors.KafkaTimeoutError):
            return None  # not (or no longer) assigned, or not resolved yet
        return None if pos is None else int(pos)

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the log end per assigned partition: ``highwater - position``.

        Partitions whose highwater is not known yet (no fetch response) are left out.
        """
        out: dict[TopicPartition, int] = {}
        for ktp in self._consumer.assignment():
            try:
                high = self._consumer.highwater(ktp)
            except kafka_errors.IllegalStateError:
                continue
            pos = self.position((ktp.topic, ktp.partition))
            if high is None or pos is None:
                continue
            out[(ktp.topic, ktp.partition)] = max(0, int(high) - pos)
        return out

    # --- committing -------------------------------------------------------------------------

    def committed(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offsets, as the broker has them (``None``: nothing committed)."""
        out: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            value = self._consumer.committed(KafkaTopicPartition(*tp), timeout_ms=10_000)
            out[tp] = None if value is None else int(value)
        return out

    def commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        """Commit ``{(topic, partition): next offset to consume}``, synchronously.

        Partitions whose offset is already committed are skipped. Returns ``False`` (with one
        warning) when the group membership does not allow the commit (a rebalance is under way
        or this member was evicted): the rebalance callbacks get the next chance, and records
        not committed are consumed again by the partition's next owner.

        Raises
        ------
        OffsetRegressionError
            An offset is below what this source already committed for the partition; nothing
            is committed.
        BrokerUnavailableError
            The broker stayed unreachable past ``unavailable_timeout_s``.
        """
        todo: dict[TopicPartition, int] = {}
        for tp, offset in offsets.items():
            if offset < 0:
                raise ValueError(f"negative offset {offset} for {tp[0]}[{tp[1]}]")
            floor = self._committed.get(tp)
            if floor is not None and offset < floor:
                raise OffsetRegressionError(
                    f"refusing to commit {tp[0]}[{tp[1]}]@{offset}: offset {floor} is already "
                    "committed (offsets never go backwards; seek() first to rewind)"
                )
            if floor != offset:
                todo[tp] = offset
        if not todo:
            return True
        request = {KafkaTopicPartition(*tp): OffsetAndMetadata(o, "", -1) for tp, o in todo.items()}
        backoff = self._backoff()
        while True:
            try:
                self._consumer.commit(
                    request, timeout_ms=backoff.attempt_timeout_ms(_COMMIT_ATTEMPT_MS)
                )
            except (
                kafka_errors.RebalanceInProgressError,
                kafka_errors.CommitFailedError,
                kafka_errors.UnknownMemberIdError,
                kafka_errors.IllegalGenerationError,
            ) as exc:
                logger.warning(
                    "offsets %s not committed: %s (group is rebalancing or this member left it)",
                    _describe(todo),
                    type(exc).__name__,
                )
                return False
            except kafka_errors.RetriableError as exc:
                if backoff.expired():
                    raise BrokerUnavailableError(
                        f"could not commit {_describe(todo)} for {backoff.elapsed():.0f}s: {exc}"
                    ) from None
                if backoff.attempts == 0:
                    logger.warning("commit of %s failed (%s); retrying", _describe(todo), exc)
                backoff.sleep()
                continue
            if backoff.attempts:
                logger.info(
                    "commit of %s succeeded after %d retries", _describe(todo), backoff.attempts
                )
            self._committed.update(todo)
            return True

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the group (``on_revoked`` runs first); idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close(autocommit=False, timeout_ms=_COMMIT_ATTEMPT_MS)
        except Exception as exc:
            error = self._callback_error or exc
            logger.warning("consumer close: %s: %s", type(error).__name__, error)

    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def partition_count(self, topic: str) -> int | None:
        """Partitions of ``topic`` in the consumer's metadata cache (``None`` while unknown).

        A subscribed topic's metadata is refreshed by the consumer itself (every
        ``metadata.max.age.ms``, and when it sees partitions added). Never a request: the
        public ``partitions_for_topic`` fetches every topic's metadata, without a timeout,
        when the cache misses (a broker outage would hang the caller).
        """
        return cached_partition_count(self._consumer, topic)


def cached_partition_count(consumer: KafkaConsumer, topic: str) -> int | None:
    """Partitions of ``topic`` in ``consumer``'s cluster metadata, without a request.

    kafka-python keeps that cache in ``_cluster`` (kafka-python 3.0, ``ClusterMetadata``).
    When that moves, the answer is ``None`` (the worker keeps the count it read at start;
    tests/integration/test_sync_interval_worker.py fails then).
    """
    cluster = getattr(consumer, "_cluster", None)
    lookup = getattr(cluster, "partitions_for_topic", None)
    try:
        found = lookup(topic) if callable(lookup) else None
    except (KeyError, AttributeError, TypeError):  # the IO thread swapped the cache meanwhile
        return None
    return len(found) if found else None


def failing_fetch(consumer: KafkaConsumer) -> str:
    """``topic[partition]@offset`` of the fetched records a ``poll`` just failed to read.

    kafka-python's exception does not say which partition it came from; its fetcher keeps
    the records it was reading in ``_next_partition_records`` (kafka-python 3.0). When that
    moves, the answer degrades to the assigned partitions (tests/integration/test_compression.py
    fails then).
    """
    records = getattr(getattr(consumer, "_fetcher", None), "_next_partition_records", None)
    tp = getattr(records, "topic_partition", None)
    if tp is not None:
        offset = getattr(records, "next_fetch_offset", None)
        return f"{tp.topic}[{tp.partition}]" + ("" if offset is None else f"@{offset}")
    assigned = ", ".join(f"{t}[{p}]" for t, p in _plain(consumer.assignment()))
    return f"one of {assigned or 'the assigned partitions'}"


def _describe(offsets: Mapping[TopicPartition, int]) -> str:
    return ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items()))
