"""Issue 13: a promotion in the live worker, on a real broker.

Users view ``a<j>`` then ``b<j>``: the item-to-item model predicts every second event,
popularity hardly any. The worker starts serving popularity; the policy promotes knn. The
promotion is published on the metrics topic (at once, in a metrics record), counted in
Prometheus with the served-model gauge, and the recommendations switch model and
``model_version`` at the promotion's offset.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka_helpers import consume, produce
from prometheus_client import CollectorRegistry

from stream.events import MetricsRecord, Recommendation
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings
from stream.worker import Worker

pytestmark = pytest.mark.integration


def pairs_lines(n_users: int = 400, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    lines = []
    for u in range(n_users):
        j = rng.randrange(150)
        for item in (f"a{j}", f"b{j}"):
            record = {"user_id": f"u{u}", "item_id": item, "event_type": "view"}
            lines.append(json.dumps({**record, "timestamp": 1_700_000_000 + len(lines)}).encode())
    return lines


def test_the_worker_publishes_a_promotion_and_versioned_recommendations(
    kafka_bootstrap: str, kafka_settings: Callable[..., StreamSettings]
) -> None:
    s = kafka_settings(
        metrics_port=0,
        models=("popularity", "knn"),
        recommender="popularity",
        metric_window=100,
        promotion_min_events=60,
        metrics_every_events=10_000,
        metrics_every_seconds=3_600.0,
    )
    lines = pairs_lines()
    keys = [json.loads(line)["user_id"].encode() for line in lines]
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, lines, keys)
    registry = CollectorRegistry()
    summary = Worker(s, registry=registry).run(max_events=len(lines), idle_timeout=60)
    assert summary.processed == len(lines)

    assert [(p.from_model, p.to_model) for p in summary.promotions] == [("popularity", "knn")]
    promotion = summary.promotions[0]
    published = [
        MetricsRecord.model_validate_json(r.value or b"")
        for r in consume(kafka_bootstrap, s.metrics_topic, n=None)
    ]
    with_promotion = [m for m in published if m.promotions]
    assert len(with_promotion) == 1
    record = with_promotion[0]
    # Published when it happened, not at the next periodic record (every 10,000 events here).
    assert record.events == promotion.event < len(lines)
    assert record.promotions[0].model_dump() == promotion.model_dump()
    assert record.served == {"knn": 1} and published[-1].served == {"knn": 1}

    recs = [
        Recommendation.model_validate_json(r.value or b"")
        for r in consume(kafka_bootstrap, s.recommendations_topic, n=len(lines))
    ]
    assert promotion.source_offset is not None
    switch = promotion.source_offset
    assert {(r.model, r.model_version) for r in recs[:switch]} == {("popularity", 1)}
    assert {(r.model, r.model_version) for r in recs[switch:]} == {("knn", 2)}

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("stream_promotions_total", **{"from": "popularity", "to": "knn"}) == 1.0
    assert sample("stream_served_model", model="knn") == 1.0
    assert sample("stream_served_model", model="popularity") == 0.0
    assert sample("stream_served_model_version") == 2.0
    assert summary.served_model("popularity") == "knn"


def test_a_restarted_worker_serves_the_promoted_model_at_its_version(
    kafka_bootstrap: str, kafka_settings: Callable[..., StreamSettings], tmp_path: Path
) -> None:
    s = kafka_settings(
        metrics_port=0,
        models=("popularity", "knn"),
        recommender="popularity",
        metric_window=100,
        promotion_min_events=60,
        checkpoint_dir=tmp_path / "checkpoints",
        checkpoint_key="promotion-restart-test-key",
    )
    lines = pairs_lines()
    keys = [json.loads(line)["user_id"].encode() for line in lines]
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, lines, keys)
    first = Worker(s).run(max_events=500, idle_timeout=60)
    assert [p.to_model for p in first.promotions] == ["knn"]
    # A new process (worker) restores the shard from the checkpoint written at shutdown.
    second = Worker(s).run(max_events=len(lines) - 500, idle_timeout=60)
    assert second.processed == len(lines) - 500 and second.promotions == []
    recs = [
        Recommendation.model_validate_json(r.value or b"")
        for r in consume(kafka_bootstrap, s.recommendations_topic, n=len(lines))
    ]
    assert {(r.model, r.model_version) for r in recs[500:]} == {("knn", 2)}
    # Without the checkpoint the second worker would have started over with popularity, v1.
    assert recs[500].source_offset == 500
