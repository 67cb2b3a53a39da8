"""deploy/prometheus: promtool checks, unit tests of every alert, and proof the tests bite.

The mutation tests copy alerts.yml with one alert's expression changed and expect the
unit tests to fail: "never fires" proves each firing case is real, and a near-miss threshold
change proves each not-firing case sits close enough to the threshold to matter.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    PROMETHEUS_DIR,
    compose,
    contract_metrics,
    load_yaml,
    metrics_in,
    require_tool,
    run_tool,
)

CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"

# For each alert, a change of its expression that makes one of its not-firing cases fire.
NEAR_MISSES: dict[str, tuple[str, str]] = {
    "StreamWorkerDown": ('up{job="stream-worker"} == 0', 'up{job="stream-worker"} >= 0'),
    "StreamWorkerNotReady": ("== 0", ">= 0"),  # the ready worker fires
    "StreamNoEventsProcessed": ("(stream_consumer_lag) > 0)", "(stream_consumer_lag) >= 0)"),
    "StreamConsumerLagGrowing": ("> 1000", "> 100"),  # the small topic fires
    "StreamDeadLetterRateHigh": ("> 0.01", "> 0.0001"),  # 0.1% fires
    "StreamDriftDetected": ("[15m])) > 0", "[15m])) >= 0"),  # the quiet model fires
    "StreamModelAccuracyLow": ("< 0.05", "< 0.5"),  # the good model (30%) fires
    "StreamCheckpointFailing": ('outcome="failed"', 'outcome=~".+"'),  # ok checkpoints fire
    "StreamModelSyncLagging": ("> 60", "> 20"),  # the 30 s worker fires
}


def _rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _run_unit_tests(promtool: str, alerts_text: str, tmp_path: Path) -> tuple[int, str]:
    """Run alerts.test.yml against ``alerts_text`` in a scratch folder."""
    (tmp_path / "alerts.yml").write_text(alerts_text, encoding="utf-8")
    shutil.copy(ALERT_TESTS, tmp_path / "alerts.test.yml")
    result = run_tool(promtool, "test", "rules", tmp_path / "alerts.test.yml")
    return result.returncode, result.stdout + result.stderr


def _with_expr(alert: str, transform: Any) -> str:
    data = load_yaml(ALERTS)
    for group in data["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = transform(rule["expr"])
    return str(yaml.safe_dump(data, sort_keys=False))


# --------------------------------------------------------------------------- promtool


def test_promtool_check_config_accepts_the_config_and_its_rule_files() -> None:
    promtool = require_tool("promtool")
    result = run_tool(promtool, "check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_check_rules_accepts_the_alerts() -> None:
    promtool = require_tool("promtool")
    result = run_tool(promtool, "check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    promtool = require_tool("promtool")
    result = run_tool(promtool, "test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_a_broken_rule_file(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    broken = tmp_path / "alerts.yml"
    text = ALERTS.read_text(encoding="utf-8")
    assert 'up{job="stream-worker"} == 0' in text
    broken.write_text(text.replace('up{job="stream-worker"} == 0', 'up{job="stream-worker"} === 0'))
    result = run_tool(promtool, "check", "rules", broken)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


# --------------------------------------------------------------------------- coverage


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in load_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - silent == set(), "alerts without a not-firing test"
    assert (firing | silent) - alerts == set(), "tests of alerts that do not exist"


def test_every_alert_has_a_near_miss_mutation() -> None:
    assert set(NEAR_MISSES) == set(_alerts())


@pytest.mark.parametrize("alert", sorted(NEAR_MISSES))
def test_unit_tests_fail_when_the_alert_never_fires(alert: str, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    code, output = _run_unit_tests(promtool, _with_expr(alert, lambda e: "vector(1) < 0"), tmp_path)
    assert code != 0, f"the unit tests do not notice that {alert} never fires"
    assert f"alertname: {alert}" in output


@pytest.mark.parametrize("alert", sorted(NEAR_MISSES))
def test_unit_tests_fail_when_the_threshold_is_near_missed(alert: str, tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    old, new = NEAR_MISSES[alert]
    assert old in _alerts()[alert]["expr"], f"mutation {old!r} does not apply to {alert}"
    code, output = _run_unit_tests(
        promtool, _with_expr(alert, lambda e: e.replace(old, new)), tmp_path
    )
    assert code != 0, f"the not-firing tests of {alert} do not notice {old!r} -> {new!r}"
    assert f"alertname: {alert}" in output


# --------------------------------------------------------------------------- content


def test_every_alert_carries_severity_summary_description_and_runbook() -> None:
    for name, rule in _alerts().items():
        assert name.startswith("Stream"), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        assert all(len(str(v)) > 20 for v in rule["annotations"].values()), name
        assert "for" in rule, f"{name}: state `for` explicitly, even 0m"


def test_alerts_read_only_contract_metrics() -> None:
    contract = contract_metrics()
    for name, rule in _alerts().items():
        used = metrics_in(rule["expr"])
        assert used <= contract, (
            f"{name} reads metrics outside docs/TEAM_NOTES.md: {used - contract}"
        )


def test_the_required_alerts_exist_with_their_signals() -> None:
    alerts = _alerts()
    assert "increase(stream_drift_detections_total" in alerts["StreamDriftDetected"]["expr"]
    assert alerts["StreamDriftDetected"]["for"] == "0m"  # reachable within the e2e test
    assert "stream_model_hit_rate" in alerts["StreamModelAccuracyLow"]["expr"]
    assert "stream_recommendations_published_total" in alerts["StreamModelAccuracyLow"]["expr"]
    assert "deriv(" in alerts["StreamConsumerLagGrowing"]["expr"]
    dead = alerts["StreamDeadLetterRateHigh"]["expr"]
    assert "stream_dead_letters_total" in dead and "stream_events_total" in dead
    assert 'up{job="stream-worker"} == 0' in alerts["StreamWorkerDown"]["expr"]
    assert "rate(stream_events_total" in alerts["StreamNoEventsProcessed"]["expr"]


def test_the_config_scrapes_the_compose_worker_every_5s() -> None:
    config = load_yaml(CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "stream-worker"]
    assert job["scrape_interval"] == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = target.split(":")
    worker = compose()["services"]["worker"]
    assert host == "worker"
    assert port == str(worker["environment"]["STREAM_METRICS_PORT"])


def test_alert_expressions_name_the_scrape_job_of_the_config() -> None:
    jobs = {j["job_name"] for j in load_yaml(CONFIG)["scrape_configs"]}
    for name, rule in _alerts().items():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{name} filters on job {job!r}, not scraped by prometheus.yml"
