"""Issue #3: ``evaluate`` and the worker measure the same thing on the same events.

One synthetic stream (ratings and an abrupt drift included) is written to a JSONL file. The
offline evaluator reads the file; the same lines are replayed, in the same order, into a
one-partition topic consumed by a :class:`~stream.worker.Worker`. Both run the same core, so
every metric, every count and every drift point must be identical, not merely close.
The ``evaluate`` command line is checked too: its report and its failures.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka_helpers import consume, produce

from producers.formats import read_events
from producers.synthetic import SyntheticConfig, SyntheticStream, write_jsonl
from stream.evaluate import EvaluationResult, evaluate
from stream.events import MetricsRecord
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings
from stream.worker import Worker

pytestmark = pytest.mark.integration

N_EVENTS = 4_000
CONFIG = SyntheticConfig(
    n_events=N_EVENTS, n_users=150, n_items=300, seed=21, ratings_fraction=0.1, drift_at=2_000
)
METRICS = ("hit_rate", "ndcg", "mrr", "mae", "rmse", "evaluated", "rated", "coverage")


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    assert write_jsonl(SyntheticStream(CONFIG).events(), path) == N_EVENTS
    return path


def offline(path: Path, settings: StreamSettings) -> EvaluationResult:
    return evaluate(read_events(path, "jsonl"), settings)


def test_evaluate_and_the_worker_produce_the_same_metrics(
    jsonl: Path, kafka_bootstrap: str, kafka_settings: Callable[..., StreamSettings]
) -> None:
    s = kafka_settings(
        metrics_port=0,
        drift_min_events=300,
        # This short stream's drift is a fall of less than 40 %: reported (after the evidence
        # the filter waits for) once any significant fall for the worse counts.
        drift_min_change=0.0,
        metrics_every_events=1_000,
        metrics_every_seconds=3_600.0,
    )
    result = offline(jsonl, s)

    lines = jsonl.read_bytes().splitlines()
    keys = [str(json.loads(line)["user_id"]).encode() for line in lines]
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, lines, keys)
    summary = Worker(s).run(max_events=len(lines), idle_timeout=60)
    assert summary.consumed == summary.processed == N_EVENTS

    published = [
        MetricsRecord.model_validate_json(r.value or b"")
        for r in consume(kafka_bootstrap, s.metrics_topic, n=None)
    ]
    last = published[-1]
    assert summary.last_metrics is not None
    assert last.model_dump(exclude={"created_at"}) == summary.last_metrics.model_dump(
        exclude={"created_at"}
    )

    assert result.events == last.events == N_EVENTS
    assert set(result.models) == set(last.cumulative_metrics) == set(s.models)
    for name, offline_metrics in result.models.items():
        live = last.cumulative_metrics[name]
        for metric in METRICS:
            assert getattr(live, metric) == getattr(offline_metrics, metric), (name, metric)
    # The comparison is not vacuous: rankings were scored, ratings too, and drift was seen.
    assert all(m.evaluated > 1_000 and m.hit_rate for m in result.models.values())
    assert result.models["biased_mf"].rated > 200 and result.models["biased_mf"].mae is not None
    assert result.drifts, "the stream's drift should be detected by both"

    def points(drifts: list[Any]) -> list[tuple[str, str, int, float]]:
        return [(d.model, d.metric, d.event, d.timestamp) for d in drifts]

    assert points(summary.drifts) == points(result.drifts)
    assert points([d for m in published for d in m.drifts]) == points(result.drifts)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream", "evaluate", *args],
        env=clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_evaluate_command_writes_the_report(jsonl: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    proc = cli(str(jsonl), "--format", "jsonl", "--report", str(report), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3_000:]
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith(f"{N_EVENTS:,} events")

    doc = json.loads((report / "metrics.json").read_text())
    defaults = StreamSettings(_env_file=None)
    assert doc["events"] == N_EVENTS
    assert doc["default_model"] == defaults.recommender
    assert set(doc["models"]) == set(defaults.models)
    expected = offline(jsonl, defaults)  # the command ran on the default settings
    for name, entry in doc["models"].items():
        assert {"hr@10", "ndcg@10", "mrr@10", "mae", "rmse"} <= set(entry), name
        m = expected.models[name]
        assert (entry["hr@10"], entry["ndcg@10"], entry["mrr@10"]) == (m.hit_rate, m.ndcg, m.mrr)
        assert (entry["mae"], entry["rmse"]) == (m.mae, m.rmse)
    assert doc["models"]["biased_mf"]["rmse"] is not None
    assert doc["models"]["knn"]["mae"] is None
    for drift in doc["drifts"]:
        assert {"model", "metric", "event"} <= set(drift)
        assert drift["model"] in doc["models"] and isinstance(drift["event"], int)
    assert [(d["model"], d["metric"], d["event"]) for d in doc["drifts"]] == [
        (d.model, d.metric, d.event) for d in expected.drifts
    ]

    # HR@K always, RMSE because the stream has ratings.
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs == ["hit_rate.png", "rmse.png"]
    html = (report / "index.html").read_text()
    assert "<html" in html.lower()
    # The page is self-contained: each plot is embedded, byte for byte.
    for name in pngs:
        raw = (report / name).read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n", name
        assert base64.b64encode(raw).decode() in html, name


def test_evaluate_command_fails_clearly(jsonl: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    proc = cli(str(missing), "--format", "jsonl", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"error: no such file: {missing}" in proc.stderr

    proc = cli(str(jsonl), "--format", "parquet-ish", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "parquet-ish" in errors[0], proc.stderr
