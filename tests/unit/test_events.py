from __future__ import annotations

import base64
import json

import pytest

from stream.events import DeadLetter, Event, Rejected, Source, decode_one, json_schemas


def raw(**fields: object) -> bytes:
    base: dict[str, object] = {
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "view",
        "timestamp": 1_700_000_000,
    }
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_valid_event_round_trip() -> None:
    event = decode_one(b"u1", raw(event_type="rating", rating=4.5, context={"page": "home"}))
    assert isinstance(event, Event)
    assert (event.user_id, event.item_id, event.rating) == ("u1", "i1", 4.5)
    assert event.context == {"page": "home"}
    assert not event.implicit


def test_integer_ids_are_normalised_to_strings() -> None:
    event = decode_one(None, raw(user_id=42, item_id=7))
    assert isinstance(event, Event)
    assert (event.user_id, event.item_id) == ("42", "7")


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        (1_700_000_000, 1_700_000_000.0),
        ("1700000000.5", 1_700_000_000.5),
        ("2024-01-01T00:00:00Z", 1_704_067_200.0),
        ("2024-01-01T01:00:00+01:00", 1_704_067_200.0),
        ("2024-01-01T00:00:00", 1_704_067_200.0),
    ],
)
def test_timestamps_epoch_or_iso(stamp: object, expected: float) -> None:
    event = decode_one(None, raw(timestamp=stamp))
    assert isinstance(event, Event)
    assert event.timestamp == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (b"\xff\xfe", "not_utf8"),
        (b"{not json", "invalid_json"),
        (b'{"a": NaN}', "invalid_json"),
        (b'{"user_id": "a", "user_id": "b"}', "invalid_json"),
        (b"[" * 5_000 + b"]" * 5_000, "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (raw(user_id=...), "missing_field"),
        (raw(item_id=...), "missing_field"),
        (raw(timestamp=...), "missing_field"),
        (raw(event_type="like"), "unknown_event_type"),
        (raw(event_type="rating"), "rating_missing"),
        (raw(event_type="rating", rating=11), "rating_out_of_range"),
        (raw(event_type="rating", rating="5"), "invalid_field"),
        (raw(event_type="rating", rating=True), "invalid_field"),
        (raw(user_id=True), "invalid_field"),
        (raw(user_id=""), "invalid_field"),
        (raw(user_id="x" * 1000), "invalid_field"),
        (raw(user_id={"a": 1}), "invalid_field"),
        (raw(user_id="a\nb"), "invalid_field"),
        (raw(timestamp=-5), "invalid_field"),
        (raw(timestamp=1e300), "invalid_field"),
        (raw(timestamp="yesterday"), "invalid_field"),
        (raw(timestamp=1_700_000_000_000), "invalid_field"),  # milliseconds, not seconds
        (raw(context=[1]), "invalid_field"),
        (raw(context={"x": "y" * 10_000}), "invalid_field"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(value: bytes, reason: str) -> None:
    result = decode_one(b"k", value)
    assert isinstance(result, Rejected), result
    assert result.reason == reason
    assert result.value == value and result.key == b"k"
    assert result.detail


def test_oversized_payload_is_rejected_before_parsing() -> None:
    value = raw(context={"pad": "x" * 2000})
    result = decode_one(None, value, max_bytes=1000)
    assert isinstance(result, Rejected) and result.reason == "oversized"


def test_configurable_rating_range() -> None:
    assert isinstance(
        decode_one(None, raw(event_type="rating", rating=9), rating_range=(1, 10)), Event
    )
    result = decode_one(None, raw(event_type="rating", rating=0.5), rating_range=(1, 10))
    assert isinstance(result, Rejected) and result.reason == "rating_out_of_range"


def test_forget_needs_no_item() -> None:
    event = decode_one(
        None, json.dumps({"user_id": "u", "event_type": "forget", "timestamp": 1}).encode()
    )
    assert isinstance(event, Event) and event.item_id is None
    with pytest.raises(ValueError):
        _ = event.item


def test_dead_letter_keeps_original_bytes() -> None:
    rejected = Rejected("invalid_json", "boom", b"\x00key", b"\xffvalue")
    letter = DeadLetter.of(rejected, Source("events", 3, 17))
    assert base64.b64decode(letter.value_b64 or "") == b"\xffvalue"
    assert base64.b64decode(letter.key_b64 or "") == b"\x00key"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("events", 3, 17)
    assert str(Source("events", 3, 17)) == "events[3]@17"


def test_json_schemas_cover_every_record() -> None:
    schemas = json_schemas()
    assert set(schemas) == {"event", "recommendation", "metrics", "dead_letter"}
    assert set(schemas["event"]["required"]) == {"user_id", "event_type", "timestamp"}
    assert "date-time" in json.dumps(schemas["event"]["properties"]["timestamp"])
