"""Replay and the synthetic stream into a real broker, read back exactly what was sent."""

from __future__ import annotations

import gzip
import json
import random
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka_helpers import consume, settings_for, threads_started_since

from producers.__main__ import main
from producers.records import Record, encode_event
from producers.sinks import KafkaSink
from producers.synthetic import generate
from stream.broker import EmbeddedBroker
from stream.kafka import RawRecord


def by_key(records: list[RawRecord]) -> dict[bytes, list[RawRecord]]:
    """Records per key in offset order (Kafka orders per partition, and a key has one)."""
    out: dict[bytes, list[RawRecord]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert r.key is not None
        out[r.key].append(r)
    return out


def test_replay_sends_every_valid_event_keyed_by_user_in_time_order(
    kafka_bootstrap: str,
    new_topic: Callable[..., str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rng = random.Random(11)
    events: list[dict[str, Any]] = [
        {
            "user_id": f"user-{rng.randrange(12)}",
            "item_id": f"item-{rng.randrange(50)}",
            "event_type": rng.choice(["view", "click", "add_to_cart", "purchase"]),
            "timestamp": rng.randrange(1_700_000_000, 1_700_000_600),  # many ties
        }
        for _ in range(300)
    ]
    lines = [encode_event(e) for e in events]
    lines[40:40] = [b"{oops", b"", b'{"user_id": "x", "event_type": "view", "timestamp": 1}']
    path = tmp_path / "events.log"  # gzip without a .gz name: detected by its magic bytes
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    topic = new_topic(partitions=3)

    code = main(
        ["replay", str(path), "--format", "jsonl", "--bootstrap-servers", kafka_bootstrap,
         "--topic", topic, "--sort-buffer", "64", "--quiet"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert "sent      300" in err and "rejected  3" in err

    got = consume(kafka_bootstrap, topic, n=None, timeout_s=60)
    assert len(got) == 300
    expected: dict[bytes, list[bytes]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e["timestamp"]):  # stable: ties in file order
        expected[e["user_id"].encode()].append(encode_event(e))
    received = by_key(got)
    assert set(received) == set(expected)
    for key, records in received.items():
        assert [r.value for r in records] == expected[key]
        assert len({r.partition for r in records}) == 1


def test_movielens_replay_with_a_limit_and_a_rate(
    kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    rows = [f"{u}\t{100 + u}\t{1 + u % 5}\t{880_000_000 + (u * 7) % 40}" for u in range(1, 41)]
    path = tmp_path / "u.data"
    path.write_text("\n".join(rows) + "\n")
    topic = new_topic()
    code = main(
        ["replay", str(path), "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
         "--limit", "10", "--rate", "200", "--quiet"]
    )  # fmt: skip
    assert code == 0
    got = consume(kafka_bootstrap, topic, n=None, timeout_s=60)
    values = [json.loads(r.value or b"") for r in got]
    assert [v["timestamp"] for v in values] == list(range(880_000_000, 880_000_010))
    assert all(v["event_type"] == "rating" for v in values)
    assert [r.key for r in got] == [v["user_id"].encode() for v in values]


def test_synthetic_stream_in_kafka_is_the_python_api_stream(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=2)
    code = main(
        ["synthetic", "--events", "3000", "--seed", "21", "--drift-at", "1500",
         "--bootstrap-servers", kafka_bootstrap, "--topic", topic, "--quiet"]
    )  # fmt: skip
    assert code == 0
    expected: dict[bytes, list[bytes]] = defaultdict(list)
    for e in generate(3000, seed=21, drift_at=1500):
        expected[e["user_id"].encode()].append(encode_event(e))
    received = by_key(consume(kafka_bootstrap, topic, n=None, timeout_s=60))
    assert {k: [r.value for r in v] for k, v in received.items()} == expected


def test_kafka_sink_counts_a_record_the_client_refuses(
    kafka_bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic()
    sink = KafkaSink(settings_for(kafka_bootstrap), topic, connect_timeout_s=10)
    try:
        sink.send_one(Record(1, 1.0, b"u1", b'{"a":1}'))
        sink.send_one(Record(2, 2.0, b"u2", b"x" * 2_000_000))  # over max_request_size
        sink.send_one(Record(3, 3.0, b"u3", b'{"a":3}'))
        sink.flush()
    finally:
        sink.close()
    assert (sink.queued, sink.delivered, sink.failed) == (3, 2, 1)
    assert [r.key for r in consume(kafka_bootstrap, topic, n=None)] == [b"u1", b"u3"]


def test_records_the_broker_never_acknowledged_count_as_failed() -> None:
    # A broker of its own, killed half-way: the sink must not report those records as sent.
    broker = EmbeddedBroker().start()
    try:
        settings = settings_for(broker.bootstrap)
        before = set(threading.enumerate())
        sink = KafkaSink(settings, "doomed", connect_timeout_s=10, flush_timeout_s=3)
        for i in range(10):
            sink.send_one(Record(i, float(i), b"u", b"{}"))
        sink.flush()
        assert (sink.delivered, sink.failed) == (10, 0)
        broker.stop()
        for i in range(5):
            sink.send_one(Record(10 + i, float(i), b"u", b"{}"))
        sink.flush()
        sink.close()
        assert (sink.queued, sink.delivered, sink.failed) == (15, 10, 5)
        # kafka-python's close() gives up on a flush before stopping its sender thread.
        assert threads_started_since(before) == []
    finally:
        broker.stop()
