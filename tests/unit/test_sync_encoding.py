"""The model-updates delta on the wire (issue 12): a compact binary frame (version 2) that
keeps additive counts exact, still reads version-1 records, and refuses malformed frames."""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from stream.core import Pipeline
from stream.events import Event, Source
from stream.models import ItemKNN, MatrixFactorization, Popularity
from stream.settings import StreamSettings
from stream.sync import DeltaError, ShardDelta, ShardSync
from stream.sync.delta import DELTA_VERSION
from stream.sync.offline import LocalShards


def _settings() -> StreamSettings:
    return StreamSettings(
        _env_file=None,
        models=("popularity", "knn", "biased_mf", "blend"),
        knn_half_life=None,
        popularity_half_life=500.0,
    )


def _events(n: int, offset: int = 0) -> list[Event]:
    return [
        Event(
            user_id=f"u{(t * 7) % 23}",
            item_id=f"i{(t * 13) % 31}",
            event_type="purchase" if t % 5 == 0 else "view",
            timestamp=float(offset + t),
        )
        for t in range(n)
    ]


def _sender_delta(n: int = 200) -> ShardDelta:
    a = ShardSync(Pipeline.from_settings(_settings()), "events", 0)
    for offset, event in enumerate(_events(n)):
        a.pipeline.process_one(event, Source("events", 0, offset))
        a.note_one(offset)
    delta = a.collect_one()
    assert delta is not None
    return delta


def _as_v1(delta: ShardDelta) -> bytes:
    """The same delta as a version-1 record wrote it: zlib JSON, rows of lists."""
    models: dict[str, Any] = {}
    for name, part in delta.models.items():
        if "names" in part:  # a blend's gains: version 1 never carried them
            continue
        if "co_at" in part:  # ItemKNN
            items = part["items"]
            models[name] = {
                "ticks": part["ticks"],
                "norms": [
                    [items[a], float(v)]
                    for a, v in zip(part["norms_at"], part["norms"], strict=True)
                ],
                "co": [
                    [items[a], items[b], float(v)]
                    for (a, b), v in zip(part["co_at"].tolist(), part["co"], strict=True)
                ],
            }
        elif "steps" in part:  # MF
            vectors = part["steps"].astype(float) * part["step"].astype(float)[:, None]
            models[name] = {
                "items": [
                    [i, v.tolist(), float(b)]
                    for i, v, b in zip(part["items"], vectors, part["biases"], strict=True)
                ],
                "mean": part["mean"],
            }
        else:  # Popularity
            models[name] = {
                "ticks": part["ticks"],
                "counts": [
                    [i, float(c)] for i, c in zip(part["items"], part["counts"], strict=True)
                ],
            }
    body = {
        "v": 1,
        "topic": delta.source_topic,
        "partition": delta.source_partition,
        "first_offset": delta.first_offset,
        "last_offset": delta.last_offset,
        "events": delta.events,
        "models": models,
        "t": delta.created,
    }
    return zlib.compress(json.dumps(body).encode(), 6)


def _state(pipeline: Pipeline) -> dict[str, Any]:
    pop = pipeline.models["popularity"]
    knn = pipeline.models["knn"]
    mf = pipeline.models["biased_mf"]
    assert isinstance(pop, Popularity) and isinstance(knn, ItemKNN)
    assert isinstance(mf, MatrixFactorization)
    return {
        "pop": {i: pop.score_of(i) for i in pop._counts},
        "pop_head": list(pop._ranked),
        "norms": {knn._items[r]: float(knn._norms[r]) for r in range(len(knn._items))},
        "co": {
            (knn._items[i], knn._items[j]): v for i, r in enumerate(knn._co) for j, v in r.items()
        },
        "mf": {i: np.asarray(v, dtype=float) for i, v in mf.river_model.i_latents.items()},
    }


def test_additive_counts_cross_the_wire_bit_for_bit() -> None:
    delta = _sender_delta()
    wire = ShardDelta.decode(delta.encode())
    assert wire.models.keys() == delta.models.keys()
    for name, part in delta.models.items():
        for key, value in part.items():
            got = wire.models[name][key]
            if isinstance(value, np.ndarray) and value.dtype == np.float64:
                assert got.dtype == np.float64 and np.array_equal(got, value), (name, key)
            elif isinstance(value, np.ndarray):
                assert np.array_equal(got, value), (name, key)
            else:
                assert got == value, (name, key)


def test_a_version_1_record_is_still_read_and_applied_like_version_2() -> None:
    delta = _sender_delta()
    via_v2, via_v1 = (ShardSync(Pipeline.from_settings(_settings()), "events", 1) for _ in "ab")
    assert via_v2.apply_one(ShardDelta.decode(delta.encode())) == "applied"
    old = ShardDelta.decode(_as_v1(delta))
    assert isinstance(old.models["popularity"]["counts"], list)  # rows, as version 1 had
    assert via_v1.apply_one(old) == "applied"
    a, b = _state(via_v2.pipeline), _state(via_v1.pipeline)
    assert a["pop"] == pytest.approx(b["pop"], rel=1e-12) and a["pop_head"] == b["pop_head"]
    assert a["norms"] == pytest.approx(b["norms"], rel=1e-12)
    assert a["co"] == pytest.approx(b["co"], rel=1e-12)
    assert a["mf"].keys() == b["mf"].keys()
    for item, vector in a["mf"].items():
        np.testing.assert_allclose(vector, b["mf"][item], rtol=1e-6, atol=1e-9)


def test_the_binary_frame_is_smaller_than_the_json_one() -> None:
    delta = _sender_delta(400)
    assert len(delta.encode()) < 0.7 * len(_as_v1(delta))


def _frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return zlib.compress(b"\x00SD2" + struct.pack("<I", len(text)) + text + payload)


_HEADER = {
    "v": DELTA_VERSION,
    "topic": "t",
    "partition": 0,
    "first_offset": 0,
    "last_offset": 0,
    "events": 1,
    "t": 0.0,
}


@pytest.mark.parametrize(
    "data",
    [
        _frame({**_HEADER, "models": {"m": {"$a": 0}}, "arrays": [["|O", [1]]]}, b"\x00" * 8),
        _frame({**_HEADER, "models": {"m": {"$a": 0}}, "arrays": [["<f8", [4]]]}, b"\x00" * 8),
        _frame({**_HEADER, "models": {"m": {"$a": 3}}, "arrays": [["<f8", [1]]]}, b"\x00" * 8),
        _frame({**_HEADER, "models": {}, "arrays": []}, b"extra"),
        _frame({**_HEADER, "v": 9, "models": {}, "arrays": []}),
        zlib.compress(b"\x00SD2\xff\xff"),
        _frame({**_HEADER, "models": {}, "arrays": [["<f8", 5]]}),
        _frame({**_HEADER, "models": {}, "arrays": [5]}),
        _frame({**_HEADER, "models": {}, "arrays": [["<f8", [None]]]}),
    ],
    ids=[
        "object-dtype",
        "short-array",
        "bad-reference",
        "trailing-bytes",
        "version",
        "header",
        "shape-not-a-list",
        "spec-not-a-list",
        "shape-of-none",
    ],
)
def test_a_malformed_frame_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(DeltaError):
        ShardDelta.decode(data)


def test_an_object_array_cannot_be_sent() -> None:
    with pytest.raises(TypeError):
        ShardDelta("t", 0, 0, 0, 1, {"m": {"x": np.array([object()])}}).encode()


def test_factor_changes_travel_as_int8_steps_within_half_a_step() -> None:
    from stream.models.mf import _dequantise, _quantise

    rng = np.random.default_rng(5)
    changes = rng.normal(0.0, 0.05, (200, 10)) * rng.choice([1e-6, 1.0, 1e4], (200, 1))
    changes[3] = 0.0  # an item whose vector did not move (its bias did)
    wire = ShardDelta.decode(ShardDelta("t", 0, 0, 0, 1, {"m": _quantise(changes)}).encode())
    part = wire.models["m"]
    assert part["steps"].dtype == np.int8 and part["step"].dtype == np.float32
    back = _dequantise(part)
    half_step = np.abs(changes).max(axis=1, keepdims=True) / 254 * (1 + 1e-6)
    assert np.all(np.abs(back - changes) <= half_step + 1e-300)
    assert not back[3].any() and math.isfinite(float(np.abs(back).max()))
    old = {"vectors": changes.astype(np.float16)}  # what this version wrote first
    np.testing.assert_allclose(_dequantise(old), changes, rtol=1e-3, atol=1e-7)


# --- version 3: preset dictionary, one string table per frame, byte-shuffled arrays --------


def _v2_pack(value: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(value, np.ndarray):
        arrays.append(np.ascontiguousarray(value))
        return {"$a": len(arrays) - 1}
    if isinstance(value, dict):
        return {k: _v2_pack(v, arrays) for k, v in value.items()}
    return value


def _as_v2(delta: ShardDelta) -> bytes:
    """The same delta as a version-2 writer framed it (item ids as JSON lists per model)."""
    arrays: list[np.ndarray] = []
    header = {
        **_HEADER,
        "v": 2,
        "topic": delta.source_topic,
        "partition": delta.source_partition,
        "first_offset": delta.first_offset,
        "last_offset": delta.last_offset,
        "events": delta.events,
        "models": _v2_pack(delta.models, arrays),
        "full": delta.full,
        "arrays": [[a.dtype.str, list(a.shape)] for a in arrays],
    }
    return _frame(header, b"".join(a.tobytes() for a in arrays))


def test_a_version_2_record_is_still_read_and_applied_like_version_3() -> None:
    delta = _sender_delta()
    assert DELTA_VERSION == 3 and delta.encode()[:4] == b"\x00SD3"
    old, new = ShardDelta.decode(_as_v2(delta)), ShardDelta.decode(delta.encode())
    for name, part in new.models.items():
        assert old.models[name].keys() == part.keys()
        for key, value in part.items():
            assert np.array_equal(old.models[name][key], value), (name, key)
    via_v3, via_v2 = (ShardSync(Pipeline.from_settings(_settings()), "events", 1) for _ in "ab")
    assert via_v3.apply_one(ShardDelta.decode(delta.encode())) == "applied"
    assert via_v2.apply_one(old) == "applied"
    a, b = _state(via_v3.pipeline), _state(via_v2.pipeline)
    assert a["pop"] == b["pop"] and a["norms"] == b["norms"] and a["co"] == b["co"]
    assert a["mf"].keys() == b["mf"].keys()
    for item, vector in a["mf"].items():
        np.testing.assert_array_equal(vector, b["mf"][item])


def test_lists_of_strings_come_back_as_they_were_whatever_their_form() -> None:
    odd = ["i892", "i7", "0", "007", "i", "", "a1b2", "ü5", "i" + "9" * 18, "i" + "1" * 19, "x-3"]
    models: dict[str, dict[str, Any]] = {
        "a": {"items": ["i892", "i7", "i892", "j5", "i10"], "w": np.arange(5.0)},
        "b": {"items": odd, "names": ["knn", "mf"], "pairs": [["a", 1], ["b", 2]]},
        "c": {"items": [], "mixed": ["i1", 2], "one": ["i3"], "mean": [0.5, 2.0]},
    }
    delta = ShardDelta("events", 2, 5, 9, 5, models, 12.5, False)
    back = ShardDelta.decode(delta.encode())
    assert back.models["a"]["items"] == models["a"]["items"]
    assert back.models["b"]["items"] == odd and back.models["b"]["names"] == ["knn", "mf"]
    assert back.models["b"]["pairs"] == [["a", 1], ["b", 2]]
    assert back.models["c"] == {k: v for k, v in models["c"].items()}
    assert np.array_equal(back.models["a"]["w"], models["a"]["w"])
    assert (back.created, back.full, back.events) == (12.5, False, 5)


def test_each_string_travels_once_per_frame_and_numbered_ones_as_numbers() -> None:
    items = [f"item{n}" for n in range(0, 3000, 3)]
    one = ShardDelta("t", 0, 0, 9, 10, {"m": {"items": items}}).encode()
    three = ShardDelta(
        "t", 0, 0, 9, 10, {name: {"items": items} for name in ("m", "n", "o")}
    ).encode()
    # Three models naming the same 1,000 items cost one table and three lists of places.
    assert len(three) < len(one) + 2 * 200
    as_json = zlib.compress(json.dumps(items).encode(), 9)
    assert len(one) < 0.2 * len(as_json)


def test_a_light_delta_costs_less_in_version_3_than_in_version_2() -> None:
    a = ShardSync(Pipeline.from_settings(_settings()), "events", 0, full_every=5)
    for offset, event in enumerate(_events(10)):
        a.pipeline.process_one(event, Source("events", 0, offset))
        a.note_one(offset)
    a.collect_one(full=True)
    for offset, event in enumerate(_events(10, 10), start=10):
        a.pipeline.process_one(event, Source("events", 0, offset))
        a.note_one(offset)
    light = a.collect_one()
    assert light is not None and not light.full
    assert len(light.encode()) < 0.75 * len(_as_v2(light))


def _v3(header: dict[str, Any], payload: bytes = b"", zdict: bytes | None = None) -> bytes:
    from stream.sync.delta import _ZDICT

    text = json.dumps({**_HEADER, **header}).encode()
    compressor = zlib.compressobj(1, zdict=_ZDICT if zdict is None else zdict)
    raw = struct.pack("<I", len(text)) + text + payload
    return b"\x00SD3" + compressor.compress(raw) + compressor.flush()


_TABLE = [{"prefix": "i", "first": 3, "ids": {"$a": 1}}]
_U1 = [["|u1", [2]], ["|u1", [2]]]


@pytest.mark.parametrize(
    "data",
    [
        _v3({"models": {}, "arrays": []}, zdict=b"another dictionary"),
        _v3({"models": {}, "arrays": []})[:-2],
        _v3({"models": {}, "arrays": []}) + b"\x00",
        _v3({"models": {"m": {"$s": 0}}, "strings": _TABLE, "arrays": _U1}, b"\x00\x02\x00\x01"),
        _v3(
            {"models": {"m": {"$s": 0}}, "strings": _TABLE, "arrays": _U1}, b"\x00\x01\x00\x01"[:3]
        ),
        _v3(
            {"models": {"m": {"$s": 0}}, "strings": _TABLE, "arrays": [["<f8", [1]], _U1[1]]},
            b"\x00" * 8 + b"\x00\x01",
        ),
        _v3(
            {
                "models": {},
                "strings": [{"prefix": "i", "first": 0, "ids": {"$a": 0}}],
                "arrays": [["<u8", [2]]],
            },
            b"\xff" * 16,
        ),
        _v3(
            {
                "models": {},
                "strings": [{"prefix": "i", "first": 10**19, "ids": {"$a": 0}}],
                "arrays": [["|u1", [1]]],
            },
            b"\x00",
        ),
        _v3({"models": {}, "strings": {"text": ["a"]}, "arrays": []}),
        _v3({"models": {}, "strings": [{"text": ["a", 1]}], "arrays": []}),
        _v3(
            {
                "models": {},
                "strings": [{"prefix": 1, "first": 0, "ids": {"$a": 0}}],
                "arrays": [["|u1", [1]]],
            },
            b"\x00",
        ),
        _v3({"models": {}, "strings": ["a"], "arrays": []}),
    ],
    ids=[
        "other-dictionary",
        "truncated-stream",
        "bytes-after-the-stream",
        "place-past-the-table",
        "short-places",
        "places-not-integers",
        "numbers-wrap-round",
        "first-number-too-large",
        "table-not-a-list",
        "text-not-strings",
        "prefix-not-a-string",
        "group-not-an-object",
    ],
)
def test_a_malformed_version_3_frame_is_a_clear_error(data: bytes) -> None:
    with pytest.raises(DeltaError):
        ShardDelta.decode(data)


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("limit", ["ratio", "total"])
def test_a_record_that_inflates_past_the_limit_is_refused_before_it_takes_the_memory(
    version: int, limit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream.sync import delta as delta_module

    if limit == "total":  # (the default total, 64 MiB, would take a 64 MiB test record)
        monkeypatch.setattr(delta_module, "MAX_INFLATION", 10**6)
        monkeypatch.setattr(delta_module, "MAX_INFLATED", 1 << 20)
    zeros = bytes(4 << 20)  # 4 MiB of zeros: a record of a few KiB, 200x and more
    if version == 3:
        compressor = zlib.compressobj(1, zdict=delta_module._ZDICT)
        data = delta_module._MAGIC + compressor.compress(zeros) + compressor.flush()
    else:
        data = zlib.compress(zeros)
    assert len(data) < 20_000
    past = 1 << 20 if limit == "total" else 32 * (len(data) - (4 if version == 3 else 0))
    with pytest.raises(DeltaError, match=f"inflates past {past} bytes"):
        ShardDelta.decode(data)


def test_real_deltas_inflate_well_within_the_limit() -> None:
    """Every delta of a 4-shard run decodes (the limit is 32x the record; they inflate <3x)."""
    from stream.sync import delta as delta_module

    shards = LocalShards(lambda: Pipeline.from_settings(StreamSettings(_env_file=None)), 4, 10)
    sent: list[bytes] = []
    original = delta_module.ShardDelta.encode

    def encode(self: ShardDelta) -> bytes:
        data = original(self)
        sent.append(data)
        return data

    delta_module.ShardDelta.encode = encode  # type: ignore[method-assign]
    try:
        for event in _events(1_500):
            shards.process_one(event)
    finally:
        delta_module.ShardDelta.encode = original  # type: ignore[method-assign]
    assert len(sent) > 100
    for data in sent:
        ShardDelta.decode(data)


def test_decayed_counts_travel_as_float32_and_undecayed_ones_stay_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With decay (the defaults) co-occurrences, norms and popularity counts go as float32
    (a third fewer bytes per co-occurrence): a receiver ends within float32's rounding of a
    receiver of the same delta in float64. Without decay, or with one too slow for the
    delta's events to move a count by much more than float32 rounds, they stay float64."""

    def delta_with(**extra: object) -> ShardDelta:
        settings = _settings().model_copy(update=extra)
        a = ShardSync(Pipeline.from_settings(settings), "events", 0)
        for offset, event in enumerate(_events(300)):
            a.pipeline.process_one(event, Source("events", 0, offset))
            a.note_one(offset)
        delta = a.collect_one()
        assert delta is not None
        return delta

    decayed = delta_with(knn_half_life=2_000.0, popularity_half_life=500.0)
    exact = delta_with(knn_half_life=None, popularity_half_life=math.inf)
    # 300 events of a 1e9-event half-life move a count by 2e-7: over float32's rounding,
    # not 1,024 times over it.
    slow = delta_with(knn_half_life=1e9, popularity_half_life=1e9)
    for delta, dtype in ((decayed, np.float32), (exact, np.float64), (slow, np.float64)):
        wire = ShardDelta.decode(delta.encode()).models
        for name, key in (("knn", "co"), ("knn", "norms"), ("popularity", "counts")):
            sent = delta.models[name][key]
            assert sent.dtype == dtype and wire[name][key].dtype == dtype, (name, key, dtype)
            assert len(sent) > 10

    # What a receiver of the float32 delta holds is what a receiver of the same delta in
    # float64 would, to float32's rounding (each value rounded once, the norms too).
    import stream.models.knn as knn_module
    import stream.models.popularity as popularity_module

    def keep(values: Any, growth: float, ticks: int) -> Any:
        return values

    monkeypatch.setattr(knn_module, "wire_floats", keep)
    monkeypatch.setattr(popularity_module, "wire_floats", keep)
    wide = delta_with(knn_half_life=2_000.0, popularity_half_life=500.0)
    assert wide.models["knn"]["co"].dtype == np.float64
    settings = _settings().model_copy(
        update={"knn_half_life": 2_000.0, "popularity_half_life": 500.0}
    )
    receivers = [ShardSync(Pipeline.from_settings(settings), "events", 1) for _ in "ab"]
    assert receivers[0].apply_one(ShardDelta.decode(decayed.encode())) == "applied"
    assert receivers[1].apply_one(ShardDelta.decode(wide.encode())) == "applied"
    a, b = (_state(r.pipeline) for r in receivers)
    for part in ("pop", "norms", "co"):
        assert a[part].keys() == b[part].keys() and len(b[part]) > 10
        for key, value in b[part].items():
            assert a[part][key] == pytest.approx(value, rel=1.001 * 2.0**-24), (part, key)
