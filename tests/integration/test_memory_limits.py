"""The memory limits behave the same in the worker as in ``stream evaluate`` (a real broker).

One synthetic stream is evaluated offline and replayed into a one-partition topic consumed by a
:class:`~stream.worker.Worker`, both with ``STREAM_USER_TTL_SECONDS``, ``STREAM_MAX_USERS``
and ``STREAM_MAX_ITEMS`` set: the users and items held, the expirations and evictions and every
metric must be identical, and the worker's Prometheus counters must show the expirations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka_helpers import consume, produce

from producers.formats import read_events
from producers.synthetic import SyntheticConfig, SyntheticStream, write_jsonl
from stream.evaluate import evaluate
from stream.events import MetricsRecord
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings
from stream.worker import Worker

pytestmark = pytest.mark.integration

N_EVENTS = 3_000
CONFIG = SyntheticConfig(n_events=N_EVENTS, n_users=200, n_items=300, seed=8)


def test_the_worker_expires_and_evicts_exactly_like_evaluate(
    tmp_path: Path, kafka_bootstrap: str, kafka_settings: Callable[..., StreamSettings]
) -> None:
    path = tmp_path / "events.jsonl"
    assert write_jsonl(SyntheticStream(CONFIG).events(), path) == N_EVENTS
    s = kafka_settings(
        metrics_port=0,
        metrics_every_events=1_000,
        metrics_every_seconds=3_600.0,
        max_users=50,
        max_items=120,
        user_ttl_seconds=30.0,  # both limits bite on this stream (~50 users active in 30 s)
    )
    offline = evaluate(read_events(path, "jsonl"), s)
    memory = offline.memory
    assert memory["users"] <= 50 and memory["items"] <= 120
    assert memory["users_expired_cap"] > 0 and memory["users_expired_ttl"] > 0
    assert memory["items_evicted"] > 0

    lines = path.read_bytes().splitlines()
    keys = [str(json.loads(line)["user_id"]).encode() for line in lines]
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, lines, keys)
    worker = Worker(s)
    summary = worker.run(max_events=len(lines), idle_timeout=60)
    assert summary.processed == N_EVENTS

    published = [
        MetricsRecord.model_validate_json(r.value or b"")
        for r in consume(kafka_bootstrap, s.metrics_topic, n=None)
    ]
    last = published[-1]
    assert last.events == N_EVENTS
    assert last.model_dump(include=set(memory)) == memory
    for name, m in offline.models.items():
        assert last.cumulative_metrics[name].hit_rate == m.hit_rate, name
    sample = worker.registry.get_sample_value
    assert sample("stream_users_expired_total", {"reason": "cap"}) == last.users_expired_cap
    assert sample("stream_users_expired_total", {"reason": "ttl"}) == last.users_expired_ttl
    assert sample("stream_items_evicted_total", {}) == last.items_evicted
