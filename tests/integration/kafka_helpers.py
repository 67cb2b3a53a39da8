"""Helpers of the integration tests: unique names, settings, produce and read back raw records.

A plain module (not conftest.py), imported by name like ``tests/deploy/deploy_helpers.py``.
Reading uses manual assignment from the beginning and the consumer's ``highwater`` — never
``end_offsets``, which is wrong on Tansu (BROKER.md).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.structs import TopicPartition

from stream.kafka import RawRecord
from stream.settings import StreamSettings

__all__ = ["consume", "produce", "settings_for", "unique"]

# Group timeouts for tests: Tansu makes a join wait about session_timeout/2 (BROKER.md), and
# 6 s is the smallest session timeout Apache Kafka accepts by default.
TEST_GROUP_TIMEOUTS: dict[str, int] = {
    "session_timeout_ms": 6_000,
    "heartbeat_interval_ms": 1_000,
    "max_poll_interval_ms": 60_000,
}


def unique(prefix: str) -> str:
    """A name no other test (or earlier run against the same broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def settings_for(bootstrap: str, **overrides: Any) -> StreamSettings:
    """Settings for ``bootstrap`` with fresh topic and group names, ignoring ``.env``."""
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "events_topic": unique("events"),
        "recommendations_topic": unique("recommendations"),
        "metrics_topic": unique("metrics"),
        "dead_letter_topic": unique("dlq"),
        # STREAM_MODEL_SYNC=auto shares item state on topics with several partitions.
        "model_updates_topic": unique("model-updates"),
        "group_id": unique("group"),
        "client_id": unique("client"),
        "metrics_port": 0,
        **TEST_GROUP_TIMEOUTS,
    }
    values.update(overrides)
    return StreamSettings(_env_file=None, **values)


def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    partition: int | None = None,
) -> None:
    """Send ``values`` (with ``keys``) to ``topic``, flush, and fail if any was not delivered."""
    if keys is not None and len(keys) != len(values):
        raise ValueError("keys and values differ in length")
    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=5)
    try:
        futures = [
            producer.send(
                topic, value=value, key=None if keys is None else keys[i], partition=partition
            )
            for i, value in enumerate(values)
        ]
        producer.flush(timeout=60)
        failed = [f.exception for f in futures if not f.succeeded()]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(values)} records not delivered: {failed[0]}")
    finally:
        producer.close(timeout=10)


def consume(
    bootstrap: str, topic: str, n: int | None = None, timeout_s: float = 30.0
) -> list[RawRecord]:
    """Every record of ``topic`` from the beginning, in offset order per partition.

    Stops at ``n`` records, or (``n=None``) once every partition has been read up to its
    highwater; raises ``TimeoutError`` if that takes longer than ``timeout_s``.
    """
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise TimeoutError(f"topic {topic} not found")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[RawRecord] = []
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend(
                    RawRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                    for r in batch
                )
            if n is not None and len(out) >= n:
                return out
            if n is None and all(_caught_up(consumer, tp) for tp in tps):
                return out
        raise TimeoutError(
            f"read {len(out)} record(s) of {topic} in {timeout_s:g}s"
            + ("" if n is None else f", expected {n}")
        )
    finally:
        consumer.close()


def _caught_up(consumer: KafkaConsumer, tp: TopicPartition) -> bool:
    high = consumer.highwater(tp)
    return high is not None and consumer.position(tp, timeout_ms=1_000) >= high


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 0.1 s; fail the test after ``timeout_s`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


def group_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets, read with the admin API."""
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in offsets.items()}


def threads_started_since(before: set[threading.Thread]) -> list[str]:
    """Names of the threads alive now that were not in ``before`` (``set(threading.enumerate())``
    taken earlier): what a piece of code left running, whatever kafka-python names its threads."""
    return [t.name for t in threading.enumerate() if t not in before]
