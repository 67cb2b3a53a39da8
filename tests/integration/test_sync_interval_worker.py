"""The worker sizes its light-delta interval from the events topic's partitions as the broker
reports them (issue 12, ``STREAM_MODEL_SYNC_EVENTS=auto``), not from STREAM_EVENTS_PARTITIONS."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka import KafkaAdminClient
from kafka_helpers import consume, produce, unique

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings
from stream.sync import ShardDelta
from stream.worker import Worker

pytestmark = pytest.mark.integration

PARTITIONS = 8


@pytest.mark.parametrize(("every", "expected"), [("auto", 5), (10, 10)])
def test_the_worker_shares_every_ceil_staleness_over_p_minus_1_events(
    kafka_bootstrap: str,
    kafka_settings: Callable[..., StreamSettings],
    every: object,
    expected: int,
) -> None:
    s = kafka_settings(
        models=("popularity",),
        recommender="popularity",
        events_partitions=1,  # the topic exists with 8: the broker's count is what counts
        model_sync=True,
        model_sync_events=every,
        model_sync_ms=3_600_000,  # only the event trigger (and the final delta) publishes
        model_updates_topic=unique("model-updates"),
    )
    ensure_topics(s, {s.events_topic: PARTITIONS}, timeout_s=30)
    sent = list(SyntheticStream(SyntheticConfig(n_events=480, n_users=64, seed=3)).records())
    produce(kafka_bootstrap, s.events_topic, [r.value for r in sent], [r.key for r in sent])

    worker = Worker(s)
    summary = worker.run(max_events=len(sent), idle_timeout=30)
    assert summary.processed == len(sent)
    assert worker._sync is not None and worker._sync.every_events == expected
    # What follows the count while running: the consumer's metadata cache, read without a
    # request (stream.kafka.source.cached_partition_count).
    assert worker._source is not None
    assert worker._source.partition_count(s.events_topic) == PARTITIONS

    deltas = [
        ShardDelta.decode(r.value or b"")
        for r in consume(kafka_bootstrap, s.model_updates_topic, n=None)
    ]
    by_shard: dict[int, list[int]] = {}
    for delta in deltas:
        by_shard.setdefault(delta.source_partition, []).append(delta.events)
    assert len(by_shard) == PARTITIONS
    for sizes in by_shard.values():
        # Every delta but a shard's last (the final one, shared at the stop) holds exactly
        # the interval's events.
        assert sizes[:-1] and set(sizes[:-1]) == {expected}, by_shard
        assert 0 <= sizes[-1] <= expected


@pytest.mark.parametrize("partitions", [1, 3])
def test_by_default_the_sync_is_on_exactly_when_the_events_topic_has_several_partitions(
    kafka_bootstrap: str, kafka_settings: Callable[..., StreamSettings], partitions: int
) -> None:
    """STREAM_MODEL_SYNC=auto (the default): a topic found with several partitions (here
    created by someone else, as a producer's auto-creation would) is one model."""
    s = kafka_settings(models=("popularity",), recommender="popularity")
    assert s.model_sync == "auto" and s.events_partitions == 1
    ensure_topics(s, {s.events_topic: partitions}, timeout_s=30)
    sent = list(SyntheticStream(SyntheticConfig(n_events=120, n_users=32, seed=3)).records())
    produce(kafka_bootstrap, s.events_topic, [r.value for r in sent], [r.key for r in sent])

    worker = Worker(s)
    assert worker.run(max_events=len(sent), idle_timeout=30).processed == len(sent)
    admin = KafkaAdminClient(bootstrap_servers=[kafka_bootstrap])
    try:
        created = s.model_updates_topic in admin.list_topics()
    finally:
        admin.close()
    assert created == (partitions > 1)
    assert (worker._sync is not None) == (partitions > 1)
    if partitions > 1:
        deltas = [
            ShardDelta.decode(r.value or b"")
            for r in consume(kafka_bootstrap, s.model_updates_topic, n=None)
        ]
        assert {d.source_partition for d in deltas} == set(range(partitions))
        assert sum(d.events for d in deltas) == len(sent)
