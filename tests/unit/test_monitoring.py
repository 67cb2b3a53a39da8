from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from stream.events import DriftRecord, MetricsRecord, ModelMetrics
from stream.monitoring import HealthState, MetricsServer, WorkerMetrics


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_use_the_registry_passed_in() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    WorkerMetrics(a).dead_letters.labels("invalid_json").inc()
    WorkerMetrics(b)  # a second set must not collide with the first
    assert a.get_sample_value("stream_dead_letters_total", {"reason": "invalid_json"}) == 1.0
    assert b.get_sample_value("stream_dead_letters_total", {"reason": "invalid_json"}) is None


def test_accuracy_and_drift_gauges() -> None:
    reg = CollectorRegistry()
    m = WorkerMetrics(reg)
    record = MetricsRecord(
        k=10,
        events=5,
        evaluated=5,
        window=100,
        window_metrics={"mf": ModelMetrics(hit_rate=0.3, ndcg=0.2, mrr=0.1, mae=0.7, rmse=0.9)},
        cumulative_metrics={"mf": ModelMetrics()},
        users=3,
        items=7,
    )
    m.observe_accuracy(record)
    m.observe_drift(DriftRecord(detector="adwin", model="mf", metric="miss", event=5, timestamp=1))
    assert reg.get_sample_value("stream_model_hit_rate", {"model": "mf", "k": "10"}) == 0.3
    assert reg.get_sample_value("stream_model_rmse", {"model": "mf"}) == 0.9
    assert reg.get_sample_value("stream_known_items") == 7
    labels = {"model": "mf", "metric": "miss", "detector": "adwin"}
    assert reg.get_sample_value("stream_drift_detections_total", labels) == 1


def test_http_endpoints_reflect_health() -> None:
    now = [0.0]
    health = HealthState(stall_after_s=10, clock=lambda: now[0])
    reg = CollectorRegistry()
    WorkerMetrics(reg)
    server = MetricsServer(reg, health, host="127.0.0.1", port=0).start()
    try:
        status, body = _get(server.port, "/metrics")
        assert status == 200 and "stream_events_total" in body
        assert _get(server.port, "/readyz")[0] == 503
        health.set_ready(True)
        assert _get(server.port, "/readyz")[0] == 200
        assert _get(server.port, "/healthz")[0] == 200
        now[0] = 60.0  # the loop stopped ticking
        status, body = _get(server.port, "/healthz")
        assert status == 503 and "stalled" in body
        assert _get(server.port, "/nope")[0] == 404
    finally:
        server.stop()
