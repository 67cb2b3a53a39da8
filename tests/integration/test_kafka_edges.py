"""The Kafka edges (admin, EventSource, RecordSink) against a real broker.

Tests that need to kill or restart a broker start an embedded one of their own; the others
use the session's broker (``kafka_bootstrap``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
from kafka_helpers import consume, produce, settings_for, threads_started_since, unique

from stream.broker import EmbeddedBroker, free_port
from stream.kafka import BrokerUnavailableError, RawRecord, TopicPartition
from stream.kafka.admin import ensure_topics
from stream.kafka.sink import DeliveryError, OutputTooLargeError, RecordSink
from stream.kafka.source import EventSource, OffsetRegressionError
from stream.settings import StreamSettings

NewTopic = Callable[..., str]
MakeSettings = Callable[..., StreamSettings]


def poll_until(
    source: EventSource, n: int, timeout_s: float = 60.0, max_batches: int | None = None
) -> list[RawRecord]:
    """Poll ``source`` until ``n`` records arrived (or ``max_batches`` non-empty batches)."""
    out: list[RawRecord] = []
    batches = 0
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        batch = source.poll_batch(200)
        if batch:
            out.extend(batch)
            batches += 1
            if max_batches is not None and batches >= max_batches:
                break
    return out


def test_ensure_topics_creates_with_partitions_and_is_idempotent(
    kafka_settings: MakeSettings,
) -> None:
    s = kafka_settings()
    wanted = {s.events_topic: 3, s.recommendations_topic: 1}
    assert ensure_topics(s, wanted) == wanted
    assert ensure_topics(s, wanted) == wanted  # already there: fine
    assert ensure_topics(s, {s.events_topic: 5}) == {s.events_topic: 3}  # never resized


def test_sink_to_source_round_trip(kafka_settings: MakeSettings, new_topic: NewTopic) -> None:
    topic = new_topic(partitions=3)
    s = kafka_settings()
    sent = {f"user-{i}".encode(): f'{{"n": {i}}}'.encode() for i in range(200)}
    with RecordSink(s) as sink:
        for key, value in sent.items():
            sink.send(topic, key, value)
        sink.flush(timeout_s=30)
        assert sink.sent == 200
    with EventSource(s, [topic]) as source:
        records = poll_until(source, 200)
        assert {r.key: r.value for r in records} == sent
        assert len(records) == 200  # nothing twice
        assert {r.partition for r in records} == {0, 1, 2}
        assert source.assignment() == {(topic, 0), (topic, 1), (topic, 2)}
        assert all(r.timestamp_ms > 0 for r in records)
        for p in range(3):
            offsets = [r.offset for r in records if r.partition == p]
            assert offsets == list(range(len(offsets)))  # in order, no gaps


def test_tombstone_has_a_key_and_no_value(
    kafka_settings: MakeSettings, new_topic: NewTopic
) -> None:
    topic = new_topic()
    s = kafka_settings()
    with RecordSink(s) as sink:
        sink.send(topic, b"u1", None)
        sink.flush(timeout_s=30)
    [record] = consume(s.bootstrap_servers, topic, n=1)
    assert (record.key, record.value) == (b"u1", None)


def test_commit_then_a_new_member_resumes_right_after_it(
    kafka_settings: MakeSettings, new_topic: NewTopic
) -> None:
    topic = new_topic()
    s = kafka_settings()
    produce(s.bootstrap_servers, topic, [f"v{i}".encode() for i in range(10)])
    tp = (topic, 0)
    with EventSource(s, [topic]) as first:
        assert [r.offset for r in poll_until(first, 10)] == list(range(10))
        assert first.commit({tp: 4}) is True
        assert first.committed([tp]) == {tp: 4}
    with EventSource(s, [topic]) as second:
        resumed = poll_until(second, 6)
        assert [r.offset for r in resumed] == [4, 5, 6, 7, 8, 9]
        assert [r.value for r in resumed] == [f"v{i}".encode() for i in range(4, 10)]


def test_commit_refuses_to_go_backwards(kafka_settings: MakeSettings, new_topic: NewTopic) -> None:
    topic = new_topic()
    s = kafka_settings()
    produce(s.bootstrap_servers, topic, [b"x"] * 8)
    tp = (topic, 0)
    with EventSource(s, [topic]) as source:
        assert len(poll_until(source, 8)) == 8
        assert source.commit({tp: 6})
        with pytest.raises(OffsetRegressionError, match=rf"{topic}\[0\]@3"):
            source.commit({tp: 3})
        assert source.committed([tp]) == {tp: 6}
        assert source.commit({tp: 6})  # the same offset again is a no-op
        with pytest.raises(ValueError):
            source.commit({tp: -1})
        # A deliberate rewind lowers the floor.
        source.seek(tp, 2)
        assert [r.offset for r in poll_until(source, 6)] == [2, 3, 4, 5, 6, 7]
        assert source.commit({tp: 3})
        assert source.committed([tp]) == {tp: 3}


def test_lag_is_highwater_minus_position(kafka_settings: MakeSettings, new_topic: NewTopic) -> None:
    topic = new_topic()
    s = kafka_settings(max_poll_records=5)
    # Separate batches: the broker's "latest offset" is wrong for these on Tansu (BROKER.md),
    # so a lag computed from end_offsets would not match.
    for size in (3, 7, 2):
        produce(s.bootstrap_servers, topic, [b"e"] * size)
    tp = (topic, 0)
    with EventSource(s, [topic]) as source:
        first = poll_until(source, 1, max_batches=1)
        assert 1 <= len(first) <= 5
        position = first[-1].offset + 1
        assert source.position(tp) == position
        assert source.lag() == {tp: 12 - position}
        rest = poll_until(source, 12 - len(first))
        assert len(first) + len(rest) == 12
        assert source.lag() == {tp: 0}
        produce(s.bootstrap_servers, topic, [b"late"] * 4)
        deadline = time.monotonic() + 30
        late: list[RawRecord] = []
        while source.lag().get(tp) != 4 and not late and time.monotonic() < deadline:
            # Highwater comes with fetch responses: a fetch may see the 4 new records (lag 4)
            # or already return them (lag 0 afterwards).
            late = source.poll_batch(200)
        assert late or source.lag() == {tp: 4}


def test_rebalance_callbacks_commit_before_partitions_move(
    kafka_settings: MakeSettings, new_topic: NewTopic
) -> None:
    """A member commits in ``on_revoked``; the new owner resumes exactly there."""
    topic = new_topic(partitions=2)
    s = kafka_settings()
    for p in (0, 1):
        produce(s.bootstrap_servers, topic, [f"{p}-{i}".encode() for i in range(10)], partition=p)

    first_seen: list[RawRecord] = []
    positions: dict[TopicPartition, int] = {}
    revoked: list[TopicPartition] = []

    def on_revoked(partitions: list[TopicPartition]) -> None:
        revoked.extend(partitions)
        first.commit({tp: positions[tp] for tp in partitions if tp in positions})

    first = EventSource(s, [topic], on_revoked=on_revoked)
    stop = threading.Event()

    def run_first() -> None:
        while not stop.is_set():
            for r in first.poll_batch(100):
                first_seen.append(r)
                positions[(r.topic, r.partition)] = r.offset + 1

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(first_seen) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(first_seen) == 20
        with EventSource(s, [topic]) as second:
            while not second.assignment() and time.monotonic() < deadline + 60:
                assert second.poll_batch(200) == []  # nothing uncommitted is left for it
            [moved] = second.assignment()
            for p in (0, 1):
                produce(
                    s.bootstrap_servers,
                    topic,
                    [f"{p}-{i}".encode() for i in range(10, 20)],
                    partition=p,
                )
            second_seen = poll_until(second, 10)
    finally:
        stop.set()
        thread.join()
        first.close()

    assert moved in revoked
    assert [r.offset for r in second_seen] == list(range(10, 20))
    assert {(r.topic, r.partition) for r in second_seen} == {moved}
    everything = [(r.partition, r.offset) for r in first_seen + second_seen]
    assert len(everything) == len(set(everything)), "a record was consumed twice"


def test_on_assigned_chooses_where_each_partition_starts(
    kafka_settings: MakeSettings, new_topic: NewTopic
) -> None:
    topic = new_topic()
    s = kafka_settings()
    produce(s.bootstrap_servers, topic, [f"v{i}".encode() for i in range(10)])
    assigned: list[list[TopicPartition]] = []

    def on_assigned(partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        assigned.append(partitions)
        return {tp: 7 for tp in partitions}  # e.g. the offset a checkpoint covers

    with EventSource(s, [topic], on_assigned=on_assigned) as source:
        assert [r.offset for r in poll_until(source, 3)] == [7, 8, 9]
    assert assigned == [[(topic, 0)]]


def test_an_evicted_member_reports_lost_partitions_and_cannot_commit(
    kafka_settings: MakeSettings, new_topic: NewTopic, caplog: pytest.LogCaptureFixture
) -> None:
    """Not polling for ``max_poll_interval_ms`` makes the member leave the group."""
    topic = new_topic()
    s = kafka_settings(max_poll_interval_ms=1_500)
    tp = (topic, 0)
    outcomes: list[bool] = []

    def on_revoked(partitions: list[TopicPartition]) -> None:
        outcomes.append(source.commit({tp: 1}))

    source = EventSource(s, [topic], on_revoked=on_revoked)  # on_lost defaults to on_revoked
    try:
        deadline = time.monotonic() + 60
        while not source.assignment() and time.monotonic() < deadline:
            source.poll_batch(200)
        assert source.assignment() == {tp}
        time.sleep(3)  # longer than max_poll_interval_ms: evicted
        with caplog.at_level(logging.WARNING, logger="stream.kafka.source"):
            while not outcomes and time.monotonic() < deadline:
                source.poll_batch(200)
        assert outcomes == [False]
        assert any("partitions lost" in r.getMessage() for r in caplog.records)
        assert source.committed([tp]) == {tp: None}
    finally:
        source.close()


def test_oversized_output_is_a_typed_error(
    kafka_settings: MakeSettings, new_topic: NewTopic
) -> None:
    topic = new_topic()
    with RecordSink(kafka_settings()) as sink:
        with pytest.raises(OutputTooLargeError) as info:
            sink.send(topic, b"k", b"x" * 2_000_000)
        assert info.value.topic == topic and info.value.limit == 1_048_576
        sink.send(topic, b"k", b"small")
        sink.flush(timeout_s=30)
    assert [r.value for r in consume(kafka_settings().bootstrap_servers, topic)] == [b"small"]


def test_flush_reports_failures_and_keeps_reporting_them() -> None:
    with EmbeddedBroker() as broker:
        s = settings_for(broker.bootstrap)
        ensure_topics(s, {"out": 1})
        sink = RecordSink(s, delivery_timeout_ms=2_000)
        try:
            sink.send("out", b"k0", b"delivered")
            sink.flush(timeout_s=30)
            broker.stop()
            sink.send("out", b"k1", b"lost")
            with pytest.raises(DeliveryError, match="1 record") as info:
                sink.flush(timeout_s=30)
            assert [(f.topic, f.key, f.value) for f in info.value.failures] == [
                ("out", b"k1", b"lost")
            ]
            # Sticky: a second flush cannot make the lost record look delivered.
            with pytest.raises(DeliveryError):
                sink.flush(timeout_s=5)
            assert [f.value for f in sink.take_failures()] == [b"lost"]
            sink.flush(timeout_s=5)
        finally:
            sink.close(timeout_s=1)


def test_close_without_a_broker_stops_the_producer_and_reports_what_was_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with EmbeddedBroker() as broker:
        s = settings_for(broker.bootstrap)
        ensure_topics(s, {"out": 1})
        before = set(threading.enumerate())
        sink = RecordSink(s)
        assert threads_started_since(before), "a producer runs a thread (else this test is moot)"
        sink.send("out", b"k0", b"delivered")
        sink.flush(timeout_s=30)
        broker.stop()
        sink.send("out", b"k1", b"lost")
        with caplog.at_level(logging.ERROR, logger="stream.kafka.sink"):
            sink.close(timeout_s=1)
    assert any("1 record(s) were never delivered" in r.getMessage() for r in caplog.records)
    assert threads_started_since(before) == []


def test_producer_is_replaced_after_a_broker_restart() -> None:
    """kafka-python's idempotent producer fails for good when the broker forgets its id."""
    port = free_port()
    with EmbeddedBroker(port=port) as broker:
        s = settings_for(broker.bootstrap)
        ensure_topics(s, {"out": 1})
        sink = RecordSink(s)
        try:
            sink.send("out", b"k", b"before")
            sink.flush(timeout_s=30)
            broker.stop()
            broker.start()  # same port, empty
            ensure_topics(s, {"out": 1})
            sink.send("out", b"k", b"after")
            sink.flush(timeout_s=60)
            assert sink.replaced == 1
            assert [r.value for r in consume(broker.bootstrap, "out", n=1)] == [b"after"]
        finally:
            sink.close(timeout_s=1)


def test_source_gives_up_when_no_broker_answers_by_the_deadline() -> None:
    s = settings_for(f"127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailableError, match="no Kafka broker reachable"):
        EventSource(s, [unique("t")], unavailable_timeout_s=2)
    with pytest.raises(BrokerUnavailableError):
        ensure_topics(s, {unique("t"): 1}, timeout_s=2)


def test_failed_connection_attempts_leave_no_client_threads() -> None:
    # kafka-python 3.0 leaves a failed constructor's IO thread running: a worker retrying
    # through an outage would pile them up (one per attempt, each with a selector and sockets).
    s = settings_for(f"127.0.0.1:{free_port()}")
    before = set(threading.enumerate())
    with pytest.raises(BrokerUnavailableError):
        EventSource(s, [unique("t")], unavailable_timeout_s=3)
    with pytest.raises(BrokerUnavailableError):
        ensure_topics(s, {unique("t"): 1}, timeout_s=3)
    assert threads_started_since(before) == []


def test_source_reports_a_lost_broker_once_then_gives_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with EmbeddedBroker() as broker:
        s = settings_for(broker.bootstrap, reconnect_backoff_max_s=1.0)
        topic = unique("t")
        ensure_topics(s, {topic: 1})
        produce(broker.bootstrap, topic, [b"x"])
        source = EventSource(s, [topic], unavailable_timeout_s=4)
        try:
            assert len(poll_until(source, 1)) == 1
            broker.stop()
            caplog.clear()
            with (
                caplog.at_level(logging.INFO, logger="stream.kafka.source"),
                pytest.raises(BrokerUnavailableError, match="unreachable for"),
            ):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    assert source.poll_batch(200) == []
            lost = [r for r in caplog.records if "lost the Kafka broker" in r.getMessage()]
            assert len(lost) == 1
        finally:
            source.close()


def test_source_reconnects_after_a_broker_restart(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    with EmbeddedBroker(port=port) as broker:
        s = settings_for(broker.bootstrap, reconnect_backoff_max_s=1.0)
        topic = unique("t")
        ensure_topics(s, {topic: 1})
        produce(broker.bootstrap, topic, [b"before"])
        source = EventSource(s, [topic])
        try:
            assert [r.value for r in poll_until(source, 1)] == [b"before"]
            with caplog.at_level(logging.INFO, logger="stream.kafka.source"):
                broker.stop()
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    source.poll_batch(200)
                broker.start()  # same port, empty: the topic must be created again
                ensure_topics(s, {topic: 1})
                produce(broker.bootstrap, topic, [b"after"])
                after = poll_until(source, 1, timeout_s=90)
            assert [r.value for r in after] == [b"after"]
            messages = [r.getMessage() for r in caplog.records]
            assert sum("lost the Kafka broker" in m for m in messages) == 1
            assert sum("is back after" in m for m in messages) == 1
        finally:
            source.close()
