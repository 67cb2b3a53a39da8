"""Model names -> factories, and the set of models a configuration asks for."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from stream.models.base import Recommender
from stream.models.blend import Blend
from stream.models.bpr import BPR
from stream.models.ease import EASE
from stream.models.knn import ItemKNN
from stream.models.mf import MatrixFactorization, MFKind
from stream.models.popularity import Popularity
from stream.models.svd import PureSVD
from stream.models.userknn import UserKNN
from stream.settings import StreamSettings

__all__ = ["MODEL_REGISTRY", "MODEL_SETTINGS", "build_blend", "build_models", "learns"]

logger = logging.getLogger(__name__)


def _popularity(settings: StreamSettings) -> Recommender:
    return Popularity(half_life=settings.popularity_half_life)


def _knn(settings: StreamSettings) -> Recommender:
    return ItemKNN(
        neighbors=settings.knn_neighbors,
        history=settings.knn_history,
        half_life=settings.knn_half_life,
        seed=settings.seed,
        alpha=settings.knn_alpha,
        distance_decay=settings.knn_distance_decay,
        recency=settings.knn_recency,
        binary=not settings.knn_weighted,
    )


def _knn_classic(settings: StreamSettings) -> Recommender:
    """Classic item-based CF: symmetric cosine, every recent item alike, more neighbours.

    Beside ``knn`` (recency-aware) in the default blend, whose online weights decide per
    stream how much each counts (see the README's quality suite).
    """
    return ItemKNN(
        neighbors=settings.knn_classic_neighbors,
        history=settings.knn_history,
        half_life=settings.knn_classic_half_life,
        seed=settings.seed,
        alpha=0.5,
        binary=not settings.knn_weighted,
    )


def _sequence(settings: StreamSettings) -> Recommender:
    """Item-to-item transitions: a directed KNN over the last few items of each user."""
    return ItemKNN(
        neighbors=settings.knn_neighbors,
        history=settings.sequence_history,
        half_life=settings.knn_half_life,
        seed=settings.seed,
        alpha=settings.knn_alpha,
        distance_decay=settings.sequence_decay,
        recency=settings.sequence_decay,
        directed=True,
        binary=not settings.knn_weighted,
    )


def _bpr(settings: StreamSettings) -> Recommender:
    return BPR(
        n_factors=settings.bpr_factors,
        learning_rate=settings.bpr_learning_rate,
        l2=settings.bpr_l2,
        negative_samples=max(settings.negative_samples, 1),
        init_std=settings.mf_init_std,
        seed=settings.seed,
    )


def _rebuild_options(settings: StreamSettings) -> dict[str, Any]:
    """The schedule of a rebuilt model; an unset STREAM_REBUILD_BACKGROUND means background
    (``stream evaluate`` sets it to false first)."""
    return {
        "window": settings.rebuild_window,
        "every": settings.rebuild_every,
        "min_events": settings.rebuild_min_events,
        "history": settings.rebuild_history,
        "background": settings.rebuild_background is not False,
        "nice": settings.rebuild_nice,
        "recency": settings.rebuild_recency,
        "seed": settings.seed,
    }


def _svd(settings: StreamSettings) -> Recommender:
    return PureSVD(n_factors=settings.svd_factors, **_rebuild_options(settings))


def _ease(settings: StreamSettings) -> Recommender:
    return EASE(
        l2=settings.ease_l2, max_items=settings.ease_max_items, **_rebuild_options(settings)
    )


def _userknn(settings: StreamSettings) -> Recommender:
    return UserKNN(
        history=settings.userknn_history,
        item_users=settings.userknn_item_users,
        neighbors=settings.userknn_neighbors,
        seed=settings.seed,
    )


def _mf(kind: MFKind) -> Callable[[StreamSettings], Recommender]:
    def build(settings: StreamSettings) -> Recommender:
        return MatrixFactorization(
            kind=kind,
            n_factors=settings.mf_factors,
            learning_rate=settings.mf_learning_rate,
            bias_learning_rate=settings.mf_bias_learning_rate,
            l2=settings.mf_l2,
            init_std=settings.mf_init_std,
            negative_samples=settings.negative_samples,
            seed=settings.seed,
        )

    build.__name__ = f"_{kind}_mf"
    return build


def _blend(settings: StreamSettings) -> Recommender:
    """A stand-alone blend owning (and learning) its own components."""
    weights = {n: w for n, w in settings.blend_weights().items() if n != "blend"}
    return Blend(
        {n: MODEL_REGISTRY[n](settings) for n in weights},
        weights,
        learns_components=True,
        **_blend_options(settings),
    )


def _blend_options(settings: StreamSettings) -> dict[str, Any]:
    return {
        "learning_rate": settings.blend_learning_rate,
        "half_life": settings.blend_half_life,
        "k": settings.top_k,
        "fusion": settings.blend_fusion,
        "fusion_rate": settings.blend_fusion_rate,
    }


MODEL_REGISTRY: dict[str, Callable[[StreamSettings], Recommender]] = {
    "popularity": _popularity,
    "knn": _knn,
    "knn_classic": _knn_classic,
    "sequence": _sequence,
    "bpr": _bpr,
    "biased_mf": _mf("biased"),
    "funk_mf": _mf("funk"),
    "svd": _svd,
    "ease": _ease,
    "userknn": _userknn,
    "blend": _blend,
}
"""Every model by name. ``blend`` builds a stand-alone blend with its own components; in a
pipeline, :func:`build_models` builds it over the pipeline's instances instead."""


_MF_SETTINGS = (
    "mf_factors",
    "mf_learning_rate",
    "mf_bias_learning_rate",
    "mf_l2",
    "mf_init_std",
    "negative_samples",
    "seed",
)

_REBUILT_SETTINGS = (
    "rebuild_window",
    "rebuild_every",
    "rebuild_min_events",
    "rebuild_history",
    "rebuild_recency",
    "seed",
)

MODEL_SETTINGS: dict[str, tuple[str, ...]] = {
    "popularity": ("popularity_half_life",),
    "knn": (
        "knn_neighbors",
        "knn_history",
        "knn_half_life",
        "knn_alpha",
        "knn_distance_decay",
        "knn_recency",
        "knn_weighted",
        "seed",
    ),
    "knn_classic": (
        "knn_classic_neighbors",
        "knn_history",
        "knn_classic_half_life",
        "knn_weighted",
        "seed",
    ),
    "sequence": (
        "knn_neighbors",
        "sequence_history",
        "knn_half_life",
        "knn_alpha",
        "sequence_decay",
        "knn_weighted",
        "seed",
    ),
    "bpr": (
        "bpr_factors",
        "bpr_learning_rate",
        "bpr_l2",
        "negative_samples",
        "mf_init_std",
        "seed",
    ),
    "biased_mf": _MF_SETTINGS,
    "funk_mf": _MF_SETTINGS,
    # Not STREAM_REBUILD_BACKGROUND / _NICE: when and how a build runs, not what it learns.
    "svd": ("svd_factors", *_REBUILT_SETTINGS),
    "ease": ("ease_l2", "ease_max_items", *_REBUILT_SETTINGS),
    "userknn": ("userknn_history", "userknn_item_users", "userknn_neighbors", "seed"),
    "blend": (
        "blend",
        "blend_learning_rate",
        "blend_half_life",
        "top_k",
        "blend_fusion",
        "blend_fusion_rate",
    ),
}
"""The settings each factory reads: what a learned model is tied to once built (a restored
checkpoint compares them with the current settings, see :mod:`stream.restore`)."""


def build_models(settings: StreamSettings) -> dict[str, Recommender]:
    """The models named in ``settings.models``, in that order, seeded from ``settings.seed``.

    A listed ``blend`` fuses the *same instances* as the other configured models it names
    (``settings.blend``) and does not learn them itself (see :func:`learns`).

    Examples
    --------
    >>> s = StreamSettings(models=("knn", "popularity", "blend"), blend={"knn": 1.0})
    >>> models = build_models(s)
    >>> list(models), models["blend"].components["knn"] is models["knn"]
    (['knn', 'popularity', 'blend'], True)
    >>> [name for name, model in models.items() if learns(name, model)]
    ['knn', 'popularity']
    """
    unknown = [n for n in settings.models if n not in MODEL_REGISTRY]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {sorted(MODEL_REGISTRY)}")
    built: dict[str, Recommender] = {
        n: MODEL_REGISTRY[n](settings) for n in settings.models if n != "blend"
    }
    models: dict[str, Recommender] = {}
    for name in settings.models:
        if name != "blend":
            models[name] = built[name]
            continue
        weights = settings.blend_weights()
        missing = [n for n in weights if n not in built]
        if missing:
            raise ValueError(f"blend names models that are not configured: {missing}")
        models[name] = build_blend(settings, built)
    logger.debug("built models %s", list(models))
    return models


def build_blend(settings: StreamSettings, models: dict[str, Recommender]) -> Blend:
    """The configured blend over ``models``' instances (it does not learn them itself)."""
    weights = settings.blend_weights()
    missing = [n for n in weights if n not in models]
    if missing:
        raise ValueError(f"blend names models that are not configured: {missing}")
    return Blend(
        {n: models[n] for n in weights},
        weights,
        learns_components=False,
        **_blend_options(settings),
    )


def learns(name: str, model: Recommender) -> bool:
    """Whether the pipeline must call ``model.learn_one`` (not for a blend of shared models)."""
    return not (isinstance(model, Blend) and not model.learns_components)
