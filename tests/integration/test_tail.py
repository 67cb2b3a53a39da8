"""``python -m stream tail`` as a real process against a real broker: decoded lines for every
record type, ``--from-beginning``, ``--limit``, ``--key``, following new records only, and clean
endings on a closed pipe, on Ctrl-C and for a topic that does not exist."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import IO

import pytest
from kafka_helpers import produce, settings_for

from stream.events import DeadLetter, MetricsRecord, ModelMetrics, Recommendation, Rejected, Source
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings

pytestmark = pytest.mark.integration

TAIL = [sys.executable, "-m", "stream", "tail"]


def _env(s: StreamSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    env.update(
        {
            "STREAM_BOOTSTRAP_SERVERS": s.bootstrap_servers,
            "STREAM_RECOMMENDATIONS_TOPIC": s.recommendations_topic,
            "STREAM_METRICS_TOPIC": s.metrics_topic,
            "STREAM_DEAD_LETTER_TOPIC": s.dead_letter_topic,
            "STREAM_EVENTS_TOPIC": s.events_topic,
            "STREAM_BROKER_WAIT_SECONDS": "20",
        }
    )
    return env


def _rec(user: str, item: str) -> bytes:
    return (
        Recommendation.model_validate(
            {
                "user_id": user,
                "items": [{"item_id": item, "score": 0.75}],
                "model": "knn",
                "source_topic": "events",
                "source_partition": 0,
                "source_offset": 1,
                "event_timestamp": 1.0,
            }
        )
        .model_dump_json()
        .encode()
    )


@pytest.fixture
def topics(kafka_bootstrap: str) -> StreamSettings:
    s = settings_for(kafka_bootstrap)
    ensure_topics(
        s, {s.recommendations_topic: 1, s.metrics_topic: 1, s.dead_letter_topic: 1}, timeout_s=30
    )
    return s


def _tail(s: StreamSettings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TAIL, *args], env=_env(s), capture_output=True, text=True, timeout=timeout, check=False
    )


def test_prints_each_record_type_decoded(kafka_bootstrap: str, topics: StreamSettings) -> None:
    s = topics
    produce(
        kafka_bootstrap,
        s.recommendations_topic,
        [_rec("u1", "i1"), _rec("u2", "i2"), None],
        [b"u1", b"u2", b"u1"],
    )
    metrics = MetricsRecord(
        k=10,
        events=100,
        evaluated=90,
        window=1000,
        window_metrics={"knn": ModelMetrics(hit_rate=0.5)},
        cumulative_metrics={"knn": ModelMetrics(hit_rate=0.25)},
    )
    produce(kafka_bootstrap, s.metrics_topic, [metrics.model_dump_json().encode()])
    letter = DeadLetter.of(Rejected("not_utf8", "bad byte", b"k", b"\xff\x00"), Source("ev", 0, 7))
    produce(kafka_bootstrap, s.dead_letter_topic, [letter.model_dump_json().encode()])

    out = _tail(s, s.recommendations_topic, "--from-beginning", "--limit", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout
    assert "key=u1 recommendation user=u1 model=knn" in lines[0] and "i1 (0.75)" in lines[0]
    assert "key=u2 recommendation user=u2" in lines[1]
    assert "key=u1 tombstone" in lines[2]
    assert lines[0].startswith(f"{s.recommendations_topic}[0]@0 ")

    out = _tail(s, s.metrics_topic, "--from-beginning", "--limit", "1")
    assert out.returncode == 0, out.stderr
    assert "metrics events=100 evaluated=90" in out.stdout
    assert "HR@10 window/cumulative: knn 0.500/0.250" in out.stdout

    out = _tail(s, s.dead_letter_topic, "--from-beginning", "--limit", "1")
    assert out.returncode == 0, out.stderr
    assert "dead letter reason=not_utf8 from ev[0]@7: bad byte" in out.stdout
    assert "original key='k' value=b'\\xff\\x00'" in out.stdout


def test_key_filters_and_no_follow_stops_at_the_end(
    kafka_bootstrap: str, topics: StreamSettings
) -> None:
    s = topics
    users = [f"u{i % 5}" for i in range(50)]
    produce(
        kafka_bootstrap,
        s.recommendations_topic,
        [_rec(u, f"i{n}") for n, u in enumerate(users)],
        [u.encode() for u in users],
    )
    out = _tail(s, s.recommendations_topic, "--from-beginning", "--key", "u3", "--no-follow")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 10 and all("key=u3 recommendation user=u3" in line for line in lines)
    assert [line.split("@")[1].split()[0] for line in lines] == [str(n) for n in range(3, 50, 5)]

    out = _tail(s, s.recommendations_topic, "--from-beginning", "--key", "u3", "--limit", "2")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2

    out = _tail(s, s.recommendations_topic, "--from-beginning", "--no-follow", "--json")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 50


def _wait_for_line(stream: IO[str], needle: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"no {needle!r} in {''.join(seen)!r}")


def test_without_from_beginning_it_follows_new_records_only(
    kafka_bootstrap: str, topics: StreamSettings
) -> None:
    s = topics
    topic = s.recommendations_topic
    # Three batches before the start: the broker's "latest" offset would be wrong here.
    for batch in (["a", "b", "c"], ["d"] * 7, ["e", "f"]):
        produce(
            kafka_bootstrap, topic, [_rec(u, "old") for u in batch], [u.encode() for u in batch]
        )
    proc = subprocess.Popen(
        [*TAIL, topic, "--limit", "2"],
        env=_env(s),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        _wait_for_line(proc.stderr, f"reading {topic} from offsets {{0: 12}}", 60)
        produce(kafka_bootstrap, topic, [_rec("new1", "x"), _rec("new2", "y")], [b"new1", b"new2"])
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 2, stdout
    assert "@12 " in lines[0] and "user=new1" in lines[0]
    assert "@13 " in lines[1] and "user=new2" in lines[1]


def test_ends_cleanly_on_ctrl_c_and_on_a_closed_pipe(
    kafka_bootstrap: str, topics: StreamSettings
) -> None:
    s = topics
    topic = s.recommendations_topic
    produce(kafka_bootstrap, topic, [_rec(f"u{i}", "i") for i in range(3000)], [b"u"] * 3000)
    # `| head -1`: the reader goes away while tail is still writing.
    proc = subprocess.Popen(
        [*TAIL, topic, "--from-beginning"],
        env=_env(s),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    try:
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    stderr = proc.stderr.read().decode()
    assert b"recommendation user=u0" in first
    assert code == 0 and "Traceback" not in stderr, stderr

    # Ctrl-C while following an idle topic.
    proc = subprocess.Popen(
        [*TAIL, topic], env=_env(s), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stderr is not None
        _wait_for_line(proc.stderr, f"reading {topic} from offsets", 60)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert stdout == ""


def test_a_missing_topic_is_a_clear_error(kafka_bootstrap: str) -> None:
    s = settings_for(kafka_bootstrap)
    out = _tail(s, "no-such-topic-" + s.group_id, "--from-beginning")
    assert out.returncode == 1
    assert "error: topic 'no-such-topic-" in out.stderr and "not found" in out.stderr
    assert "Traceback" not in out.stderr
    out = _tail(s, "whatever", "--limit", "0")
    assert out.returncode == 2 and "--limit must be at least 1" in out.stderr
