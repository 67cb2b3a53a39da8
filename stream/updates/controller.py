"""What the core consults after each event: which model to serve, at which version, and
whether drift calls for a reaction."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from stream.evaluation import ModelEvaluator
from stream.events import DriftRecord, PromotionRecord, ReactionRecord, Source
from stream.models.blend import Blend
from stream.updates.evidence import SharedEvidence
from stream.updates.promotion import Promotion, PromotionPolicy, PromotionSettings
from stream.updates.reaction import SAMPLE_EVERY, DriftReaction, Reaction, ReactionSettings

__all__ = ["Decisions", "ModelUpdates", "model_versions", "rebuilds_of"]

logger = logging.getLogger(__name__)
# The least share of the past a reaction keeps: a hit rate fallen to 0 over the recent
# evaluations is evidence that the past is (nearly) all wrong, not that it is worth nothing.
MIN_KEEP = 0.02


def _version(model: object) -> int | None:
    value = getattr(model, "version", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def model_versions(models: Mapping[str, object]) -> dict[str, int]:
    """Each model's own version: a rebuilt model's ``version``, 0 for incremental models."""
    return {name: _version(model) or 0 for name, model in models.items()}


def rebuilds_of(models: Mapping[str, object]) -> list[dict[str, Any]]:
    """Every full rebuild the models report (their ``rebuilds`` lists), by event, with the
    model's name added."""
    found: list[dict[str, Any]] = []
    for name, model in models.items():
        if isinstance(model, Blend):
            continue  # its components report their own
        for entry in getattr(model, "rebuilds", None) or []:
            if isinstance(entry, dict):
                found.append({"model": name, **entry})
    found.sort(key=lambda r: (r.get("event") or 0, r["model"]))
    return found


@dataclass(frozen=True, slots=True)
class Decisions:
    """What :meth:`ModelUpdates.after_one` decided for one event."""

    updates: ModelUpdates
    promotion: Promotion | None = None
    reaction: Reaction | None = None

    def records(
        self, event_index: int, source: Source, timestamp: float, k: int
    ) -> tuple[list[PromotionRecord], list[ReactionRecord]]:
        """The decisions as publishable records (usually none)."""
        promotions, reactions = [], []
        p, r = self.promotion, self.reaction
        if p is not None:
            metric = self.updates.policy.settings.metric
            promotions.append(
                PromotionRecord(
                    from_model=p.from_model,
                    to_model=p.to_model,
                    event=event_index,
                    evaluated=p.evaluated,
                    metric=f"{metric}@{k}",
                    from_value=p.from_value,
                    to_value=p.to_value,
                    lead_events=p.lead_events,
                    model_version=self.updates.model_version,
                    source_topic=source.topic,
                    source_partition=source.partition,
                    source_offset=source.offset,
                    timestamp=timestamp,
                )
            )
        if r is not None:
            reactions.append(
                ReactionRecord(
                    model=r.model,
                    event=event_index,
                    detected_at_event=r.detected_at_event,
                    before=r.before,
                    recent=r.recent,
                    actions=r.actions,
                    source_partition=source.partition,
                    timestamp=timestamp,
                )
            )
        return promotions, reactions


class ModelUpdates:
    """The served model and its version, the promotion policy and the drift reaction.

    ``model_version`` starts at 1 and grows by one at each promotion and each time the served
    model (or a component of a served blend) reports a new ``version`` (a rebuilt model
    swapped in), so a recommendation's ``(model, model_version)`` names what produced it.
    Everything here is plain data: the pipeline's checkpoint carries it.

    With ``evidence`` set (the model sync's shared evidence, :mod:`stream.updates.evidence`)
    the reaction and the policy decide on every shard's evaluations instead of the shard's
    own; a decision made while replaying another shard's is published with this shard's
    next event.

    Examples
    --------
    >>> from stream.models.popularity import Popularity
    >>> updates = ModelUpdates(PromotionSettings(), ReactionSettings(), "popularity", 1_000,
    ...                        {"popularity": Popularity()})
    >>> updates.served, updates.model_version
    ('popularity', 1)
    """

    # Every shard's evaluations (the model sync, STREAM_MODEL_SYNC_EVIDENCE), or None: this
    # shard's own. Class-level defaults for checkpoints from before it.
    evidence: SharedEvidence | None = None
    _pending: tuple[list[Promotion], list[Reaction]] | None = None

    def __init__(
        self,
        promotion: PromotionSettings,
        reaction: ReactionSettings,
        champion: str,
        window: int,
        models: Mapping[str, object],
    ) -> None:
        self.policy = PromotionPolicy(promotion, champion, list(models))
        self.reaction = DriftReaction(reaction, window)
        self.model_version = 1
        self._signature = self._signature_of(models)
        self.promotions: list[Promotion] = []  # every promotion so far (they are rare)
        self.reactions: list[Reaction] = []
        # The served model's last drift report: its hit rate after over before (1: none).
        self.evidence_keep = 1.0

    @property
    def served(self) -> str:
        """The model being served now (the champion)."""
        return self.policy.champion

    def reconfigure(
        self,
        promotion: PromotionSettings,
        reaction: ReactionSettings,
        champion: str,
        models: Mapping[str, object],
    ) -> None:
        """Apply other settings to restored state (a checkpoint restored under changed
        settings): the champion stays served if it is still configured and promotion is on,
        otherwise ``champion`` (``STREAM_RECOMMENDER``) is; the version only grows."""
        keep = promotion.enabled and self.served in models
        served = self.served if keep else champion
        policy = PromotionPolicy(promotion, served, list(models))
        policy.promotions = self.policy.promotions
        self.policy = policy
        self.reaction.settings = reaction
        if self._signature_of(models) != self._signature or not keep:
            self.model_version += 1
            self._signature = self._signature_of(models)

    def _signature_of(self, models: Mapping[str, object]) -> tuple[int | None, ...]:
        model = models[self.served]
        parts: list[object] = [model]
        if isinstance(model, Blend):
            parts += [c for _, c in model.active]
        return tuple(_version(m) for m in parts)

    def current_version(self, models: Mapping[str, object]) -> int:
        """``model_version`` now, bumped first if the served model swapped in a rebuild."""
        signature = self._signature_of(models)
        if signature != self._signature:
            self._signature = signature
            self.model_version += 1
        return self.model_version

    def after_one(
        self,
        models: Mapping[str, Any],
        evaluators: Mapping[str, ModelEvaluator],
        evaluated_count: int,
        evaluated: bool,
        drifts: list[DriftRecord],
        user: Hashable = None,
        event_index: int = 0,
    ) -> Decisions:
        """Consult the reaction, then the policy, after one learned event (on every shard's
        evaluations when they are shared: :meth:`after_one_shared`; ``user`` and
        ``event_index``, the pipeline's, are what it shares and reports)."""
        if self.evidence is not None:
            return self.after_one_shared(models, evaluators, evaluated, user, event_index)
        if not evaluated:
            return Decisions(self)
        promotion, reaction = self._decide(models, evaluators, evaluated_count, drifts)
        return Decisions(self, promotion, reaction)

    def _decide(
        self,
        models: Mapping[str, Any],
        evaluators: Mapping[str, ModelEvaluator],
        evaluated_count: int,
        drifts: list[DriftRecord],
    ) -> tuple[Promotion | None, Reaction | None]:
        """The reaction, then the policy, after one evaluated event."""
        served = self.served
        detected = None
        for d in drifts:
            if d.model == served and d.metric == "miss":
                detected = d.event
                if d.before is not None and d.after is not None and d.before < 1.0:
                    # The report's own evidence: hit rate after the detection over before it.
                    self.evidence_keep = max(0.0, 1.0 - d.after) / (1.0 - d.before)
        reaction: Reaction | None = None
        due = self.reaction.observe_one(served, evaluators[served], evaluated_count, detected)
        if due is None and self.reaction._armed is None:
            self.evidence_keep = 1.0  # a report that armed nothing is no evidence for later
        if due is not None:
            before, recent, at = due
            reason = f"drift on {served} at event {at}: HR {recent:.4f} vs {before:.4f} before"
            keep = recent / before if before > 0 else 1.0
            keep = min(1.0, max(min(keep, getattr(self, "evidence_keep", 1.0)), MIN_KEEP))
            self.evidence_keep = 1.0
            actions = self.reaction.react(models, evaluated_count, reason, keep)
            reaction = Reaction(served, evaluated_count, at, before, recent, actions)
            self.reactions.append(reaction)
            logger.info("drift reaction: %s; %s", reason, "; ".join(actions))
        else:
            self.reaction.maybe_end_span(models, evaluated_count)
        promotion = self.policy.observe_one(evaluators, evaluated_count)
        if promotion is not None:
            self.model_version += 1
            self._signature = self._signature_of(models)
            self.promotions.append(promotion)
            logger.info(
                "promoted %s over %s: windowed %s %.4f vs %.4f, ahead by the margin for %d "
                "evaluated events; model_version %d",
                promotion.to_model,
                promotion.from_model,
                self.policy.settings.metric,
                promotion.to_value,
                promotion.from_value,
                promotion.lead_events,
                self.model_version,
            )
        return promotion, reaction

    def state(self) -> dict[str, Hashable]:
        """A summary for checkpoint headers and logs."""
        return {
            "served": self.served,
            "model_version": self.model_version,
            "promotions": self.policy.promotions,
            "reactions": self.reaction.reactions,
        }

    # --- deciding on every shard's evaluations (the model sync) ----------------------------

    def after_one_shared(
        self,
        models: Mapping[str, Any],
        evaluators: Mapping[str, ModelEvaluator],
        evaluated: bool,
        user: Hashable,
        event_index: int = 0,
    ) -> Decisions:
        """:meth:`after_one` on the shared evidence: this shard's outcomes join it, the
        reaction and the policy decide on it; a decision made meanwhile while replaying
        another shard's evaluations (:meth:`replay_evidence`) comes out here, one of each kind
        per event."""
        evidence = self.evidence
        assert evidence is not None
        promotions, reactions = self._decisions_pending()
        evidence.event = event_index
        evidence.cover(models)
        evidence.watch(self.served)
        if evaluated:
            self._decide_on(models, evidence, evidence.own_one(evaluators, user))
        return Decisions(
            self,
            promotions.pop(0) if promotions else None,
            reactions.pop(0) if reactions else None,
        )

    def replay_evidence(self, models: Mapping[str, Any], delta: Mapping[str, Any]) -> None:
        """Another shard's evaluations (its evidence delta), added one at a time; the reaction
        and the policy decide after the part's last one, after each that made a detection and
        after every ``SAMPLE_EVERY``-th (where the reaction samples its level), so a decision
        comes at most one delta's evaluations after one partition's (with a delta per event,
        at the same one). ValueError for a malformed part (checked before anything is added).
        Without shared evidence here, nothing."""
        evidence = self.evidence
        if evidence is None:
            return
        evidence.cover(models)
        evidence.watch(self.served)
        for drifts, last in evidence.replay(delta):
            if last or drifts or evidence.evaluated % SAMPLE_EVERY == 0:
                self._decide_on(models, evidence, drifts)
                evidence.watch(self.served)  # (a promotion: the new champion's detector)

    def _decide_on(self, models: Mapping[str, Any], evidence: Any, drifts: list[Any]) -> None:
        """Decide on the shared ``evidence`` now; a decision waits in the pending lists for
        the shard's next event to publish it."""
        promotions, reactions = self._decisions_pending()
        promotion, reaction = self._decide(models, evidence.evaluators, evidence.evaluated, drifts)
        if promotion is not None:
            promotions.append(promotion)
        if reaction is not None:
            reactions.append(reaction)

    def _decisions_pending(self) -> tuple[list[Promotion], list[Reaction]]:
        if self._pending is None:
            self._pending = ([], [])
        return self._pending
