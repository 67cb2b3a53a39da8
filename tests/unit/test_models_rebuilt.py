"""Full rebuilds (svd, ease): the builds by hand, the schedule, the background swap, requests."""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from stream.core import Pipeline
from stream.evaluate import evaluate
from stream.events import Event
from stream.models import EASE, MODEL_REGISTRY, PureSVD, RebuiltRecommender
from stream.models.rebuilt import Pair, Snapshot
from stream.settings import StreamSettings

IMPLICIT = {"event_type": "view", "implicit": True, "timestamp": 0.0}


def learn(model: RebuiltRecommender, pairs: Sequence[tuple[str, str]]) -> None:
    for user, item in pairs:
        model.learn_one(user, item, 1.0, IMPLICIT)


def random_pairs(n: int, users: int, items: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    us = rng.integers(0, users, n)
    # Users prefer items near their own number: a low-rank-ish structure with noise.
    its = (us * items // users + rng.integers(-3, 4, n)) % items
    return [(f"u{u}", f"i{i}") for u, i in zip(us.tolist(), its.tolist(), strict=True)]


def binary_matrix(pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, list[str], list[str]]:
    users = list(dict.fromkeys(u for u, _ in pairs))
    items = list(dict.fromkeys(i for _, i in pairs))
    x = np.zeros((len(users), len(items)))
    for u, i in pairs:
        x[users.index(u), items.index(i)] = 1.0
    return x, users, items


# --- the builds, checked by hand -------------------------------------------------------------


def test_svd_scores_are_the_users_history_projected_on_the_leading_singular_vectors() -> None:
    # X^T X over x, y is [[3, 2], [2, 2]] (z apart): its leading eigenvector is
    # (0.788, 0.615); d has x, so d's score of y is 0.788 * 0.615 = 0.485.
    model = PureSVD(n_factors=1, min_events=6, background=False)
    learn(model, [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "z"), ("d", "x")])
    v = np.array([2.0, (np.sqrt(17.0) - 1.0) / 2.0])
    v /= np.linalg.norm(v)
    assert model.predict_one("d", "y") == pytest.approx(v[0] * v[1], rel=1e-5)
    assert model.predict_one("d", "z") == pytest.approx(0.0, abs=1e-6)
    assert [s.item for s in model.top_k("d", 3, exclude={"x"})] == ["y"]


def test_svd_on_a_large_window_matches_a_dense_svd() -> None:
    pairs = random_pairs(6_000, users=400, items=120)
    model = PureSVD(n_factors=8, min_events=len(pairs), background=False, recency=1.0, seed=1)
    learn(model, pairs)
    assert model.version == 1
    x, _, items = binary_matrix(pairs)
    vt = np.linalg.svd(x, full_matrices=False)[2][:8]
    user = "u7"
    hist = np.zeros(len(items))
    for item in model._history[user]:
        hist[items.index(item)] = 1.0
    expected = hist @ vt.T @ vt
    got = [model.predict_one(user, item) for item in items]
    assert np.allclose(got, expected, atol=1e-4)


def test_ease_solves_the_closed_form() -> None:
    # Two items, X = [[1, 1], [1, 1], [1, 0]], lambda 1: P = inv([[4, 2], [2, 3]])
    # = [[0.375, -0.25], [-0.25, 0.5]], B_xy = -P_xy / P_yy = 0.5.
    model = EASE(l2=1.0, min_events=5, background=False)
    learn(model, [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x")])
    assert model.predict_one("c", "y") == pytest.approx(0.5)
    assert model.predict_one("c", "x") == 0.0  # the zero diagonal: x does not recommend itself
    pairs = random_pairs(3_000, users=200, items=60, seed=2)
    model = EASE(l2=20.0, min_events=len(pairs), background=False, recency=1.0)
    learn(model, pairs)
    x, _, items = binary_matrix(pairs)
    p = np.linalg.inv(x.T @ x + 20.0 * np.eye(len(items)))
    b = np.eye(len(items)) - p / np.diag(p)
    hist = np.zeros(len(items))
    for item in model._history["u3"]:
        hist[items.index(item)] = 1.0
    got = [model.predict_one("u3", item) for item in items]
    assert np.allclose(got, hist @ b, atol=1e-4)


def test_recency_weighs_a_users_older_items_down() -> None:
    # B over x, y, z (lambda 1) from a and b; c's history is x (older), then y (newest):
    # with recency 0.5, c's score of z is 0.5 * B_xz + 1 * B_yz.
    pairs = [("a", "x"), ("a", "z"), ("b", "y"), ("b", "z"), ("b", "x"), ("c", "x"), ("c", "y")]
    flat = EASE(l2=1.0, min_events=7, background=False, recency=1.0)
    recent = EASE(l2=1.0, min_events=7, background=False, recency=0.5)
    learn(flat, pairs)
    learn(recent, pairs)
    x, _, items = binary_matrix(pairs)
    p = np.linalg.inv(x.T @ x + np.eye(3))
    b = np.eye(3) - p / np.diag(p)
    ix, iy, iz = (items.index(i) for i in ("x", "y", "z"))
    assert flat.predict_one("c", "z") == pytest.approx(b[ix, iz] + b[iy, iz], rel=1e-5)
    assert recent.predict_one("c", "z") == pytest.approx(0.5 * b[ix, iz] + b[iy, iz], rel=1e-5)


def test_ease_keeps_only_the_most_frequent_items() -> None:
    model = EASE(l2=1.0, max_items=2, min_events=7, background=False)
    learn(model, [("a", "x"), ("b", "x"), ("c", "x"), ("a", "y"), ("b", "y"), ("c", "z")])
    learn(model, [("c", "y")])
    assert model.n_items == 2
    assert model.predict_one("c", "z") == 0.0
    assert {s.item for s in model.top_k("a", 5)} <= {"x", "y"}


# --- window, schedule, fold-in -----------------------------------------------------------------


def test_builds_on_schedule_from_the_sliding_window() -> None:
    model = PureSVD(n_factors=2, window=4, every=10, min_events=5, background=False)
    learn(model, [(f"u{t % 3}", f"i{t}") for t in range(26)])
    assert model.version == 3
    assert [(r["event"], r["version"], r["events_in_window"]) for r in model.rebuilds] == [
        (5, 1, 4),
        (15, 2, 4),
        (25, 3, 4),
    ]
    assert [r["reason"] for r in model.rebuilds] == [
        "first build",
        "every 10 events",
        "every 10 events",
    ]
    assert model.window_events == 4
    # The last build saw only events 21..24 (the window), so it knows only those items.
    assert model.n_items == 4
    assert all(r["seconds"] >= 0 for r in model.rebuilds)


def test_a_users_new_events_count_before_the_next_build() -> None:
    model = EASE(l2=1.0, min_events=6, every=1_000, background=False)
    learn(model, [("a", "x"), ("a", "y"), ("b", "z"), ("b", "w"), ("c", "x"), ("c", "y")])
    assert model.top_k("d", 3) == []  # a stranger
    learn(model, [("d", "z")])  # one event of d: served at once, from the same build
    assert model.version == 1
    assert [s.item for s in model.top_k("d", 3, exclude={"z"})] == ["w"]
    learn(model, [("d", "new")])  # an item the build does not know waits for the next one
    assert model.predict_one("b", "new") == 0.0
    model.request_rebuild()
    assert model.version == 2 and model.rebuilds[-1]["reason"] == "on demand"
    assert model.predict_one("b", "new") > 0.0  # b has z, which d took with "new"


def test_forget_user_removes_their_history_and_their_window_rows() -> None:
    model = EASE(l2=1.0, min_events=5, every=1_000, background=False)
    learn(model, [("a", "x"), ("a", "secret"), ("b", "x"), ("b", "y"), ("c", "x")])
    assert model.n_items == 3
    model.forget_user("a")
    assert model.window_events == 3
    assert model.top_k("a", 3) == [] and model.n_users == 2
    model.request_rebuild("privacy")
    assert model.n_items == 2 and model.predict_one("c", "secret") == 0.0


# --- the background ----------------------------------------------------------------------------


class GatedSVD(PureSVD):
    """A PureSVD whose build waits for the test to open a gate (the build outlives many events)."""

    def __init__(self, min_events: int = 5, every: int = 10**9) -> None:
        super().__init__(n_factors=2, min_events=min_events, every=every, background=True)
        self.priority: int | None = None
        self.gate = threading.Event()
        self.started = threading.Event()

    def build(self, pairs: Sequence[Pair]) -> Snapshot:
        if sys.platform.startswith("linux"):
            self.priority = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        self.started.set()
        assert self.gate.wait(30.0)
        return super().build(pairs)

    def __getstate__(self) -> dict[str, object]:
        state = super().__getstate__()
        del state["gate"], state["started"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self.gate, self.started = threading.Event(), threading.Event()
        self.gate.set()


def test_a_background_build_does_not_block_learning_and_swaps_in_a_new_version() -> None:
    model = GatedSVD(min_events=10)
    learn(model, [(f"u{t % 4}", f"i{t % 7}") for t in range(10)])
    assert model.started.wait(10.0) and model.building
    # The build is held open: the loop goes on learning (each call returns) on the old version.
    learn(model, [(f"u{t % 4}", f"i{t % 7}") for t in range(10, 510)])
    assert model.version == 0 and model.events == 510 and model.window_events == 510
    model.gate.set()
    deadline = time.monotonic() + 30.0
    while model.version == 0 and time.monotonic() < deadline:
        learn(model, [("u1", "i1")])  # the swap happens at the first event after the build
    assert model.version == 1 and not model.building
    assert model.rebuilds[0]["event"] == 10 and model.rebuilds[0]["events_in_window"] == 10
    assert model.n_items == 7 and model.top_k("u1", 3)
    if sys.platform.startswith("linux"):  # the build ran at a lower priority than the loop
        loop = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert model.priority == max(loop, 15)  # STREAM_REBUILD_NICE's default


def test_an_on_demand_rebuild_runs_in_the_background_and_queues_behind_a_running_one() -> None:
    model = GatedSVD()
    model.gate.set()
    learn(model, [(f"u{t % 3}", f"i{t % 5}") for t in range(5)])
    assert model.wait_for_rebuild(30.0) and model.version == 1
    model.gate.clear()
    model.request_rebuild("drift")
    assert model.building
    model.request_rebuild("drift again")  # while one runs: starts once it is swapped in
    learn(model, [("u9", "i9")])
    model.gate.set()
    assert model.wait_for_rebuild(30.0)  # swaps "drift" in, then builds "drift again"
    assert not model.building
    assert [(r["version"], r["reason"]) for r in model.rebuilds] == [
        (1, "first build"),
        (2, "drift"),
        (3, "drift again"),
    ]
    assert model.rebuilds[2]["events_in_window"] == 6


def test_a_model_pickled_during_a_build_keeps_its_snapshot_and_builds_again() -> None:
    model = GatedSVD()
    model.gate.set()
    learn(model, [(f"u{t % 3}", f"i{t % 5}") for t in range(5)])
    assert model.wait_for_rebuild(30.0)
    model.gate.clear()
    model.request_rebuild("drift")
    twin = pickle.loads(pickle.dumps(model))
    assert twin.version == 1 and not twin.building
    assert twin.top_k("u1", 3) == model.top_k("u1", 3)
    learn(twin, [("u1", "i2")])  # the interrupted build starts again
    assert twin.building
    model.gate.set()  # (builds run one at a time: the twin's waits for the original's)
    assert twin.wait_for_rebuild(30.0) and model.wait_for_rebuild(30.0)
    assert twin.version == 2 and twin.rebuilds[-1]["reason"] == "drift"
    assert twin.rebuilds[-1]["events_in_window"] == 6


class FailingEASE(EASE):
    def build(self, pairs: Sequence[Pair]) -> Snapshot:
        raise np.linalg.LinAlgError("singular")


def test_a_failed_build_is_logged_and_the_last_version_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = FailingEASE(min_events=3, every=2, background=False)
    with caplog.at_level(logging.ERROR, logger="stream.models.rebuilt"):
        learn(model, [("a", "x"), ("b", "y"), ("c", "x")])
    assert model.version == 0 and model.rebuilds == []
    assert "FailingEASE rebuild (first build) started at event 3 failed" in caplog.text
    learn(model, [("a", "y"), ("b", "x")])  # and it tries again on schedule
    assert caplog.text.count("failed") == 2


# --- settings -----------------------------------------------------------------------------------


def settings(**overrides: object) -> StreamSettings:
    return StreamSettings(_env_file=None, **overrides)  # type: ignore[arg-type]


def test_the_registry_passes_the_settings_and_defaults_to_the_background() -> None:
    s = settings(
        rebuild_window=500,
        rebuild_every=50,
        rebuild_min_events=20,
        rebuild_history=7,
        svd_factors=5,
        ease_l2=3.0,
        ease_max_items=40,
        rebuild_nice=4,
        rebuild_recency=0.7,
        seed=9,
    )
    svd = MODEL_REGISTRY["svd"](s)
    ease = MODEL_REGISTRY["ease"](s)
    assert isinstance(svd, PureSVD) and isinstance(ease, EASE)
    assert (svd.window, svd.every, svd.min_events, svd.history) == (500, 50, 20, 7)
    assert (svd.n_factors, svd.seed, svd.background, svd.nice) == (5, 9, True, 4)
    assert (ease.l2, ease.max_items, ease.background, ease.recency) == (3.0, 40, True, 0.7)
    assert MODEL_REGISTRY["svd"](settings(rebuild_background=False)).background is False


def test_stream_evaluate_rebuilds_inline_unless_told_otherwise() -> None:
    pairs = random_pairs(600, users=30, items=40, seed=5)
    events = [
        Event(user_id=u, item_id=i, event_type="view", timestamp=float(t))
        for t, (u, i) in enumerate(pairs)
    ]
    common = {
        "models": ("svd", "ease"),
        "recommender": "svd",
        "rebuild_min_events": 50,
        "rebuild_every": 50,
        "svd_factors": 4,
    }
    offline = evaluate(events, settings(**common))
    inline = evaluate(events, settings(**common, rebuild_background=False))
    assert offline.models == inline.models
    pipe = Pipeline.from_settings(settings(**common))
    assert all(m.background for m in pipe.models.values() if isinstance(m, RebuiltRecommender))
