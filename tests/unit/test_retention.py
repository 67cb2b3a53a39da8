"""Bounded memory: users expire (TTL in event time, LRU cap), items are capped (LRU).

The pipeline is driven by plain lists of events, the way the worker and ``stream evaluate``
drive it; checkpoints are written and read with a real :class:`CheckpointStore`.
"""

from __future__ import annotations

import io
import logging
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from stream.checkpoint import CheckpointStore
from stream.core import Pipeline, merge_metrics
from stream.evaluate import evaluate, print_table
from stream.events import Event, Source
from stream.monitoring import WorkerMetrics
from stream.restore import apply_settings
from stream.retention import Retention
from stream.settings import SettingsError, StreamSettings, load_settings

K = 5
MODELS = ("popularity", "knn", "sequence", "biased_mf", "userknn", "bpr", "blend")


def settings(**over: Any) -> StreamSettings:
    values: dict[str, Any] = {
        "models": MODELS,
        "recommender": "knn",
        "top_k": K,
        "mf_factors": 4,
        "bpr_factors": 4,
        "knn_neighbors": 10,
        "metric_window": 50,
        "drift_min_events": 0,
        "seed": 11,
    }
    values.update(over)
    return StreamSettings(_env_file=None, **values)


def ev(user: str, item: str, t: float) -> Event:
    return Event(user_id=user, item_id=item, event_type="click", timestamp=t)


def run(p: Pipeline, events: list[Event], start: int = 0) -> None:
    for n, e in enumerate(events):
        p.process_one(e, Source("events", 0, start + n))


def stream(n: int, users: int = 40, items: int = 30, seed: int = 2, t0: float = 0.0) -> list[Event]:
    rng = random.Random(seed)
    return [ev(f"u{rng.randrange(users)}", f"i{rng.randrange(items)}", t0 + t) for t in range(n)]


def assert_cold(p: Pipeline, user: str) -> None:
    """``user`` is a stranger to the pipeline and to every model."""
    assert user not in p.history
    for name, model in [*p.models.items(), ("fallback", p.fallback)]:
        assert model.top_k(user, K) == model.top_k("never-seen", K), name
        for item in ("i1", "i2", "i3"):
            assert model.predict_one(user, item) == model.predict_one("never-seen", item), name


# --- users -------------------------------------------------------------------------------


def test_the_ttl_counts_in_event_time_not_wall_clock() -> None:
    # Timestamps of 1970: by the wall clock every user would be long expired.
    p = Pipeline.from_settings(settings(user_ttl_seconds=100.0))
    run(p, [ev("a", "i1", 1_000.0), ev("b", "i2", 1_050.0), ev("c", "i3", 1_100.0)])
    assert set(p.history) == {"a", "b", "c"}  # 1_100 - 1_000 is not more than the TTL
    run(p, [ev("c", "i4", 1_120.0)], start=3)
    assert set(p.history) == {"b", "c"}  # a's last event is 120 s older than the newest
    assert p.retention.expired_ttl == 1 and p.retention.expired_cap == 0
    run(p, [ev("b", "i5", 1_130.0)], start=4)  # b came back in time
    run(p, [ev("c", "i6", 1_230.0)], start=5)
    assert set(p.history) == {"b", "c"}
    run(p, [ev("c", "i6", 1_231.0)], start=6)
    assert set(p.history) == {"c"}


def test_an_expired_user_is_cold_in_every_model_and_comes_back_new() -> None:
    p = Pipeline.from_settings(settings(user_ttl_seconds=500.0))
    run(p, stream(400))  # event times 0..399
    user = "u7"
    seen = next(iter(p.history[user]))
    held = {n: m.n_users for n, m in p.models.items() if m.n_users}
    run(p, [ev("u1", "i1", 1_000.0)], start=400)  # everyone but u1 is now 600 s old or more
    assert_cold(p, user)
    assert set(p.history) == {"u1"}
    assert all(p.models[n].n_users == 1 for n in held), held
    # u1 too: expired at the start of its own event, it learns it as a new user.
    assert p.retention.expired_ttl == len({e.user_id for e in stream(400)})
    # Returning, an item they had seen is a prediction again (their history is gone).
    assert p.process_one(ev(user, seen, 1_001.0), Source("events", 0, 401)).evaluated


def test_a_returning_user_expires_before_their_own_event_even_out_of_order() -> None:
    p = Pipeline.from_settings(settings(user_ttl_seconds=100.0))
    # "b" arrives after "a" with an older timestamp: it sits behind a fresher user.
    run(p, [ev("a", "i1", 1_000.0), ev("b", "i2", 500.0), ev("c", "i3", 620.0)])
    assert set(p.history) == {"a", "b", "c"}  # 620 - 100 > 500, but b is not at the old end
    # b's own event: checked first, expired, so cold (its old item is a prediction again).
    assert p.process_one(ev("b", "i2", 620.0), Source("events", 0, 3)).evaluated
    assert p.retention.expired_ttl == 1 and set(p.history) == {"a", "b", "c"}
    assert p.history["b"] == {"i2": None}


def test_the_user_cap_expires_the_least_recently_seen() -> None:
    p = Pipeline.from_settings(settings(max_users=3))
    run(p, [ev("a", "i1", 0), ev("b", "i2", 1), ev("c", "i3", 2), ev("a", "i4", 3)])
    run(p, [ev("d", "i5", 4)], start=4)
    assert set(p.history) == {"a", "c", "d"}
    assert_cold(p, "b")
    assert p.retention.expired_cap == 1
    run(p, stream(300, users=20), start=5)
    assert len(p.history) == 3 and p.retention.held_users == 3
    for name, model in p.models.items():
        assert model.n_users <= 3, name


def test_forget_still_logs_once_and_expiry_does_not_log_each_user(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = Pipeline.from_settings(settings(max_users=2))
    with caplog.at_level(logging.INFO, logger="stream.core"):
        run(p, stream(200, users=30))
    assert p.retention.expired_cap > 20
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    p.process_one(Event(user_id="u1", event_type="forget", timestamp=200.0), Source("e", 0, 200))
    assert p.retention.held_users == len(p.history)


# --- items -------------------------------------------------------------------------------


def test_the_item_cap_evicts_the_least_recently_seen_everywhere() -> None:
    p = Pipeline.from_settings(settings(max_items=10))
    events = stream(600, users=15, items=40)
    run(p, events)
    held = set(p.retention._items)
    assert len(held) <= 10 and p.retention.evicted_items > 0
    # The last items seen are held (the newest is never the one evicted).
    assert events[-1].item in held
    for name, model in [*p.models.items(), ("fallback", p.fallback)]:
        assert model.n_items <= 10, name
        for user in p.history:
            assert {s.item for s in model.top_k(user, 40)} <= held, name
    for seen in p.history.values():
        assert set(seen) <= held
    for evaluator in p.evaluators.values():
        assert evaluator.served <= held


# --- settings ------------------------------------------------------------------------------


def test_the_settings_take_effect_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_MAX_USERS", "4")
    monkeypatch.setenv("STREAM_MAX_ITEMS", "6")
    monkeypatch.setenv("STREAM_USER_TTL_SECONDS", "50")
    s = load_settings(_env_file=None)
    p = Pipeline.from_settings(s)
    assert (p.retention.ttl_seconds, p.retention.max_users, p.retention.max_items) == (50, 4, 6)
    run(p, stream(200, users=20, items=20))
    assert len(p.history) <= 4 and p.models["knn"].n_items <= 6


def test_off_by_default_and_a_ttl_of_zero_is_off() -> None:
    for p in (
        Pipeline.from_settings(settings()),
        Pipeline.from_settings(settings(user_ttl_seconds=0)),
    ):
        run(p, [*stream(300, users=50, t0=0.0), ev("x", "i1", 1e9)])
        assert not p.retention.active and len(p.history) == 51
        assert p.retention.held_users == 0  # nothing tracked when off


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("STREAM_USER_TTL_SECONDS", "-1"),
        ("STREAM_MAX_USERS", "0"),
        ("STREAM_MAX_ITEMS", "0"),
        ("STREAM_MAX_ITEMS", "many"),
    ],
)
def test_invalid_values_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=env):
        load_settings(_env_file=None)


def test_retention_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_users"):
        Retention(max_users=0)
    with pytest.raises(ValueError, match="ttl_seconds"):
        Retention(ttl_seconds=-1.0)


# --- counts: metrics record, Prometheus, `stream evaluate` --------------------------------------


def test_counts_reach_the_metrics_record_and_prometheus() -> None:
    a = Pipeline.from_settings(settings(max_users=3, max_items=8))
    b = Pipeline.from_settings(settings(user_ttl_seconds=10.0))
    run(a, stream(300, users=20, items=30))
    run(b, stream(300, users=20, items=30, seed=4))
    ra, rb = a.metrics_record(), b.metrics_record()
    assert ra.users_expired_cap == a.retention.expired_cap > 0
    assert ra.items_evicted == a.retention.evicted_items > 0
    assert rb.users_expired_ttl == b.retention.expired_ttl > 0
    assert (ra.users, ra.items) == (3, a.n_items)
    merged = merge_metrics([ra, rb])
    assert merged.users_expired_cap == ra.users_expired_cap
    assert merged.users_expired_ttl == rb.users_expired_ttl
    # A record read back from the metrics topic keeps them.
    assert type(ra).model_validate_json(ra.model_dump_json()).items_evicted == ra.items_evicted

    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    assert registry.get_sample_value("stream_users_expired_total", {"reason": "ttl"}) == 0.0
    metrics.observe_accuracy(merged)
    run(a, stream(50, users=20, seed=9, t0=300.0), start=300)
    metrics.observe_accuracy(merge_metrics([a.metrics_record(), rb]))  # running totals: +diff
    sample = registry.get_sample_value
    assert sample("stream_users_expired_total", {"reason": "cap"}) == a.retention.expired_cap
    assert sample("stream_users_expired_total", {"reason": "ttl"}) == b.retention.expired_ttl
    assert sample("stream_items_evicted_total", {}) == a.retention.evicted_items
    assert sample("stream_known_users", {}) == 3 + len(b.history)
    assert b"stream_users_expired_total" in generate_latest(registry)


def test_stream_evaluate_applies_the_limits_and_reports_them() -> None:
    result = evaluate(stream(400, users=30), settings(max_users=5, max_items=12))
    assert result.memory["users"] == 5 and result.memory["users_expired_cap"] > 0
    assert result.memory["items_evicted"] > 0
    assert result.to_json()["memory"] == result.memory
    out = io.StringIO()
    print_table(result, out)
    assert "users expired" in out.getvalue()


# --- checkpoints ---------------------------------------------------------------------------


def _round_trip(tmp_path: Path, p: Pipeline) -> Pipeline:
    store = CheckpointStore(tmp_path, key="retention-test-key")
    store.save(("events", 0), p, p.run_count)
    restored = store.load(("events", 0))
    assert restored is not None
    return restored[0]


def test_limits_follow_the_settings_on_restore_and_keep_who_was_seen_when(
    tmp_path: Path,
) -> None:
    p = Pipeline.from_settings(settings(user_ttl_seconds=1_000.0))
    run(p, stream(200, users=30))
    seen = dict(p.retention._users)
    restored = _round_trip(tmp_path, p)
    assert dict(restored.retention._users) == seen
    # Another model set (the pipeline is rebuilt around the kept state) and a new cap.
    again, plan = apply_settings(
        restored, settings(models=("popularity", "knn"), max_users=4, user_ttl_seconds=1_000.0)
    )
    assert plan.applied and again is not restored
    assert again.retention.max_users == 4 and list(again.retention._users)[-1] in again.history
    run(again, stream(50, users=30, seed=8, t0=200.0), start=200)
    assert len(again.history) == 4 and again.models["knn"].n_users <= 4


def test_a_checkpoint_from_before_the_limits_restores_and_adopts_its_users(
    tmp_path: Path,
) -> None:
    p = Pipeline.from_settings(settings())
    run(p, stream(200, users=30))
    # As pickled before this feature: no retention, no free lists in the models.
    del p.__dict__["retention"]
    for model in p.models.values():
        for attr in ("_free", "_free_items", "_evicted"):
            model.__dict__.pop(attr, None)
    old = pickle.loads(pickle.dumps(p))
    assert not old.retention.active
    restored = _round_trip(tmp_path, old)
    limited, _ = apply_settings(restored, settings(max_users=5, max_items=10))
    assert limited.retention.held_users == len(limited.history) == 30
    run(limited, stream(100, users=30, seed=3, t0=200.0), start=200)
    assert len(limited.history) == 5
    for name, model in limited.models.items():
        assert model.n_items <= 10, name
