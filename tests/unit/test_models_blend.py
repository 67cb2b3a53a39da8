"""Blend: reciprocal-rank fusion arithmetic, reasons, shared components, clone."""

from __future__ import annotations

import math
import typing
from collections.abc import Hashable, Iterable

import pytest

from stream.models import Blend, ItemKNN, Popularity, Recommender, Scored

IMPLICIT = {"event_type": "view", "implicit": True, "timestamp": 0.0}


class Listed(Recommender):
    """A list-backed component: serves a fixed ranking and records what it learned."""

    def __init__(self, ranking: tuple[str, ...] = (), reason: str | None = None) -> None:
        super().__init__()
        self.ranking = ranking
        self.reason = reason
        self.learned: list[tuple[Hashable, Hashable]] = []
        self.forgotten: list[Hashable] = []

    def learn_one(
        self, user: Hashable, item: Hashable, y: float, x: dict[str, typing.Any] | None = None
    ) -> None:
        self.learned.append((user, item))

    def predict_one(
        self, user: Hashable, item: Hashable, x: dict[str, typing.Any] | None = None
    ) -> float:
        return (
            float(len(self.ranking) - self.ranking.index(str(item)))
            if item in self.ranking
            else 0.0
        )

    def top_k(self, user: Hashable, k: int, exclude: Iterable[Hashable] = ()) -> list[Scored]:
        excluded = set(exclude)
        kept = [i for i in self.ranking if i not in excluded][:k]
        return [Scored(i, self.predict_one(user, i), self.reason) for i in kept]

    def forget_user(self, user: Hashable) -> None:
        self.forgotten.append(user)

    @property
    def n_users(self) -> int:
        return len({u for u, _ in self.learned})

    @property
    def n_items(self) -> int:
        return len(self.ranking)


def test_weighted_reciprocal_rank_fusion() -> None:
    first = Listed(("a", "b", "c"), reason="first says so")
    second = Listed(("c", "d"))
    blend = Blend(
        {"first": first, "second": second}, {"first": 1.0, "second": 2.0}, rank_constant=1.0
    )
    top = blend.top_k("u", 4)
    expected: dict[Hashable, float] = {
        "c": 1 / (1 + 3) + 2 / (1 + 1),
        "d": 2 / (1 + 2),
        "a": 1 / (1 + 1),
        "b": 1 / (1 + 2),
    }
    assert [s.item for s in top] == ["c", "d", "a", "b"]
    assert [s.score for s in top] == pytest.approx([expected[s.item] for s in top])
    # The reason comes from the largest contributor, or its name when it gives none.
    assert [s.reason for s in top] == ["second", "second", "first says so", "first says so"]
    assert [s.item for s in blend.top_k("u", 2, exclude={"c"})] == ["d", "a"]
    assert blend.predict_one("u", "c") == pytest.approx(expected["c"])
    assert blend.predict_one("u", "zz") == 0.0


def test_zero_weight_components_are_not_consulted_and_unknown_weights_rejected() -> None:
    blend = Blend({"a": Listed(("x",)), "b": Listed(("y",))}, {"a": 1.0, "b": 0.0})
    assert [s.item for s in blend.top_k("u", 5)] == ["x"]
    with pytest.raises(ValueError, match="unknown components"):
        Blend({"a": Listed()}, {"a": 1.0, "nope": 1.0})


def test_learns_its_components_only_when_it_owns_them() -> None:
    owned, shared = Listed(), Listed()
    Blend({"c": owned}, {"c": 1.0}).learn_one("u", "i", 1.0, IMPLICIT)
    Blend({"c": shared}, {"c": 1.0}, learns_components=False).learn_one("u", "i", 1.0, IMPLICIT)
    assert owned.learned == [("u", "i")]
    assert shared.learned == []


def test_forget_user_reaches_every_component() -> None:
    parts = {"a": Listed(), "b": Listed()}
    Blend(parts, {"a": 1.0}, learns_components=False).forget_user("alice")
    assert [p.forgotten for p in parts.values()] == [["alice"], ["alice"]]


def test_blend_of_knn_and_popularity_fills_in_and_explains() -> None:
    knn, popularity = ItemKNN(half_life=None), Popularity()
    blend = Blend({"knn": knn, "popularity": popularity}, {"knn": 1.0, "popularity": 0.3})
    for user, item in [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "z"), ("d", "z")]:
        blend.learn_one(user, item, 1.0, IMPLICIT)
    top = blend.top_k("e", 3)  # a stranger to knn: popularity alone
    assert {s.reason for s in top} == {"popular now"}
    blend.learn_one("e", "x", 1.0, IMPLICIT)
    top = blend.top_k("e", 2, exclude={"x"})
    assert (top[0].item, top[0].reason) == ("y", "because you interacted with x")
    assert top[0].score == pytest.approx(1 / 61 + 0.3 / 62)
    assert top[1].item == "z" and top[1].reason == "popular now"
    assert (blend.n_users, blend.n_items) == (knn.n_users, 3)


def test_clone_builds_fresh_components() -> None:
    knn = ItemKNN()
    blend = Blend({"knn": knn}, {"knn": 1.0}, learns_components=False, rank_constant=5.0)
    knn.learn_one("a", "x", 1.0, IMPLICIT)
    clone = blend.clone()
    assert clone.components["knn"] is not knn and clone.components["knn"].n_items == 0
    assert (clone.weights, clone.learns_components, clone.rank_constant) == (
        {"knn": 1.0},
        False,
        5.0,
    )
    assert blend.clone({"rank_constant": 9.0}).rank_constant == 9.0


def test_online_weights_move_to_the_component_that_keeps_being_right() -> None:
    # "right" ranks the chosen item first every time; "wrong" never ranks it.
    right, wrong = Listed(("a", "b", "c")), Listed(("x", "y", "z"))
    blend = Blend(
        {"right": right, "wrong": wrong}, {"right": 1.0, "wrong": 1.0}, learning_rate=10.0, k=3
    )
    assert blend.current_weights == {"right": 1.0, "wrong": 1.0}
    for _ in range(200):
        blend.learn_one("u", "a", 1.0, IMPLICIT)
    weights = blend.current_weights
    assert weights["right"] == 1.0 and weights["wrong"] == pytest.approx(math.exp(-10.0))
    assert blend.updates == 200
    # Fused, the dominant component's order wins over the other's head.
    assert [s.item for s in blend.top_k("u", 3)] == ["a", "b", "c"]
    fixed = Blend({"right": right, "wrong": wrong}, {"right": 1.0, "wrong": 1.0}, k=3)
    assert [s.item for s in fixed.top_k("u", 3)] == ["a", "x", "b"]


def test_online_weights_recover_after_the_better_component_changes() -> None:
    first, second = Listed(("a",)), Listed(("b",))
    blend = Blend(
        {"first": first, "second": second},
        {"first": 1.0, "second": 1.0},
        learning_rate=10.0,
        half_life=20.0,
        k=1,
    )
    for _ in range(100):
        blend.observe_one({"first": first.top_k("u", 3), "second": second.top_k("u", 3)}, "a")
    assert blend.current_weights["second"] < 0.01
    for _ in range(200):  # tastes changed: now "b" is chosen
        blend.observe_one({"first": first.top_k("u", 3), "second": second.top_k("u", 3)}, "b")
    assert blend.current_weights["first"] < 0.01 and blend.current_weights["second"] == 1.0


def test_online_weights_keep_the_prior_ratio_between_equal_components() -> None:
    one, two = Listed(("a", "b")), Listed(("a", "b"))
    blend = Blend({"one": one, "two": two}, {"one": 1.0, "two": 0.5}, learning_rate=10.0, k=2)
    for item in ["a", "b", "q"] * 30:
        blend.observe_one({"one": one.top_k("u", 6), "two": two.top_k("u", 6)}, item)
    assert blend.current_weights == pytest.approx({"one": 1.0, "two": 0.5})


def test_in_a_pipeline_the_online_blend_follows_the_dominant_model() -> None:
    # A stream where item-to-item transitions decide the next item: the sequence model
    # dominates, and the blend's weights must say so without being told.
    import random

    from stream.core import Pipeline
    from stream.events import Event
    from stream.settings import StreamSettings

    s = StreamSettings(
        _env_file=None,
        models=("popularity", "sequence", "blend"),
        recommender="blend",
        drift_min_events=0,
    )
    pipe = Pipeline.from_settings(s)
    rng = random.Random(3)
    chain = {i: rng.randrange(300) for i in range(300)}  # each item has one successor
    events, t = [], 0.0
    for user in range(300):
        item = rng.randrange(300)
        for _ in range(12):
            t += 1.0
            events.append(Event(user_id=f"u{user}", item_id=str(item), event_type="view",
                                timestamp=t))  # fmt: skip
            item = chain[item] if rng.random() < 0.9 else rng.randrange(300)
    events.sort(key=lambda e: (e.timestamp % 97, e.timestamp))  # interleave the users
    for _ in pipe.run(events):
        pass
    blend = pipe.models["blend"]
    assert isinstance(blend, Blend)
    weights = blend.current_weights
    assert weights["sequence"] == 1.0 and weights["popularity"] < 0.05
    hits = {n: pipe.evaluators[n].cumulative().hit_rate or 0.0 for n in pipe.models}
    assert hits["blend"] >= 0.95 * hits["sequence"] > 2 * hits["popularity"]
