"""Blend: reciprocal-rank fusion arithmetic, reasons, shared components, clone."""

from __future__ import annotations

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
