"""ItemKNN: incremental cosine similarities, explanations, bounded memory, decay."""

from __future__ import annotations

import math
import random
from collections.abc import Hashable

import pytest

from stream.models.knn import ItemKNN

WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}


def event(kind: str) -> tuple[float, dict[str, object]]:
    implicit = kind != "rating"
    return WEIGHTS.get(kind, 4.0), {"event_type": kind, "implicit": implicit, "timestamp": 0.0}


def learn(model: ItemKNN, user: str, item: str, kind: str = "view") -> None:
    y, x = event(kind)
    model.learn_one(user, item, y, x)


def test_recommends_co_occurring_items_and_says_why() -> None:
    model = ItemKNN(neighbors=10, history=10, half_life=None)
    rng = random.Random(0)
    for n in range(40):  # pairs (a, b) and (p, q) go together
        first, second = ("a", "b") if n % 2 else ("p", "q")
        learn(model, f"u{n}", first)
        learn(model, f"u{n}", second)
        learn(model, f"u{n}", f"noise{rng.randrange(30)}")
    learn(model, "me", "a")
    learn(model, "me", "p")
    top = model.top_k("me", 2, exclude={"a", "p"})
    assert {s.item for s in top} == {"b", "q"}
    reasons = {s.item: s.reason for s in top}
    assert reasons == {"b": "because you interacted with a", "q": "because you interacted with p"}


def test_similarity_is_the_cosine_of_weighted_user_vectors() -> None:
    model = ItemKNN(neighbors=5, history=5, half_life=None)
    learn(model, "a", "x", "view")  # w_ax = 1
    learn(model, "a", "y", "purchase")  # w_ay = 5
    learn(model, "b", "x", "click")  # w_bx = 2
    learn(model, "b", "y", "view")  # w_by = 1
    learn(model, "c", "x", "view")  # w_cx = 1: N_x = 1 + 4 + 1
    # C_xy = 1*5 + 2*1 = 7, N_y = 25 + 1
    assert model.predict_one("c", "y") == pytest.approx(7 / math.sqrt(6 * 26))
    learn(model, "a", "x", "click")  # w_ax 1 -> 2: C_xy += 1*5, N_x += 4 - 1
    assert model.predict_one("c", "y") == pytest.approx(12 / math.sqrt(9 * 26))
    learn(model, "a", "x", "view")  # weaker than what a already gave x: nothing changes
    assert model.predict_one("c", "y") == pytest.approx(12 / math.sqrt(9 * 26))
    assert model.top_k("c", 3, exclude={"x"})[0].score == model.predict_one("c", "y")


def test_ratings_count_as_one_interaction_whatever_the_value() -> None:
    low, high = ItemKNN(half_life=None), ItemKNN(half_life=None)
    for model, rating in ((low, 0.5), (high, 5.0)):
        for user in ("a", "b"):
            model.learn_one(user, "x", rating, {"implicit": False})
            model.learn_one(user, "y", rating, {"implicit": False})
        learn(model, "c", "x")
    assert low.predict_one("c", "y") == high.predict_one("c", "y") > 0


def test_unknown_users_and_items_score_nothing() -> None:
    model = ItemKNN()
    learn(model, "a", "x")
    learn(model, "a", "y")
    assert model.top_k("nobody", 5) == []
    assert model.predict_one("nobody", "x") == 0.0
    assert model.predict_one("a", "nothing") == 0.0
    model.learn_one("z", "w", 0.0, {"implicit": True})  # no weight: the item is known, no user
    assert (model.n_users, model.n_items) == (1, 3)


def test_only_the_recent_history_scores() -> None:
    model = ItemKNN(neighbors=5, history=2, half_life=None)
    for user in ("a", "b"):
        learn(model, user, "x")
        learn(model, user, "y")
    learn(model, "me", "y")
    assert [s.item for s in model.top_k("me", 5, exclude={"y"})] == ["x"]
    learn(model, "me", "p")
    learn(model, "me", "q")  # y leaves me's two-item history: x, only similar to y, goes
    assert [s.item for s in model.top_k("me", 5, exclude={"p", "q"})] == ["y"]


def test_memory_is_bounded_under_many_events() -> None:
    neighbors, history = 5, 8
    model = ItemKNN(neighbors=neighbors, history=history)
    rng = random.Random(4)
    for _ in range(30_000):
        user = f"u{rng.randrange(400)}"
        item = f"i{int(rng.paretovariate(0.8)) % 600}"
        learn(model, user, item, rng.choice(list(WEIGHTS)))
    assert max(len(row) for row in model._co) <= 4 * neighbors
    assert int(model._nbr_len.max()) <= neighbors
    assert max(len(h) for h in model._history.values()) <= history
    top = model.top_k("u1", 10)
    assert 0 < len(top) <= 10


def test_pruning_keeps_the_strongest_co_occurrences() -> None:
    model = ItemKNN(neighbors=2, history=2, half_life=None)  # rows cut at 8 to 4 entries
    for n in range(30):
        learn(model, f"fan{n}", "hub")
        learn(model, f"fan{n}", "partner", "purchase")
    for n in range(30):
        learn(model, f"passer{n}", "hub")
        learn(model, f"passer{n}", f"once{n}")
    learn(model, "me", "hub")
    assert model.top_k("me", 1, exclude={"hub"})[0].item == "partner"
    assert len(model._co[model._index["hub"]]) <= 8


def test_decay_follows_a_change_of_associations() -> None:
    def run(half_life: float | None) -> Hashable:
        model = ItemKNN(neighbors=5, history=2, half_life=half_life)
        for n in range(300):
            learn(model, f"old{n}", "x")
            learn(model, f"old{n}", "y")
        for n in range(120):
            learn(model, f"new{n}", "x")
            learn(model, f"new{n}", "z")
        learn(model, "me", "x")
        return model.top_k("me", 1, exclude={"x"})[0].item

    assert run(None) == "y"
    assert run(50.0) == "z"


def test_long_decayed_streams_stay_finite() -> None:
    model = ItemKNN(neighbors=5, history=3, half_life=1.0)  # renormalised every ~64 events
    rng = random.Random(2)
    for _ in range(2_000):
        learn(model, f"u{rng.randrange(20)}", f"i{rng.randrange(30)}")
    for n in range(5):
        learn(model, f"late{n}", "p")
        learn(model, f"late{n}", "q")
    learn(model, "me", "p")
    top = model.top_k("me", 3, exclude={"p"})
    assert top[0].item == "q"
    assert all(math.isfinite(s.score) for s in top)


def test_forget_user_drops_their_history_only() -> None:
    model = ItemKNN(half_life=None)
    for user in ("a", "b"):
        learn(model, user, "x")
        learn(model, user, "y")
    model.forget_user("a")
    assert model.n_users == 1 and model.top_k("a", 5) == []
    learn(model, "c", "x")
    assert model.top_k("c", 1, exclude={"x"})[0].item == "y"  # aggregates stay


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        ItemKNN(neighbors=0)
    with pytest.raises(ValueError):
        ItemKNN(history=0)
    with pytest.raises(ValueError):
        ItemKNN(half_life=0.0)


def test_decayed_similarity_is_exact_across_renormalisations() -> None:
    half_life = 5.0
    model = ItemKNN(neighbors=5, history=2, half_life=half_life)
    learn(model, "a", "x")  # t = 1
    learn(model, "a", "y")  # t = 2: the rows of x and y are computed now
    for n in range(400):  # 80 half-lives: the stored weights are renormalised in between
        learn(model, f"f{n}", f"filler{n % 7}")
    learn(model, "c", "x")  # t = 403
    # Every contribution weighs 2 ** -(age / half_life); relative to now:
    c_xy = 2.0 ** (-(403 - 2) / half_life)
    n_x = 2.0 ** (-(403 - 1) / half_life) + 1.0
    n_y = 2.0 ** (-(403 - 2) / half_life)
    expected = c_xy / math.sqrt(n_x * n_y)
    assert model.predict_one("c", "y") == pytest.approx(expected, rel=1e-9)


def test_directed_counts_only_what_came_after() -> None:
    model = ItemKNN(neighbors=5, history=3, half_life=None, directed=True, alpha=1.0)
    for n in range(10):
        learn(model, f"u{n}", "a")
        learn(model, f"u{n}", "b")
    learn(model, "me", "a")
    assert [s.item for s in model.top_k("me", 3, exclude={"a"})] == ["b"]
    learn(model, "you", "b")
    assert model.top_k("you", 3, exclude={"b"}) == []  # nothing ever followed b


def test_distance_recency_and_asymmetry_weights() -> None:
    model = ItemKNN(
        neighbors=5, history=5, half_life=None, alpha=0.7, distance_decay=0.5, recency=0.5
    )
    for item in ("x", "y", "z"):  # y is 1 step after x, z 2 steps after x and 1 after y
        learn(model, "a", item)
    learn(model, "c", "x")
    # C_xy = 0.5, C_xz = 0.25; every norm is the one user's count: N_x = 2, N_y = N_z = 1
    assert model.predict_one("c", "y") == pytest.approx(0.5 / (2**0.7 * 1**0.3))
    assert model.predict_one("c", "z") == pytest.approx(0.25 / (2**0.7 * 1**0.3))
    learn(model, "c", "q")  # now x is second most recent: it counts 0.5
    assert model.predict_one("c", "y") == pytest.approx(0.5 * 0.5 / 2**0.7)


def test_binary_counts_every_interaction_once() -> None:
    model = ItemKNN(neighbors=5, history=5, half_life=None, binary=True)
    learn(model, "a", "x", "view")
    learn(model, "a", "y", "purchase")
    learn(model, "a", "x", "purchase")  # a stronger event on a known item adds nothing
    learn(model, "b", "x", "view")
    assert model.predict_one("b", "y") == pytest.approx(1 / math.sqrt(2 * 1))


def _refreshed(model: ItemKNN) -> ItemKNN:
    """Every neighbour list recomputed from the current counts (staleness aside)."""
    for row in range(len(model._items)):
        model._refresh(row)
    return model


@pytest.mark.parametrize("directed", [False, True])
def test_a_reused_row_carries_nothing_of_the_forgotten_item(directed: bool) -> None:
    """Forget ``b`` (strongly tied to ``a``), then a new item takes ``b``'s row: the model
    scores exactly like one that never saw ``b``, and ``a`` and the new item stay unrelated
    (no similarity, in either direction, leaks from the old item to the new one)."""
    rng = random.Random(5)
    before = [(f"u{rng.randrange(30)}", rng.choice("aabcdefg")) for _ in range(600)]
    before += [(f"w{n}", item) for n in range(20) for item in ("a", "b")]  # a <-> b, strong
    after = [(f"v{n}", "new") for n in range(5)]  # the first new item: it takes b's row
    after += [(f"u{rng.randrange(30)}", rng.choice("cdefgz")) for _ in range(300)]
    after += [("v0", "c")]

    def model() -> ItemKNN:
        return ItemKNN(neighbors=4, history=50, half_life=None, directed=directed)

    forgot, never = model(), model()
    for user, item in before:
        learn(forgot, user, item)
        if item != "b":
            learn(never, user, item)
    row_b = forgot._index["b"]
    forgot.forget_item("b")
    for user, item in after:
        learn(forgot, user, item)
        learn(never, user, item)
    assert forgot._index["new"] == row_b  # the row was reused
    assert forgot.n_items == never.n_items
    _refreshed(forgot), _refreshed(never)
    users = [*sorted({u for u, _ in before + after}), "stranger"]
    items = sorted({i for _, i in before + after} - {"b"})
    for user in users:
        for item in items:
            assert forgot.predict_one(user, item) == pytest.approx(never.predict_one(user, item))
        ranked = {s.item: s.score for s in forgot.top_k(user, 20)}
        assert ranked == pytest.approx({s.item: s.score for s in never.top_k(user, 20)})
    a, new = forgot._index["a"], forgot._index["new"]
    assert new not in forgot._co[a] and a not in forgot._co[new]
    assert new not in forgot._nbr_rows[a, : forgot._nbr_len[a]].tolist()
    learn(forgot, "only-a", "a")
    assert "new" not in [s.item for s in forgot.top_k("only-a", 20)]


def test_forget_item_drops_it_from_histories_and_neighbour_lists() -> None:
    model = ItemKNN(neighbors=3, history=5, half_life=None, directed=True)
    for user in ("x", "y", "z"):
        for item in ("a", "b", "c"):
            learn(model, user, item)
    b = model._index["b"]
    model.forget_items(["b", "unknown"])
    assert all(b not in hist for hist in model._history.values())
    assert all(b not in row for row in model._co)
    assert b not in model._nbr_rows[[model._index["a"], model._index["c"]]].tolist()[0]
    assert model.n_items == 2 and "b" not in model._index and model._free == [b]


def test_a_checkpoint_from_before_forget_items_still_loads() -> None:
    import pickle

    model = ItemKNN(neighbors=3, history=5)
    for user, item in [("x", "a"), ("x", "b"), ("y", "a")]:
        learn(model, user, item)
    del model.__dict__["_free"]  # as pickled before the item cap existed
    old = pickle.loads(pickle.dumps(model))
    assert old._free == [] and old.n_items == 2
    old.forget_item("a")
    learn(old, "y", "c")
    assert old.n_items == 2 and old._index["c"] == 0
