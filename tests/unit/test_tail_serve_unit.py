"""``stream tail`` rendering and ``stream serve``'s table, path parsing and token check
(no broker; the integration tests run both against a real one)."""

from __future__ import annotations

import base64
import doctest
import importlib
import json

import pytest
from prometheus_client import CollectorRegistry

from stream.events import DeadLetter, MetricsRecord, ModelMetrics, Recommendation, Rejected, Source
from stream.kafka import RawRecord
from stream.kafka.admin import COMPACTED, topic_specs
from stream.serve import RecommendationService, RecommendationTable, _user_id
from stream.settings import SettingsError, StreamSettings, load_settings
from stream.tail import describe_one, guess_kind, json_one
from stream.worker import topic_layout


def _recommendation(user: str = "u1", items: tuple[str, ...] = ("i1", "i2")) -> bytes:
    return (
        Recommendation.model_validate(
            {
                "user_id": user,
                "items": [{"item_id": i, "score": 0.5} for i in items],
                "model": "knn",
                "source_topic": "events",
                "source_partition": 2,
                "source_offset": 17,
                "event_timestamp": 1.0,
            }
        )
        .model_dump_json()
        .encode()
    )


def _record(value: bytes | None, key: bytes | None = b"u1", topic: str = "t") -> RawRecord:
    return RawRecord(topic, 0, 3, key, value, 1_700_000_000_000)


@pytest.mark.parametrize("name", ["stream.tail", "stream.serve", "stream.kafka.admin"])
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


def test_tail_shows_a_recommendation_by_its_fields() -> None:
    line = describe_one(_record(_recommendation()), "recommendation")
    assert line.startswith("t[0]@3 2023-11-14T22:13:20.000+00:00 key=u1 recommendation user=u1")
    assert "model=knn" in line and "after events[2]@17" in line and "i1 (0.5), i2 (0.5)" in line


def test_tail_recognises_each_record_without_a_hint() -> None:
    metrics = (
        MetricsRecord(
            k=10,
            events=5,
            evaluated=4,
            window=1000,
            window_metrics={"knn": ModelMetrics(hit_rate=0.25)},
            cumulative_metrics={"knn": ModelMetrics(hit_rate=0.125)},
        )
        .model_dump_json()
        .encode()
    )
    letter = (
        DeadLetter.of(
            Rejected("invalid_json", "Expecting value", b"k1", b"{oops\x1b[2J"),
            Source("events", 1, 9),
        )
        .model_dump_json()
        .encode()
    )
    event = (
        b'{"user_id": "u9", "item_id": "i3", "event_type": "rating", "rating": 4, "timestamp": 0}'
    )
    assert "HR@10 window/cumulative: knn 0.250/0.125" in describe_one(_record(metrics))
    dead = describe_one(_record(letter))
    # The original bytes, escaped: the terminal never receives the escape sequence.
    assert "dead letter reason=invalid_json from events[1]@9" in dead
    assert "original key='k1' value='{oops\\x1b[2J'" in dead and "\x1b" not in dead
    assert "event rating user=u9 item=i3 rating=4 at 1970-01-01T00:00:00+00:00" in describe_one(
        _record(event)
    )
    assert guess_kind(json.loads(letter)) == "dead_letter"
    assert guess_kind([1, 2]) == "unknown"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (b"\xff\xfe\x00 not utf-8", "13 bytes: b'\\xff\\xfe\\x00 not utf-8'"),
        (b"plain \x07 text", "12 bytes: 'plain \\x07 text'"),
        (b'{"a": 1}', "json '{\"a\": 1}'"),
        (b'{"items": 3, "user_id": "u"}', "not a valid recommendation record (items:"),
    ],
)
def test_tail_shows_unknown_payloads_safely(value: bytes, shown: str) -> None:
    line = describe_one(_record(value, key=b"\x1b]0;x\x07"))
    assert shown in line
    assert "key='\\x1b]0;x\\x07'" in line
    assert not any(ord(c) < 32 for c in line)


def test_tail_cuts_long_payloads() -> None:
    line = describe_one(_record(b"x" * 50_000))
    assert len(line) < 1_200 and line.endswith("... (50000 bytes)")


def test_tail_json_lines_carry_the_decoded_value_and_a_dead_letters_original() -> None:
    letter = DeadLetter.of(Rejected("empty", "no value", b"k", b"\xff"), Source("e", 0, 1))
    out = json.loads(json_one(_record(letter.model_dump_json().encode())))
    assert out["kind"] == "dead_letter" and out["value"]["reason"] == "empty"
    assert out["original"] == {"key": "k", "value": "\\xff"}
    raw = json.loads(json_one(_record(b"\x00\x01")))
    assert raw["kind"] == "unknown" and base64.b64decode(raw["value_b64"]) == b"\x00\x01"
    assert json.loads(json_one(_record(None)))["kind"] == "tombstone"


def test_table_keeps_the_latest_record_per_user_and_tombstones_delete() -> None:
    table = RecommendationTable()
    assert table.apply_one(b"u1", _recommendation("u1", ("a",))) == "stored"
    assert table.apply_one(b"u1", _recommendation("u1", ("b",))) == "stored"
    assert table.apply_one(b"u2", _recommendation("u2")) == "stored"
    assert json.loads(table.get("u1") or b"")["items"][0]["item_id"] == "b"
    assert table.apply_one(b"u2", None) == "deleted"
    assert table.get("u2") is None and len(table) == 1


@pytest.mark.parametrize(
    ("key", "value", "outcome"),
    [
        (None, b"{}", "no_key"),
        (b"\xff", b"{}", "bad_key"),
        (b"u1", b"not json", "invalid_record"),
        (b"u1", b'{"user_id": "u1"}', "invalid_record"),
        (b"u2", _recommendation("u1"), "key_mismatch"),
    ],
)
def test_table_refuses_records_it_cannot_serve(
    key: bytes | None, value: bytes, outcome: str
) -> None:
    table = RecommendationTable()
    assert table.apply_one(key, value) == outcome
    assert len(table) == 0


@pytest.mark.parametrize(
    ("path", "user", "code"),
    [
        ("/users/u1/recommendations", "u1", 200),
        ("/users/caf%C3%A9%2F7/recommendations", "café/7", 200),
        ("/users/42/recommendations", "42", 200),
        ("/users//recommendations", None, 404),
        ("/users/a/b/recommendations", None, 404),
        ("/users/u1", None, 404),
        ("/users/%ff/recommendations", None, 400),
        ("/users/%0a/recommendations", None, 400),
        ("/users/%20u1/recommendations", None, 400),
        ("/users/" + "x" * 257 + "/recommendations", None, 400),
        ("/users/" + "%41" * 257 + "/recommendations", None, 400),
        ("/users/" + "x" * 10_000 + "/recommendations", None, 400),
    ],
)
def test_user_id_from_the_path(path: str, user: str | None, code: int) -> None:
    found, (status, _) = _user_id(path)
    assert (found, status) == (user, code)


def test_token_check() -> None:
    settings = StreamSettings(_env_file=None, serve_port=0, serve_token="s3cret-token")  # type: ignore[call-arg,arg-type]
    service = RecommendationService(settings, CollectorRegistry())
    try:
        assert service.authorized("Bearer s3cret-token")
        assert service.authorized("bearer  s3cret-token ")
        for header in (None, "", "Bearer", "Bearer s3cret", "Basic s3cret-token", "s3cret-token"):
            assert not service.authorized(header), header
    finally:
        service.stop()


def test_an_empty_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_SERVE_TOKEN", " ")
    with pytest.raises(SettingsError, match="STREAM_SERVE_TOKEN"):
        load_settings()


def test_the_token_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_SERVE_TOKEN", "hunter2-hunter2")
    settings = load_settings()
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_the_worker_creates_the_recommendations_topic_compacted() -> None:
    settings = StreamSettings(_env_file=None)  # type: ignore[call-arg]
    sizes, configs = topic_layout(settings)
    specs = topic_specs(sizes, configs)
    assert specs[settings.recommendations_topic]["configs"] == {"cleanup.policy": "compact"}
    assert COMPACTED == {"cleanup.policy": "compact"}
    assert "configs" not in specs[settings.events_topic]
