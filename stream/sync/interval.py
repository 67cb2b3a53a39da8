"""How often a shard shares its light deltas: a fixed interval, or one derived from the shards.

A shard misses at most one interval of each of the other ``P - 1`` shards' learning, so the
staleness of what it ranks with grows with ``(P - 1) x interval``. ``STREAM_MODEL_SYNC_EVENTS=
auto`` keeps that product near a budget (``STREAM_MODEL_SYNC_STALENESS`` events) instead of
letting it grow with the number of shards: ``ceil(budget / (P - 1))`` events per light delta.
The full-delta period stays counted in deltas (``STREAM_MODEL_SYNC_FULL_EVERY``), so it
shrinks with the light interval and the factor vectors' staleness keeps its own bound,
``budget x full_every`` (README, "Sizing the sync interval").
"""

from __future__ import annotations

import math

from stream.settings import StreamSettings

__all__ = ["auto_interval", "light_interval", "sync_enabled"]


def auto_interval(staleness: int, partitions: int) -> int:
    """Events a shard learns between two light deltas so that it misses about ``staleness``
    events of the other ``partitions - 1`` shards' learning: ``ceil(staleness / (P - 1))``.

    With one partition nobody misses anything; the interval is then ``staleness`` (what it
    would be with two), which keeps a one-partition worker's topic current should partitions
    be added.

    Examples
    --------
    >>> [auto_interval(30, p) for p in (1, 2, 4, 8, 16, 64)]
    [30, 30, 10, 5, 2, 1]
    """
    if staleness < 1 or partitions < 1:
        raise ValueError(
            f"staleness and partitions must be at least 1, got {staleness} and {partitions}"
        )
    return math.ceil(staleness / max(1, partitions - 1))


def light_interval(settings: StreamSettings, partitions: int) -> int:
    """``STREAM_MODEL_SYNC_EVENTS`` for ``partitions`` shards: the integer as given (0: no
    sync), or :func:`auto_interval` of ``STREAM_MODEL_SYNC_STALENESS`` when it is ``auto``.

    Examples
    --------
    >>> s = StreamSettings(_env_file=None, model_sync_events="auto", model_sync_staleness=30)
    >>> light_interval(s, 4), light_interval(s, 8)
    (10, 5)
    >>> light_interval(s.model_copy(update={"model_sync_events": 25}), 8)
    25
    """
    every = settings.model_sync_events
    if every == "auto":
        return auto_interval(settings.model_sync_staleness, partitions)
    return every


def sync_enabled(settings: StreamSettings, partitions: int | None) -> bool:
    """Whether the worker's shards share item state, for an events topic of ``partitions``
    partitions (``None``: not known yet; the topic the worker would create has
    ``STREAM_EVENTS_PARTITIONS``).

    ``STREAM_MODEL_SYNC=true`` / ``false`` decide alone; ``auto`` (the default) turns the sync
    on when there is more than one partition, so a topic with many partitions is one model
    rather than one per partition. ``STREAM_MODEL_SYNC_EVENTS=0`` turns it off in any case.

    Examples
    --------
    >>> s = StreamSettings(_env_file=None)
    >>> s.model_sync, sync_enabled(s, 1), sync_enabled(s, 4)
    ('auto', False, True)
    >>> sync_enabled(s.model_copy(update={"model_sync": False}), 4)
    False
    >>> sync_enabled(s.model_copy(update={"model_sync": True}), 1)
    True
    >>> sync_enabled(s.model_copy(update={"model_sync_events": 0}), 4)
    False
    """
    if not settings.model_sync_events or settings.model_sync is False:
        return False
    if settings.model_sync is True:
        return True
    return (partitions or settings.events_partitions) > 1
