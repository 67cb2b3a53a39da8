"""MatrixFactorization: River does the learning; the mirror, negatives and cold users are ours."""

from __future__ import annotations

import random
import typing

import numpy as np
import pytest
from river import optim, reco

from stream.models.mf import MatrixFactorization

IMPLICIT = {"event_type": "view", "implicit": True, "timestamp": 0.0}
RATING = {"event_type": "rating", "implicit": False, "timestamp": 0.0}
PARAMS: dict[str, typing.Any] = {
    "n_factors": 5,
    "learning_rate": 0.05,
    "bias_learning_rate": 0.02,
    "l2": 0.01,
}


def river_twin(kind: str, seed: int) -> reco.BiasedMF | reco.FunkMF:
    init = optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed)
    if kind == "biased":
        return reco.BiasedMF(
            n_factors=5,
            bias_optimizer=optim.SGD(0.02),
            latent_optimizer=optim.SGD(0.05),
            l2_bias=0.01,
            l2_latent=0.01,
            latent_initializer=init,
            seed=seed,
        )
    return reco.FunkMF(n_factors=5, optimizer=optim.SGD(0.05), l2=0.01, initializer=init, seed=seed)


def ratings(n: int = 500, seed: int = 1) -> list[tuple[str, str, float]]:
    rng = random.Random(seed)
    return [
        (f"u{rng.randrange(30)}", f"i{rng.randrange(40)}", rng.choice([1.0, 3.0, 5.0]))
        for _ in range(n)
    ]


def clustered(n: int, seed: int) -> tuple[list[tuple[str, str]], dict[str, int], dict[str, int]]:
    """80 users, each fond of one of four 20-item clusters (90% of their views)."""
    rng = random.Random(seed)
    user_cluster = {f"u{u}": u % 4 for u in range(80)}
    item_cluster = {f"i{c}_{j}": c for c in range(4) for j in range(20)}
    events = []
    for _ in range(n):
        user = f"u{rng.randrange(80)}"
        cluster = user_cluster[user] if rng.random() < 0.9 else rng.randrange(4)
        events.append((user, f"i{cluster}_{rng.randrange(20)}"))
    return events, user_cluster, item_cluster


@pytest.mark.parametrize("kind", ["biased", "funk"])
def test_rating_events_learn_exactly_like_river(kind: str) -> None:
    model = MatrixFactorization(kind, negative_samples=4, init_std=0.1, seed=3, **PARAMS)  # type: ignore[arg-type]
    twin = river_twin(kind, seed=3)
    stream = ratings()
    for n, (user, item, y) in enumerate(stream):
        model.learn_one(user, item, y, RATING if n % 2 else None)  # no negatives either way
        twin.learn_one(user, item, y)
    for user, item, _ in stream[:100]:
        assert model.predict_one(user, item) == twin.predict_one(user, item)


@pytest.mark.parametrize("kind", ["biased", "funk"])
def test_the_item_mirror_equals_rivers_tables(kind: str) -> None:
    model = MatrixFactorization(kind, negative_samples=3, seed=5, **PARAMS)  # type: ignore[arg-type]
    events, _, _ = clustered(2_000, seed=2)
    for user, item in events:
        model.learn_one(user, item, 1.0, IMPLICIT)
    river = model.river_model
    assert model.n_items == len(river.i_latents) == 80
    for known, row in model._index.items():
        assert np.array_equal(model._vectors[row], river.i_latents[known])
        if kind == "biased":
            assert model._biases[row] == river.i_biases[known]
    user = events[0][0]
    for s in model.top_k(user, 10):
        assert s.score == pytest.approx(model.predict_one(user, s.item), abs=1e-12)


def test_implicit_events_add_negatives_and_ratings_do_not() -> None:
    model = MatrixFactorization("biased", negative_samples=3, seed=1, **PARAMS)
    for n in range(50):
        model.learn_one("seed-user", f"i{n}", 1.0, IMPLICIT)
    learned = model.river_model.global_mean.n
    model.learn_one("me", "i7", 4.0, RATING)
    assert model.river_model.global_mean.n == learned + 1
    before = {i: v.copy() for i, v in model.river_model.i_latents.items()}
    model.learn_one("me", "i7", 1.0, IMPLICIT)
    # one positive and three negatives (a draw of i7 itself would be skipped)
    assert 2 <= model.river_model.global_mean.n - learned - 1 <= 4
    changed = [
        i for i, v in model.river_model.i_latents.items() if not np.array_equal(v, before[i])
    ]
    assert "i7" in changed and 2 <= len(changed) <= 4


def test_negative_sampling_learns_each_users_cluster() -> None:
    events, user_cluster, item_cluster = clustered(12_000, seed=7)

    def in_cluster_share(negatives: int) -> float:
        model = MatrixFactorization("biased", n_factors=8, negative_samples=negatives, seed=11)
        for user, item in events:
            model.learn_one(user, item, 1.0, IMPLICIT)
        shares = [
            np.mean([item_cluster[str(s.item)] == cluster for s in model.top_k(user, 10)])
            for user, cluster in user_cluster.items()
        ]
        return float(np.mean(shares))

    with_negatives = in_cluster_share(4)
    assert with_negatives > 0.9  # chance is 0.25
    assert in_cluster_share(0) < with_negatives


def test_cold_users_get_item_biases_or_nothing() -> None:
    biased = MatrixFactorization("biased", negative_samples=2, seed=2, **PARAMS)
    funk = MatrixFactorization("funk", negative_samples=2, seed=2, **PARAMS)
    for model in (biased, funk):
        for user, item, y in ratings(300):
            model.learn_one(user, item, y, RATING)
    river = biased.river_model
    top = biased.top_k("stranger", 40)
    assert {s.reason for s in top} == {"liked by many"}
    by_bias = sorted(river.i_biases, key=lambda i: -river.i_biases[i])
    assert [s.item for s in top][:5] == by_bias[:5]
    assert top[0].score == pytest.approx(river.global_mean.get() + river.i_biases[by_bias[0]])
    assert biased.predict_one("stranger", "ghost") == pytest.approx(river.global_mean.get())
    assert biased.predict_one("u1", "ghost") == pytest.approx(
        river.global_mean.get() + river.u_biases["u1"]
    )
    assert funk.top_k("stranger", 5) == []
    assert funk.predict_one("stranger", "i1") == funk.predict_one("u1", "ghost") == 0.0
    assert funk.u_biases is None and biased.u_biases is river.u_biases


def test_forget_user_deletes_their_factors_and_bias() -> None:
    model = MatrixFactorization("biased", seed=2, **PARAMS)
    model.learn_one("alice", "x", 5.0, RATING)
    model.learn_one("bob", "x", 3.0, RATING)
    model.forget_user("alice")
    assert "alice" not in model.river_model.u_latents
    assert "alice" not in model.river_model.u_biases
    assert model.n_users == 1


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="kind"):
        MatrixFactorization("svd")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MatrixFactorization(negative_samples=-1)
