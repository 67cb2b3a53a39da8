"""deploy/docker-compose.yml, Dockerfile and .dockerignore, checked structurally.

No Docker engine runs here (nor in CI), so the stack cannot be started: these tests parse the
files and check what `docker compose up` depends on — KRaft listeners, topics, dependency
conditions, health checks, mounts, ports, and that every STREAM_* name and CLI flag exists.
"""

from __future__ import annotations

import base64
import fnmatch
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import DEPLOY, REPO, compose, settings_env_names

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def _services() -> dict[str, Any]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def _kafka_env() -> dict[str, str]:
    return {k: str(v) for k, v in _services()["kafka"]["environment"].items()}


def _listeners(value: str) -> dict[str, str]:
    """``NAME://host:port,...`` -> {NAME: "host:port"}."""
    return dict(item.split("://", 1) for item in value.split(","))


def _created_topics() -> dict[str, int]:
    script = _services()["kafka-init"]["command"][0]
    return {
        topic: int(partitions)
        for topic, partitions in re.findall(r"--topic (\S+) --partitions (\d+)", script)
    }


# --------------------------------------------------------------------------- kafka


def test_kafka_runs_the_official_image_in_kraft_mode() -> None:
    kafka = _services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert not kafka["image"].endswith(":latest")
    env = _kafka_env()
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert node == env["KAFKA_NODE_ID"]
    listeners = _listeners(env["KAFKA_LISTENERS"])
    voter_host, voter_port = voter.split(":")
    assert voter_host == _services()["kafka"]["hostname"]
    assert voter_port == listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]].rsplit(":", 1)[1]
    # CLUSTER_ID must be a base64url 16-byte UUID or `kafka-storage format` refuses it
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_kafka_listeners_serve_the_network_and_the_host() -> None:
    env = _kafka_env()
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    assert set(advertised) <= set(listeners)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    # each advertised port is the port its listener binds
    for name, address in advertised.items():
        assert address.rsplit(":", 1)[1] == listeners[name].rsplit(":", 1)[1], name
    # in-network clients use kafka:<port>; the host uses localhost:<published port>
    internal = advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    assert internal.split(":")[0] == "kafka"
    host = [a for a in advertised.values() if a.startswith("localhost:")]
    assert len(host) == 1
    port = host[0].split(":")[1]
    assert f"{port}:{port}" in _services()["kafka"]["ports"]
    for service in ("worker", "producer"):
        env_ = _services()[service]["environment"]
        assert env_["STREAM_BOOTSTRAP_SERVERS"] == internal, service


def test_topic_init_creates_every_topic_the_worker_uses() -> None:
    worker_env = _services()["worker"]["environment"]
    topics = _created_topics()
    needed = {
        worker_env[name]
        for name in (
            "STREAM_EVENTS_TOPIC",
            "STREAM_RECOMMENDATIONS_TOPIC",
            "STREAM_METRICS_TOPIC",
            "STREAM_DEAD_LETTER_TOPIC",
            "STREAM_MODEL_UPDATES_TOPIC",  # the sync is on with several partitions (auto)
        )
    }
    assert set(topics) == needed
    assert topics[worker_env["STREAM_EVENTS_TOPIC"]] == int(worker_env["STREAM_EVENTS_PARTITIONS"])
    assert topics[worker_env["STREAM_EVENTS_TOPIC"]] >= 2  # room to scale the consumer group
    init = _services()["kafka-init"]
    assert init["image"] == _services()["kafka"]["image"]
    assert init["restart"] == "no"
    assert "--if-not-exists" in init["command"][0]


# --------------------------------------------------------------------------- dependencies


def test_dependencies_wait_for_health_and_completion() -> None:
    services = _services()
    expected = {
        ("kafka-init", "kafka"): "service_healthy",
        ("worker", "kafka-init"): "service_completed_successfully",
        ("producer", "kafka-init"): "service_completed_successfully",
        ("producer", "worker"): "service_healthy",
        ("grafana", "prometheus"): "service_healthy",
    }
    for (service, dependency), condition in expected.items():
        assert services[service]["depends_on"][dependency]["condition"] == condition
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency


def test_worker_is_healthy_when_readyz_answers_on_the_metrics_port() -> None:
    worker = _services()["worker"]
    port = worker["environment"]["STREAM_METRICS_PORT"]
    probe = " ".join(worker["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/readyz" in probe
    assert f"{port}:{port}" in worker["ports"]
    assert worker["command"] == ["worker"]


def test_worker_and_producer_env_names_are_settings() -> None:
    known = settings_env_names()
    for service in ("worker", "producer"):
        for name in _services()[service]["environment"]:
            if name.startswith("STREAM_") and name != "STREAM_LOG_LEVEL":
                assert name in known, f"{service}: {name} is not in StreamSettings"


def _interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with NAME unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def test_worker_env_is_a_valid_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from stream.checkpoint import CheckpointStore
    from stream.settings import load_settings

    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(os.environ):
        if name.startswith("STREAM_"):
            monkeypatch.delenv(name)
    for name, value in _services()["worker"]["environment"].items():
        monkeypatch.setenv(name, _interpolate(value))
    settings = load_settings()
    assert settings.metrics_port == 8000
    # a checkpoint directory needs a signing key, or the worker refuses to start
    assert CheckpointStore.from_settings(settings) is not None


def test_checkpoints_go_to_a_named_volume() -> None:
    worker = _services()["worker"]
    target = worker["environment"]["STREAM_CHECKPOINT_DIR"]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert volumes[target] in compose()["volumes"]
    assert target in DOCKERFILE.read_text(encoding="utf-8")  # created and owned by the app user


def test_producer_streams_synthetic_events_with_a_drift_into_the_events_topic() -> None:
    producer = _services()["producer"]
    assert producer["entrypoint"] == ["python", "-m", "producers"]
    command = producer["command"]
    assert command[0] == "synthetic"
    args = dict(zip(command[1::2], command[2::2], strict=True))
    assert int(args["--drift-at"]) < int(args["--events"])
    assert args["--topic"] == producer["environment"]["STREAM_EVENTS_TOPIC"]
    assert args["--bootstrap-servers"] == producer["environment"]["STREAM_BOOTSTRAP_SERVERS"]
    text = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
    assert '#   command: ["replay"' in text  # the documented replay variant


def test_producer_flags_exist_in_the_producers_cli() -> None:
    command = _services()["producer"]["command"]
    result = subprocess.run(
        [sys.executable, "-m", "producers", command[0], "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for flag in (a for a in command if a.startswith("--")):
        assert flag in result.stdout, f"`producers {command[0]}` has no {flag}"


def test_both_app_services_build_the_same_image_from_the_repo() -> None:
    services = _services()
    for name in ("worker", "producer"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert services["worker"]["image"] == services["producer"]["image"]


# --------------------------------------------------------------------------- monitoring


def test_prometheus_and_grafana_mount_the_project_files() -> None:
    services = _services()
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus"] == "./prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_images_are_pinned() -> None:
    for name, service in _services().items():
        image = service["image"]
        if "build" not in service:
            assert re.search(r":v?\d+\.\d+", image), f"{name}: pin {image}"


# --------------------------------------------------------------------------- image


def test_dockerfile_builds_a_non_root_worker_image() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, flags=re.M)
    (user,) = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert user.split(":")[0] not in {"0", "root"}
    assert re.search(r"^RUN pip install --no-deps --force-reinstall \.", text, flags=re.M)
    assert re.search(r"^ENTRYPOINT \[\"python\", \"-m\", \"stream\"\]$", text, flags=re.M)
    assert re.search(r"^CMD \[\"worker\"\]$", text, flags=re.M)
    assert "EXPOSE 8000" in text
    for source in re.findall(r"^COPY (?!--)(.+) \S+$", text, flags=re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"COPY of missing {path}"


def _ignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").removeprefix("**/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern.rstrip("/") + "/"):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("path", [".venv", ".git", "tests", "__pycache__", ".env", "deploy"])
def test_dockerignore_keeps_junk_and_secrets_out(path: str) -> None:
    assert _ignored(path)


@pytest.mark.parametrize(
    "path", ["pyproject.toml", "README.md", "stream/worker.py", "producers/__main__.py"]
)
def test_dockerignore_keeps_what_the_build_copies(path: str) -> None:
    assert not _ignored(path)
