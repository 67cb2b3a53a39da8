"""``python -m stream worker`` (and the ``stream`` console script) as a real process.

Stopping by itself (``--max-events``, ``--idle-timeout``), stopping on SIGTERM with the batch
finished and committed, clear one-line failures for a bad setting and for a broker that never
answers, and the quick-start ``demo`` command.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka_helpers import consume, group_offsets, produce

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.events import DeadLetter, Recommendation
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent
CONSOLE_SCRIPT = VENV_BIN / "stream"
COMMANDS = {
    "python -m stream": [sys.executable, "-m", "stream"],
    "stream": [str(CONSOLE_SCRIPT)],
}
BAD = [b"{nope", b'{"user_id":"u","item_id":"i","event_type":"teleport","timestamp":1}']


def env_for(s: StreamSettings, **extra: str) -> dict[str, str]:
    """The environment that configures a worker process like ``s`` (nothing inherited
    from STREAM_* variables of the calling shell)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    env.update(
        {
            "STREAM_BOOTSTRAP_SERVERS": s.bootstrap_servers,
            "STREAM_EVENTS_TOPIC": s.events_topic,
            "STREAM_RECOMMENDATIONS_TOPIC": s.recommendations_topic,
            "STREAM_METRICS_TOPIC": s.metrics_topic,
            "STREAM_DEAD_LETTER_TOPIC": s.dead_letter_topic,
            "STREAM_MODEL_UPDATES_TOPIC": s.model_updates_topic,
            "STREAM_GROUP_ID": s.group_id,
            "STREAM_CLIENT_ID": s.client_id,
            "STREAM_SESSION_TIMEOUT_MS": str(s.session_timeout_ms),
            "STREAM_HEARTBEAT_INTERVAL_MS": str(s.heartbeat_interval_ms),
            "STREAM_MAX_POLL_INTERVAL_MS": str(s.max_poll_interval_ms),
            "STREAM_METRICS_PORT": "0",
            "STREAM_MODELS": "popularity,knn",
            "STREAM_RECOMMENDER": "knn",
        }
    )
    env.update(extra)
    return env


def records(n: int, seed: int = 1) -> tuple[list[bytes | None], list[bytes | None]]:
    stream = SyntheticStream(SyntheticConfig(n_events=n, n_users=50, n_items=150, seed=seed))
    values: list[bytes | None] = []
    keys: list[bytes | None] = []
    for r in stream.records():
        values.append(r.value)
        keys.append(r.key)
    return values, keys


def run(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_clean_failure(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3_000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_max_events_stops_after_n_records_including_dead_letters(
    command: str,
    kafka_bootstrap: str,
    kafka_settings: Callable[..., StreamSettings],
    tmp_path: Path,
) -> None:
    if command == "stream":
        assert CONSOLE_SCRIPT.exists(), "console script missing: pip install -e . in .venv"
    s = kafka_settings()
    values, keys = records(200)
    values[10:10] = BAD  # offsets 10 and 11 are malformed
    keys[10:10] = [b"bad", b"bad"]
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, values, keys)

    proc = run([*COMMANDS[command], "worker", "--max-events", "120"], env_for(s), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3_000:]
    assert "Traceback" not in proc.stderr
    assert "worker stopped (max events (120) consumed): consumed 120, processed 118" in proc.stderr
    # It ends with the served model's accuracy, windowed and cumulative.
    last = proc.stderr.strip().splitlines()[-1]
    assert "served model knn: HR@10 0." in last, last
    assert re.search(
        r"over the last \d+ evaluated events, 0\.\d+ cumulative \(\d+ evaluated\)$", last
    )
    assert group_offsets(kafka_bootstrap, s.group_id) == {(s.events_topic, 0): 120}
    letters = consume(kafka_bootstrap, s.dead_letter_topic, n=None)
    assert [DeadLetter.model_validate_json(r.value or b"").source_offset for r in letters] == [
        10,
        11,
    ]
    recs = consume(kafka_bootstrap, s.recommendations_topic, n=None)
    assert len(recs) == 118


def test_idle_timeout_stops_and_flags_override_the_environment(
    kafka_bootstrap: str, kafka_settings: Callable[..., StreamSettings], tmp_path: Path
) -> None:
    s = kafka_settings()
    values, keys = records(80, seed=2)
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, values, keys)
    other_group = s.group_id + "-flag"
    env = env_for(s, STREAM_EVENTS_TOPIC="not-this-topic")
    cmd = [sys.executable, "-m", "stream", "worker", "--idle-timeout", "3"]
    cmd += ["--events-topic", s.events_topic, "--group-id", other_group, "--log-level", "DEBUG"]
    proc = run(cmd, env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3_000:]
    assert "worker stopped (idle for 3s): consumed 80, processed 80" in proc.stderr
    assert " DEBUG stream." in proc.stderr  # --log-level after the command took effect
    assert group_offsets(kafka_bootstrap, other_group) == {(s.events_topic, 0): 80}


def test_sigterm_mid_stream_finishes_the_batch_commits_and_exits_0(
    kafka_bootstrap: str, kafka_settings: Callable[..., StreamSettings], tmp_path: Path
) -> None:
    s = kafka_settings()
    total = 30_000
    values, keys = records(total, seed=3)
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, values, keys)
    # Every model makes each event slower, so the stream cannot be over before the signal.
    env = env_for(s, STREAM_MODELS="popularity,knn,biased_mf,blend", STREAM_MAX_POLL_RECORDS="200")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "worker", "--idle-timeout", "60"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        seen = 0
        while time.monotonic() < deadline and proc.poll() is None:
            seen = sum(group_offsets(kafka_bootstrap, s.group_id).values())
            if seen >= 1_000:
                break
            time.sleep(0.3)
        assert proc.poll() is None, "worker exited before the signal"
        assert seen >= 1_000, "worker made no progress"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3_000:]
    assert "Traceback" not in err
    assert "worker stopped (SIGTERM)" in err
    offsets = group_offsets(kafka_bootstrap, s.group_id)
    done = offsets[(s.events_topic, 0)]
    assert seen <= done < total  # stopped mid-stream, after what was committed before
    # Every processed event was published and exactly those were committed: no gap, no extra.
    recs = consume(kafka_bootstrap, s.recommendations_topic, n=None)
    sources = [Recommendation.model_validate_json(r.value or b"").source_offset for r in recs]
    assert sources == list(range(done))
    assert f"consumed {done}, processed {done}" in err


def test_a_bad_setting_exits_non_zero_naming_it(
    kafka_settings: Callable[..., StreamSettings], tmp_path: Path
) -> None:
    env = env_for(kafka_settings(), STREAM_TOP_K="0")
    proc = run([sys.executable, "-m", "stream", "worker", "--max-events", "1"], env, tmp_path)
    assert_clean_failure(proc, 2, "STREAM_TOP_K")


def test_an_unreachable_broker_exits_1_with_one_clear_line(
    kafka_settings: Callable[..., StreamSettings], tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed
    env = env_for(
        kafka_settings(),
        STREAM_BOOTSTRAP_SERVERS=closed,
        STREAM_BROKER_WAIT_SECONDS="3",
    )
    proc = run([sys.executable, "-m", "stream", "worker"], env, tmp_path, timeout=90)
    assert_clean_failure(proc, 1, closed)
    assert len(proc.stderr.splitlines()) <= 6, proc.stderr  # no storm of reconnect logs


def test_demo_quick_start_prints_the_summary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    cmd = [sys.executable, "-m", "stream", "demo", "--events", "2000", "--metrics-port", "0"]
    proc = run(cmd, env, tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3_000:]
    assert "Traceback" not in proc.stderr
    out = proc.stdout
    # 2,000 synthetic events plus the demo's 4 malformed records, all dead-lettered.
    assert (
        "produced 2,004, consumed 2,004, processed 2,000, dead-lettered 4, "
        "recommendations published 2,000"
    ) in out
    header = next(line for line in out.splitlines() if line.startswith("model "))
    assert header.split() == [
        "model",
        "HR@10",
        "NDCG@10",
        "MRR@10",
        "MAE",
        "RMSE",
        "coverage",
        "events/s",
    ]
    for model in ("popularity", "knn", "biased_mf", "blend"):
        assert any(line.startswith(model) for line in out.splitlines()), model
    # The ending: the served model's accuracy and what to try next, not the stopped broker.
    broker = out.splitlines()[0].split()[1].rstrip(";")
    assert broker.startswith("127.0.0.1:"), out.splitlines()[0]
    ending = out[out.index("demo finished") :]
    assert broker not in ending
    assert "served model blend: HR@10 0." in ending and "cumulative" in ending
    steps = ending[ending.index("next steps") :]
    for command in (
        "python -m stream evaluate",
        "python -m producers replay",
        "python -m stream worker",
        "python -m stream tail recommendations",
    ):
        assert command in steps, command


def test_the_first_unreachable_warning_names_the_wait_setting(
    kafka_settings: Callable[..., StreamSettings], tmp_path: Path
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    env = env_for(kafka_settings(), STREAM_BOOTSTRAP_SERVERS=closed, STREAM_BROKER_WAIT_SECONDS="8")
    proc = run([sys.executable, "-m", "stream", "worker"], env, tmp_path, timeout=90)
    assert_clean_failure(proc, 1, closed, "STREAM_BROKER_WAIT_SECONDS")
    warning = next(line for line in proc.stderr.splitlines() if "WARNING" in line)
    assert f"Kafka broker at {closed} unreachable" in warning
    assert "for up to 8s (STREAM_BROKER_WAIT_SECONDS)" in warning


@pytest.mark.parametrize("huge_pages", ["auto", "off"])
def test_a_worker_that_forks_checkpoints_runs_its_heap_on_huge_pages(
    kafka_bootstrap: str,
    kafka_settings: Callable[..., StreamSettings],
    tmp_path: Path,
    huge_pages: str,
) -> None:
    from stream.hugepages import huge_pages_env, thp_mode

    if huge_pages == "auto" and huge_pages_env({}, thp_mode(), (2, 36))[0] is None:
        if os.environ.get("CI"):
            pytest.fail("CI machines have transparent huge pages (madvise): this must run")
        pytest.skip("no transparent huge pages on this kernel")
    s = kafka_settings()
    values, keys = records(400, seed=4)
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, values, keys)
    env = env_for(
        s,
        STREAM_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
        STREAM_CHECKPOINT_KEY="k" * 32,
        STREAM_CHECKPOINT_EVERY_EVENTS="100",
        STREAM_HUGE_PAGES=huge_pages,
    )
    cmd = [sys.executable, "-m", "stream", "worker", "--idle-timeout", "3"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen_env = ""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # the same PID after the re-exec: execve keeps it
            seen_env = (Path("/proc") / str(proc.pid) / "environ").read_text(errors="replace")
        if "STREAM_HUGE_PAGES_ACTIVE=1" in seen_env:
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3_000:]
    assert "consumed 400, processed 400" in err
    assert list((tmp_path / "ckpt").rglob("*.ckpt")), "no checkpoint was written"
    if huge_pages == "auto":
        assert "STREAM_HUGE_PAGES_ACTIVE=1" in seen_env
        assert "heap on transparent huge pages" in err
    else:
        assert "STREAM_HUGE_PAGES_ACTIVE" not in seen_env
        assert "huge pages" not in err
