"""BPR: learns an order from positives only, seeded, bounded, forgets users."""

from __future__ import annotations

import random

import pytest

from stream.models.bpr import BPR

IMPLICIT = {"event_type": "view", "implicit": True, "timestamp": 0.0}


def test_learns_two_taste_groups_from_positives_only() -> None:
    model = BPR(n_factors=8, seed=0)
    rng = random.Random(0)
    left, right = [f"l{i}" for i in range(10)], [f"r{i}" for i in range(10)]
    for _ in range(4_000):
        n = rng.randrange(40)
        group = left if n % 2 else right
        model.learn_one(f"u{n}", rng.choice(group), 1.0, IMPLICIT)
    top = {s.item for s in model.top_k("u1", 5)}
    assert top <= set(left)
    assert model.predict_one("u1", "l0") > model.predict_one("u1", "r0")


def test_same_seed_same_model_and_unknowns_do_not_grow_it() -> None:
    def run(seed: int) -> list[object]:
        model = BPR(n_factors=4, seed=seed)
        for n in range(200):
            model.learn_one(f"u{n % 7}", f"i{(n * 3) % 11}", 1.0, IMPLICIT)
        assert model.top_k("stranger", 3) and model.predict_one("u1", "nothing") == 0.0
        assert (model.n_users, model.n_items) == (7, 11)
        return [s.item for s in model.top_k("u1", 5)]

    assert run(1) == run(1)


def test_forget_user_and_bad_parameters() -> None:
    model = BPR(seed=0)
    model.learn_one("a", "x", 1.0, IMPLICIT)
    model.learn_one("a", "y", 1.0, IMPLICIT)
    model.forget_user("a")
    assert model.n_users == 0
    assert [s.reason for s in model.top_k("a", 1)] == ["popular with everyone"]
    with pytest.raises(ValueError):
        BPR(n_factors=0)
    with pytest.raises(ValueError):
        BPR(learning_rate=0.0)
