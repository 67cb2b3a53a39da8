"""Helpers of the durability tests: run the real worker as a process, replay a partition offline,
and compare two shards' learned state.

A plain module (like ``kafka_helpers``), imported by name from the ``test_crash_recovery``,
``test_group_takeover`` and ``test_forget`` modules.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.structs import TopicPartition
from pydantic import SecretStr

from stream.checkpoint import CheckpointStore
from stream.core import Pipeline
from stream.events import Event, Source, decode_one
from stream.kafka import RawRecord
from stream.settings import StreamSettings

__all__ = [
    "OutputWatcher",
    "WorkerProcess",
    "assert_same_state",
    "assignments",
    "checkpoint_offsets",
    "committed_offsets",
    "offline_shard",
    "restorations",
    "sample_pairs",
    "wait_for",
    "worker_env",
]

REPO = Path(__file__).resolve().parents[2]


def _env_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def worker_env(settings: StreamSettings) -> dict[str, str]:
    """The environment of a ``python -m stream worker`` that reads exactly ``settings``.

    Every field given explicitly to ``settings`` becomes ``STREAM_<NAME>``; inherited
    ``STREAM_*`` variables are dropped so the child sees nothing else. String hashing is
    randomised per process, so state that depended on set order would not compare equal.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    for name in sorted(settings.model_fields_set):
        value = getattr(settings, name)
        if value is not None:
            env[f"STREAM_{name.upper()}"] = _env_value(value)
    env["PYTHONPATH"] = str(REPO)
    # Every process hashes strings differently: results must not depend on set order.
    env["PYTHONHASHSEED"] = "random"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    """``python -m stream worker`` as a child process, its log in ``log_path``."""

    def __init__(self, settings: StreamSettings, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        # The child runs in the log's directory so a developer's ``.env`` is never read.
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream", "worker", *args],
                env=worker_env(settings),
                cwd=log_path.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no checkpoint, no leaving the group."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for a clean exit (revoke, checkpoint, commit); returns the code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker did not stop within {timeout_s:g}s\n{self.log()}"
            ) from None

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker did not exit within {timeout_s:g}s\n{self.log()}"
            ) from None

    def log(self, tail: int | None = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines if tail is None else lines[-tail:])


class OutputWatcher:
    """Reads ``topic`` from its beginning, keeping every record that has arrived so far."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.records: list[RawRecord] = []
        self._consumer = KafkaConsumer(
            bootstrap_servers=[bootstrap], enable_auto_commit=False, group_id=None
        )
        partitions = self._consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + 30
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.1)
            partitions = self._consumer.partitions_for_topic(topic)
        assert partitions, f"topic {topic} not found"
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)

    def poll(self) -> list[RawRecord]:
        """Fetch what arrived since the last call; returns every record so far."""
        for batch in self._consumer.poll(timeout_ms=100).values():
            self.records.extend(
                RawRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
                for r in batch
            )
        return self.records

    def sources(self) -> Counter[tuple[int, int]]:
        """How many recommendations were published per event ``(partition, offset)``."""
        return Counter(
            (int(v["source_partition"]), int(v["source_offset"]))
            for v in (json.loads(r.value) for r in self.poll() if r.value is not None)
        )

    def covers(self, ends: dict[int, int]) -> bool:
        """Whether the last event of every partition has its recommendation."""
        seen = self.sources()
        return all(end == 0 or (p, end - 1) in seen for p, end in ends.items())

    def close(self) -> None:
        self._consumer.close()


_ASSIGNED = re.compile(r"partitions assigned: (\[.*\])")
_RESTORED = re.compile(r"restored (\S+)\[(\d+)\] from checkpoint at offset (\d+)")


def assignments(log: str) -> list[list[int]]:
    """The partition lists a worker's log says it was assigned, in order."""
    return [[int(p) for _, p in ast.literal_eval(m.group(1))] for m in _ASSIGNED.finditer(log)]


def restorations(log: str) -> list[tuple[int, int]]:
    """``(partition, offset)`` of every checkpoint restore a worker's log reports."""
    return [(int(m.group(2)), int(m.group(3))) for m in _RESTORED.finditer(log)]


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.05
) -> None:
    """Poll ``condition`` until it holds; ``AssertionError`` naming ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(poll_s)


def checkpoint_offsets(store: CheckpointStore, topic: str, partitions: int) -> dict[int, int]:
    """Per partition, the next offset of its newest verified checkpoint (0 when none)."""
    out: dict[int, int] = {}
    for p in range(partitions):
        try:
            info = store.newest_info((topic, p))
        except Exception:  # a file being rotated away between listing and reading
            info = None
        out[p] = 0 if info is None else info.next_offset
    return out


def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offsets of ``topic`` per partition, as the broker has them."""
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        found = admin.list_group_offsets(group_id)[group_id]
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic}


def offline_shard(settings: StreamSettings, records: Iterable[RawRecord]) -> Pipeline:
    """One partition's records, in offset order, through a fresh in-process Pipeline: what an
    uninterrupted worker would hold for that partition."""
    pipeline = Pipeline.from_settings(settings)
    for r in sorted(records, key=lambda r: r.offset):
        event = decode_one(
            r.key,
            r.value,
            max_bytes=settings.max_event_bytes,
            rating_range=(settings.rating_min, settings.rating_max),
        )
        assert isinstance(event, Event), f"test stream has a bad record at {r.offset}: {event}"
        pipeline.process_one(event, Source(r.topic, r.partition, r.offset))
    return pipeline


def sample_pairs(pipeline: Pipeline, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` user-item pairs drawn (seeded) from the users and items a shard has seen."""
    import random

    rng = random.Random(seed)
    users = sorted(str(u) for u in pipeline.history)
    items = sorted({str(i) for seen in pipeline.history.values() for i in seen})
    return [(rng.choice(users), rng.choice(items)) for _ in range(n)]


def _counts(p: Pipeline) -> dict[str, Any]:
    return {
        "run_count": p.run_count,
        "evaluated_count": p.evaluated_count,
        "learned": dict(p.learned),
        "evaluators": {
            n: (e.evaluated, e.rated, len(e.served)) for n, e in sorted(p.evaluators.items())
        },
        "n_users": p.n_users,
        "n_items": p.n_items,
        "models": {n: (m.n_users, m.n_items) for n, m in p.models.items()},
    }


def assert_same_state(
    got: Pipeline, want: Pipeline, pairs: Sequence[tuple[str, str]], k: int = 10
) -> None:
    """Same counts, history, cumulative metrics, and the same predictions and top-K for every
    user of ``pairs`` from every model: bit for bit (the models are seeded)."""
    assert _counts(got) == _counts(want)
    assert got.history == want.history
    got_metrics = got.metrics_record().model_dump(exclude={"created_at"})
    want_metrics = want.metrics_record().model_dump(exclude={"created_at"})
    assert got_metrics == want_metrics
    for name in want.models:
        for user, item in pairs:
            assert got.models[name].predict_one(user, item) == want.models[name].predict_one(
                user, item
            ), f"{name}.predict_one({user!r}, {item!r})"
            assert got.models[name].top_k(user, k) == want.models[name].top_k(user, k), (
                f"{name}.top_k({user!r})"
            )
