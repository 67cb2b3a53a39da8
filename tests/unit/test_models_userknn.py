"""User-based KNN: similarities by hand, bounded memory, neighbours cut, forgetting."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from stream.models import MODEL_REGISTRY, UserKNN
from stream.settings import StreamSettings

IMPLICIT = {"event_type": "view", "implicit": True, "timestamp": 0.0}


def learn(model: UserKNN, pairs: Sequence[tuple[str, str]]) -> None:
    for user, item in pairs:
        model.learn_one(user, item, 1.0, IMPLICIT)


def test_scores_sum_the_cosines_of_the_neighbours_who_have_the_item() -> None:
    model = UserKNN(history=10, item_users=10, neighbors=10)
    # a: {x, y}; b: {x, z}: cos 1/2; c: {x, y, w}: cos 2/sqrt(6); d: {q}: no overlap.
    learn(model, [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "x"), ("c", "y")])
    learn(model, [("c", "w"), ("d", "q"), ("d", "w")])
    c = 2 / math.sqrt(6)
    assert model.predict_one("a", "w") == pytest.approx(c)  # only c counts: d shares nothing
    assert model.predict_one("a", "z") == pytest.approx(0.5)
    assert model.predict_one("a", "x") == pytest.approx(0.5 + c)
    assert model.predict_one("a", "q") == 0.0
    ranked = model.top_k("a", 5, exclude={"x", "y"})
    assert [(s.item, round(s.score, 6)) for s in ranked] == [("w", round(c, 6)), ("z", 0.5)]


def test_only_the_nearest_neighbours_count() -> None:
    model = UserKNN(history=10, item_users=10, neighbors=1)
    learn(model, [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "x"), ("c", "y")])
    learn(model, [("c", "w")])
    # c (cos 0.816) is a's one neighbour; b (0.5) no longer is.
    assert model.predict_one("a", "z") == 0.0
    assert model.predict_one("a", "w") == pytest.approx(2 / math.sqrt(6))


def test_memory_is_bounded_per_user_and_per_item() -> None:
    model = UserKNN(history=3, item_users=2, neighbors=5)
    learn(model, [("a", f"i{t}") for t in range(10)])
    assert list(model._recent["a"]) == [7, 8, 9]  # the last 3 item rows
    for user in ("b", "c", "d", "e"):
        learn(model, [(user, "hot")])
    hot = model._index["hot"]
    takers = sorted(model._takers[hot].tolist())
    assert takers == sorted(model._user_row[u] for u in ("d", "e"))  # the last 2 users
    assert model._takers.shape[1] == 2 and model._hist.shape[1] == 3


def test_a_user_leaves_an_items_list_when_the_item_leaves_their_history() -> None:
    model = UserKNN(history=2, item_users=5, neighbors=5)
    learn(model, [("a", "x"), ("a", "y"), ("b", "x"), ("b", "z")])
    assert model.predict_one("b", "y") == pytest.approx(0.5)
    learn(model, [("a", "v"), ("a", "w")])  # x (and y) leave a's history
    assert model._user_row["a"] not in model._takers[model._index["x"]].tolist()
    assert model.predict_one("b", "y") == 0.0 and model.predict_one("b", "w") == 0.0
    learn(model, [("a", "x")])  # back: a is b's neighbour again, through x
    assert model.predict_one("b", "w") == pytest.approx(0.5)


def test_re_interacting_moves_an_item_to_the_front_and_keeps_one_entry() -> None:
    model = UserKNN(history=2, item_users=3, neighbors=5)
    learn(model, [("a", "x"), ("a", "y"), ("a", "x"), ("a", "z")])
    assert [model._items[r] for r in model._recent["a"]] == ["x", "z"]
    assert model._takers[model._index["x"]].tolist().count(model._user_row["a"]) == 1


def test_forget_user_removes_them_from_histories_and_the_inverted_index() -> None:
    model = UserKNN(history=5, item_users=5, neighbors=5)
    learn(model, [("a", "x"), ("a", "secret"), ("b", "x"), ("b", "y")])
    assert model.predict_one("b", "secret") > 0
    row = model._user_row["a"]
    model.forget_user("a")
    assert model.n_users == 1 and model.top_k("a", 3) == []
    assert row not in model._takers[: model.n_items].ravel().tolist()
    assert model.predict_one("b", "secret") == 0.0
    learn(model, [("c", "y")])  # the freed row is reused, with nothing of a's left in it
    assert model._user_row["c"] == row
    assert [s.item for s in model.top_k("c", 3, exclude={"y"})] == ["x"]


def test_zero_weight_events_register_the_item_only() -> None:
    model = UserKNN()
    model.learn_one("a", "x", 0.0, IMPLICIT)
    assert (model.n_items, model.n_users) == (1, 0)


def test_the_registry_passes_the_settings() -> None:
    s = StreamSettings(_env_file=None, userknn_history=4, userknn_item_users=6, userknn_neighbors=2)
    model = MODEL_REGISTRY["userknn"](s)
    assert isinstance(model, UserKNN)
    assert (model.history, model.item_users, model.neighbors) == (4, 6, 2)
