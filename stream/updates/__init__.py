"""Model updates beside incremental learning: which model is served (champion / challenger)
and the reaction to drift. The core consults :class:`ModelUpdates` after each event."""

from stream.updates.controller import ModelUpdates, model_versions, rebuilds_of
from stream.updates.evidence import SharedEvidence
from stream.updates.promotion import Promotion, PromotionPolicy, PromotionSettings
from stream.updates.reaction import DriftReaction, Reaction, ReactionSettings

__all__ = [
    "DriftReaction",
    "ModelUpdates",
    "Promotion",
    "PromotionPolicy",
    "PromotionSettings",
    "Reaction",
    "ReactionSettings",
    "SharedEvidence",
    "model_versions",
    "rebuilds_of",
]
