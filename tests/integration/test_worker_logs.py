"""What a long worker run logs: progress now and then, drift summarised, not one line each."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest
from kafka_helpers import produce

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings
from stream.worker import Worker

pytestmark = pytest.mark.integration


def test_drift_is_summarised_per_metrics_record_and_progress_is_logged(
    kafka_bootstrap: str,
    kafka_settings: Callable[..., StreamSettings],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = SyntheticStream(
        SyntheticConfig(n_events=6_000, n_users=60, n_items=200, seed=3, drift_at=3_000)
    )
    rows = [(r.key, r.value) for r in stream.records()]
    # Every detection reported (no filter), so that there are many to summarise.
    s = kafka_settings(metrics_every_events=500, drift_direction="both", drift_min_change=0.0)
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, [v for _, v in rows], [k for k, _ in rows])
    monkeypatch.setattr(Worker, "PROGRESS_EVERY_S", 0.5)
    caplog.set_level(logging.INFO, logger="stream")

    summary = Worker(s).run(max_events=len(rows), idle_timeout=30)

    assert summary.processed == len(rows)
    assert len(summary.drifts) >= 2, "the stream should make the detectors fire"
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert not [m for _, m in messages if m.startswith("drift detected by")]
    counted = [
        (level, re.match(r"drift detected (\d+) time\(s\) since the last metrics record: ", m))
        for level, m in messages
    ]
    lines = [(level, match) for level, match in counted if match]
    assert {level for level, _ in lines} == {logging.INFO}
    assert sum(int(match.group(1)) for _, match in lines) == len(summary.drifts)
    progress = [m for _, m in messages if m.startswith("progress: consumed ")]
    assert progress, "a long run logs its progress"
    assert "/s over the last" in progress[-1] and "served model blend: HR@10" in progress[-1]
