"""The evidence the promotion policy and the drift reaction decide on, shared across shards.

With the model sync on, each shard evaluates only its own users' events: 1/P of the
evaluations. Decided on them alone, a champion / challenger lead or a drift (a detector's
test, the hit rate over the last 300 evaluations) takes P times as many events to show, and
at P = 8 neither fired in time on a churning catalogue. :class:`SharedEvidence` is what a
shard decides on instead: every shard's evaluations. A shard's own outcomes enter it at once;
each delta it shares carries them (per evaluated event, the rank of the event's item in each
evaluated model's top-K and a 16-bit tag of the user), and every other shard replays them one
by one through the same windows and detectors as a one-partition run, deciding after the
part's last evaluation, after each detection and every 100th evaluation (where the reaction
samples its level): a decision comes at most one delta's evaluations after one partition's,
and with a delta after every event every shard decides what one partition decides, at the
same evaluation up to its first promotion (tested; after one, within a few dozen
evaluations: only the served model's ``miss`` detector is fed here, see :meth:`watch`).
Each shard then acts on its own copy of the shared item state (a
reaction's discount and shorter half-lives), which it holds in full, as one partition would.

The shard's own :class:`~stream.evaluation.ModelEvaluator` and drift detectors still measure
its own evaluations: they drive its metrics and drift records, as before.
"""

from __future__ import annotations

import copy
import logging
import math
import zlib
from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from stream.drift import DriftMonitor
from stream.evaluation import ModelEvaluator, RankOutcome
from stream.events import DriftRecord

__all__ = ["MISS", "SharedEvidence", "rank_code", "signature_of", "user_tag"]

logger = logging.getLogger(__name__)

MISS = 0  # rank code of an item outside the top-K; 1..K: its position + 1


def rank_code(outcome: RankOutcome) -> int:
    """An outcome as the position of the item in the top-K (1-based), 0 for a miss.

    >>> from stream.evaluation import rank_outcome
    >>> rank_code(rank_outcome(["a", "b", "c"], "c")), rank_code(rank_outcome(["a"], "z"))
    (3, 0)
    """
    return round(1.0 / outcome.mrr) if outcome.hit else MISS


def _outcome(code: int) -> RankOutcome:
    """:func:`rank_code` back: the same floats :func:`~stream.evaluation.rank_outcome` gives."""
    if code == MISS:
        return RankOutcome(0.0, 0.0, 0.0)
    return RankOutcome(1.0, 1.0 / math.log2(code + 1), 1.0 / code)


# The outcomes of the codes a one-byte column holds (replayed for every other shard's
# evaluation and model: built once).
_OUTCOMES = [_outcome(code) for code in range(256)]


def user_tag(user: Hashable) -> int:
    """16 bits of a stable hash of the user id: enough for the drift monitor's per-user cap
    on the evidence after a detection (a few collisions among thousands of users change
    nothing), and no user id on the model-updates topic."""
    return zlib.crc32(str(user).encode("utf-8")) & 0xFFFF


class SharedEvidence:
    """Every shard's evaluations, as one partition's evaluators and detectors would hold them.

    ``evaluators`` (one per model, the windows the policy and the reaction read),
    ``evaluated`` (evaluated events of all shards known here) and ``drift`` (the ``miss``
    detectors) are fed with this shard's outcomes (:meth:`own_one`) and with every other
    shard's (:meth:`replay`). Plain data: the shard's checkpoint carries it.

    Examples
    --------
    >>> from stream.evaluation import rank_outcome
    >>> here, there = ModelEvaluator(window=10), ModelEvaluator(window=10)
    >>> a = SharedEvidence({"m": here}, 0, DriftMonitor("adwin", 0.002))
    >>> b = SharedEvidence({"m": there}, 0, DriftMonitor("adwin", 0.002))
    >>> here.update_rank(rank_outcome(["x", "y"], "y"))
    >>> _ = a.own_one({"m": here}, "ann")
    >>> _ = list(b.replay(a.item_delta()))
    >>> b.evaluated, b.evaluators["m"].windowed_rank()[2]
    (1, 0.5)
    """

    # Class-level defaults: what a checkpoint of an earlier version of this class reads.
    event = 0
    signature: tuple[Any, ...] = ()
    # The model whose ``miss`` detector is fed (the served one: only its detections decide
    # anything); None: every model's (evidence pickled before :meth:`watch` existed).
    watched: str | None = None

    def __init__(
        self, own: Mapping[str, ModelEvaluator], evaluated: int, drift: DriftMonitor
    ) -> None:
        # Start from the shard's own windows (a shard that turns the sharing on mid-run keeps
        # deciding on what it measured), without the catalogue coverage (not evidence).
        self.evaluators = {
            name: copy.deepcopy(ev, {id(ev.served): set()}) for name, ev in own.items()
        }
        self.evaluated = evaluated
        self.drift = drift
        self._seen = {name: ev.evaluated for name, ev in own.items()}
        # This shard's evaluations since its last delta: codes per model of ``_names``
        # (``_absent``: not evaluated on that event, a challenger outside the sample).
        self._names: list[str] = list(own)
        self._rows: list[list[int]] = []
        self._users: list[int] = []
        self.replayed = 0  # other shards' evaluations replayed here
        # The shard's own last event index (its pipeline's): where a detection is reported,
        # also one made while replaying the others' evaluations that came after it.
        self.event = 0
        # What the windows and detectors were built with (:func:`signature_of`).
        self.signature = ()

    @classmethod
    def for_pipeline(cls, pipeline: Any) -> SharedEvidence:
        """Evidence for ``pipeline`` (a :class:`~stream.core.Pipeline`): its evaluators and
        evaluated count so far, and detectors configured as its own (fresh)."""
        own: DriftMonitor = pipeline.drift
        monitor = DriftMonitor(
            own.detector,
            own.delta,
            own.min_events,
            own.seed,
            direction=own.direction,
            min_change=own.min_change,
        )
        evidence = cls(pipeline.evaluators, pipeline.evaluated_count, monitor)
        evidence.signature = signature_of(pipeline)
        return evidence

    def _feed(self, name: str, outcome: RankOutcome, user: int, drifts: list[DriftRecord]) -> None:
        evaluator = self.evaluators.get(name)
        if evaluator is None:  # a model configured after this evidence started
            evaluator = self.evaluators[name] = ModelEvaluator(self._window())
        evaluator.update_window(outcome)
        watched = self.watched
        if watched is not None and name != watched:
            return
        found = self.drift.update_one(name, "miss", 1.0 - outcome.hit, self.event, None, 0.0, user)
        if found:
            drifts += found
            self.drift.detections.clear()  # read here, never published: no list to grow

    def watch(self, served: str) -> None:
        """Feed only ``served``'s ``miss`` detector from now on. Only a detection on the
        served model's misses arms the drift reaction, and these detections are never
        published (the shard's own monitor reports its own evaluations'), so the others'
        detectors here would be work for nothing: P shards' evaluations times every model,
        the largest part of the sharing's cost (measured: ~4 of the ~10 CPU seconds the sync
        added to a worker's main thread). A model that becomes served (a promotion, a
        restore) gets a fresh detector fed with its window's outcomes, oldest first (its last
        ``STREAM_METRIC_WINDOW`` evaluations; what the reaction compares with is in it)."""
        if served == self.watched:
            return
        drift = self.drift
        if self.watched is None:
            # Evidence of a version that fed every detector: the served one's has seen it all.
            drift.forget_models(drift.models() - {served})
            self.watched = served
            return
        # Every other detector goes (one stops being fed here; a model served again later
        # starts from its window again).
        drift.forget_models(drift.models() | {served})
        self.watched = served
        evaluator = self.evaluators.get(served)
        if evaluator is None:
            return
        for hit in evaluator.window_hits():
            drift.update_one(served, "miss", 1.0 - hit, self.event, None, 0.0, None)
        # What the window detected is history, not a change to react to now: neither a
        # detection nor a candidate awaiting evidence carries over (the window's values hold
        # no users for the per-user cap).
        drift.detections.clear()
        drift.drop_candidates(served)

    def cover(self, names: Iterable[str]) -> None:
        """An evaluator for each of ``names`` (a model added at a restore is measured from
        now on; the policy reads every model's)."""
        evaluators = self.evaluators
        for name in names:
            if name not in evaluators:
                evaluators[name] = ModelEvaluator(self._window())

    def _window(self) -> int:
        return next(iter(self.evaluators.values())).window if self.evaluators else 1_000

    def own_one(self, own: Mapping[str, ModelEvaluator], user: Hashable) -> list[DriftRecord]:
        """After one evaluated event of this shard: add the outcome of every model evaluated
        on it (its evaluator counted one more) and keep it for the next delta; returns the
        ``miss`` detections it made."""
        if list(own) != self._names:  # the models changed (a restore): start the rows anew
            self._names, self._rows, self._users = list(own), [], []
        tag = user_tag(user)
        self.evaluated += 1
        drifts: list[DriftRecord] = []
        row: list[int] = []
        seen = self._seen
        for name, evaluator in own.items():
            outcome = evaluator.last_outcome() if evaluator.evaluated != seen.get(name) else None
            seen[name] = evaluator.evaluated
            if outcome is None:
                row.append(-1)
                continue
            row.append(rank_code(outcome))
            self._feed(name, outcome, tag, drifts)
        self._rows.append(row)
        self._users.append(tag)
        return drifts

    # --- the sync's side (stream.sync.evidence) --------------------------------------------

    def item_delta(self) -> dict[str, Any]:
        """This shard's evaluations since the last call, for the other shards: ``names``,
        ``codes`` (one row per evaluated event, one column per model: the rank code, the
        dtype's largest value where the model was not evaluated) and ``users`` (tags)."""
        rows, users = self._rows, self._users
        self._rows, self._users = [], []
        codes = np.asarray(rows, dtype=np.int64).reshape(len(rows), len(self._names))
        top = int(codes.max()) if codes.size else 0
        dtype = np.uint8 if top < 255 else np.uint16 if top < 65_535 else np.uint32
        absent = np.iinfo(dtype).max
        codes = np.where(codes < 0, absent, codes).astype(dtype)
        return {"names": list(self._names), "codes": codes, "users": np.asarray(users, np.uint16)}

    def replay(self, delta: Mapping[str, Any]) -> Iterator[tuple[list[DriftRecord], bool]]:
        """Another shard's :meth:`item_delta`, one evaluation at a time: each step adds that
        event's outcomes and yields the ``miss`` detections they made and whether it was the
        part's last evaluation (the caller decides after it). The whole part is checked
        before anything is added: a malformed one raises ValueError."""
        names, codes, users = _checked(delta)
        absent = np.iinfo(codes.dtype).max
        return self._replay(names, codes.tolist(), users.tolist(), int(absent))

    def _replay(
        self, names: list[str], codes: list[list[int]], users: list[int], absent: int
    ) -> Iterator[tuple[list[DriftRecord], bool]]:
        table, feed = _OUTCOMES, self._feed
        last = len(users) - 1
        for n, (row, tag) in enumerate(zip(codes, users, strict=True)):
            self.evaluated += 1
            self.replayed += 1
            drifts: list[DriftRecord] = []
            for name, code in zip(names, row, strict=True):
                if code != absent:
                    feed(name, table[code] if code < 256 else _outcome(code), tag, drifts)
            yield drifts, n == last


def signature_of(pipeline: Any) -> tuple[Any, ...]:
    """The settings the evidence of ``pipeline`` is measured with: K (what a rank code means),
    the window, the detectors. Restored under others, the evidence starts again from the
    pipeline's own (as its own evaluators and detectors do)."""
    config, drift = pipeline.config, pipeline.drift
    return (
        config.top_k,
        config.metric_window,
        drift.detector,
        drift.delta,
        drift.min_events,
        drift.direction,
        drift.min_change,
    )


def _checked(delta: Mapping[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The parts of an evidence delta, or ValueError (a foreign or corrupt writer)."""
    try:
        names, codes, users = delta["names"], np.asarray(delta["codes"]), np.asarray(delta["users"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"evidence delta without {exc}") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("evidence delta: names must be a list of strings")
    if codes.size == 0 and users.size == 0:
        return names, np.zeros((0, len(names)), np.uint8), np.zeros(0, np.uint16)
    if codes.dtype.kind != "u" or users.dtype.kind != "u":
        raise ValueError(f"evidence delta of {codes.dtype} codes and {users.dtype} users")
    if codes.ndim != 2 or codes.shape != (users.shape[0], len(names)) or users.ndim != 1:
        raise ValueError(
            f"evidence delta of {codes.shape} codes, {users.shape} users, {len(names)} models"
        )
    return names, codes, users
