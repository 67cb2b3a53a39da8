"""What an operator sees: idle workers still report, restored checkpoints follow the settings,
checkpoint failures show in readiness, the summary and the exit status; producers create the
events topic as the worker would."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka_helpers import consume, produce

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.events import MetricsRecord
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings
from stream.worker import Worker

pytestmark = pytest.mark.integration

MakeSettings = Callable[..., StreamSettings]


def synthetic(n: int, seed: int = 3) -> tuple[list[bytes | None], list[bytes | None]]:
    records = list(
        SyntheticStream(SyntheticConfig(n_events=n, n_users=30, n_items=80, seed=seed)).records()
    )
    return [r.value for r in records], [r.key for r in records]


def metrics_records(bootstrap: str, topic: str) -> list[MetricsRecord]:
    return [MetricsRecord.model_validate_json(r.value or b"") for r in consume(bootstrap, topic)]


# --- metrics while idle -----------------------------------------------------------------------


@pytest.mark.parametrize("n_events", [60, 0])
def test_an_idle_worker_publishes_metrics_every_interval(
    kafka_bootstrap: str, kafka_settings: MakeSettings, n_events: int
) -> None:
    s = kafka_settings(
        models=("popularity",),
        recommender="popularity",
        metrics_every_events=100_000,
        metrics_every_seconds=0.5,
    )
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    if n_events:
        produce(kafka_bootstrap, s.events_topic, *synthetic(n_events))
    summary = Worker(s).run(idle_timeout=4.0)  # idle for 4 s after the last event
    assert summary.consumed == n_events
    records = metrics_records(kafka_bootstrap, s.metrics_topic)
    # About eight intervals of idleness; before the fix: one record at the stop, or none.
    assert len(records) >= 4, len(records)
    assert summary.metrics_records == len(records)
    assert {r.events for r in records[1:]} == {n_events}
