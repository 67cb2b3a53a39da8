"""``stream serve`` against a real broker: it materialises the recommendations topic, answers
200/404/401/4xx with JSON, drops users on tombstones (also a ``forget`` through the worker),
rebuilds from the topic on a restart and is ready only once it has read the topic's end."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kafka_helpers import produce, settings_for, wait_for
from prometheus_client import CollectorRegistry

from producers.records import encode_event
from stream.events import Recommendation
from stream.kafka.admin import ensure_topics
from stream.serve import RecommendationService
from stream.settings import StreamSettings
from stream.worker import Worker

pytestmark = pytest.mark.integration

TOKEN = "test-token-5f2a9c"


def _rec(user: str, item: str, offset: int = 1) -> bytes:
    return (
        Recommendation.model_validate(
            {
                "user_id": user,
                "items": [{"item_id": item, "score": 0.5}],
                "model": "knn",
                "source_topic": "events",
                "source_partition": 0,
                "source_offset": offset,
                "event_timestamp": 1.0,
            }
        )
        .model_dump_json()
        .encode()
    )


def _get(
    port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, Any, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    ctype = response.getheader("Content-Type") or ""
    body = json.loads(raw) if ctype.startswith("application/json") and raw else raw
    return response.status, body, response


def _raw(port: int, data: bytes) -> tuple[int, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _service(settings: StreamSettings) -> RecommendationService:
    return RecommendationService(settings, CollectorRegistry()).start()


def _ready(service: RecommendationService, timeout_s: float = 60) -> None:
    wait_for(lambda: service.ready or service.error is not None, timeout_s, "serve ready")
    assert service.error is None, service.error


@pytest.fixture
def settings(kafka_bootstrap: str) -> StreamSettings:
    s = settings_for(kafka_bootstrap, serve_port=0)
    ensure_topics(s, {s.recommendations_topic: 1}, timeout_s=30)
    return s


@pytest.fixture
def service(kafka_bootstrap: str, settings: StreamSettings) -> Iterator[RecommendationService]:
    produce(
        kafka_bootstrap,
        settings.recommendations_topic,
        [_rec("u1", "old"), _rec("u2", "i2"), _rec("u1", "i1", offset=9)],
        [b"u1", b"u2", b"u1"],
    )
    svc = _service(settings)
    try:
        _ready(svc)
        yield svc
    finally:
        svc.stop()


def test_answers_the_latest_record_per_user_and_404_for_others(
    service: RecommendationService,
) -> None:
    status, body, response = _get(service.port, "/users/u1/recommendations")
    assert status == 200 and response.getheader("Content-Type") == "application/json"
    assert body["user_id"] == "u1" and body["items"][0]["item_id"] == "i1"
    assert body["source_offset"] == 9
    status, body, _ = _get(service.port, "/users/u2/recommendations?fields=all")
    assert status == 200 and body["items"][0]["item_id"] == "i2"
    status, body, _ = _get(service.port, "/users/nobody/recommendations")
    assert status == 404 and body["status"] == 404 and body["user_id"] == "nobody"
    assert "no recommendations" in body["error"]
    status, body, _ = _get(service.port, "/readyz")
    assert status == 200 and body["ready"] is True and body["users"] == 2
    assert _get(service.port, "/healthz")[0] == 200
    status, text, response = _get(service.port, "/metrics")
    assert status == 200
    metrics = text.decode()
    assert 'stream_serve_requests_total{endpoint="recommendations",status="200"} 2.0' in metrics
    assert 'stream_serve_requests_total{endpoint="recommendations",status="404"} 1.0' in metrics
    assert "stream_serve_users 2.0" in metrics and "stream_serve_lag 0.0" in metrics
    assert 'stream_serve_records_total{outcome="stored"} 3.0' in metrics


def test_keep_alive_serves_many_requests_on_one_connection(service: RecommendationService) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        for _ in range(20):
            conn.request("GET", "/users/u2/recommendations")
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["user_id"] == "u2"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/users/u1/recommendations", 405),
        ("DELETE", "/users/u1/recommendations", 405),
        ("HEAD", "/users/u1/recommendations", 405),
        ("BREW", "/users/u1/recommendations", 501),
        ("GET", "/users/%ff%fe/recommendations", 400),
        ("GET", "/users/%00/recommendations", 400),
        ("GET", "/users/" + "x" * 300 + "/recommendations", 400),
        ("GET", "/users/u1/recommendations/extra", 404),
        ("GET", "/users/u1", 404),
        ("GET", "/", 404),
        ("GET", "/admin/../users/u1/recommendations", 404),
    ],
)
def test_bad_requests_get_a_json_4xx(
    service: RecommendationService, method: str, path: str, status: int, capfd: Any
) -> None:
    got, body, response = _get(service.port, path, method=method)
    assert got == status
    if method != "HEAD":
        assert body["status"] == status and body["error"]
    if status == 405:
        assert response.getheader("Allow") == "GET"
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /users/u1/recommendations\r\n\r\n", 505),
        (b"GET /users/u1/recommendations HTTP/9.9\r\n\r\n", 505),
        (b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /users/u1/recommendations HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431),
    ],
)
def test_malformed_requests_get_json_errors(
    service: RecommendationService, data: bytes, status: int, capfd: Any
) -> None:
    got, body = _raw(service.port, data)
    assert got == status and body["status"] == status
    assert "Traceback" not in capfd.readouterr().err
    assert _get(service.port, "/users/u2/recommendations")[0] == 200  # still serving


def test_a_token_guards_data_requests_only(kafka_bootstrap: str, settings: StreamSettings) -> None:
    produce(kafka_bootstrap, settings.recommendations_topic, [_rec("u1", "i1")], [b"u1"])
    guarded = settings_for(
        kafka_bootstrap,
        serve_port=0,
        serve_token=TOKEN,
        recommendations_topic=settings.recommendations_topic,
    )
    svc = _service(guarded)
    try:
        _ready(svc)
        path = "/users/u1/recommendations"
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": TOKEN},
        ):
            status, body, response = _get(svc.port, path, headers)
            assert status == 401 and body["status"] == 401, headers
            assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
        # Unauthenticated requests learn nothing: an unknown user is a 401 as well.
        assert _get(svc.port, "/users/nobody/recommendations")[0] == 401
        status, body, _ = _get(svc.port, path, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["user_id"] == "u1"
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert _get(svc.port, open_path)[0] == 200, open_path
    finally:
        svc.stop()


def test_tombstones_remove_users_and_a_restart_rebuilds_from_the_topic(
    kafka_bootstrap: str, service: RecommendationService, settings: StreamSettings
) -> None:
    topic = settings.recommendations_topic
    produce(kafka_bootstrap, topic, [None, _rec("u3", "i3")], [b"u2", b"u3"])
    wait_for(lambda: _get(service.port, "/users/u2/recommendations")[0] == 404, 30, "u2 forgotten")
    assert _get(service.port, "/users/u3/recommendations")[0] == 200
    service.stop()

    produce(kafka_bootstrap, topic, [_rec("u4", "i4"), None], [b"u4", b"u1"])  # while down
    restarted = _service(settings)
    try:
        _ready(restarted)
        assert _get(restarted.port, "/users/u1/recommendations")[0] == 404
        assert _get(restarted.port, "/users/u2/recommendations")[0] == 404
        status, body, _ = _get(restarted.port, "/users/u3/recommendations")
        assert status == 200 and body["items"][0]["item_id"] == "i3"
        assert _get(restarted.port, "/users/u4/recommendations")[0] == 200
        assert _get(restarted.port, "/readyz")[1]["users"] == 2
    finally:
        restarted.stop()


def test_not_ready_until_caught_up_with_the_topic(
    kafka_bootstrap: str, settings: StreamSettings
) -> None:
    n = 20_000
    produce(
        kafka_bootstrap,
        settings.recommendations_topic,
        [_rec(f"u{i}", "i") for i in range(n)],
        [f"u{i}".encode() for i in range(n)],
    )
    svc = _service(settings)
    try:
        status, body, _ = _get(svc.port, "/readyz")
        assert status == 503 and body["ready"] is False and body["reason"]
        seen: list[int] = []

        def ready() -> bool:
            status, body, _ = _get(svc.port, "/readyz")
            seen.append(body["users"])
            return bool(status == 200)

        wait_for(ready, 60, "readyz 200")
        assert seen[-1] == n  # ready means every record there at the start was read
    finally:
        svc.stop()

    # A broker that does not answer: never ready, and /readyz says why.
    unreachable = settings.model_copy(
        update={"bootstrap_servers": "127.0.0.1:9", "broker_wait_seconds": 30.0}
    )
    svc = _service(unreachable)
    try:
        time.sleep(1.0)
        status, body, _ = _get(svc.port, "/readyz")
        assert status == 503 and "connecting" in body["reason"]
        assert _get(svc.port, "/healthz")[0] == 200
    finally:
        svc.stop()


def test_a_forget_through_the_worker_removes_the_user(
    kafka_bootstrap: str, settings: StreamSettings
) -> None:
    s = settings.model_copy(update={"models": ("popularity", "knn"), "recommender": "knn"})
    events: list[dict[str, Any]] = [
        {"user_id": f"u{i % 4}", "item_id": f"i{i % 29}", "event_type": "view", "timestamp": i}
        for i in range(40)
    ]
    events.append({"user_id": "u1", "event_type": "forget", "timestamp": 41})
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(
        kafka_bootstrap,
        s.events_topic,
        [encode_event(e) for e in events],
        [str(e["user_id"]).encode() for e in events],
    )
    summary = Worker(s).run(max_events=len(events), idle_timeout=60)
    assert summary.consumed == len(events)
    svc = _service(s)
    try:
        _ready(svc)
        assert _get(svc.port, "/users/u1/recommendations")[0] == 404
        for user in ("u0", "u2", "u3"):
            status, body, _ = _get(svc.port, f"/users/{user}/recommendations")
            assert status == 200 and body["model"] == "knn" and body["items"], user
    finally:
        svc.stop()


def test_the_serve_command(kafka_bootstrap: str, settings: StreamSettings) -> None:
    produce(kafka_bootstrap, settings.recommendations_topic, [_rec("u1", "i1")], [b"u1"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    env.update(
        STREAM_BOOTSTRAP_SERVERS=kafka_bootstrap,
        STREAM_RECOMMENDATIONS_TOPIC=settings.recommendations_topic,
        STREAM_SERVE_TOKEN=TOKEN,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream", "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "(token required)" in line, line
        port = int(line.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
        wait_for(lambda: _get(port, "/readyz")[0] == 200, 60, "readyz")
        status, body, _ = _get(
            port, "/users/u1/recommendations", {"Authorization": f"Bearer {TOKEN}"}
        )
        assert status == 200 and body["user_id"] == "u1"

        # The port is taken now: a second service says so and exits 2.
        taken = subprocess.run(
            [sys.executable, "-m", "stream", "serve", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert taken.returncode == 2 and "STREAM_SERVE_PORT" in taken.stderr
        assert "Traceback" not in taken.stderr

        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_started_before_the_worker_it_creates_the_topic_and_follows_it(
    kafka_bootstrap: str,
) -> None:
    s = settings_for(kafka_bootstrap, serve_port=0)  # its recommendations topic does not exist
    svc = _service(s)
    try:
        _ready(svc)
        assert _get(svc.port, "/readyz")[1]["users"] == 0
        produce(kafka_bootstrap, s.recommendations_topic, [_rec("late", "i1")], [b"late"])
        wait_for(lambda: _get(svc.port, "/users/late/recommendations")[0] == 200, 30, "late served")
    finally:
        svc.stop()


def test_every_partition_is_read(kafka_bootstrap: str) -> None:
    s = settings_for(kafka_bootstrap, serve_port=0)
    ensure_topics(s, {s.recommendations_topic: 3}, timeout_s=30)  # as deploy/ creates it: 6
    for p in range(3):
        users = [f"p{p}-u{i}" for i in range(5)]
        produce(
            kafka_bootstrap,
            s.recommendations_topic,
            [_rec(u, "i") for u in users],
            [u.encode() for u in users],
            partition=p,
        )
    svc = _service(s)
    try:
        _ready(svc)
        assert _get(svc.port, "/readyz")[1]["users"] == 15
        assert _get(svc.port, "/users/p2-u4/recommendations")[0] == 200
    finally:
        svc.stop()
