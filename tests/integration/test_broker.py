"""The embedded broker: starts, serves Kafka clients, stops; and its command-line runner.

These tests start brokers of their own (not the session's), so they always use Tansu.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time

import pytest
from kafka_helpers import consume, produce, settings_for

from stream.broker import BrokerError, EmbeddedBroker, free_port
from stream.kafka.admin import ensure_topics


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_embedded_broker_starts_serves_and_stops() -> None:
    with EmbeddedBroker() as broker:
        host, port = broker.bootstrap.split(":")
        assert host == "127.0.0.1" and int(port) == broker.port
        assert broker.running
        pid = broker.pid
        assert pid is not None
        assert ensure_topics(settings_for(broker.bootstrap), {"smoke": 1}) == {"smoke": 1}
        produce(broker.bootstrap, "smoke", [b"a", b"b", b"c"], keys=[b"1", b"2", b"3"])
        records = consume(broker.bootstrap, "smoke", n=3)
        assert [(r.key, r.value) for r in records] == [(b"1", b"a"), (b"2", b"b"), (b"3", b"c")]
        assert [r.offset for r in records] == [0, 1, 2]
    assert not broker.running
    assert _gone(pid), "the broker process was not reaped"
    assert not _accepts("127.0.0.1", broker.port)
    broker.stop()  # idempotent


def test_stop_works_with_clients_connected() -> None:
    # SIGTERM can hang Tansu while clients are connected; stop() must not.
    from kafka import KafkaConsumer

    broker = EmbeddedBroker().start()
    consumer = KafkaConsumer(bootstrap_servers=[broker.bootstrap], enable_auto_commit=False)
    try:
        consumer.topics()
        broker.stop()
        assert not broker.running
    finally:
        consumer.close(timeout_ms=1_000)
        broker.stop()


def test_explicit_port_is_used_and_a_taken_port_is_a_clear_error() -> None:
    port = free_port()
    with EmbeddedBroker(port=port) as broker:
        assert broker.bootstrap == f"127.0.0.1:{port}"
        with pytest.raises(BrokerError, match=f"port {port}.*in use"):
            EmbeddedBroker(port=port).start()


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not selector.select(timeout_s):
            raise TimeoutError(f"no output within {timeout_s}s")
        return proc.stdout.readline().strip()
    finally:
        selector.close()


def _cli(how: str, port: int) -> list[str]:
    if how == "module":
        return [sys.executable, "-m", "stream", "broker", "--port", str(port)]
    code = f"import sys; from stream.broker import run_broker_cli; sys.exit(run_broker_cli({port}))"
    return [sys.executable, "-c", code]


@pytest.mark.parametrize(
    ("how", "sig"),
    [("function", signal.SIGTERM), ("function", signal.SIGINT), ("module", signal.SIGTERM)],
)
def test_broker_cli_prints_address_serves_and_exits_0_on_signal(
    how: str, sig: signal.Signals
) -> None:
    """``run_broker_cli`` directly and as ``python -m stream broker``."""
    port = free_port()
    proc = subprocess.Popen(
        _cli(how, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _read_line(proc, timeout_s=30)
        assert line == f"bootstrap: 127.0.0.1:{port}"
        produce(f"127.0.0.1:{port}", "cli", [b"x"])
        assert [r.value for r in consume(f"127.0.0.1:{port}", "cli", n=1)] == [b"x"]
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
        deadline = time.monotonic() + 5
        while _accepts("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _accepts("127.0.0.1", port), "the broker outlived run_broker_cli"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def test_run_broker_cli_fails_with_exit_1_when_the_port_is_taken() -> None:
    with EmbeddedBroker() as broker:
        code = (
            "import sys; from stream.broker import run_broker_cli; "
            f"sys.exit(run_broker_cli({broker.port}))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1
        assert "in use" in done.stderr
        assert "bootstrap:" not in done.stdout
