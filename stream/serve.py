"""``python -m stream serve``: the latest recommendation per user, over HTTP.

The recommendations topic is read as a table (it is log-compacted: the latest record per user
id, a tombstone deletes the user), from its beginning at every start, into memory:

- ``GET /users/{user_id}/recommendations``: the user's latest record, as the worker published
  it (JSON); 404 for a user without one. With ``STREAM_SERVE_TOKEN`` set, these requests need
  ``Authorization: Bearer <token>`` (401 otherwise).
- ``GET /healthz``: the reading thread is alive. ``GET /readyz``: every partition was read up
  to the high watermark it had when the service started. ``GET /metrics``: Prometheus.

Anything else gets a 4xx JSON error (``{"error": ..., "status": ...}``), never a traceback.
The HTTP server is the standard library's ``ThreadingHTTPServer`` with keep-alive: a lookup is a
dict read, and on loopback it meets the latency target (README, Performance) without a
dependency.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import signal
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import unquote

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError

from stream.events import MAX_ID_LENGTH, Recommendation
from stream.settings import StreamSettings

__all__ = [
    "RecommendationService",
    "RecommendationTable",
    "ServeMetrics",
    "add_arguments",
    "main",
    "register",
]

logger = logging.getLogger(__name__)

_PREFIX = "/users/"
_SUFFIX = "/recommendations"
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0)
# Invalid records logged one by one before the log only counts them (the counter is exact).
_LOGGED_INVALID = 10


class RecommendationTable:
    """The latest recommendation record per user id (the topic's key), as published.

    >>> table = RecommendationTable()
    >>> table.apply_one(b"u1", b'{"user_id": "u1", "items": [], "model": "knn", '
    ...     b'"source_topic": "e", "source_partition": 0, "source_offset": 3, '
    ...     b'"event_timestamp": 1.0}')
    'stored'
    >>> len(table), table.apply_one(b"u1", None), len(table)
    (1, 'deleted', 0)
    """

    def __init__(self) -> None:
        self._rows: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, user_id: str) -> bytes | None:
        """The user's record (JSON bytes), or ``None``."""
        return self._rows.get(user_id)

    def apply_one(self, key: bytes | None, value: bytes | None) -> str:
        """Apply one record: ``stored``, ``deleted`` (a tombstone) or why it was not used
        (``no_key``, ``bad_key``, ``invalid_record``, ``key_mismatch``)."""
        if key is None:
            return "no_key"
        try:
            user = key.decode("utf-8")
        except UnicodeDecodeError:
            return "bad_key"
        if value is None:
            self._rows.pop(user, None)
            return "deleted"
        try:
            record = Recommendation.model_validate_json(value)
        except ValidationError:
            return "invalid_record"
        if record.user_id != user:
            return "key_mismatch"
        self._rows[user] = value
        return "stored"


class ServeMetrics:
    """The service's Prometheus metrics, on a registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "stream_serve_requests",
            "HTTP requests, by endpoint and status code.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "stream_serve_request_seconds",
            "Time to answer a request (parsed to written).",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.records = Counter(
            "stream_serve_records",
            "Records read from the recommendations topic, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.users = Gauge(
            "stream_serve_users", "Users with a recommendation in memory.", registry=registry
        )
        self.lag = Gauge(
            "stream_serve_lag",
            "Records of the recommendations topic not read yet (high watermark - position).",
            registry=registry,
        )
        self.ready = Gauge(
            "stream_serve_ready",
            "1 once the topic was read up to its end at start.",
            registry=registry,
        )
        for outcome in ("stored", "deleted", "invalid_record"):
            self.records.labels(outcome)
        self._children: dict[tuple[str, int], Any] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        child = self._children.get((endpoint, status))
        if child is None:
            child = self._children[(endpoint, status)] = self.requests.labels(endpoint, str(status))
        child.inc()
        self.latency.labels(endpoint).observe(seconds)


class _Materializer(threading.Thread):
    """Reads the recommendations topic from its beginning into the table, then follows it."""

    def __init__(
        self, settings: StreamSettings, table: RecommendationTable, metrics: ServeMetrics
    ) -> None:
        super().__init__(name="serve-materializer", daemon=True)
        self.settings, self.table, self.metrics = settings, table, metrics
        self.ready = False
        self.reason = "connecting to Kafka"
        self.error: BaseException | None = None
        self.last_tick = time.monotonic()
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        from stream.kafka.admin import COMPACTED, ensure_topics
        from stream.kafka.reader import TopicNotFoundError, TopicReader

        s = self.settings
        topic = s.recommendations_topic
        try:
            try:
                reader = TopicReader(s, topic, from_beginning=True, topic_wait_s=2.0)
            except TopicNotFoundError:
                # Serve started before any worker: create it as the worker would (an existing
                # topic keeps whatever partitions it was given, e.g. by deploy/).
                ensure_topics(
                    s, {topic: 1}, timeout_s=s.broker_wait_seconds, configs={topic: COMPACTED}
                )
                reader = TopicReader(s, topic, from_beginning=True)
        except BaseException as exc:
            self._fail(exc)
            return
        started = time.monotonic()
        self.reason = f"reading {topic} from the beginning"
        invalid = 0
        try:
            while not self._stop_event.is_set():
                self.last_tick = time.monotonic()
                for record in reader.poll():
                    outcome = self.table.apply_one(record.key, record.value)
                    self.metrics.records.labels(outcome).inc()
                    if outcome not in ("stored", "deleted"):
                        invalid += 1
                        if invalid <= _LOGGED_INVALID or invalid % 1_000 == 0:
                            logger.warning(
                                "record %s not served: %s (%d so far; stream_serve_records_total)",
                                record,
                                outcome,
                                invalid,
                            )
                lag = reader.lag()
                if lag is not None:
                    self.metrics.lag.set(lag)
                self.metrics.users.set(len(self.table))
                if not self.ready and reader.caught_up():
                    self.ready = True
                    self.reason = "ready"
                    self.metrics.ready.set(1)
                    logger.info(
                        "caught up with %s: %d users in %.1fs",
                        topic,
                        len(self.table),
                        time.monotonic() - started,
                    )
        except BaseException as exc:
            self._fail(exc)
        finally:
            reader.close()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.ready = False
        self.reason = f"{type(exc).__name__}: {exc}"
        self.metrics.ready.set(0)
        logger.error("reading %s failed: %s", self.settings.recommendations_topic, self.reason)


class RecommendationService:
    """The HTTP service and the thread that fills its table; :meth:`start`, :meth:`stop`.

    Parameters
    ----------
    settings
        Topic, connection, ``serve_host``/``serve_port`` (0: a free port, see :attr:`port`)
        and the optional ``serve_token``.
    registry
        Where the metrics are registered (and what ``/metrics`` exports).
    """

    def __init__(self, settings: StreamSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.table = RecommendationTable()
        self.metrics = ServeMetrics(registry)
        self._token = (
            None
            if settings.serve_token is None
            else settings.serve_token.get_secret_value().encode("utf-8")
        )
        self._materializer = _Materializer(settings, self.table, self.metrics)
        self._server = _Server((settings.serve_host, settings.serve_port), _handler_class(self))
        self._server.daemon_threads = True
        self._server.handle_error = _quiet_error  # type: ignore[method-assign]
        self.port: int = int(self._server.server_address[1])
        self._http = threading.Thread(
            target=self._server.serve_forever, name="serve-http", daemon=True
        )

    @property
    def ready(self) -> bool:
        """Whether the table holds the topic up to its end at start."""
        return self._materializer.ready

    @property
    def error(self) -> BaseException | None:
        """Why reading the topic stopped, if it did."""
        return self._materializer.error

    def start(self) -> RecommendationService:
        self._materializer.start()
        self._http.start()
        return self

    def stop(self) -> None:
        """Stop answering, close the socket and the topic reader (also when never started)."""
        if self._http.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._materializer.stop()
        if self._materializer.is_alive():
            self._materializer.join(timeout=10)

    def authorized(self, header: str | None) -> bool:
        """Whether ``header`` (``Authorization``) carries the token, when one is set."""
        if self._token is None:
            return True
        if not header:
            return False
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._token)

    def live(self) -> tuple[bool, str]:
        m = self._materializer
        if m.error is not None:
            return False, m.reason
        if not m.is_alive() and m.ident is not None:
            return False, "the topic reader stopped"
        return True, "ok"

    def readiness(self) -> dict[str, Any]:
        m = self._materializer
        return {"ready": m.ready, "reason": m.reason, "users": len(self.table)}


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 makes the kernel drop the SYNs of a burst of new
    # connections: the client retries after 1 s, then 3 s (seen with 100+ wrk connections).
    request_queue_size = 1024


def _quiet_error(request: Any, client_address: Any) -> None:
    # A client that hangs up mid-request is routine; socketserver would print a traceback.
    exc = sys.exc_info()[1]
    logger.debug("request from %s failed: %r", client_address, exc)


def _user_id(path: str) -> tuple[str | None, tuple[int, str]]:
    """The user id of ``/users/{user_id}/recommendations``, or the error reply."""
    if not path.startswith(_PREFIX) or not path.endswith(_SUFFIX):
        return None, (404, "not found: GET /users/{user_id}/recommendations")
    raw = path[len(_PREFIX) : -len(_SUFFIX)]
    if not raw or "/" in raw:
        return None, (404, "not found: GET /users/{user_id}/recommendations")
    if len(raw) > 3 * MAX_ID_LENGTH:  # longer than any id even fully percent-encoded
        return None, (400, f"user_id longer than {MAX_ID_LENGTH} characters")
    try:
        user = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return None, (400, "user_id is not percent-encoded UTF-8")
    if len(user) > MAX_ID_LENGTH:
        return None, (400, f"user_id longer than {MAX_ID_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in user) or user != user.strip():
        return None, (400, "user_id has control characters or surrounding spaces")
    return user, (200, "")


def _handler_class(service: RecommendationService) -> type[BaseHTTPRequestHandler]:
    metrics = service.metrics

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: no connection set-up per request
        # Headers and body leave in one write (flushed after each request), without Nagle's
        # delay: two small writes met the client's delayed ACK and cost 40 ms a request.
        wbufsize = -1
        disable_nagle_algorithm = True
        timeout = 30  # an idle or stalled connection frees its thread
        server_version = "stream-serve"
        sys_version = ""

        def do_GET(self) -> None:
            started = time.perf_counter()
            path = self.path.split("?", 1)[0]
            endpoint = "other"
            try:
                if path.startswith(_PREFIX):
                    endpoint = "recommendations"
                    status = self._recommendations(path)
                elif path == "/healthz":
                    endpoint = "healthz"
                    ok, why = service.live()
                    status = self._json(200 if ok else 503, {"live": ok, "reason": why})
                elif path == "/readyz":
                    endpoint = "readyz"
                    state = service.readiness()
                    status = self._json(200 if state["ready"] else 503, state)
                elif path == "/metrics":
                    endpoint = "metrics"
                    status = self._reply(
                        200, generate_latest(service.registry), CONTENT_TYPE_LATEST
                    )
                else:
                    status = self._error(
                        404,
                        "not found: try /users/{user_id}/recommendations, /healthz, "
                        "/readyz, /metrics",
                    )
            except (ConnectionError, TimeoutError):
                raise  # the client went away: nothing to answer
            except Exception:
                logger.exception("answering GET %s failed", path[:200])
                status = self._error(500, "internal error (logged by the service)")
            metrics.observe_request(endpoint, status, time.perf_counter() - started)

        def _recommendations(self, path: str) -> int:
            if not service.authorized(self.headers.get("Authorization")):
                return self._error(
                    401,
                    "missing or wrong bearer token (Authorization: Bearer ...)",
                    {"WWW-Authenticate": 'Bearer realm="stream-reco"'},
                )
            user, (code, message) = _user_id(path)
            if user is None:
                return self._error(code, message)
            body = service.table.get(user)
            if body is None:
                return self._error(404, "no recommendations for this user", {}, user)
            return self._reply(200, body, "application/json")

        def _not_allowed(self) -> None:
            self.close_connection = True  # its body, if any, is not read
            status = self._error(
                405, f"method {self.command} not allowed; use GET", {"Allow": "GET"}
            )
            metrics.observe_request("other", status, 0.0)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

        def _error(
            self,
            code: int,
            message: str,
            headers: dict[str, str] | None = None,
            user: str | None = None,
        ) -> int:
            body: dict[str, Any] = {"error": message, "status": code}
            if user is not None:
                body["user_id"] = user
            return self._json(code, body, headers)

        def _json(
            self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> int:
            return self._reply(code, json.dumps(body).encode(), "application/json", headers)

        def _reply(
            self,
            code: int,
            body: bytes,
            ctype: str,
            headers: dict[str, str] | None = None,
        ) -> int:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return code

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            if self.request_version == "HTTP/0.9":  # no status line, no headers: refuse it
                self.send_error(505, "HTTP/0.9 is not supported; use HTTP/1.1")
                return False
            return True

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            # The standard library's replies to malformed requests (400, 414, 431, 501) are
            # HTML; ours are JSON like every other error.
            self.close_connection = True
            if self.request_version == "HTTP/0.9":  # a malformed request line: answer in 1.1
                self.request_version = "HTTP/1.1"
            try:
                phrase = HTTPStatus(code).phrase
            except ValueError:
                phrase = "error"
            body = json.dumps({"error": message or phrase, "status": code}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
            metrics.observe_request("other", code, 0.0)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("http %s", format % args)

    return Handler


# --- command line --------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add the ``serve`` subcommand to ``sub`` (an ``add_subparsers()`` result)."""
    parser = sub.add_parser(
        "serve",
        help="HTTP service: the latest recommendation per user, from the recommendations topic",
        description="Materialise the latest recommendation per user from the recommendations "
        "topic (read from its beginning) and answer GET /users/{user_id}/recommendations, "
        "/healthz, /readyz and /metrics. STREAM_SERVE_TOKEN set: data requests need "
        "'Authorization: Bearer <token>'.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=_command)


def _command(ns: argparse.Namespace) -> int:
    from stream.settings import load_settings

    settings = load_settings(
        serve_port=ns.port,
        serve_host=ns.host,
        bootstrap_servers=ns.bootstrap_servers,
        recommendations_topic=ns.recommendations_topic,
    )
    return main(ns, settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's arguments (each defaults from its ``STREAM_*`` variable)."""
    parser.add_argument(
        "--port", type=int, default=None, help="port to listen on [env STREAM_SERVE_PORT]"
    )
    parser.add_argument("--host", default=None, help="address to listen on [env STREAM_SERVE_HOST]")
    parser.add_argument("--bootstrap-servers", default=None, help="[env STREAM_BOOTSTRAP_SERVERS]")
    parser.add_argument(
        "--recommendations-topic",
        default=None,
        help="topic to serve [env STREAM_RECOMMENDATIONS_TOPIC]",
    )


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def main(ns: argparse.Namespace, settings: StreamSettings) -> int:
    """Run the service until SIGTERM/SIGINT; 1 if reading the topic failed."""
    try:
        service = RecommendationService(settings, CollectorRegistry())
    except OSError as exc:
        print(
            f"error: cannot listen on {settings.serve_host}:{settings.serve_port} ({exc}); "
            "check STREAM_SERVE_HOST and STREAM_SERVE_PORT (or --host, --port)",
            file=sys.stderr,
        )
        return 2
    if settings.serve_token is None and not _is_loopback(settings.serve_host):
        logger.warning(
            "serving on %s without STREAM_SERVE_TOKEN: anyone who can reach it reads every "
            "user's recommendations",
            settings.serve_host,
        )
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = [(s, signal.signal(s, handler)) for s in (signal.SIGTERM, signal.SIGINT)]
    service.start()
    guard = "token required" if settings.serve_token else "no token"
    print(
        f"serving {settings.recommendations_topic} on http://{settings.serve_host}:{service.port}"
        f"/users/{{user_id}}/recommendations ({guard})",
        flush=True,
    )
    try:
        while not stop.wait(0.2):
            if service.error is not None:
                break
    finally:
        service.stop()
        for signum, old in previous:
            signal.signal(signum, old)
    if service.error is not None:
        print(
            f"error: reading {settings.recommendations_topic} failed: {service.error}",
            file=sys.stderr,
        )
        return 1
    return 0
