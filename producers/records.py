"""What the producers hand to a sink: key/value bytes with the event time and the source line.

Every producer (file replay, synthetic stream) turns its input into :class:`Record` objects;
lines it cannot use become :class:`RejectedLine` objects (errors as data, never exceptions),
so one bad line never stops a run and is never silently lost.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from stream.events import parse_timestamp

__all__ = ["Record", "RejectedLine", "encode_event", "parse_time"]


class Record(NamedTuple):
    """One event ready to send: Kafka key (user id, utf-8) and compact JSON value.

    ``line`` is the 1-based line of the source file (the event index for generated streams);
    ``timestamp`` is the event time in epoch seconds (``None`` only when unvalidated and unknown).

    >>> r = Record(3, 1.5, b"u1", encode_event({"user_id": "u1", "timestamp": 1.5}))
    >>> r.value
    b'{"user_id":"u1","timestamp":1.5}'
    """

    line: int
    timestamp: float | None
    key: bytes | None
    value: bytes


class RejectedLine(NamedTuple):
    """A line that was not sent, with a short stable reason code, a detail and the raw bytes."""

    line: int
    reason: str
    detail: str
    raw: bytes

    def to_json(self) -> dict[str, Any]:
        """The ``--rejects`` file entry (the raw line decoded with backslash escapes)."""
        return {
            "line": self.line,
            "reason": self.reason,
            "detail": self.detail,
            "raw": self.raw.decode("utf-8", "backslashreplace"),
        }


def encode_event(event: Mapping[str, Any]) -> bytes:
    """Compact JSON (no spaces, UTF-8, no NaN), the value format of the events topic."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def parse_time(value: Any) -> float:
    """Epoch seconds from a number, a numeric string or an ISO-8601 string (UTC if naive).

    Raises ``ValueError`` for anything else, including non-finite numbers.

    >>> parse_time("2024-01-01T00:00:00Z"), parse_time("86400"), parse_time(1.5)
    (1704067200.0, 86400.0, 1.5)
    """
    ts = parse_timestamp(value)
    if not math.isfinite(ts):
        raise ValueError(f"not a finite time: {value!r}")
    return ts
