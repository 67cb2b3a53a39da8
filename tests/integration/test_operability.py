"""What an operator sees: idle workers still report, restored checkpoints follow the settings,
checkpoint failures show in readiness, the summary and the exit status; producers create the
events topic as the worker would."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient
from kafka_helpers import consume, group_offsets, produce, unique, wait_for
from test_worker_cli import assert_clean_failure, env_for

from producers.__main__ import main as producers_main
from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.checkpoint import CheckpointStore
from stream.events import MetricsRecord, Recommendation
from stream.kafka.admin import ensure_topics, topic_partitions
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
    assert [r.events for r in records[-3:]] == [n_events] * 3  # published while idle


# --- producers create the events topic -----------------------------------------------------


def partitions_of(bootstrap: str, topic: str) -> int | None:
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        return topic_partitions(admin, [topic]).get(topic)
    finally:
        admin.close()


def events_file(path: Path, n: int = 200) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {"user_id": f"u{i % 13}", "item_id": f"i{i % 17}", "event_type": "click",
                 "timestamp": 1_700_000_000 + i}
            ) + "\n"
            for i in range(n)
        )
    )  # fmt: skip
    return path


def test_replay_and_synthetic_create_the_events_topic_with_the_workers_partitions(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAM_EVENTS_PARTITIONS", "3")  # the broker's auto-creation: 1 or 4
    log = events_file(tmp_path / "log.jsonl")
    replayed, generated = unique("events"), unique("events")
    common = ["--bootstrap-servers", kafka_bootstrap, "--quiet"]
    assert producers_main(["replay", str(log), "--topic", replayed, *common]) == 0
    assert producers_main(["synthetic", "--events", "50", "--topic", generated, *common]) == 0
    assert partitions_of(kafka_bootstrap, replayed) == 3
    assert partitions_of(kafka_bootstrap, generated) == 3
    assert len(consume(kafka_bootstrap, replayed)) == 200


def test_a_partition_count_other_than_the_setting_is_a_warning_in_producer_and_worker(
    kafka_bootstrap: str,
    kafka_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = kafka_settings(models=("popularity",), recommender="popularity", events_partitions=3)
    ensure_topics(s, {s.events_topic: 2}, timeout_s=30)  # made by hand, differently
    caplog.clear()
    monkeypatch.setenv("STREAM_EVENTS_PARTITIONS", "3")
    log = events_file(tmp_path / "log.jsonl", 40)
    common = ["--bootstrap-servers", kafka_bootstrap, "--topic", s.events_topic, "--quiet"]
    with caplog.at_level(logging.WARNING):
        assert producers_main(["replay", str(log), *common]) == 0
    expected = f"events topic {s.events_topic} has 2 partition(s) but STREAM_EVENTS_PARTITIONS=3"
    warned = [r for r in caplog.records if expected in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING, caplog.text
    assert "set STREAM_EVENTS_PARTITIONS=2 to accept it" in warned[0].getMessage()
    assert partitions_of(kafka_bootstrap, s.events_topic) == 2  # kept, not changed

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        summary = Worker(s).run(idle_timeout=3.0)
    assert summary.consumed == 40
    assert [r.levelno for r in caplog.records if expected in r.getMessage()] == [logging.WARNING]


# --- checkpoint failures show ----------------------------------------------------------------


@pytest.mark.parametrize("broken", ["a regular file", "below a regular file"])
def test_an_unusable_checkpoint_dir_exits_2_naming_the_setting(
    kafka_settings: MakeSettings, tmp_path: Path, broken: str
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    directory = blocker if broken == "a regular file" else blocker / "checkpoints"
    env = env_for(
        kafka_settings(), STREAM_CHECKPOINT_DIR=str(directory), STREAM_CHECKPOINT_KEY="k" * 32
    )
    cmd = [sys.executable, "-m", "stream", "worker", "--max-events", "1"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert_clean_failure(proc, 2, "STREAM_CHECKPOINT_DIR", str(directory))


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("mode", ["fork", "inline"])
def test_failing_checkpoints_turn_readiness_false_and_the_exit_status_non_zero(
    kafka_bootstrap: str, kafka_settings: MakeSettings, tmp_path: Path, mode: str
) -> None:
    """fork: the child writing a checkpoint fails (its directory is gone mid-run) and that
    shows exactly as an inline write's failure does."""
    s = kafka_settings()
    directory = tmp_path / "checkpoints"
    port = free_port()
    env = env_for(
        s,
        STREAM_CHECKPOINT_DIR=str(directory),
        STREAM_CHECKPOINT_KEY="k" * 32,
        STREAM_CHECKPOINT_EVERY_SECONDS="0.3",
        STREAM_METRICS_PORT=str(port),
        STREAM_METRICS_HOST="127.0.0.1",
        STREAM_CHECKPOINT_MODE=mode,
    )
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, *synthetic(300))
    cmd = [sys.executable, "-m", "stream", "worker", "--idle-timeout", "6"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        committed = {(s.events_topic, 0): 300}
        wait_for(lambda: group_offsets(kafka_bootstrap, s.group_id) == committed, 60, "commit")
        assert http_get(port, "/readyz")[0] == 200
        # The directory becomes unusable mid-run: every later checkpoint fails.
        directory.rename(tmp_path / "moved-away")
        directory.write_text("not a directory any more")
        produce(kafka_bootstrap, s.events_topic, *synthetic(200, seed=4))

        def not_ready() -> bool:
            status, body = http_get(port, "/readyz")
            return status == 503 and "checkpoints failing" in body

        wait_for(not_ready, 30, "/readyz to report the failing checkpoints")
        body = http_get(port, "/readyz")[1]
        assert "200 consumed record(s) not yet safe" in body, body
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, stderr[-3_000:]
    assert "Traceback" not in stderr, stderr[-3_000:]
    last = stderr.strip().splitlines()[-1]
    assert "worker stopped" in last and "200 NOT YET SAFE" in last, last
    assert group_offsets(kafka_bootstrap, s.group_id) == committed  # nothing unsafe committed


# --- settings frozen into checkpoints ------------------------------------------------------


def test_changed_settings_take_effect_on_restore_for_every_partition(
    kafka_bootstrap: str,
    kafka_settings: MakeSettings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Run 1 checkpoints partition 0 only (blend, K=10); run 2 restores it with another
    recommender, K and model list and starts partition 1 fresh: one configuration for both."""
    checkpoints = {
        "checkpoint_dir": tmp_path / "checkpoints",
        "checkpoint_key": "restore-settings-test-key",
        "events_partitions": 2,
        "metrics_every_events": 100_000,
    }
    first = kafka_settings(
        models=("popularity", "knn", "biased_mf", "blend"), recommender="blend", **checkpoints
    )
    ensure_topics(first, {first.events_topic: 2}, timeout_s=30)
    values, keys = synthetic(300)
    produce(kafka_bootstrap, first.events_topic, values, keys, partition=0)
    assert Worker(first).run(idle_timeout=3.0).consumed == 300
    assert CheckpointStore.from_settings(first).files((first.events_topic, 1)) == []  # type: ignore[union-attr]

    second = first.model_copy(
        update={"models": ("popularity", "knn", "funk_mf"), "recommender": "knn", "top_k": 5}
    )
    more, more_keys = synthetic(200, seed=8)
    produce(kafka_bootstrap, first.events_topic, more[:100], more_keys[:100], partition=0)
    produce(kafka_bootstrap, first.events_topic, more[100:], more_keys[100:], partition=1)
    with caplog.at_level(logging.WARNING, logger="stream.worker"):
        summary = Worker(second).run(idle_timeout=3.0)
    assert summary.consumed == 200
    changed = [r.getMessage() for r in caplog.records if "settings changed since" in r.getMessage()]
    assert len(changed) == 1, changed
    assert f"the checkpoint of {first.events_topic}[0]" in changed[0]
    for part in ("STREAM_RECOMMENDER 'blend' -> 'knn'", "STREAM_TOP_K 10 -> 5", "added funk_mf"):
        assert part in changed[0], changed[0]

    recs = [
        Recommendation.model_validate_json(r.value or b"")
        for r in consume(kafka_bootstrap, first.recommendations_topic)
    ]
    assert len(recs) == 500
    assert {r.model for r in recs[:300]} == {"blend"} and len(recs[299].items) == 10
    # Both partitions, restored and fresh, publish the new configuration only.
    assert {r.source_partition for r in recs[300:]} == {0, 1}
    assert {r.model for r in recs[300:]} == {"knn"}
    assert {len(r.items) for r in recs[300:] if r.source_partition == 0} == {5}
    assert max(len(r.items) for r in recs[300:] if r.source_partition == 1) == 5  # cold start
    assert summary.last_metrics is not None and summary.last_metrics.k == 5
    assert set(summary.last_metrics.cumulative_metrics) == {"popularity", "knn", "funk_mf"}


def test_a_setting_a_restored_model_cannot_follow_refuses_the_start(
    kafka_bootstrap: str, kafka_settings: MakeSettings, tmp_path: Path
) -> None:
    s = kafka_settings(
        models=("popularity", "knn"),
        recommender="knn",
        checkpoint_dir=tmp_path / "checkpoints",
        checkpoint_key="k" * 32,
    )
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, *synthetic(100))
    assert Worker(s).run(idle_timeout=3.0).consumed == 100

    env = env_for(
        s,
        STREAM_CHECKPOINT_DIR=str(s.checkpoint_dir),
        STREAM_CHECKPOINT_KEY="k" * 32,
        STREAM_KNN_NEIGHBORS="7",
    )
    cmd = [sys.executable, "-m", "stream", "worker", "--idle-timeout", "3"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert_clean_failure(
        proc,
        2,
        f"the checkpoint of {s.events_topic}[0] was learned with other settings",
        "STREAM_KNN_NEIGHBORS 100 -> 7 (knn learned with 100)",
        "STREAM_KNN_NEIGHBORS=100",
        "STREAM_CHECKPOINT_RELEARN_CHANGED=true",
    )
    assert "partitions assigned" not in proc.stderr  # refused before joining the group
    assert group_offsets(kafka_bootstrap, s.group_id) == {(s.events_topic, 0): 100}

    # Allowed to relearn: it starts, knn learns afresh, the rest is restored.
    proc = subprocess.run(
        cmd,
        env={**env, "STREAM_CHECKPOINT_RELEARN_CHANGED": "true"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3_000:]
    assert "STREAM_KNN_NEIGHBORS 100 -> 7 (knn learned with 100: learned afresh)" in proc.stderr
