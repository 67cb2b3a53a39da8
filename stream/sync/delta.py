"""The delta record: what one shard changed in the item state over an interval.

A delta is plain data (item ids, floats, lists) encoded as zlib-compressed JSON, never a
pickle: a model-updates record from the broker is input, and decoding it must not run code.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = ["DELTA_VERSION", "DeltaError", "ShardDelta"]

logger = logging.getLogger(__name__)

DELTA_VERSION = 1


class DeltaError(ValueError):
    """A delta that cannot be decoded (corrupt, another version, missing fields)."""


@dataclass(frozen=True, slots=True)
class ShardDelta:
    """One shard's item-state changes over the source offsets ``first_offset..last_offset``.

    ``models`` maps a model name to that model's ``item_delta()``; ``events`` counts the
    events learned in the interval. ``(source_topic, source_partition, last_offset)``
    identifies the delta: a receiver that applied a delta of that source up to an offset
    drops any delta ending at or before it (a re-publication after a restart).

    >>> d = ShardDelta("events", 3, 10, 19, 10, {"popularity": {"ticks": 10, "counts": []}})
    >>> ShardDelta.decode(d.encode()) == d
    True
    """

    source_topic: str
    source_partition: int
    first_offset: int
    last_offset: int
    events: int
    models: dict[str, dict[str, Any]]
    created: float = 0.0  # the sender's wall clock when it collected the delta (sync lag)

    @property
    def source(self) -> tuple[str, int]:
        return self.source_topic, self.source_partition

    def encode(self) -> bytes:
        body = {
            "v": DELTA_VERSION,
            "topic": self.source_topic,
            "partition": self.source_partition,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
            "events": self.events,
            "models": self.models,
            "t": self.created,
        }
        text = json.dumps(body, separators=(",", ":"), allow_nan=False)
        return zlib.compress(text.encode("utf-8"), 6)

    @classmethod
    def decode(cls, data: bytes) -> ShardDelta:
        try:
            body = json.loads(zlib.decompress(data))
        except (zlib.error, ValueError) as exc:
            raise DeltaError(f"not a model-updates delta: {exc}") from exc
        if not isinstance(body, dict) or body.get("v") != DELTA_VERSION:
            version = body.get("v") if isinstance(body, dict) else None
            raise DeltaError(f"delta version {version!r}, expected {DELTA_VERSION}")
        try:
            delta = cls(
                str(body["topic"]),
                int(body["partition"]),
                int(body["first_offset"]),
                int(body["last_offset"]),
                int(body["events"]),
                dict(body["models"]),
                float(body.get("t", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DeltaError(f"delta without a valid {exc}") from exc
        return delta
