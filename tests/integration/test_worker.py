"""The worker in-process on a real broker: outputs, dead letters, commits, /metrics and health.

A synthetic stream with malformed records interleaved is produced to a fresh events topic; a
:class:`stream.worker.Worker` runs in a background thread (``metrics_port=0``) while the test
scrapes its ``/metrics``, ``/healthz`` and ``/readyz``; then every output topic is read back.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from kafka_helpers import consume, group_offsets, produce, wait_for
from prometheus_client.parser import text_string_to_metric_families

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.events import DeadLetter, Event, MetricsRecord, Recommendation, decode_one
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings
from stream.worker import RunSummary, Worker

pytestmark = pytest.mark.integration

N_VALID = 1_200
MODELS = ("popularity", "knn", "biased_mf")
BAD: list[tuple[str, bytes | None]] = [
    ("invalid_json", b'{"user_id": "u1", "item_id": '),
    ("missing_field", b'{"user_id":"u1","event_type":"view","timestamp":1700000000}'),
    ("invalid_field", b'{"user_id":"u1","item_id":"i1","event_type":"view","timestamp":"soon"}'),
    ("invalid_field", b'{"user_id":["u1"],"item_id":"i1","event_type":"view","timestamp":1}'),
    ("unknown_event_type", b'{"user_id":"u1","item_id":"i1","event_type":"like","timestamp":1}'),
    (
        "rating_out_of_range",
        b'{"user_id":"u1","item_id":"i1","event_type":"rating","rating":9,"timestamp":1}',
    ),
    (
        "oversized",
        b'{"user_id":"u1","item_id":"i1","event_type":"view","timestamp":1,"pad":"'
        + b"x" * 3_000
        + b'"}',
    ),
    ("not_utf8", b'{"user_id":"\xff\xfe","item_id":"i1","event_type":"view","timestamp":1}'),
    ("not_an_object", b"[1, 2, 3]"),
    ("empty", None),
]


@dataclass
class Produced:
    """What was written to the events topic, by offset (one partition, one producer)."""

    values: list[bytes | None] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    bad: dict[int, tuple[str, bytes | None, bytes | None]] = field(default_factory=dict)

    @property
    def valid(self) -> int:
        return len(self.values) - len(self.bad)


def mixed_stream(n_valid: int = N_VALID, seed: int = 4) -> Produced:
    """Synthetic events with every kind of malformed record spread through them."""
    stream = SyntheticStream(
        SyntheticConfig(n_events=n_valid, n_users=60, n_items=150, seed=seed, ratings_fraction=0.1)
    )
    out = Produced()
    every = n_valid // (len(BAD) + 1)
    bad = iter(BAD)
    for n, record in enumerate(stream.records()):
        out.keys.append(record.key)
        out.values.append(record.value)
        if (n + 1) % every == 0:
            kind = next(bad, None)
            if kind is not None:
                reason, value = kind
                key = f"bad-{reason}".encode()
                out.bad[len(out.values)] = (reason, key, value)
                out.keys.append(key)
                out.values.append(value)
    assert len(out.bad) == len(BAD)
    return out


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def value(
    page: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return page.get((name, tuple(sorted(labels.items()))))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Background:
    """A worker running in a thread; ``join`` re-raises what the run raised."""

    def __init__(self, worker: Worker, **run: float | int | None) -> None:
        self.worker = worker
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, kwargs=run, daemon=True)
        self._thread.start()

    def _run(self, **run: float | int | None) -> None:
        try:
            self.summary = self.worker.run(**run)  # type: ignore[arg-type]
        except BaseException as exc:
            self.error = exc

    @property
    def alive(self) -> bool:
        """Whether the run has not returned (or raised) yet."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float) -> None:
        """Ask the worker to stop and wait for its thread (errors are the test's to check)."""
        self.worker.request_stop("test over")
        self._thread.join(timeout_s)

    def join(self, timeout_s: float) -> RunSummary:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.worker.request_stop("test timeout")
            self._thread.join(30)
            raise AssertionError(f"worker still running after {timeout_s:g}s")
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


@pytest.fixture
def running() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for bg in started:  # never leave a worker behind a failed assertion
        bg.stop(30)


def test_worker_end_to_end(
    kafka_bootstrap: str,
    kafka_settings: Callable[..., StreamSettings],
    running: list[Background],
) -> None:
    s = kafka_settings(
        models=MODELS,
        recommender="knn",
        metrics_every_events=250,
        metrics_every_seconds=3_600.0,
        max_event_bytes=2_048,
        metrics_host="127.0.0.1",
        metrics_port=free_port(),  # 0 means "off" for the worker
    )
    produced = mixed_stream()
    worker = Worker(s)
    bg = Background(worker, idle_timeout=6.0)
    running.append(bg)

    # Health before any partition is assigned: alive, not ready.
    wait_for(lambda: worker.server_port is not None, 30, "the metrics server")
    port = worker.server_port
    assert port is not None and port > 0
    status, body = get(port, "/readyz")
    assert status == 503, body
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/nope")[0] == 404
    wait_for(lambda: get(port, "/readyz")[0] == 200, 60, "/readyz to turn ready")
    assert get(port, "/readyz")[1].strip() == "ready"

    produce(kafka_bootstrap, s.events_topic, produced.values, produced.keys)
    total = len(produced.values)

    def consumed_all() -> bool:
        page = samples(get(port, "/metrics")[1])
        counted = sum(v for (name, _), v in page.items() if name == "stream_events_total")
        lag = value(page, "stream_consumer_lag", topic=s.events_topic, partition="0")
        return counted == total and lag == 0.0

    wait_for(consumed_all, 120, f"/metrics to count {total} events and zero lag")
    page = samples(get(port, "/metrics")[1])
    summary = bg.join(60)

    # --- /metrics -------------------------------------------------------------------------
    by_type: dict[str, int] = defaultdict(int)
    for i, v in enumerate(produced.values):
        if i not in produced.bad:
            event = decode_one(produced.keys[i], v)
            assert isinstance(event, Event), event
            by_type[event.event_type] += 1
    for kind, n in by_type.items():
        assert value(page, "stream_events_total", event_type=kind, outcome="processed") == n
    assert value(page, "stream_events_total", event_type="unknown", outcome="dead_lettered") == len(
        BAD
    )
    reasons: dict[str, int] = defaultdict(int)
    for reason, _, _ in produced.bad.values():
        reasons[reason] += 1
    for reason, n in reasons.items():
        assert value(page, "stream_dead_letters_total", reason=reason) == n, reason
    assert value(page, "stream_processing_seconds_count") == total
    assert (value(page, "stream_processing_seconds_sum") or 0.0) > 0.0
    assert value(page, "stream_processing_seconds_bucket", le="+Inf") == total
    for model in MODELS:
        rate = value(page, "stream_model_hit_rate", model=model, k="10")
        assert rate is not None and 0.0 < rate < 1.0, (model, rate)
    published = value(page, "stream_recommendations_published_total", model="knn")
    assert published == produced.valid
    assert value(page, "stream_model_mae", model="biased_mf") is not None
    assert value(page, "stream_model_mae", model="knn") is None
    users = {k for i, k in enumerate(produced.keys) if i not in produced.bad}
    assert value(page, "stream_known_users") == len(users)
    assert (value(page, "stream_known_items") or 0) > 100
    assert value(page, "stream_worker_ready") == 1.0
    assert value(page, "stream_consumer_lag", topic=s.events_topic, partition="0") == 0.0
    # Declared up front (zero until a detection), so increase() sees the first one.
    for model in MODELS:
        drift = value(
            page, "stream_drift_detections_total", model=model, metric="miss", detector="adwin"
        )
        assert drift is not None, model

    # --- the run --------------------------------------------------------------------------
    assert summary.stopped_by == "idle for 6s"
    assert (summary.consumed, summary.processed, summary.dead_lettered) == (
        total,
        produced.valid,
        len(BAD),
    )
    assert summary.committed == {(s.events_topic, 0): total}
    assert group_offsets(kafka_bootstrap, s.group_id) == {(s.events_topic, 0): total}
    assert not worker.health.ready  # stopped

    # --- recommendations ------------------------------------------------------------------
    recs = consume(kafka_bootstrap, s.recommendations_topic, n=None)
    assert len(recs) == produced.valid
    history: dict[str, set[str]] = defaultdict(set)
    offsets = [r for r in range(total) if r not in produced.bad]
    assert [
        Recommendation.model_validate_json(r.value or b"").source_offset for r in recs
    ] == offsets
    for record in recs:
        rec = Recommendation.model_validate_json(record.value or b"")
        event = decode_one(None, produced.values[rec.source_offset])
        assert isinstance(event, Event), event
        assert record.key == rec.user_id.encode() == produced.keys[rec.source_offset]
        assert rec.user_id == event.user_id
        assert rec.event_timestamp == event.timestamp
        assert (rec.model, rec.source_topic, rec.source_partition) == ("knn", s.events_topic, 0)
        history[rec.user_id].add(event.item)
        items = [i.item_id for i in rec.items]
        assert not set(items) & history[rec.user_id], rec.user_id
        assert len(items) == len(set(items)) <= 10 and all(i.reason for i in rec.items)

    # --- metrics records ------------------------------------------------------------------
    metrics = [
        MetricsRecord.model_validate_json(r.value or b"")
        for r in consume(kafka_bootstrap, s.metrics_topic, n=None)
    ]
    assert len(metrics) == summary.metrics_records
    # Every 250 records consumed (valid or not), plus one at shutdown.
    assert len(metrics) == total // 250 + 1
    assert [m.events for m in metrics] == sorted(m.events for m in metrics)
    last = metrics[-1]
    assert summary.last_metrics is not None
    assert last.model_dump(exclude={"created_at"}) == summary.last_metrics.model_dump(
        exclude={"created_at"}
    )
    assert (last.events, last.k, last.window, last.users) == (produced.valid, 10, 1_000, len(users))
    assert set(last.window_metrics) == set(last.cumulative_metrics) == set(MODELS)
    for name in MODELS:
        cum = last.cumulative_metrics[name]
        assert cum.evaluated == last.evaluated > 0
        assert cum.hit_rate is not None and cum.ndcg is not None and cum.mrr is not None
        assert last.window_metrics[name].evaluated == cum.evaluated
    assert last.cumulative_metrics["biased_mf"].rated > 0
    assert last.cumulative_metrics["biased_mf"].mae is not None
    assert last.cumulative_metrics["knn"].mae is None

    # --- dead letters ---------------------------------------------------------------------
    letters = [
        DeadLetter.model_validate_json(r.value or b"")
        for r in consume(kafka_bootstrap, s.dead_letter_topic, n=None)
    ]
    assert len(letters) == len(BAD)
    for letter in letters:
        reason, key, raw = produced.bad[letter.source_offset]
        assert letter.reason == reason, (letter.reason, letter.detail)
        assert (letter.source_topic, letter.source_partition) == (s.events_topic, 0)
        assert letter.key_b64 is not None and base64.b64decode(letter.key_b64) == key
        if raw is None:
            assert letter.value_b64 is None
        else:
            assert letter.value_b64 is not None and base64.b64decode(letter.value_b64) == raw
        assert letter.detail
    assert sorted(letter.source_offset for letter in letters) == sorted(produced.bad)
    json.dumps([letter.model_dump() for letter in letters])


def test_worker_max_events_counts_dead_letters_and_commits_exactly(
    kafka_bootstrap: str, kafka_settings: Callable[..., StreamSettings]
) -> None:
    s = kafka_settings(
        models=("popularity", "knn"), recommender="knn", metrics_port=0, max_event_bytes=2_048
    )
    produced = mixed_stream(n_valid=300, seed=9)
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, produced.values, produced.keys)
    limit = max(produced.bad) + 1  # stop right after the last malformed record
    summary = Worker(s).run(max_events=limit, idle_timeout=60)
    assert summary.stopped_by == f"max events ({limit}) consumed"
    assert summary.consumed == limit and summary.dead_lettered == len(BAD)
    assert summary.processed == limit - len(BAD)
    assert group_offsets(kafka_bootstrap, s.group_id) == {(s.events_topic, 0): limit}
    assert len(consume(kafka_bootstrap, s.recommendations_topic, n=None)) == limit - len(BAD)

    # A second run of the same group resumes where the first committed, nothing twice.
    rest = Worker(s).run(idle_timeout=4)
    assert rest.consumed == len(produced.values) - limit and rest.dead_lettered == 0
    assert group_offsets(kafka_bootstrap, s.group_id) == {(s.events_topic, 0): len(produced.values)}
    recs = consume(kafka_bootstrap, s.recommendations_topic, n=None)
    offsets = [Recommendation.model_validate_json(r.value or b"").source_offset for r in recs]
    assert offsets == [o for o in range(len(produced.values)) if o not in produced.bad]


def test_each_users_recommendations_come_from_their_partition(
    kafka_bootstrap: str, kafka_settings: Callable[..., StreamSettings]
) -> None:
    s = kafka_settings(
        models=("popularity", "knn"),
        recommender="knn",
        events_partitions=3,
        metrics_port=0,
        metrics_every_events=10_000,
    )
    stream = SyntheticStream(SyntheticConfig(n_events=900, n_users=40, n_items=120, seed=2))
    records = list(stream.records())
    ensure_topics(s, {s.events_topic: 3}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, [r.value for r in records], [r.key for r in records])
    events = consume(kafka_bootstrap, s.events_topic, n=len(records))
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    per_partition: dict[int, int] = defaultdict(int)
    event_at: dict[tuple[int, int], bytes] = {}
    for e in events:
        assert e.key is not None and e.value is not None
        partition_of[e.key].add(e.partition)
        per_partition[e.partition] += 1
        event_at[(e.partition, e.offset)] = e.key
    assert all(len(p) == 1 for p in partition_of.values())  # keyed by user
    assert len(per_partition) == 3  # 40 users spread over all three partitions

    summary = Worker(s).run(max_events=len(records), idle_timeout=60)
    assert summary.consumed == summary.processed == len(records)
    expected = {(s.events_topic, p): n for p, n in per_partition.items()}
    assert summary.committed == expected
    assert group_offsets(kafka_bootstrap, s.group_id) == expected

    recs = consume(kafka_bootstrap, s.recommendations_topic, n=None)
    assert len(recs) == len(records)
    seen: set[tuple[int, int]] = set()
    for record in recs:
        rec = Recommendation.model_validate_json(record.value or b"")
        key = rec.user_id.encode()
        assert record.key == key
        assert partition_of[key] == {rec.source_partition}
        assert event_at[(rec.source_partition, rec.source_offset)] == key
        seen.add((rec.source_partition, rec.source_offset))
    assert seen == set(event_at)
    # The final metrics merge the three shards: every event and every user once.
    last = summary.last_metrics
    assert last is not None
    assert last.events == len(records) and last.users == len(partition_of)


@pytest.mark.parametrize("interval_ms", [300, 60_000])
def test_commits_follow_the_commit_interval_while_running(
    kafka_bootstrap: str,
    kafka_settings: Callable[..., StreamSettings],
    running: list[Background],
    interval_ms: int,
) -> None:
    """A quiet topic still gets its last batch committed within the interval; a long interval
    commits nothing until the stop (where everything processed is made safe)."""
    s = kafka_settings(
        models=("popularity",),
        recommender="popularity",
        commit_interval_ms=interval_ms,
        max_poll_records=20,  # ten batches, faster than the interval: the last one waits
    )
    stream = SyntheticStream(SyntheticConfig(n_events=200, n_users=20, n_items=50, seed=5))
    records = list(stream.records())
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, [r.value for r in records], [r.key for r in records])
    worker = Worker(s)
    bg = Background(worker, idle_timeout=None)
    running.append(bg)
    wait_for(lambda: worker.summary.consumed == len(records), 60, "all events consumed")
    expected = {(s.events_topic, 0): len(records)}
    if interval_ms < 1_000:
        # No further batch arrives: the idle loop commits on time, the worker still runs.
        wait_for(lambda: group_offsets(kafka_bootstrap, s.group_id) == expected, 10, "commit")
        assert bg.alive
    else:
        time.sleep(2.0)
        assert group_offsets(kafka_bootstrap, s.group_id) == {}
    # Outputs go out at once whatever the interval; only the flush + commit wait for it.
    assert len(consume(kafka_bootstrap, s.recommendations_topic, n=None)) == len(records)
    worker.request_stop("test over")
    summary = bg.join(30)
    assert summary.committed == expected
    assert group_offsets(kafka_bootstrap, s.group_id) == expected
