"""The record sink: one producer for every output topic, failures reported, never dropped.

:meth:`RecordSink.send` only queues. :meth:`RecordSink.flush` waits for the broker and raises
:class:`DeliveryError` while any record has failed; the caller commits input offsets only
after a flush that did not raise. An oversized output raises :class:`OutputTooLargeError`
at once, so the caller can dead-letter the input instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka import errors as kafka_errors

from stream.kafka import BrokerUnavailableError, build_client, close_producer
from stream.settings import StreamSettings

__all__ = ["DeliveryError", "DeliveryFailure", "OutputTooLargeError", "RecordSink"]

logger = logging.getLogger(__name__)

# The broker no longer knows this producer's id/epoch (e.g. Tansu restarted, losing its state):
# kafka-python 3's idempotent producer then fails for good, and the records were not written.
_PRODUCER_STATE_ERRORS = (
    kafka_errors.UnknownProducerIdError,
    kafka_errors.OutOfOrderSequenceNumberError,
    kafka_errors.InvalidProducerEpochError,
)
_ACKS: dict[str, int | str] = {"0": 0, "1": 1, "all": "all"}
# A flush waiting this long with no connection to any broker reports the broker as lost
# (like the source: shorter gaps are routine reconnects).
_LOST_AFTER_S = 3.0


class OutputTooLargeError(ValueError):
    """A record is larger than the producer's ``max_request_size``; it was not sent."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        super().__init__(f"record for {topic} is about {size} bytes, over max_request_size={limit}")
        self.topic = topic
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """A record the broker did not acknowledge, with its bytes (so it can be re-sent)."""

    topic: str
    key: bytes | None
    value: bytes | None
    error: BaseException
    attempt: int = 1

    def __str__(self) -> str:
        key = "-" if self.key is None else self.key[:40].decode("utf-8", "replace")
        return f"{self.topic} key={key}: {type(self.error).__name__}: {self.error}"


class DeliveryError(RuntimeError):
    """Records were not delivered; offsets covering them must not be committed."""

    def __init__(self, failures: list[DeliveryFailure], detail: str = "") -> None:
        self.failures = failures
        parts = (
            [f"{len(failures)} record(s) not delivered; first: {failures[0]}"] if failures else []
        )
        if detail:
            parts.append(detail)
        super().__init__("; ".join(parts) or "records not delivered")


class RecordSink:
    """Send key/value bytes to any topic through one ``KafkaProducer``.

    Parameters
    ----------
    settings
        Connection options, ``producer_acks`` and ``producer_linger_ms``.
    max_request_size
        Larger records raise :class:`OutputTooLargeError` from :meth:`send`.
    delivery_timeout_ms
        How long a record may wait for the broker before it counts as failed.
    on_wait
        Called with ``broker_connected`` every few seconds while a flush waits (so the caller
        can keep its liveness fresh and report readiness during a long outage).

    Notes
    -----
    Failures are *sticky*: :meth:`flush` keeps raising :class:`DeliveryError` until the caller
    takes them with :meth:`take_failures`, so a later flush can never make lost records look
    delivered. A producer that failed for good (kafka-python's idempotent producer after a
    broker restart) is replaced, and the records it lost are re-sent once.
    """

    def __init__(
        self,
        settings: StreamSettings,
        *,
        max_request_size: int = 1_048_576,
        delivery_timeout_ms: int = 120_000,
        on_wait: Callable[[bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.max_request_size = max_request_size
        self.delivery_timeout_ms = delivery_timeout_ms
        self.on_wait = on_wait
        self.sent = 0
        self.replaced = 0
        self._generation = 0
        self._failures: list[tuple[int, DeliveryFailure]] = []
        self._lock = threading.Lock()  # errbacks run on kafka-python's sender thread
        self._broken = False
        self._closed = False
        self._down_since: float | None = None
        self._producer = self._new_producer()

    def _new_producer(self) -> KafkaProducer:
        s = self.settings
        acks = _ACKS[s.producer_acks]
        config: dict[str, Any] = {
            **s.kafka_common(),
            "acks": acks,
            # Idempotence needs acks=all; asking for it otherwise makes kafka-python warn.
            "enable_idempotence": acks == "all",
            "linger_ms": s.producer_linger_ms,
            "compression_type": s.kafka_compression(),
            "max_request_size": self.max_request_size,
            "delivery_timeout_ms": self.delivery_timeout_ms,
            "request_timeout_ms": min(30_000, self.delivery_timeout_ms - s.producer_linger_ms),
        }
        try:
            return build_client(KafkaProducer, **config)
        except kafka_errors.KafkaTimeoutError as exc:
            raise BrokerUnavailableError(
                f"no Kafka broker reachable at {s.bootstrap_servers} for the producer: {exc}"
            ) from None

    # --- sending ----------------------------------------------------------------------------

    def send(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        """Queue one record (``value=None`` with a key is a tombstone).

        Raises
        ------
        OutputTooLargeError
            The record exceeds ``max_request_size``; nothing was queued.
        BrokerUnavailableError
            No metadata for ``topic`` (broker unreachable) within the producer's ``max_block_ms``.
        """
        self._send(topic, key, value, attempt=1)

    def _send(self, topic: str, key: bytes | None, value: bytes | None, attempt: int) -> None:
        try:
            future = self._producer.send(topic, value=value, key=key)
        except kafka_errors.MessageSizeTooLargeError:
            size = len(key or b"") + len(value or b"")
            raise OutputTooLargeError(topic, size, self.max_request_size) from None
        except kafka_errors.KafkaTimeoutError as exc:
            raise BrokerUnavailableError(f"cannot send to {topic}: {exc}") from None
        future.add_errback(self._on_error, topic, key, value, attempt, self._generation)
        self.sent += 1

    def _on_error(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        attempt: int,
        generation: int,
        error: BaseException,
    ) -> None:
        # Runs on kafka-python's sender thread: record, never raise.
        with self._lock:
            self._failures.append((generation, DeliveryFailure(topic, key, value, error, attempt)))
        if isinstance(error, _PRODUCER_STATE_ERRORS):
            self._broken = True

    def _producer_failed_for_good(self) -> bool:
        manager = getattr(self._producer, "_transaction_manager", None)
        return self._broken or bool(manager is not None and manager.has_fatal_error())

    # --- flushing ---------------------------------------------------------------------------

    def _broker_connected(self) -> bool:
        client = getattr(getattr(self._producer, "_sender", None), "_client", None)
        if client is None:  # kafka-python internals moved: assume connected, never mis-report
            return True
        return any(client.connected(b.node_id) for b in client.cluster.brokers())

    def _flush_once(self, timeout_s: float | None) -> None:
        """Flush in short steps so that a flush stuck on a lost broker says so (once) and
        says when the broker is back; kafka-python keeps retrying meanwhile."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        waited_from = time.monotonic()
        while True:
            step = _LOST_AFTER_S
            if deadline is not None:
                step = max(0.0, min(step, deadline - time.monotonic()))
            try:
                self._producer.flush(timeout=step)
                break
            except kafka_errors.KafkaTimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise DeliveryError(
                        [f for _, f in self._failures],
                        f"records still unacknowledged after {timeout_s}s",
                    ) from None
                connected = self._broker_connected()
                if self.on_wait is not None:
                    self.on_wait(connected)
                if self._down_since is None and not connected:
                    self._down_since = waited_from
                    logger.warning(
                        "lost the Kafka broker at %s: outputs wait for it (no offsets are "
                        "committed meanwhile); reconnecting",
                        self.settings.bootstrap_servers,
                    )
        if self._down_since is not None:
            logger.info(
                "Kafka broker at %s is back after %.1fs; outputs delivered",
                self.settings.bootstrap_servers,
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued record is acknowledged or failed.

        Raises
        ------
        DeliveryError
            A record failed (now or in an earlier flush, until :meth:`take_failures`), or
            records are still unacknowledged after ``timeout_s``.
        """
        self._flush_once(timeout_s)
        if self._producer_failed_for_good():
            with self._lock:
                current = self._generation
                lost = [f for g, f in self._failures if g == current and f.attempt == 1]
                self._failures = [
                    (g, f) for g, f in self._failures if not (g == current and f.attempt == 1)
                ]
            self._replace_producer(lost[0].error if lost else None)
            for i, failure in enumerate(lost):
                try:
                    self._send(failure.topic, failure.key, failure.value, attempt=2)
                except Exception:
                    with self._lock:  # not re-sent: still failures, never dropped
                        self._failures.extend((self._generation, f) for f in lost[i:])
                    raise
            if lost:
                logger.warning("re-sent %d record(s) lost by the old producer", len(lost))
            self._flush_once(timeout_s)
            if self._producer_failed_for_good():
                self._replace_producer(None)
        if self._failures:
            raise DeliveryError([f for _, f in self._failures])

    def _replace_producer(self, cause: BaseException | None) -> None:
        old = self._producer
        logger.warning(
            "Kafka producer failed for good (%s); replacing it",
            "unknown cause" if cause is None else f"{type(cause).__name__}: {cause}",
        )
        try:
            # What it still holds fails now (errbacks: failures, re-sent by the caller).
            close_producer(old, 0.0)
        except Exception as exc:  # a broken producer may fail to close; it is dropped anyway
            logger.debug("closing the failed producer: %r", exc)
        self._generation += 1
        self._broken = False
        self.replaced += 1
        self._producer = self._new_producer()

    def take_failures(self) -> list[DeliveryFailure]:
        """Hand over (and forget) the records that failed, e.g. to dead-letter or re-send them."""
        with self._lock:
            failures, self._failures = self._failures, []
        return [f for _, f in failures]

    # --- lifecycle --------------------------------------------------------------------------

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what can be flushed within ``timeout_s`` and close; never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            close_producer(self._producer, timeout_s)
        except Exception as exc:
            logger.warning("closing the producer: %s: %s", type(exc).__name__, exc)
        if self._failures:
            logger.error(
                "%d record(s) were never delivered (first: %s)",
                len(self._failures),
                self._failures[0][1],
            )

    def __enter__(self) -> RecordSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
