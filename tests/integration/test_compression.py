"""Compressed topics: every Kafka codec is consumed, outputs are compressed on request, and a
codec that cannot be read is one clear error naming the partition (never a traceback)."""

from __future__ import annotations

import signal
from collections.abc import Callable

import kafka.codec
import pytest
from kafka import KafkaProducer
from kafka_helpers import consume, produce

from producers.sinks import KafkaSink
from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.events import Recommendation
from stream.kafka import UnreadableRecordsError
from stream.kafka.admin import ensure_topics
from stream.kafka.sink import RecordSink
from stream.settings import SettingsError, StreamSettings, load_settings
from stream.worker import Worker

pytestmark = pytest.mark.integration

CODECS = ("gzip", "snappy", "lz4", "zstd")


def events(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    stream = SyntheticStream(SyntheticConfig(n_events=n, n_users=40, n_items=120, seed=seed))
    return [(r.key, r.value) for r in stream.records()]


def produce_compressed(
    bootstrap: str, topic: str, codec: str, rows: list[tuple[bytes, bytes]]
) -> None:
    producer = KafkaProducer(bootstrap_servers=[bootstrap], compression_type=codec, linger_ms=50)
    try:
        futures = [producer.send(topic, key=k, value=v, partition=0) for k, v in rows]
        producer.flush(timeout=60)
        assert all(f.succeeded() for f in futures), codec
    finally:
        producer.close(timeout=10)


def test_every_codec_is_consumed_and_outputs_are_compressed_as_set(
    kafka_bootstrap: str, kafka_settings: Callable[..., StreamSettings]
) -> None:
    s = kafka_settings(models=("popularity",), recommender="popularity", compression_type="zstd")
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    rows = events(500, seed=5)
    chunks = [rows[i * 100 : (i + 1) * 100] for i in range(5)]
    for codec, chunk in zip(CODECS, chunks, strict=False):
        produce_compressed(kafka_bootstrap, s.events_topic, codec, chunk)
    produce(kafka_bootstrap, s.events_topic, [v for _, v in chunks[4]], [k for k, _ in chunks[4]])

    worker = Worker(s)
    summary = worker.run(max_events=len(rows), idle_timeout=30)
    assert summary.consumed == summary.processed == len(rows)
    assert summary.dead_lettered == 0
    recs = consume(kafka_bootstrap, s.recommendations_topic, n=None)
    offsets = [Recommendation.model_validate_json(r.value or b"").source_offset for r in recs]
    assert offsets == list(range(len(rows)))  # zstd-compressed outputs, read back
    assert summary.committed == {(s.events_topic, 0): len(rows)}


def test_the_output_compression_setting_reaches_the_producer_and_is_validated(
    kafka_settings: Callable[..., StreamSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    for codec in (*CODECS, "none"):
        sink = RecordSink(kafka_settings(compression_type=codec))
        try:
            # KafkaProducer.config is public: what the producer compresses its batches with.
            assert sink._producer.config["compression_type"] == (None if codec == "none" else codec)
        finally:
            sink.close()
    # python -m producers writes with the same setting.
    events_sink = KafkaSink(kafka_settings(compression_type="lz4"), "any-topic")
    try:
        assert events_sink._producer.config["compression_type"] == "lz4"
    finally:
        events_sink.close()
    monkeypatch.setenv("STREAM_COMPRESSION_TYPE", " LZ4")
    assert load_settings().compression_type == "lz4"
    monkeypatch.setenv("STREAM_COMPRESSION_TYPE", "brotli")
    with pytest.raises(SettingsError, match="STREAM_COMPRESSION_TYPE"):
        load_settings()


def test_a_codec_without_its_library_is_a_clear_error_naming_the_partition(
    kafka_bootstrap: str,
    kafka_settings: Callable[..., StreamSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = kafka_settings(models=("popularity",), recommender="popularity")
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    rows = events(60, seed=6)
    produce(kafka_bootstrap, s.events_topic, [v for _, v in rows[:20]], [k for k, _ in rows[:20]])
    produce_compressed(kafka_bootstrap, s.events_topic, "lz4", rows[20:])
    # As on a machine without the lz4 library (kafka-python checks at read time).
    monkeypatch.setattr(kafka.codec, "has_lz4", lambda: False)

    worker = Worker(s)
    with pytest.raises(UnreadableRecordsError) as caught:
        worker.run(max_events=len(rows), idle_timeout=30)
    message = str(caught.value)
    assert f"cannot read the records of {s.events_topic}[0]@20" in message, message
    assert "lz4" in message
    # What was read before them was processed and committed; nothing past them.
    assert worker.summary.processed == 20
    assert worker.summary.committed == {(s.events_topic, 0): 20}

    # The command line: one error line, exit 1, no traceback.
    from stream.__main__ import main

    for name, value in {
        "STREAM_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "STREAM_EVENTS_TOPIC": s.events_topic,
        "STREAM_RECOMMENDATIONS_TOPIC": s.recommendations_topic,
        "STREAM_METRICS_TOPIC": s.metrics_topic,
        "STREAM_DEAD_LETTER_TOPIC": s.dead_letter_topic,
        "STREAM_GROUP_ID": s.group_id + "-cli",
        "STREAM_METRICS_PORT": "0",
        "STREAM_MODELS": "popularity",
        "STREAM_RECOMMENDER": "popularity",
        "STREAM_SESSION_TIMEOUT_MS": str(s.session_timeout_ms),
        "STREAM_HEARTBEAT_INTERVAL_MS": str(s.heartbeat_interval_ms),
    }.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["worker", "--idle-timeout", "30"]) == 1
    finally:
        for sig, handler in handlers.items():  # the worker installed its own
            signal.signal(sig, handler)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{s.events_topic}[0]@20" in errors[0], err
