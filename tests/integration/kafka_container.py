"""Apache Kafka in Docker for the integration tests: the official ``apache/kafka`` image, one
node in KRaft mode (broker and controller, no ZooKeeper), as ``deploy/docker-compose.yml`` runs it.

testcontainers' own ``KafkaContainer`` drives Confluent's image (its start script calls
``/etc/confluent/docker/...``), so the container is built here on testcontainers' generic
``DockerContainer`` (API as in testcontainers 4.15, the floor in pyproject.toml). The
advertised listener must carry the port Docker maps on the host, known only once the container
runs: the container starts waiting for a start script, which is copied in afterwards, exports
``KAFKA_ADVERTISED_LISTENERS`` and hands over to the image's own ``/etc/kafka/docker/run``.
"""

from __future__ import annotations

import io
import re
import tarfile
import time
from pathlib import Path
from typing import Any

from testcontainers.core.container import DockerContainer

__all__ = ["IMAGE", "ApacheKafkaContainer", "compose_kafka_image", "kraft_env", "start_script"]

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml"
IMAGE = "apache/kafka:3.9.0"
"""Keep equal to the ``kafka`` service of deploy/docker-compose.yml (a test checks)."""

CLIENT_PORT = 9092  # the host-facing listener (PLAINTEXT); 9093 brokers, 9094 the controller
SCRIPT = "/tmp/stream-reco-start.sh"
READY = "/tmp/stream-reco-start.ready"  # extracted after the script: it is complete then
STARTED = re.compile(r"Kafka Server started|Transitioning from RECOVERY to RUNNING")


def compose_kafka_image() -> str:
    """The image of the compose file's ``kafka`` service."""
    import yaml

    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return str(compose["services"]["kafka"]["image"])


def kraft_env() -> dict[str, str]:
    """Environment of a single KRaft node (the image turns ``KAFKA_*`` into its config)."""
    return {
        "CLUSTER_ID": "FFPDp13aXV2tieC4FoP5Xw",
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9094",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENERS": f"PLAINTEXT://:{CLIENT_PORT},BROKER://:9093,CONTROLLER://:9094",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
            "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        # The tests create every topic with its final partition count, like kafka-init does.
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_LOG_DIRS": "/tmp/kraft-combined-logs",
    }


def start_command() -> str:
    """The container's command: wait for the start script, then run it."""
    return f'sh -c "while [ ! -f {READY} ]; do sleep 0.1; done; exec sh {SCRIPT}"'


def start_script(host: str, port: int) -> str:
    """Advertise ``host:port`` (the mapped port) to clients, the container's name to brokers."""
    return (
        f"export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://{host}:{port},"
        'BROKER://"$(hostname)":9093\n'
        "exec /etc/kafka/docker/run\n"
    )


def _archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, data in files.items():  # in order: the marker comes last
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class ApacheKafkaContainer(DockerContainer):  # type: ignore[misc]
    """``ApacheKafkaContainer().start()``, then ``get_bootstrap_server()``; ``stop()`` after."""

    def __init__(self, image: str = IMAGE, **kwargs: Any) -> None:
        super().__init__(image, **kwargs)
        self.with_exposed_ports(CLIENT_PORT)
        for name, value in kraft_env().items():
            self.with_env(name, value)
        self.with_command(start_command())

    def get_bootstrap_server(self) -> str:
        return f"{self.get_container_host_ip()}:{self.get_exposed_port(CLIENT_PORT)}"

    def start(self, timeout_s: float = 90) -> ApacheKafkaContainer:
        from testcontainers.core.wait_strategies import LogMessageWaitStrategy

        super().start()
        host, port = self.get_container_host_ip(), self.get_exposed_port(CLIENT_PORT)
        script = start_script(host, port).encode()
        self.get_wrapped_container().put_archive("/", _archive({SCRIPT: script, READY: b""}))
        wait = LogMessageWaitStrategy(STARTED)
        wait.with_startup_timeout(int(timeout_s))
        wait.wait_until_ready(self)
        return self
