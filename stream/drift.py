"""Drift detection on the per-event accuracy streams, with River's detectors.

One detector per (model, metric): ``miss`` (1 - hit on every evaluated event) for every model
and ``abs_error`` (|rating - prediction|) for rating models. A detection is reported as a
:class:`~stream.events.DriftRecord`.

A detector is a statistical test: on a long stream it finds every significant change, and real
logs change all the time, a little, in both directions (ADWIN raised a detection every ~600
events on an e-commerce log with no injected drift). What is *reported* is therefore filtered:

- ``direction="worse"`` (the default) reports only changes for the worse (the miss rate or the
  error went up); an accuracy that improves is not an alarm. ``"both"`` reports either way.
- ``min_change`` reports only changes of at least that share of the level before: for ``miss``
  the hit rate (1 - miss) fell by at least ``min_change`` of what it was (0.08 -> 0.06 is 0.25),
  for ``abs_error`` the mean error rose by at least that share. 0 reports every detection.

With a filter on, a detection is a *candidate*. The level before the change is taken when the
detector fires (ADWIN drops the part of its window before its cut: the mean of that part; other
detectors: an exponential moving average of the stream, half-life 1,000 values). The values
that follow are the evidence, each user giving at most ``PER_USER`` (5) of them: the
candidate is reported once, with at least ``MIN_EVIDENCE`` (100) values (so from 20 users or
more), the change they show passes the filters at 99 % confidence (a Wilson bound of the hit
rate for ``miss``, a normal bound of the mean for ``abs_error``); it is dropped if that has not
happened within ``MAX_EVIDENCE`` (1,000) values, and a newer detection replaces it. Hits are
not independent: one user's session of a hundred misses in a row is no change of tastes, and
every false alarm left on MovieLens-100K without the per-user cap was one, two or three users'
sessions. The report thus comes a little after
the detector fired (``detected_event`` says when), and it carries both levels (``before``,
``after``): an operator reads "the miss rate rose from 0.58 to 0.95", not only "drift". With
``direction="both"`` and ``min_change=0`` every detection is reported at once, as it fires.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from river import drift

from stream.events import DriftRecord, Source

__all__ = ["DETECTORS", "DIRECTIONS", "DriftMonitor", "drift_counts", "make_detector"]

DIRECTIONS = ("worse", "both")
_SLOW = 2.0 ** (-1.0 / 1_000)  # EWMA keep factor of the level before a change (non-ADWIN)
MIN_EVIDENCE = 100  # values after a detection before the level after it is judged
PER_USER = 5  # ... of which one user gives at most this many (when the caller names users)
MAX_EVIDENCE = 1_000  # values after which a candidate without evidence is dropped
Z = 2.326  # one-sided 99 %

DETECTORS: dict[str, Callable[[float, int], Any]] = {
    "adwin": lambda delta, seed: drift.ADWIN(delta=delta),
    "page_hinkley": lambda delta, seed: drift.PageHinkley(delta=delta),
    "kswin": lambda delta, seed: drift.KSWIN(alpha=delta, seed=seed),
}


def make_detector(name: str, delta: float, seed: int = 0) -> Any:
    """A fresh River drift detector by name (``adwin``, ``page_hinkley``, ``kswin``)."""
    try:
        return DETECTORS[name](delta, seed)
    except KeyError:
        raise ValueError(
            f"unknown drift detector {name!r}; choose from {sorted(DETECTORS)}"
        ) from None


def drift_counts(drifts: Iterable[DriftRecord]) -> str:
    """Detections per model and metric, most first, for one log line.

    >>> d = DriftRecord(detector="adwin", model="knn", metric="miss", event=9, timestamp=0.0)
    >>> drift_counts([d, d])
    'knn/miss 2'
    """
    counts = Counter(f"{d.model}/{d.metric}" for d in drifts)
    return ", ".join(f"{name} {n}" for name, n in counts.most_common())


class DriftMonitor:
    """Feeds per-event error streams to detectors and reports detections.

    ``min_events`` suppresses reports while a stream has seen fewer values (models start
    cold, so early accuracy always moves). ``direction`` and ``min_change`` filter what is
    reported (see the module's notes); ``suppressed`` counts the detections they held back.

    >>> monitor = DriftMonitor("adwin", delta=0.002, min_events=0)
    >>> found = []
    >>> for i in range(4000):
    ...     value = 0.1 if i < 2000 else 0.9
    ...     found += monitor.update_one("mf", "miss", value, i + 1, None, float(i))
    >>> len(found) >= 1 and 2000 < found[0].event < 2300
    True
    >>> round(found[0].before, 2), round(found[0].after, 2), found[0].direction
    (0.1, 0.9, 'worse')
    >>> found[0].detected_event < found[0].event
    True
    """

    def __init__(
        self,
        detector: str,
        delta: float,
        min_events: int = 0,
        seed: int = 0,
        direction: str = "worse",
        min_change: float = 0.0,
    ) -> None:
        make_detector(detector, delta, seed)  # fail fast on a bad name
        self.configure(direction, min_change)
        self.detector = detector
        self.delta = delta
        self.min_events = min_events
        self.seed = seed
        self._detectors: dict[tuple[str, str], Any] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._levels: dict[tuple[str, str], float] = {}  # EWMA of the stream (non-ADWIN)
        # Candidates awaiting evidence: key -> [detected event, before, sum, count, sum of squares].
        self._pending: dict[tuple[str, str], list[float]] = {}
        # Values each user gave to a candidate's evidence (at most MAX_EVIDENCE users).
        self._pending_users: dict[tuple[str, str], dict[Hashable, int]] = {}
        self.detections: list[DriftRecord] = []
        self.suppressed = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Monitors pickled before the filters existed (older checkpoints) report as they did.
        self.__dict__.update(state)
        self.__dict__.setdefault("direction", "both")
        self.__dict__.setdefault("min_change", 0.0)
        self.__dict__.setdefault("_levels", {})
        self.__dict__.setdefault("_pending", {})
        self.__dict__.setdefault("_pending_users", {})
        self.__dict__.setdefault("suppressed", 0)

    def configure(self, direction: str, min_change: float) -> None:
        """Apply other filter settings to a restored monitor (the detectors' state stays)."""
        if direction not in DIRECTIONS:
            raise ValueError(f"drift direction must be one of {DIRECTIONS}, got {direction!r}")
        if not 0.0 <= min_change < 1.0:
            raise ValueError(f"drift min_change must be in [0, 1), got {min_change}")
        self.direction = direction
        self.min_change = min_change

    def models(self) -> set[str]:
        """The models that have a detector here."""
        return {model for model, _ in self._detectors}

    def drop_candidates(self, model: str) -> None:
        """Drop the model's detections still awaiting evidence (its detectors stay)."""
        for key in [k for k in self._pending if k[0] == model]:
            del self._pending[key]
            self._pending_users.pop(key, None)

    def forget_models(self, names: set[str]) -> None:
        """Drop the detectors of these models (removed, or measured afresh from now on)."""
        for key in [k for k in self._detectors if k[0] in names]:
            del self._detectors[key]
            self._seen.pop(key, None)
            self._levels.pop(key, None)  # a candidate of the old model is no evidence
            self._pending.pop(key, None)
            self._pending_users.pop(key, None)

    def update_one(
        self,
        model: str,
        metric: str,
        value: float,
        event_index: int,
        source: Source | None,
        timestamp: float,
        user: Hashable | None = None,
    ) -> list[DriftRecord]:
        """Feed one value; returns the detections it reported (zero or one). ``user``, whose
        event the value measures, lets the evidence after a detection span enough users."""
        key = (model, metric)
        detector = self._detectors.get(key)
        if detector is None:
            detector = self._detectors[key] = make_detector(self.detector, self.delta, self.seed)
        adwin = isinstance(detector, drift.ADWIN)
        if adwin:
            width, mean = detector.width, detector.estimation
        else:
            level = self._levels.get(key, value)
            mean = self._levels[key] = _SLOW * level + (1.0 - _SLOW) * value
        detector.update(value)
        seen = self._seen[key] = self._seen.get(key, 0) + 1
        if not detector.drift_detected or seen < self.min_events:
            pending = self._pending.get(key)
            if pending is None:
                return []
            return self._confirm(key, pending, value, event_index, source, timestamp, user)
        if adwin:
            # The window before this value plus it, minus what ADWIN kept = the part it cut.
            kept = detector.width
            cut = width + 1 - kept
            before = (mean * width + value - detector.estimation * kept) / cut if cut > 0 else mean
            after = detector.estimation
        else:
            before, after = level, value
        if self.direction == "both" and not self.min_change:
            return [
                self._record(
                    model, metric, event_index, event_index, before, after, source, timestamp
                )
            ]
        # A change for the better is no candidate when only worse ones are reported (and it
        # leaves a candidate still waiting alone); a newer candidate replaces a waiting one.
        if self.direction == "worse" and adwin and after <= before:
            self.suppressed += 1
            pending = self._pending.get(key)
            if pending is None:
                return []
            return self._confirm(key, pending, value, event_index, source, timestamp, user)
        self._pending[key] = [float(event_index), before, 0.0, 0.0, 0.0, 0.0]
        self._pending_users[key] = {}
        return []

    def _confirm(
        self,
        key: tuple[str, str],
        pending: list[float],
        value: float,
        event_index: int,
        source: Source | None,
        timestamp: float,
        user: Hashable | None,
    ) -> list[DriftRecord]:
        # pending: [detected event, level before, sum, count, sum of squares, values seen]
        pending[5] += 1
        if pending[5] > MAX_EVIDENCE:
            self._drop(key)
            return []
        if user is not None:  # each user's first PER_USER values count, no more
            counts = self._pending_users.setdefault(key, {})
            taken = counts.get(user, 0)
            if taken >= PER_USER:
                return []
            counts[user] = taken + 1
        pending[2] += value
        pending[3] += 1
        pending[4] += value * value
        n = pending[3]
        if n < MIN_EVIDENCE:
            return []
        before, after = pending[1], pending[2] / n
        if not self._significant(key[1], before, after, pending[4] / n - after * after, n):
            return []
        del self._pending[key]
        self._pending_users.pop(key, None)
        detected = int(pending[0])
        return [self._record(*key, event_index, detected, before, after, source, timestamp)]

    def _drop(self, key: tuple[str, str]) -> None:
        del self._pending[key]
        self._pending_users.pop(key, None)
        self.suppressed += 1

    def _significant(self, metric: str, before: float, after: float, var: float, n: float) -> bool:
        """Whether the values since the detection show, at 99 % confidence, a change that
        passes the filters. ``miss``: the Wilson bound of the hit rate after, against the hit
        rate before; ``abs_error``: a normal bound of the mean error after."""
        if metric == "miss":
            old, hit = 1.0 - before, 1.0 - after
            z2 = Z * Z
            centre = (hit + z2 / (2 * n)) / (1 + z2 / n)
            half = Z * math.sqrt(hit * (1 - hit) / n + z2 / (4 * n * n)) / (1 + z2 / n)
            low, high = centre - half, centre + half  # of the hit rate after
            worse = high < old * (1.0 - self.min_change)
            better = low > old * (1.0 + self.min_change)
        else:
            half = Z * math.sqrt(max(var, 0.0) / n)
            worse = after - half > before * (1.0 + self.min_change)
            better = after + half < before * (1.0 - self.min_change)
        return worse or (self.direction == "both" and better)

    def _record(
        self,
        model: str,
        metric: str,
        event_index: int,
        detected_event: int,
        before: float,
        after: float,
        source: Source | None,
        timestamp: float,
    ) -> DriftRecord:
        record = DriftRecord(
            detector=self.detector,
            model=model,
            metric=metric,
            event=event_index,
            source_topic=source.topic if source else None,
            source_partition=source.partition if source else None,
            source_offset=source.offset if source else None,
            timestamp=timestamp,
            before=before,
            after=after,
            direction="worse" if after > before else "better",
            detected_event=detected_event,
        )
        self.detections.append(record)
        return record
