"""The Docker path of the integration tests' broker, checked without a Docker engine: the image
and mode match deploy/docker-compose.yml, the start script advertises the mapped port, and the
testcontainers API it uses is there in the declared floor."""

from __future__ import annotations

import io
import re
import shlex
import socket
import subprocess
import tarfile
import tomllib
from importlib.metadata import version
from pathlib import Path

import yaml
from kafka_container import (
    IMAGE,
    READY,
    SCRIPT,
    ApacheKafkaContainer,
    _archive,
    compose_kafka_image,
    kraft_env,
    start_command,
    start_script,
)

ROOT = Path(__file__).resolve().parents[2]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def test_the_image_is_the_official_apache_kafka_of_the_compose_file() -> None:
    assert IMAGE.startswith("apache/kafka:")
    assert compose_kafka_image() == IMAGE


def test_a_single_kraft_node_without_zookeeper() -> None:
    env = kraft_env()
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    compose_env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == compose_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert "CONTROLLER://:9094" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@localhost:9094"
    assert not [k for k in env if "ZOOKEEPER" in k]
    listeners = {entry.split("://")[0] for entry in env["KAFKA_LISTENERS"].split(",")}
    mapped = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert listeners == set(mapped) and env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners


def test_the_start_script_advertises_the_mapped_port(tmp_path: Path) -> None:
    script = start_script("127.0.0.1", 32_768)
    assert script.rstrip().endswith("exec /etc/kafka/docker/run")
    probe = tmp_path / "probe.sh"
    probe.write_text(script.replace("exec /etc/kafka/docker/run", "env"))
    env = subprocess.run(["sh", str(probe)], capture_output=True, text=True, check=True).stdout
    advertised = next(line for line in env.splitlines() if line.startswith("KAFKA_ADVERTISED"))
    assert advertised == (
        f"KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://127.0.0.1:32768,BROKER://{socket.gethostname()}:9093"
    )
    command = shlex.split(start_command())
    assert command[:2] == ["sh", "-c"]
    assert f"[ ! -f {READY} ]" in command[2] and command[2].endswith(f"exec sh {SCRIPT}")
    with tarfile.open(fileobj=io.BytesIO(_archive({SCRIPT: b"x", READY: b""}))) as tar:
        # The marker the container waits for is extracted after the complete script.
        assert tar.getnames() == [SCRIPT.lstrip("/"), READY.lstrip("/")]


def test_the_testcontainers_floor_has_what_the_container_uses() -> None:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    floor = next(_version(r) for r in dev["dev"] if r.startswith("testcontainers>="))
    # 4.15 is the release whose source this container was written against (it also brought
    # testcontainers.community.*, which the tests once imported and 4.8 lacked).
    assert floor >= (4, 15)
    assert _version(version("testcontainers")) >= floor
    assert issubclass(ApacheKafkaContainer, DockerContainer)
    for method in ("with_exposed_ports", "with_env", "with_command", "start", "stop"):
        assert callable(getattr(DockerContainer, method)), method
    for method in ("get_container_host_ip", "get_exposed_port", "get_wrapped_container"):
        assert callable(getattr(DockerContainer, method)), method
    wait = LogMessageWaitStrategy(re.compile("Kafka Server started"))
    assert callable(wait.with_startup_timeout) and callable(wait.wait_until_ready)
