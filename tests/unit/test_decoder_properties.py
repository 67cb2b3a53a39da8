"""Property-based tests of :func:`stream.events.decode_one` against hostile input.

Each family of malformed record (random bytes, truncated JSON, wrong types, huge strings and
numbers, NaN/Infinity, deep nesting, missing keys, duplicated keys, bad UTF-8, non-objects,
random mutations of valid records) has a Hypothesis strategy; together they run more than
10,000 generated examples. The decoder must never raise, must reject each with a known reason
and keep the original bytes, and must accept (and round-trip) every valid event.

The strategies are also used by ``tests/integration/test_hostile_input.py``, which sends
10,000 of them through a running worker.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.events import MAX_ID_LENGTH, MAX_TIMESTAMP, Event, Rejected, decode_one

__all__ = ["Hostile", "bounds", "hostile_records", "valid_event_fields"]

REASONS = frozenset(
    {
        "empty",
        "oversized",
        "not_utf8",
        "invalid_json",
        "not_an_object",
        "missing_field",
        "invalid_field",
        "unknown_event_type",
        "rating_out_of_range",
        "rating_missing",
    }
)
MAX_BYTES = 65_536
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
REQUIRED = ("user_id", "item_id", "event_type", "timestamp")
# A hostile record: (family, key, value, reasons the decoder may give for it).
Hostile = tuple[str, bytes | None, bytes | None, frozenset[str]]

# Upper bounds of the huge families, read at draw time: the integration test lowers them so that
# 10,000 records stay a few tens of MB on the broker.
bounds = {"string": 100_000, "depth": 100_000}

_RAW = "\x00raw-literal\x00"  # replaced by a raw JSON literal after serialisation
_SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck))

# --- valid events ------------------------------------------------------------------------------

_id_text = st.text(
    alphabet=st.characters(min_codepoint=32, codec="utf-8"), min_size=1, max_size=40
).filter(lambda s: bool(s.strip()))
ids = st.one_of(_id_text, st.integers(-(10**18), 10**18))
timestamps = st.one_of(
    st.integers(0, int(MAX_TIMESTAMP)),
    st.floats(0.0, MAX_TIMESTAMP, allow_nan=False, allow_infinity=False),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
contexts = st.one_of(st.none(), st.dictionaries(st.text(max_size=10), json_values, max_size=5))


@st.composite
def valid_event_fields(draw: st.DrawFn) -> dict[str, Any]:
    """The fields of a valid event (ids may be integers, ratings only on rating events)."""
    event_type = draw(st.sampled_from((*EVENT_TYPES, "forget")))
    fields: dict[str, Any] = {
        "user_id": draw(ids),
        "event_type": event_type,
        "timestamp": draw(timestamps),
    }
    if event_type != "forget" or draw(st.booleans()):
        fields["item_id"] = draw(ids)
    if event_type == "rating":
        fields["rating"] = draw(st.one_of(st.integers(1, 5), st.floats(0.5, 5.0)))
    context = draw(contexts)
    if context is not None:
        fields["context"] = context
    return fields


def _json(fields: dict[str, Any], raw: str | None = None) -> bytes:
    text = json.dumps(fields)
    if raw is not None:
        text = text.replace(json.dumps(_RAW), raw)
    return text.encode()


def _learnable(draw: st.DrawFn) -> dict[str, Any]:
    """Valid fields of a non-forget event (every required key present)."""
    fields = draw(valid_event_fields())
    if fields["event_type"] == "forget":
        fields["event_type"] = "view"
        fields.setdefault("item_id", "i1")
    return fields


keys = st.one_of(st.none(), st.binary(max_size=40))

# --- malformed families ------------------------------------------------------------------------

ANY_REASON = REASONS


@st.composite
def random_bytes(draw: st.DrawFn) -> Hostile:
    return ("random_bytes", draw(keys), draw(st.binary(max_size=2_048)), ANY_REASON)


@st.composite
def truncated_json(draw: st.DrawFn) -> Hostile:
    value = _json(_learnable(draw))
    cut = draw(st.integers(0, len(value) - 1))  # an object cut before its "}" never parses
    return ("truncated_json", draw(keys), value[:cut], frozenset({"empty", "invalid_json"}))


_not_id = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), json_scalars, max_size=3),
    st.text(alphabet=" \t\r\n", max_size=5),  # empty once stripped
    st.text(min_size=1, max_size=5).map(lambda s: s + "\x01"),  # control character
)
_WRONG: dict[str, tuple[st.SearchStrategy[Any], frozenset[str]]] = {
    "user_id": (st.one_of(st.none(), _not_id), frozenset({"invalid_field"})),
    "item_id": (_not_id, frozenset({"invalid_field"})),
    "event_type": (
        st.one_of(st.none(), st.text(max_size=12), st.integers(), st.lists(st.integers())).filter(
            lambda v: v not in (*EVENT_TYPES, "forget")
        ),
        frozenset({"unknown_event_type"}),
    ),
    "timestamp": (
        st.one_of(
            st.none(),
            st.booleans(),
            st.lists(st.integers(), max_size=2),
            st.text(alphabet="abcxyz:-", min_size=1, max_size=10),
            st.integers(max_value=-1),
            st.integers(min_value=int(MAX_TIMESTAMP) + 1),
            st.floats(min_value=MAX_TIMESTAMP + 1, allow_infinity=False),
        ),
        frozenset({"invalid_field"}),
    ),
    "rating": (
        st.one_of(st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2)),
        frozenset({"invalid_field"}),
    ),
    "context": (
        st.one_of(st.booleans(), st.integers(), st.text(max_size=5), st.lists(json_scalars)),
        frozenset({"invalid_field"}),
    ),
}


@st.composite
def wrong_types(draw: st.DrawFn) -> Hostile:
    fields = _learnable(draw)
    field = draw(st.sampled_from(sorted(_WRONG)))
    strategy, reasons = _WRONG[field]
    fields[field] = draw(strategy)
    return ("wrong_types", draw(keys), _json(fields), reasons)


@st.composite
def huge_strings(draw: st.DrawFn) -> Hostile:
    fields = _learnable(draw)
    size = draw(st.integers(MAX_ID_LENGTH + 1, bounds["string"]))
    text = draw(st.sampled_from(("x", "é", "\u4e2d", "\U0001f600"))) * size
    field = draw(st.sampled_from(("user_id", "item_id", "event_type", "context", "padding")))
    if field == "context":
        fields["context"] = {"note": text + "x" * 8_192}  # over the 8 KiB context limit
    else:
        fields[field] = text
    value = _json(fields)
    if len(value) > MAX_BYTES:
        reasons = frozenset({"oversized"})
    elif field == "event_type":
        reasons = frozenset({"unknown_event_type"})
    elif field == "padding":  # unknown keys are ignored: a large but valid event
        return ("huge_strings", draw(keys), value, frozenset())
    else:
        reasons = frozenset({"invalid_field"})
    return ("huge_strings", draw(keys), value, reasons)


@st.composite
def huge_numbers(draw: st.DrawFn) -> Hostile:
    fields = _learnable(draw)
    digits = draw(st.integers(310, 6_000))
    literal = draw(
        st.sampled_from(
            (
                "9" * digits,
                "-" + "9" * digits,
                "1" + "0" * digits + ".5",
                f"1e{digits}",
                f"-1e{digits}",
                f"1.7976931348623157e{digits}",
            )
        )
    )
    field = draw(st.sampled_from(("user_id", "item_id", "timestamp", "rating", "context")))
    if field == "context":
        fields["context"] = {"n": _RAW}
    else:
        fields[field] = _RAW
    if field == "rating":
        fields["event_type"] = "rating"
    # >4300-digit integers are refused by the JSON parser; the others overflow or are too long,
    # except a big integer inside the (opaque) context, which is valid JSON and kept as is.
    reasons = frozenset({"invalid_json", "invalid_field"})
    if field == "context" and literal.lstrip("-").isdigit() and digits <= 4_300:
        reasons = frozenset({"accepted"})
    return ("huge_numbers", draw(keys), _json(fields, literal), reasons)


@st.composite
def nan_infinity(draw: st.DrawFn) -> Hostile:
    fields = _learnable(draw)
    literal = draw(st.sampled_from(("NaN", "Infinity", "-Infinity")))
    field = draw(st.sampled_from(("user_id", "item_id", "timestamp", "rating", "context", "x")))
    if field == "context":
        fields["context"] = {"deep": [1, {"v": _RAW}]}
    else:
        fields[field] = _RAW
    return ("nan_infinity", draw(keys), _json(fields, literal), frozenset({"invalid_json"}))


@st.composite
def deep_nesting(draw: st.DrawFn) -> Hostile:
    # Deep enough for Python's recursion limit (~1000) and the 8 KiB context limit.
    depth = draw(st.integers(1_700, bounds["depth"]))
    opener, closer = draw(st.sampled_from((("[", "]"), ('{"a":', "}"))))
    closed = draw(st.booleans())
    nested = opener * depth + ("1" + closer * depth if closed else "")
    where = draw(st.sampled_from(("top", "user_id", "event_type", "timestamp", "context")))
    if where == "top":
        value = nested.encode()
    else:
        fields = _learnable(draw)
        fields[where] = _RAW
        value = _json(fields, nested)
    return ("deep_nesting", draw(keys), value, ANY_REASON - {"empty"})


@st.composite
def missing_keys(draw: st.DrawFn) -> Hostile:
    fields = _learnable(draw)
    if draw(st.booleans()):
        fields["event_type"] = "rating"
        fields.pop("rating", None)
        drop = draw(st.sets(st.sampled_from(REQUIRED)))
        reasons = frozenset({"missing_field", "rating_missing"})
    else:
        drop = draw(st.sets(st.sampled_from(REQUIRED), min_size=1))
        reasons = frozenset({"missing_field"})
    for name in drop:
        fields.pop(name, None)
    return ("missing_keys", draw(keys), _json(fields), reasons)


@st.composite
def duplicated_keys(draw: st.DrawFn) -> Hostile:
    fields = _learnable(draw)
    fields.setdefault("context", {"page": "home"})
    inner = draw(st.booleans()) and bool(fields["context"])
    target = fields["context"] if inner else fields
    name = draw(st.sampled_from(sorted(target)))
    again = json.dumps(draw(st.one_of(st.just(target[name]), json_scalars)))
    text = json.dumps(fields)
    # Re-open the object that holds ``name`` and repeat it: {"k": v, ..., "k": w}.
    body = json.dumps(target)
    patched = body[:-1] + (", " if len(body) > 2 else "") + f"{json.dumps(name)}: {again}}}"
    value = text.replace(body, patched, 1) if inner else patched
    return ("duplicated_keys", draw(keys), value.encode(), frozenset({"invalid_json"}))


@st.composite
def bad_utf8(draw: st.DrawFn) -> Hostile:
    value = _json(_learnable(draw))
    junk = draw(st.sampled_from((b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf")))
    at = draw(st.integers(0, len(value)))
    return ("bad_utf8", draw(keys), value[:at] + junk + value[at:], frozenset({"not_utf8"}))


@st.composite
def not_objects(draw: st.DrawFn) -> Hostile:
    fields = draw(valid_event_fields())
    value = draw(st.one_of(json_scalars, st.lists(st.just(fields), min_size=1, max_size=2)))
    text = json.dumps(value, allow_nan=False)
    return ("not_objects", draw(keys), text.encode(), frozenset({"not_an_object"}))


@st.composite
def mutated(draw: st.DrawFn) -> Hostile:
    """A valid record with a few random byte edits: anything may come out, nothing may raise."""
    value = bytearray(_json(draw(valid_event_fields())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(value)))
        op = draw(st.sampled_from(("flip", "insert", "delete")))
        if op == "insert" or at == len(value):
            value[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif op == "flip":
            value[at] = draw(st.integers(0, 255))
        else:
            del value[at]
    return ("mutated", draw(keys), bytes(value), ANY_REASON | {"accepted"})


FAMILIES: dict[str, st.SearchStrategy[Hostile]] = {
    "random_bytes": random_bytes(),
    "truncated_json": truncated_json(),
    "wrong_types": wrong_types(),
    "huge_strings": huge_strings(),
    "huge_numbers": huge_numbers(),
    "nan_infinity": nan_infinity(),
    "deep_nesting": deep_nesting(),
    "missing_keys": missing_keys(),
    "duplicated_keys": duplicated_keys(),
    "bad_utf8": bad_utf8(),
    "not_objects": not_objects(),
    "mutated": mutated(),
}


def hostile_records(*, include_mutated: bool = True) -> st.SearchStrategy[Hostile]:
    """Any malformed record of any family (``mutated`` ones may turn out valid)."""
    return st.one_of(*(s for name, s in FAMILIES.items() if include_mutated or name != "mutated"))


# --- properties --------------------------------------------------------------------------------


def check_one(record: Hostile) -> Event | Rejected:
    """Decode one hostile record and check what the decoder must guarantee."""
    family, key, value, reasons = record
    result = decode_one(key, value, max_bytes=MAX_BYTES)  # must not raise
    if isinstance(result, Rejected):
        assert result.reason in REASONS, result
        assert result.reason in reasons, f"{family}: {result.reason} ({result.detail})"
        assert isinstance(result.detail, str) and result.detail
        assert result.key is key and result.value is value  # the original bytes, untouched
        # The dead letter is JSON: its reason and detail must encode.
        json.dumps({"reason": result.reason, "detail": result.detail}).encode()
    else:
        assert isinstance(result, Event)
        assert not reasons or "accepted" in reasons, f"{family} accepted: {(value or b'')[:200]!r}"
        assert decode_one(key, result.model_dump_json().encode()) == result
    return result


# 12 families x 850 examples + 400 valid ones = 10,600 generated records.
PER_FAMILY = 850


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(_SETTINGS, max_examples=PER_FAMILY)
@given(data=st.data())
def test_decoder_survives(family: str, data: st.DataObject) -> None:
    check_one(data.draw(FAMILIES[family], label=family))


@settings(_SETTINGS, max_examples=400)
@given(key=keys, fields=valid_event_fields())
def test_valid_events_are_accepted_and_round_trip(
    key: bytes | None, fields: dict[str, Any]
) -> None:
    event = decode_one(key, json.dumps(fields).encode())
    assert isinstance(event, Event), event
    assert event.user_id == str(fields["user_id"]).strip()
    assert event.event_type == fields["event_type"]
    assert event.timestamp == float(fields["timestamp"])
    if "rating" in fields:
        assert event.rating == float(fields["rating"])
    assert event.context == fields.get("context")
    assert decode_one(key, event.model_dump_json().encode()) == event


def test_duplicated_keys_are_rejected_as_ambiguous() -> None:
    value = b'{"user_id":"u1","item_id":"i1","event_type":"view","timestamp":1,"user_id":"u2"}'
    result = decode_one(b"u1", value)
    assert isinstance(result, Rejected)
    assert (result.reason, result.detail) == ("invalid_json", "duplicate key 'user_id'")


def test_nan_and_infinity_literals_are_rejected() -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        value = b'{"user_id":"u1","item_id":"i1","event_type":"rating","timestamp":1,"rating":'
        result = decode_one(None, value + literal + b"}")
        assert isinstance(result, Rejected) and result.reason == "invalid_json", literal


def test_integers_beyond_float_range_are_rejected_not_raised() -> None:
    # 400 digits: json parses it (limit 4300), float() overflows -> OverflowError, not ValueError.
    for field in ("timestamp", "rating"):
        fields: dict[str, Any] = {"user_id": "u1", "item_id": "i1", "event_type": "rating"}
        fields.update(rating=3, timestamp=1)
        fields[field] = 10**399
        result = decode_one(None, json.dumps(fields).encode())
        assert isinstance(result, Rejected), field
        assert result.reason == "invalid_field", result
        assert result.detail.startswith(field)


def test_deep_nesting_never_raises_recursion_error() -> None:
    for value in (b"[" * 100_000, b"[" * 60_000 + b"]" * 60_000, b'{"a":' * 13_000):
        result = decode_one(None, value, max_bytes=1_000_000)
        assert isinstance(result, Rejected) and result.reason == "invalid_json"
    nested = b"[" * 5_000 + b"]" * 5_000
    value = b'{"user_id":"u1","item_id":"i1","event_type":' + nested + b',"timestamp":1}'
    result = decode_one(None, value)
    assert isinstance(result, Rejected) and result.reason in ("invalid_json", "unknown_event_type")


def test_lone_surrogates_are_rejected() -> None:
    for field in ("user_id", "item_id", "context"):
        fields: dict[str, Any] = {"user_id": "u1", "item_id": "i1", "event_type": "view"}
        fields["timestamp"] = 1
        fields[field] = {"k": "\ud800"} if field == "context" else "a\udc00"
        value = json.dumps(fields).encode()  # ASCII escapes: valid UTF-8 bytes
        result = decode_one(None, value)
        assert isinstance(result, Rejected) and result.reason == "invalid_field", (field, result)


def test_families_cover_the_issue() -> None:
    expected = {
        "random_bytes",
        "truncated_json",
        "wrong_types",
        "huge_strings",
        "huge_numbers",
        "nan_infinity",
        "deep_nesting",
        "missing_keys",
        "duplicated_keys",
    }
    assert expected <= set(FAMILIES)
    assert len(FAMILIES) * PER_FAMILY + 400 >= 10_000
    assert math.isfinite(MAX_TIMESTAMP)
