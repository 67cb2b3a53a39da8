"""Records on the wire: events in; recommendations, metrics and dead letters out.

Decoding never raises on bad data: :func:`decode_one` returns either an :class:`Event` or a
:class:`Rejected` carrying the reason, so bad records are routed to the dead-letter topic
instead of crashing the worker or vanishing.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "CONTROL_TYPES",
    "IMPLICIT_TYPES",
    "DeadLetter",
    "DriftRecord",
    "Event",
    "EventType",
    "MetricsRecord",
    "ModelMetrics",
    "PromotionRecord",
    "ReactionRecord",
    "Recommendation",
    "RecommendedItem",
    "Rejected",
    "Source",
    "decode_one",
    "json_schemas",
    "parse_timestamp",
    "strict_json",
]

EventType = Literal["view", "click", "add_to_cart", "purchase", "rating", "forget"]
IMPLICIT_TYPES: frozenset[str] = frozenset({"view", "click", "add_to_cart", "purchase"})
# ``forget`` is a privacy request: remove the user from every model, history and checkpoint.
CONTROL_TYPES: frozenset[str] = frozenset({"forget"})

# Ids are strings on the wire; integers are accepted and normalised so that "42" and 42 are
# the same user. Anything longer is an attack or a bug, not an id.
MAX_ID_LENGTH = 256
# Epoch seconds between 1970 and 2200: anything else is a unit mistake (ms, us) or garbage.
MAX_TIMESTAMP = 7_258_118_400.0
MAX_CONTEXT_BYTES = 8_192


def _number_or_datetime(schema: dict[str, Any]) -> None:
    schema.pop("type", None)
    schema["anyOf"] = [{"type": "number"}, {"type": "string", "format": "date-time"}]


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from: ``topic[partition]@offset`` (offline files use line numbers)."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def parse_timestamp(value: Any) -> float:
    """Epoch seconds from a number, a numeric string or an ISO-8601 string (UTC if naive).

    Raises ``ValueError`` (saying why) for anything else. The result may be non-finite (an
    integer beyond float range gives ``inf``): callers decide what range they accept.

    >>> parse_timestamp("2024-01-01T00:00:00Z"), parse_timestamp("86400"), parse_timestamp(1.5)
    (1704067200.0, 86400.0, 1.5)
    """
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer beyond float range: not a ValueError
            return math.inf
    if not isinstance(value, str):
        raise ValueError(f"not a time: {type(value).__name__}")
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not epoch seconds or ISO-8601: {text[:60]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class Event(BaseModel):
    """One user-behaviour event. Kafka key = ``user_id``.

    >>> Event.model_validate({"user_id": 7, "item_id": "a", "event_type": "click",
    ...                       "timestamp": "2024-01-01T00:00:00Z"}).timestamp
    1704067200.0
    """

    model_config = ConfigDict(frozen=True, extra="ignore", strict=False)

    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    item_id: str | None = Field(
        None, min_length=1, max_length=MAX_ID_LENGTH, description="Required except for forget."
    )
    event_type: EventType
    rating: float | None = Field(None, description="Required for rating events.")
    timestamp: float = Field(
        json_schema_extra=lambda schema: _number_or_datetime(schema),
        description="Epoch seconds or an ISO-8601 string (UTC if no offset).",
    )
    context: dict[str, Any] | None = None

    @field_validator("user_id", "item_id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        if value is None:  # null: the field's own check decides (item_id may be null on forget)
            return None
        if isinstance(value, bool):
            raise ValueError("must be a string or an integer, not a boolean")
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str):
            value = value.strip()
            if any(ord(c) < 32 for c in value):
                raise ValueError("contains control characters")
            return value
        raise ValueError("must be a string or an integer")

    @field_validator("rating", mode="before")
    @classmethod
    def _rating(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range: not a ValueError
            raise ValueError("must be finite") from None
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> Any:
        try:
            ts = parse_timestamp(value)
        except ValueError:
            raise ValueError("must be epoch seconds or ISO-8601") from None
        if not math.isfinite(ts) or not 0.0 <= ts <= MAX_TIMESTAMP:
            raise ValueError("out of range (epoch seconds between 1970 and 2200)")
        return ts

    @field_validator("context", mode="before")
    @classmethod
    def _context(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError("must be an object")
        if len(json.dumps(value, allow_nan=False)) > MAX_CONTEXT_BYTES:
            raise ValueError(f"larger than {MAX_CONTEXT_BYTES} bytes")
        # A lone surrogate (``"\\ud800"``) parses but cannot be encoded back: UnicodeEncodeError
        # is a ValueError, so it becomes a validation error here, not a crash downstream.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value

    @model_validator(mode="after")
    def _item_unless_forget(self) -> Event:
        if self.item_id is None and self.event_type != "forget":
            raise ValueError("item_id is required")
        return self

    @property
    def implicit(self) -> bool:
        return self.event_type in IMPLICIT_TYPES

    @property
    def item(self) -> str:
        """The item id of a learnable (non-control) event."""
        if self.item_id is None:
            raise ValueError(f"{self.event_type} events have no item")
        return self.item_id


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record that cannot be learned from, with the reason (a short stable code + detail)."""

    reason: str
    detail: str
    key: bytes | None
    value: bytes | None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


strict_json = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
"""The JSON decoder of every input: refuses NaN/Infinity literals and duplicated keys (both
raise ``ValueError``). One shared instance: ``json.loads`` with hooks builds one per call."""


def decode_one(
    key: bytes | None,
    value: bytes | None,
    *,
    max_bytes: int = 65_536,
    rating_range: tuple[float, float] = (0.5, 5.0),
) -> Event | Rejected:
    """Decode and validate one raw record; never raises on bad data.

    Reasons: ``empty``, ``oversized``, ``not_utf8``, ``invalid_json``, ``not_an_object``,
    ``missing_field``, ``invalid_field``, ``unknown_event_type``, ``rating_out_of_range``,
    ``rating_missing``.

    >>> decode_one(b"u1", b'{"user_id": "u1", "item_id": "i9", "event_type": "view", '
    ...                   b'"timestamp": 1}')
    Event(user_id='u1', item_id='i9', event_type='view', rating=None, timestamp=1.0, context=None)
    >>> decode_one(None, b"{oops").reason
    'invalid_json'
    """

    def reject(reason: str, detail: str) -> Rejected:
        return Rejected(reason, detail, key, value)

    if not value:
        return reject("empty", "record has no value")
    if len(value) > max_bytes:
        return reject("oversized", f"{len(value)} bytes > max_event_bytes={max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return reject("not_utf8", str(exc))
    try:
        data = strict_json.decode(text)
    except RecursionError:
        return reject("invalid_json", "nested too deeply")
    except ValueError as exc:
        return reject("invalid_json", str(exc)[:200])
    if not isinstance(data, dict):
        return reject("not_an_object", f"JSON {type(data).__name__}, expected an object")
    try:
        event = Event.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "record"
        if err["type"] == "missing":
            return reject("missing_field", f"{field} is required")
        if field == "event_type" and err["type"] == "literal_error":
            # repr() only of a string: a deeply nested value could raise RecursionError here.
            shown = data.get("event_type")
            shown = repr(shown[:300]) if isinstance(shown, str) else type(shown).__name__
            return reject("unknown_event_type", f"event_type {shown}"[:300])
        if err["type"] == "value_error" and "item_id is required" in err["msg"]:
            return reject("missing_field", "item_id is required")
        return reject("invalid_field", f"{field}: {err['msg']}"[:300])
    except RecursionError:
        return reject("invalid_field", "context nested too deeply")
    if event.event_type == "rating":
        if event.rating is None:
            return reject("rating_missing", "rating events need a rating")
        low, high = rating_range
        if not low <= event.rating <= high:
            return reject("rating_out_of_range", f"rating {event.rating} outside [{low}, {high}]")
    return event


# --- Output records ----------------------------------------------------------------------


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    reason: str | None = None


class Recommendation(BaseModel):
    """Fresh top-K for a user, published after learning from one of their events. Key = user id."""

    user_id: str
    items: list[RecommendedItem]
    model: str
    model_version: int = Field(
        1,
        description="Version of what is served: 1 at start, +1 at each promotion and each time "
        "the served model (or a blend component) swaps in a rebuilt version.",
    )
    source_topic: str
    source_partition: int
    source_offset: int
    event_timestamp: float
    created_at: float = Field(default_factory=time.time)


class ModelMetrics(BaseModel):
    """Accuracy of one model; rating metrics are ``None`` where the model has no rating scale."""

    hit_rate: float | None = None
    ndcg: float | None = None
    mrr: float | None = None
    mae: float | None = None
    rmse: float | None = None
    evaluated: int = 0
    rated: int = 0
    coverage: float | None = Field(
        None, description="Share of known items the model put in an evaluated top-K (cumulative)."
    )


class DriftRecord(BaseModel):
    detector: str
    model: str
    metric: str
    event: int = Field(description="Index of the event in this worker's stream (1-based).")
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    timestamp: float = Field(description="Event time of the event where drift was detected.")
    detected_at: float = Field(default_factory=time.time)
    before: float | None = Field(
        None, description="Mean of the metric (miss rate or abs error) before the change."
    )
    after: float | None = Field(None, description="Mean of the metric after the change.")
    direction: Literal["worse", "better"] | None = Field(
        None, description="worse: the miss rate or error went up."
    )
    detected_event: int | None = Field(
        None, description="Event where the detector fired (the report waits for evidence)."
    )


class PromotionRecord(BaseModel):
    """The served recommender changed: ``to_model`` beat ``from_model`` on the windowed metric."""

    from_model: str
    to_model: str
    event: int = Field(description="Index of the event in this shard's stream (1-based).")
    evaluated: int = Field(description="Evaluated events of the shard at the promotion.")
    metric: str = Field(description="Windowed metric compared: hr, ndcg or mrr (at K).")
    from_value: float
    to_value: float
    lead_events: int = Field(description="Evaluated events the challenger led by the margin.")
    model_version: int = Field(description="The served model_version from this event on.")
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    timestamp: float = Field(description="Event time of the event of the promotion.")
    created_at: float = Field(default_factory=time.time)


class ReactionRecord(BaseModel):
    """The served model's drift detection was confirmed by a drop in its hit rate: reacted."""

    model: str = Field(description="The served model whose detector fired.")
    event: int = Field(description="Index of the event in this shard's stream (1-based).")
    detected_at_event: int = Field(description="Event of the detection that armed the reaction.")
    before: float = Field(description="Served windowed HR@K one window before the detection.")
    recent: float = Field(description="Served HR@K over the recent evaluations (the evidence).")
    actions: list[str] = Field(description="What was done (blend re-weighted, decays, ...).")
    source_partition: int | None = None
    timestamp: float = Field(description="Event time of the event of the reaction.")
    created_at: float = Field(default_factory=time.time)


class MetricsRecord(BaseModel):
    """Published to the metrics topic every ``metrics_every_events`` events and at shutdown."""

    kind: Literal["metrics"] = "metrics"
    k: int
    events: int
    evaluated: int
    window: int
    window_metrics: dict[str, ModelMetrics]
    cumulative_metrics: dict[str, ModelMetrics]
    drifts: list[DriftRecord] = Field(default_factory=list)
    users: int = 0
    items: int = 0
    promotions: list[PromotionRecord] = Field(
        default_factory=list, description="Promotions since the previous metrics record."
    )
    reactions: list[ReactionRecord] = Field(
        default_factory=list, description="Drift reactions since the previous metrics record."
    )
    served: dict[str, int] = Field(
        default_factory=dict, description="Served model -> shards (partitions) serving it."
    )
    users_expired_ttl: int = Field(
        0, description="Users expired so far by STREAM_USER_TTL_SECONDS (cumulative)."
    )
    users_expired_cap: int = Field(
        0, description="Users expired so far by STREAM_MAX_USERS (cumulative)."
    )
    items_evicted: int = Field(0, description="Items evicted so far by STREAM_MAX_ITEMS.")
    created_at: float = Field(default_factory=time.time)
    worker_id: str | None = Field(
        None, description="The worker that published it (client id, host, pid); None offline."
    )
    partitions: dict[str, list[int]] = Field(
        default_factory=dict,
        description="Topic -> the partitions (shards) the record covers, so records of several "
        "workers can be told apart and merged.",
    )


class DeadLetter(BaseModel):
    """A record the worker could not use, with the reason and the original bytes (base64)."""

    reason: str
    detail: str
    key_b64: str | None
    value_b64: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    created_at: float = Field(default_factory=time.time)

    @classmethod
    def of(cls, rejected: Rejected, source: Source) -> DeadLetter:
        def b64(raw: bytes | None) -> str | None:
            return None if raw is None else base64.b64encode(raw).decode("ascii")

        return cls(
            reason=rejected.reason,
            detail=rejected.detail,
            key_b64=b64(rejected.key),
            value_b64=b64(rejected.value),
            source_topic=source.topic,
            source_partition=source.partition,
            source_offset=source.offset,
        )


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of every record, generated from the pydantic models (see ``docs/schemas``)."""
    return {
        "event": Event.model_json_schema(),
        "recommendation": Recommendation.model_json_schema(),
        "metrics": MetricsRecord.model_json_schema(),
        "dead_letter": DeadLetter.model_json_schema(),
    }
