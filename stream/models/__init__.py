"""Recommenders: every one a River ``Ranker`` with a vectorised ``top_k`` (see :mod:`.base`)."""

from __future__ import annotations

from stream.models.base import Recommender, Scored
from stream.models.blend import Blend
from stream.models.ease import EASE
from stream.models.knn import ItemKNN
from stream.models.mf import MatrixFactorization
from stream.models.popularity import Popularity
from stream.models.rebuilt import RebuiltRecommender
from stream.models.registry import (
    MODEL_REGISTRY,
    MODEL_SETTINGS,
    build_blend,
    build_models,
    learns,
)
from stream.models.svd import PureSVD
from stream.models.userknn import UserKNN

__all__ = [
    "EASE",
    "MODEL_REGISTRY",
    "MODEL_SETTINGS",
    "Blend",
    "ItemKNN",
    "MatrixFactorization",
    "Popularity",
    "PureSVD",
    "RebuiltRecommender",
    "Recommender",
    "Scored",
    "UserKNN",
    "build_blend",
    "build_models",
    "learns",
]
