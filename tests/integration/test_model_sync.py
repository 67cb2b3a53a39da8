"""One model across partitions and workers (issue 12): two workers share four partitions with
the model sync on, SIGKILLed at random points; once every delta on the model-updates topic is
applied, each shard's additive item state equals a one-partition run over the same events,
so the kills lost nothing and nothing was applied twice."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest
from kafka_helpers import consume, produce, settings_for, unique
from recovery_helpers import (
    WorkerProcess,
    checkpoint_offsets,
    committed_offsets,
    offline_shard,
    wait_for,
)

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.checkpoint import CheckpointStore
from stream.core import Pipeline
from stream.events import MetricsRecord
from stream.kafka import BrokerUnavailableError
from stream.kafka.admin import ensure_topics
from stream.models import ItemKNN, MatrixFactorization, Popularity
from stream.settings import StreamSettings
from stream.sync import ShardDelta, ShardSync
from stream.worker import Worker

pytestmark = pytest.mark.integration

N_EVENTS = 8_000
TAIL = 200
PARTITIONS = 4
KILLS = 6
SEED = 20_261_201


def _has_partitions(worker: WorkerProcess) -> bool:
    return any("partitions assigned: [(" in line for line in worker.log(None).splitlines())


def _knn_state(model: ItemKNN) -> dict[tuple[str, str], float]:
    items, scale = model._items, model._scale
    state = {(str(items[r]), ""): float(model._norms[r]) / scale for r in range(len(items))}
    for i, row in enumerate(model._co):
        for j, value in row.items():
            state[(str(items[i]), str(items[j]))] = value / scale
    return state


def _additive(p: Pipeline) -> dict[str, dict[object, float]]:
    pop, mf = p.models["popularity"], p.models["biased_mf"]
    assert isinstance(pop, Popularity) and isinstance(mf, MatrixFactorization)
    out: dict[str, dict[object, float]] = {"popularity": {i: pop.score_of(i) for i in pop._counts}}
    for name in ("knn", "sequence"):
        knn = p.models[name]
        assert isinstance(knn, ItemKNN)
        out[name] = dict(_knn_state(knn))
    mean = mf.river_model.global_mean
    out["mf_mean"] = {"n": float(mean.n), "mean": float(mean.get())}
    out["mf_items"] = dict.fromkeys(mf.i_latents, 1.0)
    return out


def test_two_workers_with_sync_killed_at_random_end_with_the_one_partition_item_state(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = settings_for(
        kafka_bootstrap,
        events_partitions=PARTITIONS,
        models=("popularity", "knn", "sequence", "biased_mf", "blend"),
        recommender="blend",
        seed=7,
        # Additive state that merges exactly: no decay, no pruned rows, no negatives drawn
        # from a shard's catalogue of the moment (the global mean of the MF is additive).
        popularity_half_life=1e12,  # (inf does not survive a checkpoint's JSON settings)
        knn_half_life=1e12,  # (None does not reach the worker's environment)
        knn_neighbors=500,
        negative_samples=0,
        mf_factors=8,
        max_poll_records=25,
        metrics_every_events=500,
        checkpoint_every_events=97,
        checkpoint_every_seconds=3_600.0,
        checkpoint_dir=tmp_path / "checkpoints",
        checkpoint_key="model-sync-test-key",
        checkpoint_keep=2,
        model_sync=True,
        model_sync_events=40,
        model_sync_ms=300,
        model_updates_topic=unique("model-updates"),
    )
    topic = settings.events_topic
    ensure_topics(settings, {topic: PARTITIONS, settings.model_updates_topic: 1}, timeout_s=30)
    config = SyntheticConfig(n_events=N_EVENTS + TAIL, n_users=200, n_items=150, seed=5)
    sent = list(SyntheticStream(config).records())
    head, tail = sent[:N_EVENTS], sent[N_EVENTS:]
    produce(kafka_bootstrap, topic, [r.value for r in head], [r.key for r in head])
    store = CheckpointStore.from_settings(settings)
    assert store is not None

    def progress() -> int:
        return sum(checkpoint_offsets(store, topic, PARTITIONS).values())

    rng = random.Random(SEED)
    started = time.monotonic()
    workers = [WorkerProcess(settings, tmp_path / f"worker-{w}-0.log") for w in range(2)]
    at_kills: list[int] = []
    try:
        for round_ in range(KILLS):
            victim = rng.randrange(2)
            # The victim is working (it has partitions), then the group made progress.
            wait_for(
                lambda v=workers[victim]: _has_partitions(v) or not v.alive(),  # type: ignore[misc]
                90,
                f"partitions for the victim of round {round_}",
            )
            before = progress()
            wait_for(
                lambda b=before: progress() > b or not all(w.alive() for w in workers),  # type: ignore[misc]
                90,
                f"a checkpoint of round {round_}",
            )
            assert all(w.alive() for w in workers), "\n".join(w.log() for w in workers)
            time.sleep(rng.uniform(0.0, 1.0))
            workers[victim].kill()
            assert workers[victim].proc.returncode == -9
            at_kills.append(progress())
            workers[victim] = WorkerProcess(
                settings, tmp_path / f"worker-{victim}-{round_ + 1}.log"
            )
        assert at_kills[-1] < N_EVENTS, "the last kill came after the stream's end"
    finally:  # the survivors are killed too (one of them may still be starting)
        for w in workers:
            w.kill()

    produce(kafka_bootstrap, topic, [r.value for r in tail], [r.key for r in tail])
    records = consume(kafka_bootstrap, topic, n=N_EVENTS + TAIL)
    ends = {p: sum(1 for r in records if r.partition == p) for p in range(PARTITIONS)}
    assert all(ends.values()), ends
    finals = 0
    while checkpoint_offsets(store, topic, PARTITIONS) != ends:
        finals += 1
        assert finals <= 4, f"stream not covered after {finals - 1} clean rounds"
        pair = [
            WorkerProcess(settings, tmp_path / f"final-{finals}-{w}.log", "--idle-timeout", "8")
            for w in range(2)
        ]
        for w in pair:
            # 1: a commit refused while the other one left the group (re-consumed in the next
            # round); anything else is a failure.
            assert w.wait(240) in (0, 1), w.log()

    # Every delta on the topic, applied to each shard's final checkpoint (what it holds
    # already is dropped as a duplicate): the state once every delta is applied.
    deltas = [
        ShardDelta.decode(r.value)
        for r in consume(kafka_bootstrap, settings.model_updates_topic)
        if r.value is not None
    ]
    published = {(d.source_partition, d.last_offset) for d in deltas}
    # What a receiver applies of each source (dropping what ends at or before what it has)
    # covers the source's events once each, in order: no gap, no overlap.
    covered = dict.fromkeys(range(PARTITIONS), -1)
    overlaps: list[tuple[int, int, int, int]] = []
    for d in deltas:
        done = covered[d.source_partition]
        if d.last_offset > done:
            if d.first_offset != done + 1:
                overlaps.append((d.source_partition, done, d.first_offset, d.last_offset))
            covered[d.source_partition] = d.last_offset
    assert not overlaps, (
        f"(source, applied up to, first, last) of deltas not contiguous: {overlaps}"
    )
    assert covered == {p: ends[p] - 1 for p in range(PARTITIONS)}
    want = _additive(offline_shard(settings, sorted(records, key=lambda r: r.offset)))
    duplicates = 0
    mismatches: list[tuple[int, str, int, list[object]]] = []
    for p in range(PARTITIONS):
        loaded = store.load((topic, p))
        assert loaded is not None
        pipeline, next_offset = loaded
        assert next_offset == ends[p] and pipeline.run_count == ends[p]
        shard = ShardSync(pipeline, topic, p)
        for delta in deltas:
            shard.apply_one(delta)
        duplicates += shard.state.duplicates_dropped
        got = _additive(pipeline)
        for part, values in want.items():
            assert got[part].keys() == values.keys(), (p, part)
            # Decay with a 1e12-event half-life: ages differ by an interval or so. A lost or
            # doubled event moves a value by its weight (>= 1) instead.
            rel = 1e-9 if part.startswith("mf") else 1e-6
            wrong = {
                key: (got[part][key], value)
                for key, value in values.items()
                if got[part][key] != pytest.approx(value, rel=rel, abs=1e-9)
            }
            if wrong:
                mismatches.append((p, part, len(wrong), list(wrong.items())[:3]))
    assert not mismatches, mismatches
    # Metrics records say which worker published them and which partitions they cover.
    metrics = [
        MetricsRecord.model_validate_json(r.value)
        for r in consume(kafka_bootstrap, settings.metrics_topic)
        if r.value is not None
    ]
    assert metrics and all(m.worker_id for m in metrics)
    assert len({m.worker_id for m in metrics}) >= 2
    covered_by = {p for m in metrics for p in m.partitions.get(topic, [])}
    assert covered_by == set(range(PARTITIONS))
    print(
        f"\n{KILLS} kills (checkpointed events at each: {at_kills}), {finals} final round(s), "
        f"{len(deltas)} deltas ({len(published)} distinct) on the topic, {duplicates} dropped "
        f"as duplicates: {time.monotonic() - started:.0f}s"
    )
    assert duplicates > 0  # restarted shards re-read the topic and dropped what they held


class _KeepingWorker(Worker):
    """A worker that keeps its shards' pipelines when it drops them (at its stop), so the
    test can read what they hold."""

    kept: dict[tuple[str, int], Pipeline]

    def _drop(self, partitions: list[tuple[str, int]]) -> None:
        self.kept = {
            **getattr(self, "kept", {}),
            **{tp: self.shards[tp] for tp in partitions if tp in self.shards},
        }
        super()._drop(partitions)


def test_without_checkpoints_a_partition_moved_by_a_crash_loses_none_of_its_learning(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """No checkpoints: the worker commits a partition's offset no further than its last full
    delta, so the next owner adopts every delta before the committed offset and re-learns
    from there: no delta straddles the commit (its events before it would be lost)."""
    settings = _popularity_sync_settings(kafka_bootstrap)
    topic = settings.events_topic
    ensure_topics(settings, {topic: 2}, timeout_s=30)
    sent = list(SyntheticStream(SyntheticConfig(n_events=4_000, n_users=200, seed=5)).records())
    produce(kafka_bootstrap, topic, [r.value for r in sent], [r.key for r in sent])

    victim = WorkerProcess(settings, tmp_path / "victim.log")
    try:
        wait_for(
            lambda: (
                sum(committed_offsets(kafka_bootstrap, settings.group_id, topic).values()) >= 400
                or not victim.alive()
            ),
            90,
            "the first worker's commits",
        )
        assert victim.alive(), victim.log()
        time.sleep(random.Random(SEED).uniform(0.0, 0.2))
    finally:
        victim.kill()
    committed = committed_offsets(kafka_bootstrap, settings.group_id, topic)
    assert 0 < sum(committed.values()) < len(sent), committed

    survivor = _KeepingWorker(settings)
    summary = survivor.run(idle_timeout=5.0)
    assert summary.processed == len(sent) - sum(committed.values())
    _assert_counts_add_up(kafka_bootstrap, settings, survivor, len(sent))


class _FailingDeltaWorker(Worker):
    """A worker one of whose model deltas cannot be sent (the producer refuses it at once,
    as it does a record over ``max_request_size`` or a topic with no metadata): the
    ``fail_at``-th, or (``fail_at`` 0) the first one sent at its stop."""

    fail_at = 5
    sent = 0
    failed = False

    def _start_sync(self) -> None:
        super()._start_sync()
        assert self._sync is not None
        send = self._sync.send

        def failing(key: bytes, value: bytes) -> None:
            self.sent += 1
            due = self.sent == self.fail_at if self.fail_at else bool(self._stop_reason)
            if due and not self.failed:
                self.failed = True
                raise BrokerUnavailableError("injected: the delta cannot be queued")
            send(key, value)

        self._sync.send = failing


@pytest.mark.parametrize("when", ["in the loop", "at the stop"])
def test_a_delta_that_cannot_be_sent_stops_the_worker_without_committing_past_it(
    kafka_bootstrap: str, tmp_path: Path, when: str
) -> None:
    """Publishing collects a shard's changes before it sends them: when the send raises, those
    changes exist nowhere else, so the worker stops and commits nothing past them (no
    checkpoints: a commit is all that would make them look safe), also when it happens in
    the last delta at a clean stop (the revoke that follows must not commit either); the
    next owner learns those events again and the item state adds up as one partition's."""
    settings = _popularity_sync_settings(kafka_bootstrap)
    topic = settings.events_topic
    ensure_topics(settings, {topic: 2}, timeout_s=30)
    sent = list(SyntheticStream(SyntheticConfig(n_events=600, n_users=100, seed=6)).records())
    produce(kafka_bootstrap, topic, [r.value for r in sent], [r.key for r in sent])

    victim = _FailingDeltaWorker(settings)
    if when == "in the loop":
        with pytest.raises(BrokerUnavailableError, match="injected"):
            victim.run(idle_timeout=10.0)
        assert victim.sent == victim.fail_at
    else:
        victim.fail_at = 0
        victim.run(max_events=len(sent) // 2)  # the stop's last deltas: one of them fails
    assert victim.failed
    assert victim.summary.uncommitted > 0  # reported as not safe (exit code 1)
    assert victim._sync is not None and victim._sync.lost_at is not None
    (_, lost_partition), first = victim._sync.lost_at
    committed = committed_offsets(kafka_bootstrap, settings.group_id, topic)
    assert committed.get(lost_partition, 0) <= first, (committed, victim._sync.lost)

    survivor = _KeepingWorker(settings)
    survivor.run(idle_timeout=5.0)
    _assert_counts_add_up(kafka_bootstrap, settings, survivor, len(sent))


def _popularity_sync_settings(bootstrap: str) -> StreamSettings:
    """Two partitions, popularity only (additive, no decay), small deltas (every 7 events,
    every third full, no time trigger), commits every 50 ms: they land between deltas."""
    return settings_for(
        bootstrap,
        events_partitions=2,
        models=("popularity",),
        recommender="popularity",
        popularity_half_life=math.inf,
        model_sync=True,
        model_sync_events=7,
        model_sync_full_every=3,
        model_sync_ms=3_600_000,
        commit_interval_ms=50,
        max_poll_records=20,
    )


def _assert_counts_add_up(
    bootstrap: str, settings: StreamSettings, survivor: _KeepingWorker, n: int
) -> None:
    """Once each of the survivor's two shards has applied every delta on the topic (the other
    shard's last one it had not read yet), its popularity counts are a one-partition run's."""
    topic = settings.events_topic
    records = consume(bootstrap, topic, n=n)
    want = offline_shard(settings, sorted(records, key=lambda r: r.offset)).models["popularity"]
    deltas = [
        ShardDelta.decode(r.value)
        for r in consume(bootstrap, settings.model_updates_topic)
        if r.value is not None
    ]
    assert {d.source_partition for d in deltas} == {0, 1}
    for p in range(2):
        pipeline = survivor.kept[(topic, p)]
        shard = ShardSync(pipeline, topic, p)
        for delta in deltas:
            shard.apply_one(delta)
        got = pipeline.models["popularity"]
        assert isinstance(got, Popularity) and isinstance(want, Popularity)
        wrong = {
            i: (got._counts.get(i, 0.0), c)
            for i, c in want._counts.items()
            if got._counts.get(i, 0.0) != pytest.approx(c, rel=1e-9)
        }
        assert got._counts.keys() == want._counts.keys() and not wrong, (p, list(wrong.items())[:5])
