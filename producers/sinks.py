"""Where produced records go: a Kafka topic, a JSONL file, a list (tests), or nowhere (dry run).

Every sink counts what it delivered and what failed; nothing is dropped silently. The Kafka
sink sends with ``acks=all`` keyed by user id, counts broker acknowledgements and failures
through the send futures' callbacks, and turns an unreachable broker into a
:class:`SinkError` within a bounded connect timeout.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from pathlib import Path
from typing import IO, Any, Protocol

from producers.records import Record
from stream.kafka import build_client, close_producer
from stream.settings import StreamSettings

__all__ = ["JsonlSink", "KafkaSink", "ListSink", "NullSink", "Sink", "SinkError"]

logger = logging.getLogger(__name__)

_LOGGED_FAILURES = 10


class SinkError(RuntimeError):
    """The destination cannot be used (broker unreachable, file not writable): stop the run."""


class Sink(Protocol):
    """What the emit loop needs from a destination."""

    description: str

    def send_one(self, record: Record) -> None:
        """Queue one record (may raise :class:`SinkError` if the destination is gone)."""

    def flush(self) -> None:
        """Wait until every queued record is delivered or counted as failed."""

    def close(self) -> None:
        """Release the destination; never raises."""

    @property
    def delivered(self) -> int:
        """Records the destination has acknowledged."""

    @property
    def failed(self) -> int:
        """Records that were queued but not delivered."""


class ListSink:
    """Keep records in a list (tests and in-process use).

    >>> sink = ListSink()
    >>> sink.send_one(Record(1, 0.0, b"u", b"{}"))
    >>> sink.delivered, sink.records[0].key
    (1, b'u')
    """

    description = "a list"

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.failed = 0

    def send_one(self, record: Record) -> None:
        self.records.append(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def delivered(self) -> int:
        return len(self.records)


class NullSink:
    """Count records and send nothing (``--dry-run``)."""

    description = "nowhere (dry run)"

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0

    def send_one(self, record: Record) -> None:
        self.delivered += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    """Write each record's value as one line of ``path`` (``-`` = stdout)."""

    def __init__(self, path: str | Path) -> None:
        self.description = "stdout" if str(path) == "-" else f"file {path}"
        self.delivered = 0
        self.failed = 0
        self._own = str(path) != "-"
        try:
            self._file: IO[bytes] = open(path, "wb") if self._own else sys.stdout.buffer  # noqa: SIM115
        except OSError as exc:
            raise SinkError(f"cannot write {path}: {exc.strerror or exc}") from None

    def send_one(self, record: Record) -> None:
        try:
            self._file.write(record.value + b"\n")
        except OSError as exc:
            raise SinkError(f"cannot write to {self.description}: {exc.strerror or exc}") from None
        self.delivered += 1

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            raise SinkError(f"cannot write to {self.description}: {exc.strerror or exc}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.flush()
            if self._own:
                self._file.close()


class KafkaSink:
    """Send records to ``topic`` with ``acks=all``, key = user id, flushed at the end.

    Parameters
    ----------
    settings
        Connection and security options (``kafka_common()``) and ``producer_linger_ms``.
    topic
        Destination topic.
    connect_timeout_s
        How long to wait for the first broker answer before :class:`SinkError`.
    flush_timeout_s
        How long :meth:`flush` waits for acknowledgements; what is still unacknowledged then
        counts as failed.
    partitions
        Create ``topic`` with this many partitions if it does not exist (the events topic:
        ``STREAM_EVENTS_PARTITIONS``, as the worker would), instead of leaving it to the
        broker's auto-creation, whose partition count would shard the worker's models by
        accident. An existing topic with another count is kept, with a warning.

    Notes
    -----
    The record timestamp is left to the producer (send time), not set to the event time: a
    replayed log from 1998 would otherwise fall out of the topic's retention at once.
    """

    def __init__(
        self,
        settings: StreamSettings,
        topic: str,
        *,
        connect_timeout_s: float = 10.0,
        flush_timeout_s: float = 120.0,
        partitions: int | None = None,
    ) -> None:
        from kafka import KafkaProducer
        from kafka import errors as kafka_errors

        self._errors = kafka_errors
        self.topic = topic
        self.servers = settings.bootstrap_servers
        self.description = f"Kafka {self.servers} topic {topic}"
        self.flush_timeout_s = flush_timeout_s
        self.queued = 0
        self._delivered = 0
        self._failed = 0
        # Sent, not yet acknowledged nor failed; a flush that times out writes them off (counts
        # them as failed), and what their futures say later is ignored: never counted twice.
        self._unsettled: set[int] = set()
        self.first_error: BaseException | None = None
        self._lock = threading.Lock()  # callbacks run on kafka-python's sender thread
        connect_ms = max(1_000, int(connect_timeout_s * 1000))
        config: dict[str, Any] = {
            **settings.kafka_common(),
            "acks": "all",
            "linger_ms": settings.producer_linger_ms,
            "compression_type": settings.kafka_compression(),
            "bootstrap_timeout_ms": connect_ms,
            # Bounds metadata waits (unknown topic) and blocking on a full buffer (broker gone).
            "max_block_ms": max(connect_ms, 30_000),
        }
        try:
            self._producer = build_client(KafkaProducer, **config)
        except kafka_errors.KafkaTimeoutError:
            raise SinkError(
                f"no Kafka broker reachable at {self.servers} within {connect_ms / 1000:g}s"
            ) from None
        except kafka_errors.KafkaError as exc:
            raise SinkError(f"cannot connect to Kafka at {self.servers}: {exc}") from None
        if partitions is not None:
            self._ensure_topic(settings, partitions, max(10.0, connect_timeout_s))
        try:
            found = self._producer.partitions_for(topic)
        except kafka_errors.KafkaError as exc:
            self.close()
            raise SinkError(
                f"topic {topic!r} is not available on {self.servers} "
                f"({type(exc).__name__}); does it exist?"
            ) from None
        logger.info("producing to %s (%d partitions)", self.description, len(found or ()))

    def _ensure_topic(self, settings: StreamSettings, partitions: int, timeout_s: float) -> None:
        from stream.kafka import BrokerUnavailableError
        from stream.kafka.admin import TopicError, ensure_topics

        try:
            ensure_topics(settings, {self.topic: partitions}, timeout_s=timeout_s)
        except (BrokerUnavailableError, TopicError) as exc:
            self.close()
            raise SinkError(f"cannot create topic {self.topic!r}: {exc}") from None

    @property
    def delivered(self) -> int:
        return self._delivered

    @property
    def failed(self) -> int:
        return self._failed

    def send_one(self, record: Record) -> None:
        self.queued += 1
        seq = self.queued
        try:
            future = self._producer.send(self.topic, key=record.key, value=record.value)
        except self._errors.KafkaTimeoutError as exc:
            self.queued -= 1
            raise SinkError(
                f"cannot send to {self.description}: {exc} (is the broker still up?)"
            ) from None
        except self._errors.KafkaError as exc:  # e.g. MessageSizeTooLargeError: this one only
            self._fail(record, exc)
            return
        with self._lock:
            self._unsettled.add(seq)
        future.add_callback(self._ok, seq)
        future.add_errback(self._on_error, record, seq)

    def _ok(self, seq: int, _metadata: Any) -> None:
        with self._lock:
            if seq in self._unsettled:
                self._unsettled.discard(seq)
                self._delivered += 1

    def _on_error(self, record: Record, seq: int, error: BaseException) -> None:
        with self._lock:
            if seq not in self._unsettled:
                return  # written off by a flush that timed out: already counted
            self._unsettled.discard(seq)
        self._fail(record, error)

    def _fail(self, record: Record, error: BaseException) -> None:
        with self._lock:
            self._failed += 1
            failed = self._failed
            if self.first_error is None:
                self.first_error = error
        if failed <= _LOGGED_FAILURES:
            key = "-" if record.key is None else record.key.decode("utf-8", "replace")
            logger.error(
                "not delivered: line %d key=%s: %s: %s",
                record.line,
                key,
                type(error).__name__,
                error,
            )

    def flush(self) -> None:
        try:
            self._producer.flush(timeout=self.flush_timeout_s)
        except self._errors.KafkaTimeoutError:
            with self._lock:
                pending = len(self._unsettled)
                self._failed += pending
                self._unsettled.clear()
            logger.error(
                "%d record(s) still unacknowledged after %gs: counted as failed",
                pending,
                self.flush_timeout_s,
            )

    def close(self) -> None:
        try:
            close_producer(self._producer, min(10.0, self.flush_timeout_s))
        except Exception as exc:  # closing must not hide the run's own outcome
            logger.warning("closing the Kafka producer: %s: %s", type(exc).__name__, exc)
