"""The Kafka client's own ceiling: consume an event, produce one record for it, as fast as possible.

No model, no evaluation: this is the most a one-output-per-event worker can do on this client
(kafka-python) and machine. N ~300-byte JSON events are produced first (not timed); then a loop
consumes them, decodes each (``json.loads``, as the worker must), produces one ~200-byte JSON
record per event to another topic, and flushes at the end. Timed: the loop and the final flush.

    python benchmarks/kafka_ceiling.py [--bootstrap HOST:PORT] [-n 50000] [--edges]

Without ``--bootstrap`` an embedded broker is started. ``--edges`` also measures the same loop
through the project's ``EventSource``/``RecordSink`` (group member, explicit commits per batch).
Producer settings are the project's defaults (``acks=all``, idempotent, ``linger_ms=5``).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.broker import EmbeddedBroker
from stream.kafka.admin import ensure_topics
from stream.kafka.sink import RecordSink
from stream.kafka.source import EventSource
from stream.settings import StreamSettings

__all__ = ["measure_ceiling", "measure_edges_ceiling", "prepare_events"]

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")


def _settings(bootstrap: str, **overrides: object) -> StreamSettings:
    return StreamSettings(
        _env_file=None,
        bootstrap_servers=bootstrap,
        group_id=f"ceiling-{uuid.uuid4().hex[:8]}",
        session_timeout_ms=6_000,
        **overrides,  # type: ignore[arg-type]
    )


def _event(rng: random.Random, i: int) -> bytes:
    """A ~300-byte event, like the synthetic producer's."""
    event = {
        "user_id": f"user-{rng.randrange(5_000):05d}",
        "item_id": f"item-{rng.randrange(20_000):06d}",
        "event_type": rng.choice(EVENT_TYPES),
        "timestamp": 1_700_000_000.0 + i,
        "context": {
            "session": uuid.UUID(int=rng.getrandbits(128)).hex,
            "device": rng.choice(("ios", "android", "web")),
            "page": f"/catalog/{rng.randrange(100)}/item",
            "referrer": "https://example.com/search?q=" + "x" * rng.randrange(40, 60),
        },
    }
    return json.dumps(event).encode()


def prepare_events(bootstrap: str, n: int, seed: int = 1) -> tuple[str, str]:
    """Create an input and an output topic and fill the input with ``n`` events (not timed)."""
    source_topic = f"ceiling-in-{uuid.uuid4().hex[:8]}"
    sink_topic = f"ceiling-out-{uuid.uuid4().hex[:8]}"
    ensure_topics(_settings(bootstrap), {source_topic: 1, sink_topic: 1})
    rng = random.Random(seed)
    producer = KafkaProducer(
        bootstrap_servers=[bootstrap], linger_ms=20, acks=1, enable_idempotence=False
    )
    try:
        for i in range(n):
            value = _event(rng, i)
            producer.send(source_topic, value=value, key=value[13:23])
        producer.flush()
    finally:
        producer.close()
    return source_topic, sink_topic


def _output(event: dict[str, object], offset: int) -> bytes:
    """A ~200-byte record derived from the event."""
    return json.dumps(
        {
            "user_id": event["user_id"],
            "items": [event["item_id"], "item-000001", "item-000002"],
            "model": "ceiling",
            "source_offset": offset,
            "created_at": 1_700_000_000.0,
        }
    ).encode()


def measure_ceiling(bootstrap: str, n: int = 50_000) -> float:
    """Events per second of a bare kafka-python consume → decode → produce loop."""
    source_topic, sink_topic = prepare_events(bootstrap, n)
    tp = TopicPartition(source_topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=[bootstrap], enable_auto_commit=False)
    producer = KafkaProducer(bootstrap_servers=[bootstrap], linger_ms=5)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        done = 0
        started = time.perf_counter()
        while done < n:
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    event = json.loads(record.value)
                    producer.send(sink_topic, value=_output(event, record.offset), key=record.key)
                    done += 1
        producer.flush()
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
        producer.close()
    return n / elapsed


def measure_edges_ceiling(bootstrap: str, n: int = 50_000) -> float:
    """The same loop through ``EventSource`` and ``RecordSink``, flushing and committing per
    batch as the worker does (group join excluded from the timing)."""
    source_topic, sink_topic = prepare_events(bootstrap, n)
    settings = _settings(bootstrap)
    source = EventSource(settings, [source_topic])
    sink = RecordSink(settings)
    try:
        pending = []
        while not source.assignment():
            pending = source.poll_batch(200)
        done = 0
        started = time.perf_counter()
        while done < n:
            batch = pending or source.poll_batch(500)
            pending = []
            for record in batch:
                assert record.value is not None
                event = json.loads(record.value)
                sink.send(sink_topic, record.key, _output(event, record.offset))
            if batch:
                done += len(batch)
                sink.flush()
                source.commit({(source_topic, 0): batch[-1].offset + 1})
        elapsed = time.perf_counter() - started
    finally:
        source.close()
        sink.close()
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: embedded)")
    parser.add_argument("-n", type=int, default=50_000, help="events (default 50,000)")
    parser.add_argument("--edges", action="store_true", help="also time EventSource/RecordSink")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # kafka-python warns about its IO loop decoding large fetches; not news here.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    broker = None if ns.bootstrap else EmbeddedBroker().start()
    bootstrap = ns.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    try:
        rate = measure_ceiling(bootstrap, ns.n)
        print(f"kafka-python consume+decode+produce: {rate:,.0f} events/s ({ns.n:,} events)")
        if ns.edges:
            rate = measure_edges_ceiling(bootstrap, ns.n)
            print(f"EventSource+RecordSink (flush+commit per batch): {rate:,.0f} events/s")
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
