"""A broker outage in the middle of a run: the worker waits, resumes, and loses nothing.

The embedded broker keeps its data in memory, so killing it would lose every record and offset.
The outage is simulated in front of it instead: a TCP proxy sits between every client and a
dedicated broker that *advertises the proxy's address* (clients reconnect to the advertised
listener, so all traffic, including reconnects, goes through the proxy). "Stopping the broker"
closes every proxied connection and refuses new ones; "starting it" accepts again.

A producer keeps sending events (each carries a sequence number) while a worker runs in a
thread; the proxy is cut for ~15 s mid-run and restored. Afterwards every event the producer got
an acknowledgement for must have its recommendation, the group's committed offset must reach the
end of the events topic, and the worker must have said once that the broker was lost and once
that it is back, without a single traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaProducer
from kafka_helpers import consume, group_offsets, settings_for, wait_for

from stream.broker import EmbeddedBroker, free_port
from stream.events import Recommendation
from stream.kafka.admin import ensure_topics
from stream.worker import RunSummary, Worker

pytestmark = pytest.mark.integration

OUTAGE_S = 15.0
BEFORE = 1_500  # events produced before the outage starts
RATE_PER_S = 150  # producer pace meanwhile


class TcpProxy:
    """Forward ``127.0.0.1:port`` to ``target``; :meth:`cut` is a broker outage.

    While cut, existing connections are closed and new ones refused (nothing listens).
    """

    def __init__(self, target: tuple[str, int], port: int) -> None:
        self.target = target
        self.port = port
        self.accepted = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._up = threading.Event()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        self._up.set()
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        self._up.clear()
        if self._accepting is not None:
            self._accepting.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    restore = start

    def _accept(self, listener: socket.socket) -> None:
        while self._up.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if not self._up.is_set():
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65_536):
                dst.sendall(chunk)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxied_broker() -> Iterator[tuple[EmbeddedBroker, TcpProxy]]:
    """A dedicated broker reachable only through a proxy it advertises."""
    broker_port, proxy_port = free_port(), free_port()
    proxy = TcpProxy(("127.0.0.1", broker_port), proxy_port)
    proxy.start()
    broker = EmbeddedBroker(port=broker_port, advertised_port=proxy_port)
    try:
        broker.start()
        yield broker, proxy
    finally:
        proxy.cut()
        broker.stop()


class Producer:
    """Sends numbered view events at a steady pace; remembers which were acknowledged."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.acked: set[int] = set()
        self.failed: list[BaseException] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._producer = KafkaProducer(
            bootstrap_servers=[bootstrap],
            linger_ms=5,
            delivery_timeout_ms=120_000,
            request_timeout_ms=10_000,
            reconnect_backoff_max_ms=1_000,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send_one(self) -> None:
        seq = self.sent
        self.sent += 1
        value = json.dumps(
            {
                "user_id": f"u{seq % 40}",
                "item_id": f"i{(seq * 7) % 90}",
                "event_type": "view",
                "timestamp": time.time(),
                "context": {"seq": seq},
            }
        ).encode()
        future = self._producer.send(self.topic, key=f"u{seq % 40}".encode(), value=value)
        future.add_callback(lambda _meta, seq=seq: self._ack(seq))
        future.add_errback(self.failed.append)

    def _ack(self, seq: int) -> None:
        with self._lock:
            self.acked.add(seq)

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(1 / RATE_PER_S):
                self.send_one()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._producer.flush(timeout=120)
        self._producer.close(timeout=10)


def is_kafkas(logger: str) -> bool:
    return logger == "kafka" or logger.startswith("kafka.")


def test_worker_rides_out_a_broker_outage(
    proxied_broker: tuple[EmbeddedBroker, TcpProxy], caplog: pytest.LogCaptureFixture
) -> None:
    broker, proxy = proxied_broker
    bootstrap = f"127.0.0.1:{proxy.port}"
    s = settings_for(
        bootstrap,
        models=("popularity",),
        recommender="popularity",
        metrics_every_events=500,
        reconnect_backoff_max_s=2.0,
    )
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    caplog.set_level(logging.INFO)

    producer = Producer(bootstrap, s.events_topic)
    for _ in range(BEFORE):
        producer.send_one()
    producer.start()

    worker = Worker(s)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["summary"] = worker.run()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: worker.summary.processed >= BEFORE // 2, 90, "the worker to get going")
        proxy.cut()
        cut_at = time.monotonic()
        processed_at_cut = worker.summary.processed
        readiness = []  # (ready, reason), sampled through the outage
        while time.monotonic() - cut_at < OUTAGE_S:
            readiness.append((worker.health.ready, worker.health.reason))
            time.sleep(0.2)
        assert thread.is_alive(), f"the worker ended during the outage: {outcome}"
        proxy.restore()
        # Waiting in a poll or in a flush of outputs, the worker says why it is not ready.
        assert any(
            not ready and reason.startswith("Kafka broker unreachable")
            for ready, reason in readiness
        ), sorted(set(readiness))
        assert readiness[0][0], "ready before the broker was lost"
        wait_for(lambda: worker.health.ready, 60, "the worker to be ready again")
        time.sleep(3.0)  # the producer keeps sending after the broker is back
        producer.stop()
        sent = producer.sent
        wait_for(
            lambda: worker.summary.committed.get((s.events_topic, 0), 0) >= sent,
            120,
            f"the worker to commit all {sent} events",
        )
        resumed_after = time.monotonic() - cut_at
    finally:
        worker.request_stop("test over")
        thread.join(60)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    summary: RunSummary = outcome["summary"]

    # Nothing acknowledged was lost: every acked event is in the topic and has a recommendation.
    assert not producer.failed, producer.failed[:3]
    assert producer.acked == set(range(sent))
    events = consume(bootstrap, s.events_topic, n=None)
    seq_at = {r.offset: json.loads(r.value or b"")["context"]["seq"] for r in events}
    assert set(seq_at.values()) == producer.acked
    recs = consume(bootstrap, s.recommendations_topic, n=None)
    rec_offsets = Counter(
        Recommendation.model_validate_json(r.value or b"").source_offset for r in recs
    )
    assert set(rec_offsets) == set(seq_at), "an event without a recommendation, or vice versa"
    duplicates = sum(n - 1 for n in rec_offsets.values())
    assert group_offsets(bootstrap, s.group_id) == {(s.events_topic, 0): len(events)}
    assert summary.dead_lettered == 0

    # One clear line when the broker went away, one when it came back, no traceback storm.
    ours = [r for r in caplog.records if r.name.startswith("stream")]
    messages = [r.getMessage() for r in ours]
    lost = [m for m in messages if "lost the Kafka broker" in m]
    back = [m for m in messages if "Kafka broker" in m and " is back" in m]
    # What an operator sees: the CLI sets kafka-python's own loggers to CRITICAL (it logs each
    # broken socket with a traceback, more or fewer depending on timing); every other record counts.
    seen = [r for r in caplog.records if r.levelno >= logging.CRITICAL or not is_kafkas(r.name)]
    with_traceback = [r for r in seen if r.exc_info is not None]
    print(
        f"\noutage {OUTAGE_S:g}s: {sent} events sent ({len(events)} in the topic), "
        f"{processed_at_cut} processed at the cut, caught up {resumed_after:.1f}s after the cut; "
        f"{len(recs)} recommendations ({duplicates} duplicates); "
        f"{proxy.accepted} proxied connections; {len(ours)} log records of ours; "
        f"lost={lost} back={back}"
    )
    assert with_traceback == [], [r.getMessage() for r in with_traceback[:5]]
    assert len(lost) == 1, lost
    assert len(back) == 1, back
    assert broker.running and broker.advertised == bootstrap  # same broker, data kept
