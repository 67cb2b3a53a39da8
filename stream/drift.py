"""Drift detection on the per-event accuracy streams, with River's detectors.

One detector per (model, metric): ``miss`` (1 - hit on every evaluated event) for every model
and ``abs_error`` (|rating - prediction|) for rating models. A detection is reported as a
:class:`~stream.events.DriftRecord`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from river import drift

from stream.events import DriftRecord, Source

__all__ = ["DETECTORS", "DriftMonitor", "drift_counts", "make_detector"]

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
    cold, so early accuracy always moves).

    >>> monitor = DriftMonitor("adwin", delta=0.002, min_events=0)
    >>> found = []
    >>> for i in range(4000):
    ...     value = 0.1 if i < 2000 else 0.9
    ...     found += monitor.update_one("mf", "miss", value, i + 1, None, float(i))
    >>> len(found) >= 1 and 2000 < found[0].event < 2300
    True
    """

    def __init__(self, detector: str, delta: float, min_events: int = 0, seed: int = 0) -> None:
        make_detector(detector, delta, seed)  # fail fast on a bad name
        self.detector = detector
        self.delta = delta
        self.min_events = min_events
        self.seed = seed
        self._detectors: dict[tuple[str, str], Any] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self.detections: list[DriftRecord] = []

    def forget_models(self, names: set[str]) -> None:
        """Drop the detectors of these models (removed, or measured afresh from now on)."""
        for key in [k for k in self._detectors if k[0] in names]:
            del self._detectors[key]
            self._seen.pop(key, None)

    def update_one(
        self,
        model: str,
        metric: str,
        value: float,
        event_index: int,
        source: Source | None,
        timestamp: float,
    ) -> list[DriftRecord]:
        """Feed one value; returns the detections it triggered (zero or one)."""
        key = (model, metric)
        detector = self._detectors.get(key)
        if detector is None:
            detector = self._detectors[key] = make_detector(self.detector, self.delta, self.seed)
        detector.update(value)
        seen = self._seen[key] = self._seen.get(key, 0) + 1
        if not detector.drift_detected or seen < self.min_events:
            return []
        record = DriftRecord(
            detector=self.detector,
            model=model,
            metric=metric,
            event=event_index,
            source_topic=source.topic if source else None,
            source_partition=source.partition if source else None,
            source_offset=source.offset if source else None,
            timestamp=timestamp,
        )
        self.detections.append(record)
        return [record]
