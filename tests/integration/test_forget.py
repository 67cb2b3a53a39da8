"""A ``forget`` event (privacy request) through the live worker and a real broker: the user
disappears from every model, the history and the recommendations topic (a tombstone), and the
next checkpoint holds no trace of them, byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kafka_helpers import consume, produce, settings_for
from recovery_helpers import assert_same_state, offline_shard, sample_pairs

from producers.records import encode_event
from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.checkpoint import CheckpointStore
from stream.core import Pipeline
from stream.kafka.admin import ensure_topics
from stream.models.knn import ItemKNN
from stream.models.mf import MatrixFactorization
from stream.settings import StreamSettings
from stream.worker import Worker

pytestmark = pytest.mark.integration

PARTITIONS = 2
USER = "forget-me-4e1c9"  # distinctive: its bytes in a checkpoint can only be this user
STRANGER = "never-seen-user"


def _run(settings: StreamSettings, n: int) -> None:
    summary = Worker(settings).run(max_events=n, idle_timeout=60)
    assert summary.consumed == n, summary


def _events() -> list[dict[str, Any]]:
    """A synthetic stream with ``USER`` acting on every 15th event (their own partition)."""
    events = list(SyntheticStream(SyntheticConfig(n_events=900, n_users=80, seed=4)).events())
    for i in range(0, len(events), 15):
        events[i] = {**events[i], "user_id": USER}
    return events


def _send(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
    produce(
        bootstrap,
        topic,
        [encode_event(e) for e in events],
        [str(e["user_id"]).encode() for e in events],
    )


def _user_partition(store: CheckpointStore, topic: str) -> tuple[int, Pipeline]:
    holding = []
    for p in range(PARTITIONS):
        loaded = store.load((topic, p))
        assert loaded is not None
        if USER in loaded[0].history:
            holding.append((p, loaded[0]))
    assert len(holding) == 1, "a user's events all go to one partition"
    return holding[0]


def test_forget_removes_the_user_from_models_outputs_and_the_next_checkpoint(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = settings_for(
        kafka_bootstrap,
        # Compared with each partition's events replayed offline: every partition its own
        # model (STREAM_MODEL_SYNC=auto would share item state; that is test_model_sync.py's).
        model_sync=False,
        events_partitions=PARTITIONS,
        models=("popularity", "knn", "biased_mf", "funk_mf", "blend"),
        recommender="blend",
        seed=3,
        negative_samples=2,
        mf_factors=8,
        drift_min_events=50,
        checkpoint_dir=tmp_path / "checkpoints",
        checkpoint_key="forget-test-key",
    )
    topic = settings.events_topic
    ensure_topics(settings, {topic: PARTITIONS}, timeout_s=30)
    store = CheckpointStore.from_settings(settings)
    assert store is not None
    events = _events()

    # Phase 1: the user is learned by every model and checkpointed.
    _send(kafka_bootstrap, topic, events)
    _run(settings, len(events))
    p, before = _user_partition(store, topic)
    assert USER.encode() in store.files((topic, p))[0].read_bytes()
    learners = {
        n: m for n, m in before.models.items() if isinstance(m, ItemKNN | MatrixFactorization)
    }
    assert set(learners) == {"knn", "biased_mf", "funk_mf"}
    assert all(model.n_users > 0 for model in learners.values())
    assert isinstance(before.models["knn"], ItemKNN)
    assert USER in before.models["knn"]._history
    for name in ("biased_mf", "funk_mf"):
        mf = before.models[name]
        assert isinstance(mf, MatrixFactorization)
        assert USER in mf.u_latents

    # Phase 2: one more event of the user, then the request to forget them. The forget is
    # the last event, so nothing else (another user's ranking) overwrites per-user leftovers.
    t = float(events[-1]["timestamp"])
    tail = [
        {"user_id": USER, "item_id": str(events[0]["item_id"]), "event_type": "click",
         "timestamp": t + 1},
        {"user_id": USER, "event_type": "forget", "timestamp": t + 2},
    ]  # fmt: skip
    _send(kafka_bootstrap, topic, tail)
    _run(settings, len(tail))
    loaded = store.load((topic, p))
    assert loaded is not None
    after, next_offset = loaded
    assert next_offset == before.run_count + len(tail)
    assert after.run_count == before.run_count + len(tail)

    # Unknown to every model: served and predicted exactly like a user never seen.
    assert USER not in after.history
    assert after.n_users == before.n_users - 1
    for name, model in after.models.items():
        if name in learners:
            assert model.n_users == before.models[name].n_users - 1, name
        for item in list(after.history[next(iter(after.history))])[:5]:
            assert model.predict_one(USER, item) == model.predict_one(STRANGER, item), name
        assert model.top_k(USER, 10) == model.top_k(STRANGER, 10), name
    knn, biased, funk = after.models["knn"], after.models["biased_mf"], after.models["funk_mf"]
    assert isinstance(knn, ItemKNN)
    assert USER not in knn._history
    for mf in (biased, funk):
        assert isinstance(mf, MatrixFactorization)
        assert USER not in mf.u_latents
    assert biased.u_biases is not None and USER not in biased.u_biases

    # The newest checkpoint of every partition holds no byte of the user id (the pickle of
    # the whole state, not just what the attributes above expose)...
    newest = [store.files((topic, q))[0] for q in range(PARTITIONS)]
    for path in newest:
        assert USER.encode() not in path.read_bytes(), path
    # ...and pruning deletes the older ones that still do.
    store.prune((topic, p))
    assert store.files((topic, p)) == [newest[p]]

    # The forget left a tombstone after the user's last recommendation.
    mine = [
        r for r in consume(kafka_bootstrap, settings.recommendations_topic)
        if r.key == USER.encode()
    ]  # fmt: skip
    assert mine and mine[-1].value is None
    assert all(r.value is not None for r in mine[:-1])
    assert len(mine) == sum(e["user_id"] == USER for e in events) + 1 + 1

    # Same state as the partition's events replayed offline, forget included.
    records = [r for r in consume(kafka_bootstrap, topic) if r.partition == p]
    want = offline_shard(settings, records)
    assert_same_state(after, want, sample_pairs(want, 30, seed=1))
