"""The broker for integration tests, one per test session.

``kafka_bootstrap`` resolves, in order:

1. ``STREAM_TEST_BOOTSTRAP_SERVERS`` (an external Kafka, Redpanda, ...), if set;
2. Apache Kafka in Docker when a Docker engine answers: the official ``apache/kafka`` image in
   KRaft mode, as in ``deploy/docker-compose.yml`` (``kafka_container.ApacheKafkaContainer``,
   on testcontainers);
3. the embedded Tansu broker (``stream.broker.EmbeddedBroker``), stopped with SIGKILL at the end.

Without any broker the tests are skipped, except in CI (``CI=true``) where they fail.
Every test gets its own uuid-named topics and consumer group (``new_topic``,
``kafka_settings``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka_helpers import settings_for, unique

from stream.broker import BrokerError, EmbeddedBroker, wait_for_kafka
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings

logger = logging.getLogger(__name__)

ENV_BOOTSTRAP = "STREAM_TEST_BOOTSTRAP_SERVERS"


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


_USED: list[str] = []


def _announce(message: str) -> None:
    """Say which broker the session uses: in the log now, in the terminal summary at the end."""
    logger.warning("kafka_bootstrap: %s", message)
    _USED.append(message)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for message in _USED:
        terminalreporter.write_line(f"integration tests' broker: {message}")


def _docker_answers() -> bool:
    """Whether a Docker engine answers within a couple of seconds (never hangs)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _no_broker(reason: str) -> None:
    if _ci():
        pytest.fail(f"no Kafka broker for integration tests in CI: {reason}", pytrace=False)
    pytest.skip(f"no Kafka broker: {reason}")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of the session's broker."""
    external = os.environ.get(ENV_BOOTSTRAP, "").strip()
    if external:
        try:
            wait_for_kafka(external.split(",")[0], timeout_s=30)
        except BrokerError as exc:
            pytest.fail(f"{ENV_BOOTSTRAP}={external} does not answer: {exc}", pytrace=False)
        _announce(f"external broker {external} ({ENV_BOOTSTRAP})")
        yield external
        return

    if _docker_answers():
        container: Any = None
        try:
            from kafka_container import ApacheKafkaContainer

            container = ApacheKafkaContainer()
            container.start()
            bootstrap = str(container.get_bootstrap_server())
            wait_for_kafka(bootstrap, timeout_s=60)
        except Exception as exc:
            _announce(f"Kafka container failed ({exc!r}); using the embedded one")
            if container is not None:
                container.stop()
        else:
            _announce(f"Apache Kafka ({container.image}, KRaft) in Docker at {bootstrap}")
            try:
                yield bootstrap
            finally:
                container.stop()
            return

    broker = EmbeddedBroker()
    failure = ""
    try:
        broker.start()
    except BrokerError as exc:
        failure = str(exc)
    if failure:
        _no_broker(failure)
    _announce(f"embedded Tansu broker at {broker.bootstrap} (pid {broker.pid})")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> Callable[..., StreamSettings]:
    """Factory: ``kafka_settings(**overrides)`` → settings with uuid topics and group id."""

    def make(**overrides: Any) -> StreamSettings:
        return settings_for(kafka_bootstrap, **overrides)

    return make


@pytest.fixture
def new_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """Factory: ``new_topic(partitions=1)`` → the name of a topic created for this test."""
    settings = settings_for(kafka_bootstrap)

    def make(partitions: int = 1) -> str:
        name = unique("topic")
        ensure_topics(settings, {name: partitions}, timeout_s=30)
        return name

    return make
