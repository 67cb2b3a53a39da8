"""One shard's side of the sync: collect its deltas, apply the others', drop duplicates.

The state that must survive a restart (:class:`SyncState`: per source shard the last source
offset applied, and this shard's own progress) lives on the :class:`~stream.core.Pipeline`
itself (``pipeline.sync_state``), so the checkpoint that pickles the pipeline holds it
together with the model state it describes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from stream.core import Pipeline
from stream.models import Blend, learns
from stream.sync.delta import ShardDelta
from stream.sync.evidence import EVIDENCE, EvidenceShare
from stream.updates.evidence import SharedEvidence, signature_of

__all__ = ["Outcome", "ShardSync", "SharedItemState", "SyncState", "shared_models"]

logger = logging.getLogger(__name__)

Outcome = Literal["applied", "duplicate", "own", "foreign"]

_FALLBACK = "_fallback_popularity"


@runtime_checkable
class SharedItemState(Protocol):
    """A model whose item state is shared across shards."""

    def item_delta(self) -> dict[str, Any]: ...

    def apply_item_delta(self, delta: dict[str, Any]) -> None: ...


@dataclass
class SyncState:
    """What a shard's checkpoint records about the sync.

    ``applied`` maps each source shard ``(topic, partition)`` to the last source offset of
    the last delta of it applied here; ``first_offset`` / ``last_offset`` / ``events`` cover
    what this shard learned since its last delta; ``published`` is the last source offset
    of this shard's own last delta (-1 before the first).
    """

    applied: dict[tuple[str, int], int] = field(default_factory=dict)
    first_offset: int | None = None
    last_offset: int | None = None
    events: int = 0
    published: int = -1
    deltas_applied: int = 0
    duplicates_dropped: int = 0
    since_full: int = 0  # light deltas collected since the last full one
    # Per source shard, the last offset of a light delta applied here when it is the last one
    # applied: a full delta ending at that same offset (a sender closing its light deltas with
    # nothing new learned) is then still to apply. Class-level default for older pickles.
    light_at: dict[tuple[str, int], int] = field(default_factory=dict)
    # The last source offset of this shard's last full delta: every change it learned up to
    # there is in deltas it published (light ones leave part for the next full one). Without
    # checkpoints the worker commits no further (a moved partition then adopts all of it).
    shared_upto: int = -1
    # Model-updates topic -> partition -> the next offset of the records this shard was
    # offered (applied, or dropped as own / duplicate): a restored shard's re-read starts
    # there (stream.sync.live keeps it current). Missing in older pickles (getattr).
    offered: dict[str, dict[int, int]] = field(default_factory=dict)
    # Replaying its own deltas after a restore (stream.sync.live): a checkpoint taken
    # meanwhile re-reads the topic from its beginning at its restore.
    replaying: bool = False

    @property
    def heavy_pending(self) -> bool:
        """Whether changes wait for a full delta (light ones were collected since the last)."""
        return self.since_full > 0


def shared_models(pipeline: Pipeline) -> dict[str, SharedItemState]:
    """The models of ``pipeline`` (and its cold-start popularity) whose item state is shared:
    every model it learns that has ``item_delta`` / ``apply_item_delta``, and the blend's
    weights' evidence (its components' gains); first, the shared decision evidence
    (:mod:`stream.sync.evidence`) when the pipeline keeps one. Others (BPR, UserKNN, the
    rebuilt SVD / EASE) stay per shard."""
    out: dict[str, SharedItemState] = {}
    if getattr(pipeline.updates, "evidence", None) is not None:
        out[EVIDENCE] = EvidenceShare(pipeline)  # first: see stream.sync.evidence
    for name, model in pipeline.models.items():
        # A blend of the pipeline's models learns only its weights: their evidence is shared.
        if (learns(name, model) or isinstance(model, Blend)) and isinstance(model, SharedItemState):
            out[name] = model
    if pipeline.fallback is not pipeline.models.get("popularity"):
        out[_FALLBACK] = pipeline.fallback
    return out


class ShardSync:
    """The sync of one shard (one partition's pipeline) of the source ``topic``.

    Call :meth:`note_one` after each event the pipeline processed, :meth:`collect_one`
    when the interval is over (it returns the delta to publish, or None when there is
    nothing new), and :meth:`apply_one` with every delta received.

    Examples
    --------
    >>> from stream.events import Event, Source
    >>> from stream.settings import StreamSettings
    >>> s = StreamSettings(models=("popularity", "knn"), recommender="knn")
    >>> a, b = (ShardSync(Pipeline.from_settings(s), "events", p) for p in (0, 1))
    >>> e = Event(user_id="u", item_id="x", event_type="click", timestamp=0.0)
    >>> _ = a.pipeline.process_one(e, Source("events", 0, 0)); a.note_one(0)
    >>> delta = a.collect_one()
    >>> b.apply_one(delta), b.apply_one(delta), a.apply_one(delta)
    ('applied', 'duplicate', 'own')
    >>> b.pipeline.models["popularity"].n_items
    1
    """

    def __init__(
        self,
        pipeline: Pipeline,
        topic: str,
        partition: int,
        full_every: int = 1,
        evidence: bool = False,
    ) -> None:
        if full_every < 1:
            raise ValueError(f"full_every must be at least 1, got {full_every}")
        self.pipeline = pipeline
        # Decide on every shard's evaluations (STREAM_MODEL_SYNC_EVIDENCE), or on its own.
        updates = pipeline.updates
        if not evidence:
            updates.evidence = None
        else:
            held = getattr(updates, "evidence", None)
            if held is None or getattr(held, "signature", ()) != signature_of(pipeline):
                updates.evidence = SharedEvidence.for_pipeline(pipeline)  # new, or re-measured
        self.topic, self.partition = topic, partition
        self.full_every = full_every
        state = getattr(pipeline, "sync_state", None)
        fresh = not isinstance(state, SyncState)
        if not isinstance(state, SyncState):
            state = SyncState()
            pipeline.sync_state = state
        # Starts every model's tracking. A pipeline restored from a checkpoint taken without
        # the sync shares what it learns from now on, not what it knew before; so does a model
        # built new at a restore (a changed setting), or it would send back what it applied.
        for model in shared_models(pipeline).values():
            if fresh or not getattr(model, "sync_tracking", True):
                model.item_delta()
        self.state: SyncState = state
        self._shared: tuple[tuple[int, ...], dict[str, SharedItemState]] | None = None
        # While a new shard of a partition attaches (no checkpoint): the source offset its
        # first event comes from. Its own partition's deltas ending before it were learned by
        # a previous owner and are applied like any other shard's (see WorkerSync.attach_all).
        self.adopt_before: int | None = None

    @property
    def source(self) -> tuple[str, int]:
        return self.topic, self.partition

    def shared(self) -> dict[str, SharedItemState]:
        """:func:`shared_models` of the pipeline, kept while its models are the same objects
        (a Protocol ``isinstance`` per model and delta cost more than applying a light one)."""
        pipeline = self.pipeline
        key = (
            id(pipeline.fallback),
            id(getattr(pipeline.updates, "evidence", None)),
            *map(id, pipeline.models.values()),
        )
        if self._shared is None or self._shared[0] != key:
            self._shared = (key, shared_models(pipeline))
        return self._shared[1]

    def note_one(self, offset: int) -> None:
        """Record that the pipeline learned the event at source ``offset``."""
        state = self.state
        if state.first_offset is None:
            state.first_offset = offset
        state.last_offset = offset
        state.events += 1

    @property
    def events_pending(self) -> int:
        """Events learned since the last delta."""
        return self.state.events

    def collect_one(self, full: bool | None = None) -> ShardDelta | None:
        """This shard's delta since the last one (None when it learned nothing since).

        Every ``full_every``-th delta is full (every shared model's changes); the ones between
        are light: only the models with an ``item_delta_light`` (popularity counts, factor
        models' item biases) contribute, the others keep their changes for the next full one.
        ``full`` forces the kind (a final delta; re-collecting a published one on replay).
        """
        state = self.state
        if full is None:
            full = state.since_full + 1 >= self.full_every
        closing = False
        if state.last_offset is None:
            if not (full and state.since_full > 0):
                return None
            # Nothing learned since a light delta: a full one ending at the same offset closes
            # it with the changes that waited (receivers apply it once, see apply_one).
            closing = True
        models: dict[str, dict[str, Any]] = {}
        for name, model in self.shared().items():
            if full:
                models[name] = model.item_delta()
            elif hasattr(model, "item_delta_light"):
                models[name] = model.item_delta_light()
        state.since_full = 0 if full else state.since_full + 1
        if closing:
            last = first = state.published
        else:
            assert state.last_offset is not None
            last = state.last_offset
            first = state.first_offset if state.first_offset is not None else last
        delta = ShardDelta(self.topic, self.partition, first, last, state.events, models, full=full)
        state.published = last
        if full:
            state.shared_upto = last
        state.first_offset = state.last_offset = None
        state.events = 0
        return delta

    def apply_one(self, delta: ShardDelta) -> Outcome:
        """Apply another shard's delta, unless it is this shard's own, already applied, or
        of another events topic."""
        state = self.state
        if delta.source_topic != self.topic:
            return "foreign"  # another events topic's model (a shared model-updates topic)
        if delta.source == self.source:
            if self.adopt_before is None or delta.last_offset >= self.adopt_before:
                return "own"
            state.published = max(state.published, delta.last_offset)  # a previous owner's
        done = state.applied.get(delta.source, -1)
        light_at = getattr(state, "light_at", None)
        if light_at is None:  # a SyncState pickled before light deltas
            light_at = state.light_at = {}
        closes = delta.full and delta.last_offset == done and light_at.get(delta.source) == done
        if delta.last_offset <= done and not closes:
            state.duplicates_dropped += 1
            return "duplicate"
        shared = self.shared()
        parts = [(shared[name], part) for name, part in delta.models.items() if name in shared]
        for model, part in parts:  # a part some model refuses: the whole delta is refused
            check = getattr(model, "check_item_delta", None)
            if check is not None:
                check(part)
        try:
            for model, part in parts:
                model.apply_item_delta(part)
        finally:
            # Also when a model fails half way (the caller counts the delta as invalid): what
            # the models before it applied must not be applied again by a later re-read.
            state.applied[delta.source] = delta.last_offset
        if delta.full:
            light_at.pop(delta.source, None)
        else:
            light_at[delta.source] = delta.last_offset
        state.deltas_applied += 1
        return "applied"
