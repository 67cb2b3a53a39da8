"""Kafka edges: topic admin, the event source and the record sink.

The core never imports this package. Records cross the edge as bytes (:class:`RawRecord` in,
``bytes`` out); decoding and encoding are the core's job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "Backoff",
    "BrokerUnavailableError",
    "RawRecord",
    "TopicPartition",
    "UnreadableRecordsError",
    "build_client",
    "close_producer",
]

logger = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
"""``(topic, partition)``: plain tuples at the edge, so callers never import kafka-python."""


class BrokerUnavailableError(ConnectionError):
    """The broker stayed unreachable past the caller's deadline."""


class UnreadableRecordsError(RuntimeError):
    """Records of a partition cannot be read at all (e.g. compressed with a codec whose library
    is missing); the message names the partition. Nothing past them can be consumed."""


_Client = TypeVar("_Client")


def build_client(cls: Callable[..., _Client], **config: Any) -> _Client:
    """``cls(**config)`` for a kafka-python client, without leaking when it fails.

    kafka-python 3.0 starts a client's IO thread before it bootstraps and leaves it running
    when the bootstrap times out (``KafkaConsumer`` and ``KafkaAdminClient``): every failed
    attempt would leave a thread, a selector and its sockets behind, hundreds of them for a
    worker retrying through a long broker outage. The network client is built through the
    ``kafka_client`` option, so a failed constructor's client is closed here.
    """
    from kafka.net.compat import KafkaNetClient

    created: list[Any] = []

    def network_client(**kwargs: Any) -> Any:
        client = KafkaNetClient(**kwargs)
        created.append(client)
        return client

    try:
        return cls(**config, kafka_client=network_client)
    except BaseException:
        for client in created:
            try:
                client.close()
            except Exception as exc:  # closing a half-built client is best effort
                logger.debug("closing a failed %r: %r", cls, exc)
        raise


def close_producer(producer: Any, timeout_s: float) -> None:
    """Close a ``KafkaProducer``, stopping its sender thread even when records are still
    unacknowledged.

    kafka-python's ``close(timeout)`` flushes first and raises ``KafkaTimeoutError`` when the
    flush times out, before it stops the sender: the thread then runs for the rest of the
    process (and ``__del__`` fails on it later). Here the sender is force-closed instead,
    which fails the pending records' futures (their errbacks count them as not delivered).
    Takes up to ``timeout_s`` for the flush plus up to ``max(1, timeout_s)`` for the sender
    to stop.

    Raises
    ------
    KafkaTimeoutError
        The flush timed out and the sender could not be stopped (kafka-python's internals
        moved, or the sender is stuck): pending records may stay unsettled.
    """
    from kafka import errors as kafka_errors

    try:
        producer.close(timeout=timeout_s)
        return
    except kafka_errors.KafkaTimeoutError:
        sender = getattr(producer, "_sender", None)
        if sender is None:  # kafka-python internals moved: nothing more can be done here
            raise
    sender.force_close()
    sender.join(max(1.0, timeout_s))
    if sender.is_alive():
        raise kafka_errors.KafkaTimeoutError(
            f"the producer's sender thread did not stop within {max(1.0, timeout_s):g}s"
        )
    producer.close(timeout=0)  # nothing is pending now: releases metrics and serializers


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One consumed record, undecoded.

    >>> RawRecord("events", 0, 41, b"u1", b"{}", 1_700_000_000_000).offset
    41
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class Backoff:
    """Exponential backoff with a deadline, for retrying an unreachable broker.

    Parameters
    ----------
    initial_s
        First delay.
    max_s
        Cap on a single delay.
    deadline_s
        Give up (:meth:`expired`) this many seconds after the backoff was created (or
        :meth:`reset`); ``None`` retries forever.

    Examples
    --------
    >>> b = Backoff(initial_s=0.1, max_s=0.4, deadline_s=None)
    >>> [b.next_delay() for _ in range(4)]
    [0.1, 0.2, 0.4, 0.4]
    >>> b.expired()
    False
    """

    def __init__(
        self, initial_s: float = 0.25, max_s: float = 30.0, deadline_s: float | None = None
    ):
        self.initial_s = initial_s
        self.max_s = max_s
        self.deadline_s = deadline_s
        self.attempts = 0
        self.started_at = time.monotonic()

    def next_delay(self) -> float:
        """The delay before the next attempt."""
        delay = min(self.max_s, self.initial_s * float(2**self.attempts))
        self.attempts += 1
        return delay

    def elapsed(self) -> float:
        """Seconds since the backoff started."""
        return time.monotonic() - self.started_at

    def remaining(self) -> float | None:
        """Seconds left before the deadline (``None``: no deadline)."""
        if self.deadline_s is None:
            return None
        return max(0.0, self.deadline_s - self.elapsed())

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def attempt_timeout_ms(self, cap_ms: int) -> int:
        """A per-attempt timeout that does not run (much) past the deadline."""
        remaining = self.remaining()
        if remaining is None:
            return cap_ms
        return max(100, min(cap_ms, int(remaining * 1000)))

    def sleep(self) -> None:
        """Sleep for the next delay, never past the deadline."""
        delay = self.next_delay()
        remaining = self.remaining()
        time.sleep(delay if remaining is None else min(delay, remaining))

    def reset(self) -> None:
        """Forget past failures and restart the clock (after a success)."""
        self.attempts = 0
        self.started_at = time.monotonic()
