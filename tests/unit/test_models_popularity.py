"""Popularity: exact exponential decay, event weights, exclusions, long streams."""

from __future__ import annotations

import math
import random
from collections.abc import Hashable

import pytest

from stream.models.popularity import Popularity

IMPLICIT = {"event_type": "view", "implicit": True, "timestamp": 0.0}
RATING = {"event_type": "rating", "implicit": False, "timestamp": 0.0}


def brute_force(events: list[tuple[str, float]], half_life: float) -> dict[Hashable, float]:
    """Decayed counts computed from scratch: weight * 2 ** -(age / half_life)."""
    now = len(events)
    counts: dict[Hashable, float] = {}
    for t, (item, weight) in enumerate(events, start=1):
        counts[item] = counts.get(item, 0.0) + weight * 2.0 ** (-(now - t) / half_life)
    return counts


def test_an_interaction_half_life_events_ago_counts_half() -> None:
    model = Popularity(half_life=10.0)
    model.learn_one("u", "old", 1.0, IMPLICIT)
    for _ in range(10):
        model.learn_one("u", "other", 1.0, IMPLICIT)
    assert model.score_of("old") == pytest.approx(0.5)
    assert model.predict_one("anyone", "old") == pytest.approx(0.5)
    assert model.score_of("never") == 0.0


def test_ratings_count_one_and_implicit_events_their_weight() -> None:
    model = Popularity(half_life=1e12)  # practically no decay
    model.learn_one("u", "rated", 0.5, RATING)
    model.learn_one("u", "rated", 5.0, RATING)
    model.learn_one("u", "bought", 5.0, {**IMPLICIT, "event_type": "purchase"})
    model.learn_one("u", "seen", 1.0, IMPLICIT)
    model.learn_one("u", "nothing", 0.0, IMPLICIT)
    model.learn_one("u", "negative", -3.0, IMPLICIT)
    model.learn_one("u", "no-context", 2.0)  # River-style call: counts as implicit
    scores = {s.item: round(s.score, 6) for s in model.top_k(None, 10)}
    assert scores == {"bought": 5.0, "rated": 2.0, "no-context": 2.0, "seen": 1.0}
    assert model.n_items == 6  # zero-weight items are known but never recommended
    assert model.events == 7


def test_matches_brute_force_over_many_half_lives() -> None:
    rng = random.Random(1)
    half_life = 40.0
    model = Popularity(half_life=half_life)
    events: list[tuple[str, float]] = []
    for step in range(12_000):  # 300 half-lives: the stored counts are renormalised 4 times
        item = f"i{int(rng.paretovariate(1.2)) % 200}"
        weight = rng.choice([0.0, 1.0, 2.0, 3.0, 5.0])
        model.learn_one("u", item, weight, IMPLICIT)
        events.append((item, weight))
        if step % 1_500 == 0 or step == 11_999:
            expected = brute_force(events, half_life)
            top = model.top_k(None, 15)
            best = sorted((v for v in expected.values() if v > 0), reverse=True)[:15]
            assert [s.score for s in top] == pytest.approx(best, rel=1e-9)
            for s in top:
                assert s.score == pytest.approx(expected[s.item], rel=1e-9)
                assert s.reason == "popular now"
    assert math.isfinite(model.score_of(top[0].item))


def test_recent_interest_overtakes_old_popularity() -> None:
    model = Popularity(half_life=50.0)
    for _ in range(100):
        model.learn_one("u", "old-hit", 1.0, IMPLICIT)
    for _ in range(60):
        model.learn_one("u", "new-hit", 1.0, IMPLICIT)
    assert [s.item for s in model.top_k(None, 2)] == ["new-hit", "old-hit"]


def test_top_k_skips_excluded_items_and_unknown_exclusions() -> None:
    model = Popularity()
    for n, item in enumerate("abcdef"):
        for _ in range(6 - n):
            model.learn_one("u", item, 1.0, IMPLICIT)
    assert [s.item for s in model.top_k("u", 3)] == ["a", "b", "c"]
    assert [s.item for s in model.top_k("u", 3, exclude={"a", "c", "zz"})] == ["b", "d", "e"]
    assert [s.item for s in model.top_k("u", 3, exclude=["a"])] == ["b", "c", "d"]
    assert model.top_k("u", 10, exclude=set("abcdef")) == []


def test_keeps_no_user_data() -> None:
    model = Popularity()
    model.learn_one("alice", "x", 1.0, IMPLICIT)
    before = model.top_k(None, 5)
    model.forget_user("alice")
    assert model.n_users == 0
    assert model.top_k("alice", 5) == before == model.top_k("bob", 5)


def test_rejects_a_non_positive_half_life() -> None:
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="half_life"):
            Popularity(half_life=bad)
