"""The decision evidence as one more part of a delta (``STREAM_MODEL_SYNC_EVIDENCE``).

:class:`EvidenceShare` gives a shard's :class:`~stream.updates.evidence.SharedEvidence` the
``item_delta`` / ``apply_item_delta`` interface of the shared models, under the name
:data:`EVIDENCE`, first in every delta (light ones too: decisions need it fresh), so no
change to the frame: a receiver without shared evidence (the setting off, an older worker)
ignores the part, and the dedupe that covers a delta covers it. Applied first, a reaction
the sender's evaluations trigger on a receiver discounts the receiver's item state before the
sender's changes of the same interval are added: those the sender already weighed (it decided
on the same evaluations when it made them) are not discounted twice.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.core import Pipeline

__all__ = ["EVIDENCE", "EvidenceShare"]

logger = logging.getLogger(__name__)

EVIDENCE = "_evidence"


class EvidenceShare:
    """The shared evidence of ``pipeline`` (``pipeline.updates.evidence``) as a delta part."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    @property
    def sync_tracking(self) -> bool:
        return self.pipeline.updates.evidence is not None

    def item_delta(self) -> dict[str, Any]:
        evidence = self.pipeline.updates.evidence
        return {} if evidence is None else evidence.item_delta()

    def item_delta_light(self) -> dict[str, Any]:
        return self.item_delta()

    def check_item_delta(self, delta: dict[str, Any]) -> None:
        """ValueError for a malformed part, before any part of the delta is applied."""
        if delta and self.pipeline.updates.evidence is not None:
            from stream.updates.evidence import _checked

            _checked(delta)

    def apply_item_delta(self, delta: dict[str, Any]) -> None:
        if delta:  # an empty part: a sender whose evidence stopped
            self.pipeline.updates.replay_evidence(self.pipeline.models, delta)
