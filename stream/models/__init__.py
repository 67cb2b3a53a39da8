"""Recommenders: every one a River ``Ranker`` with a vectorised ``top_k`` (see :mod:`.base`)."""

from __future__ import annotations

from stream.models.base import Recommender, Scored
from stream.models.blend import Blend
from stream.models.knn import ItemKNN
from stream.models.mf import MatrixFactorization
from stream.models.popularity import Popularity
from stream.models.registry import (
    MODEL_REGISTRY,
    MODEL_SETTINGS,
    build_blend,
    build_models,
    learns,
)

__all__ = [
    "MODEL_REGISTRY",
    "MODEL_SETTINGS",
    "Blend",
    "ItemKNN",
    "MatrixFactorization",
    "Popularity",
    "Recommender",
    "Scored",
    "build_blend",
    "build_models",
    "learns",
]
