"""The registry: names to models, settings passed through, a blend over shared instances."""

from __future__ import annotations

import pytest

from stream.models import (
    MODEL_REGISTRY,
    Blend,
    ItemKNN,
    MatrixFactorization,
    Popularity,
    build_models,
    learns,
)
from stream.settings import StreamSettings


def settings(**overrides: object) -> StreamSettings:
    return StreamSettings(_env_file=None, **overrides)  # type: ignore[arg-type]


def test_every_configurable_name_is_registered() -> None:
    assert set(MODEL_REGISTRY) == {
        "popularity",
        "knn",
        "knn_classic",
        "sequence",
        "bpr",
        "biased_mf",
        "funk_mf",
        "svd",
        "ease",
        "userknn",
        "blend",
    }


def test_builds_the_configured_models_in_order_from_the_settings() -> None:
    s = settings(
        models=("funk_mf", "knn", "popularity", "biased_mf"),
        recommender="knn",
        seed=3,
        mf_factors=7,
        mf_learning_rate=0.2,
        mf_bias_learning_rate=0.3,
        mf_l2=0.4,
        mf_init_std=0.5,
        negative_samples=6,
        knn_neighbors=11,
        knn_history=12,
        popularity_half_life=99.0,
    )
    models = build_models(s)
    assert list(models) == ["funk_mf", "knn", "popularity", "biased_mf"]
    funk, knn, popularity, biased = models.values()
    assert isinstance(funk, MatrixFactorization) and funk.kind == "funk"
    assert isinstance(biased, MatrixFactorization) and biased.kind == "biased"
    assert (biased.n_factors, biased.learning_rate, biased.bias_learning_rate) == (7, 0.2, 0.3)
    assert (biased.l2, biased.init_std, biased.negative_samples, biased.seed) == (0.4, 0.5, 6, 3)
    assert isinstance(knn, ItemKNN) and (knn.neighbors, knn.history) == (11, 12)
    assert isinstance(popularity, Popularity) and popularity.half_life == 99.0
    assert all(learns(n, m) for n, m in models.items())


def test_a_configured_blend_fuses_the_pipelines_own_instances() -> None:
    s = settings(
        models=("blend", "popularity", "knn"),
        recommender="blend",
        blend={"knn": 1.0, "popularity": 0.5},
    )
    models = build_models(s)
    assert list(models) == ["blend", "popularity", "knn"]
    blend = models["blend"]
    assert isinstance(blend, Blend)
    assert blend.components["knn"] is models["knn"]
    assert blend.components["popularity"] is models["popularity"]
    assert blend.weights == {"knn": 1.0, "popularity": 0.5}
    assert not blend.learns_components and not learns("blend", blend)


def test_the_registry_blend_stands_alone() -> None:
    blend = MODEL_REGISTRY["blend"](settings(blend={"knn": 1.0, "popularity": 0.3}))
    assert isinstance(blend, Blend) and blend.learns_components and learns("blend", blend)
    assert sorted(blend.components) == ["knn", "popularity"]


def test_a_blend_over_missing_models_is_refused() -> None:
    s = settings(models=("knn",), recommender="knn")
    bad = s.model_copy(update={"models": ("knn", "blend"), "blend": {"popularity": 1.0}})
    with pytest.raises(ValueError, match="not configured"):
        build_models(bad)
