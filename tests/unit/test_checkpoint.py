from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pathlib
import pickle
import random
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from stream import checkpoint
from stream.checkpoint import (
    FORMAT_VERSION,
    MAGIC,
    CheckpointError,
    CheckpointStore,
    CheckpointUnavailableError,
    CheckpointVersionError,
    CorruptCheckpointError,
    read_info,
)
from stream.core import Pipeline
from stream.events import Event, Source
from stream.settings import SettingsError, StreamSettings

KEY = "test-key-0123456789abcdef"
TP = ("events", 0)


def make_events(n: int, seed: int = 3, users: int = 15, items: int = 40) -> list[Event]:
    rng = random.Random(seed)
    kinds = ["view", "view", "click", "add_to_cart", "purchase", "rating"]
    events = []
    for t in range(n):
        kind = rng.choice(kinds)
        events.append(
            Event(
                user_id=f"u{rng.randrange(users)}",
                item_id=f"i{min(rng.randrange(items), rng.randrange(items))}",
                event_type=kind,
                rating=float(rng.randint(1, 5)) if kind == "rating" else None,
                timestamp=1_700_000_000.0 + t,
            )
        )
    return events


def popularity_pipeline() -> Pipeline:
    return Pipeline.from_settings(
        StreamSettings(models=("popularity",), recommender="popularity", seed=5)
    )


def all_models_pipeline() -> Pipeline:
    # The default models (popularity, knn, biased_mf, blend) plus funk_mf: every registered one.
    defaults = StreamSettings()
    models = (*defaults.models, "funk_mf")
    return Pipeline.from_settings(StreamSettings(models=models, drift_min_events=0, seed=5))


def learned_blend_pipeline() -> Pipeline:
    # The default models with the learned fusion (STREAM_BLEND_FUSION=learned).
    return Pipeline.from_settings(
        StreamSettings(blend_fusion="learned", drift_min_events=0, seed=5)
    )


def rebuilt_models_pipeline() -> Pipeline:
    # The full-rebuild models (with their snapshots and windows) and user-based KNN.
    settings = StreamSettings(
        models=("svd", "ease", "userknn"),
        recommender="svd",
        rebuild_min_events=100,
        rebuild_every=100,
        rebuild_background=False,
        svd_factors=4,
        drift_min_events=0,
        seed=5,
    )
    return Pipeline.from_settings(settings)


def feed(pipeline: Pipeline, events: list[Event], start: int = 0) -> list[dict[str, Any]]:
    """Process events; the published recommendations, minus wall-clock fields."""
    out = []
    for offset, event in enumerate(events, start):
        result = pipeline.process_one(event, Source("events", 0, offset))
        rec = result.recommendation
        out.append({} if rec is None else rec.model_dump(exclude={"created_at"}))
    return out


def metrics_of(pipeline: Pipeline) -> dict[str, Any]:
    return pipeline.metrics_record().model_dump(exclude={"created_at"})


def frame(header: bytes, payload: bytes, key: bytes, version: int = FORMAT_VERSION) -> bytes:
    """A checkpoint built from the documented format, independently of the code under test."""
    body = struct.pack(">8sHI", MAGIC, version, len(header)) + header + payload
    body += struct.pack(">Q", len(payload))
    return body + hmac.new(key, body, hashlib.sha256).digest()


def valid_header(next_offset: int = 7) -> bytes:
    return json.dumps(
        {"topic": "events", "partition": 0, "next_offset": next_offset, "created_at": "x"}
    ).encode()


class TouchOnUnpickle:
    """Unpickling this creates ``marker``: a visible side effect, like ``os.system`` would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "ckpt", key=KEY, keep=3)


# --- round trip ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [popularity_pipeline, all_models_pipeline, learned_blend_pipeline, rebuilt_models_pipeline],
)
def test_round_trip_restores_identical_state(store: CheckpointStore, build: Any) -> None:
    events = make_events(400)
    original = build()
    feed(original, events[:300])
    path = store.save(TP, original, next_offset=300)
    assert path.parent == store.directory / "events" / "0"

    restored, offset = store.load(TP)  # type: ignore[misc]
    assert offset == 300
    assert restored is not original
    assert restored.learned == original.learned and restored.learned
    assert restored.run_count == original.run_count == 300
    assert restored.history == original.history
    assert metrics_of(restored) == metrics_of(original)
    users = [*sorted(original.history)[:5], "never-seen"]
    items = ["i0", "i1", "i7", "not-an-item"]
    for name, model in original.models.items():
        twin = restored.models[name]
        for user in users:
            assert twin.top_k(user, 10) == model.top_k(user, 10)
            for item in items:
                assert twin.predict_one(user, item) == model.predict_one(user, item)
    # The strongest check: both go on to learn and recommend exactly alike.
    assert feed(restored, events[300:], 300) == feed(original, events[300:], 300)
    assert metrics_of(restored) == metrics_of(original)


def test_round_trip_with_large_arrays(store: CheckpointStore) -> None:
    # Protocol 5 writes big numpy buffers out of frame (as PickleBuffer): MF over many items.
    settings = StreamSettings(
        models=("popularity", "biased_mf"), recommender="biased_mf", mf_factors=256, seed=2
    )
    original = Pipeline.from_settings(settings)
    events = make_events(900, users=30, items=600)
    feed(original, events[:800])
    store.save(TP, original, next_offset=800)
    assert store.files(TP)[0].stat().st_size > 600 * 256 * 8 // 2
    restored, offset = store.load(TP)  # type: ignore[misc]
    assert offset == 800
    assert feed(restored, events[800:], 800) == feed(original, events[800:], 800)


def test_header_is_readable_without_unpickling(store: CheckpointStore) -> None:
    pipeline = popularity_pipeline()
    feed(pipeline, make_events(50))
    path = store.save(("events", 3), pipeline, next_offset=1234)

    unverified = read_info(path)
    verified = read_info(path, SecretStr(KEY))
    assert not unverified.verified and verified.verified
    h = verified.header
    assert h == unverified.header
    assert (h["topic"], h["partition"], h["next_offset"]) == ("events", 3, 1234)
    assert h["events_learned"] == {"popularity": 50} and h["run_count"] == 50
    assert h["users"] == pipeline.n_users and h["items"] == pipeline.n_items
    assert h["models"] == ["popularity"] and h["recommender"] == "popularity"
    record = pipeline.metrics_record()
    assert h["metrics"]["cumulative_metrics"]["popularity"]["hit_rate"] == pytest.approx(
        record.cumulative_metrics["popularity"].hit_rate
    )
    assert h["metrics"]["window_metrics"]["popularity"]["evaluated"] == (
        record.window_metrics["popularity"].evaluated
    )
    assert h["created_at"].endswith("Z") and h["created_at"].startswith("20")
    with pytest.raises(CorruptCheckpointError, match="HMAC"):
        read_info(path, "another-key")


def test_no_checkpoint_means_none(store: CheckpointStore) -> None:
    assert store.load(TP) is None
    assert store.newest_info(TP) is None


# --- atomic writes -------------------------------------------------------------------


def test_failed_pickling_leaves_no_partial_file(store: CheckpointStore) -> None:
    pipeline = popularity_pipeline()
    feed(pipeline, make_events(100))
    good = store.save(TP, pipeline, next_offset=100)
    before = sorted(os.listdir(good.parent))

    feed(pipeline, make_events(20, seed=9), 100)
    # Set last, so pickling fails after most of the payload was written to the temporary file.
    pipeline.unpicklable = threading.Lock()  # type: ignore[attr-defined]
    with pytest.raises(CheckpointError, match=r"cannot serialise the state of events\[0\]"):
        store.save(TP, pipeline, next_offset=120)

    assert sorted(os.listdir(good.parent)) == before
    restored, offset = store.load(TP)  # type: ignore[misc]
    assert offset == 100 and restored.run_count == 100


def test_disk_error_mid_write_leaves_no_partial_file(
    store: CheckpointStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = popularity_pipeline()
    feed(pipeline, make_events(30))
    store.save(TP, pipeline, next_offset=30)
    before = sorted(os.listdir(store.partition_dir(TP)))

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.save(TP, pipeline, next_offset=31)
    monkeypatch.undo()
    assert sorted(os.listdir(store.partition_dir(TP))) == before


def test_rotation_keeps_the_newest_n(store: CheckpointStore) -> None:
    pipeline = popularity_pipeline()
    events = make_events(60)
    for i in range(6):
        feed(pipeline, events[i * 10 : (i + 1) * 10], i * 10)
        store.save(TP, pipeline, next_offset=(i + 1) * 10)
    files = store.files(TP)
    assert [read_info(p).next_offset for p in files] == [60, 50, 40]
    assert sorted(os.listdir(store.partition_dir(TP))) == sorted(p.name for p in files)
    assert store.load(TP)[1] == 60  # type: ignore[index]


def test_stale_temporary_files_are_ignored_then_cleaned(store: CheckpointStore) -> None:
    pipeline = popularity_pipeline()
    feed(pipeline, make_events(10))
    store.save(TP, pipeline, next_offset=10)
    directory = store.partition_dir(TP)
    stale, fresh = directory / ".tmp-dead.ckpt", directory / ".tmp-live.ckpt"
    stale.write_bytes(b"half a checkpoint")
    fresh.write_bytes(b"being written")
    old = time.time() - 7_200
    os.utime(stale, (old, old))
    assert store.load(TP)[1] == 10  # type: ignore[index]
    store.save(TP, pipeline, next_offset=10)
    assert not stale.exists() and fresh.exists()


# --- corrupt, altered, incompatible files ----------------------------------------------


def _two_checkpoints(store: CheckpointStore) -> tuple[Path, Path]:
    pipeline = popularity_pipeline()
    events = make_events(80)
    feed(pipeline, events[:40])
    older = store.save(TP, pipeline, next_offset=40)
    feed(pipeline, events[40:], 40)
    newer = store.save(TP, pipeline, next_offset=80)
    return older, newer


def _flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: _flip_byte(p, p.stat().st_size // 2), "HMAC mismatch"),
        (lambda p: _flip_byte(p, 40), "HMAC mismatch"),  # inside the JSON header
        (lambda p: _flip_byte(p, p.stat().st_size - 1), "HMAC mismatch"),
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:5]), "truncated"),
        (lambda p: p.write_bytes(b""), "truncated"),
        (lambda p: p.write_bytes(b"NOTACKPT" + p.read_bytes()[8:]), "bad magic"),
    ],
)
def test_corrupt_newest_falls_back_to_previous(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture, damage: Any, reason: str
) -> None:
    older, newer = _two_checkpoints(store)
    damage(newer)
    with caplog.at_level(logging.WARNING, logger="stream.checkpoint"):
        restored, offset = store.load(TP)  # type: ignore[misc]
    assert offset == 40 and restored.run_count == 40
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(newer) in warnings and reason in warnings and older.name in warnings
    assert store.newest_info(TP).path == older  # type: ignore[union-attr]


def test_signed_header_that_is_not_json_falls_back(
    store: CheckpointStore, caplog: pytest.LogCaptureFixture
) -> None:
    _, newer = _two_checkpoints(store)
    newer.write_bytes(frame(b"{not json", pickle.dumps(1), KEY.encode()))
    with caplog.at_level(logging.WARNING):
        assert store.load(TP)[1] == 40  # type: ignore[index]
    assert "not valid JSON" in caplog.text and str(newer) in caplog.text
    with pytest.raises(CorruptCheckpointError, match="not valid JSON"):
        read_info(newer)


def test_a_file_of_another_partition_is_not_loaded(store: CheckpointStore) -> None:
    _, newer = _two_checkpoints(store)
    other = store.partition_dir(("events", 1))
    other.mkdir(parents=True)
    (other / newer.name).write_bytes(newer.read_bytes())
    with pytest.raises(CheckpointUnavailableError, match=r"holds events\[0\]"):
        store.load(("events", 1))


def test_all_bad_is_a_clear_error(store: CheckpointStore) -> None:
    older, newer = _two_checkpoints(store)
    _flip_byte(older, older.stat().st_size // 2)
    newer.write_bytes(newer.read_bytes()[:100])
    with pytest.raises(CheckpointUnavailableError) as err:
        store.load(TP)
    message = str(err.value)
    assert "2 checkpoint file(s)" in message and str(store.partition_dir(TP)) in message
    assert "move that directory away" in message
    assert str(older) in message and str(newer) in message
    with pytest.raises(CheckpointUnavailableError):
        store.newest_info(TP)


def test_altered_file_is_refused_and_never_unpickled(
    store: CheckpointStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Let the allow-list pass pathlib, so that only the HMAC check stands in the way.
    allowed = checkpoint._ALLOWED_FUNCTIONS | {("pathlib", "Path.touch")}
    monkeypatch.setattr(checkpoint, "_ALLOWED_FUNCTIONS", allowed)
    older, newer = _two_checkpoints(store)
    marker = tmp_path / "pwned"
    evil = pickle.dumps(TouchOnUnpickle(marker), protocol=5)
    pickle.loads(evil)  # the payload really does have a side effect when unpickled ...
    assert marker.exists()
    marker.unlink()

    # ... an attacker without the key: a well-formed file, but signed with another key,
    newer.write_bytes(frame(valid_header(80), evil, b"attacker-key"))
    assert store.load(TP)[1] == 40  # type: ignore[index]
    assert not marker.exists()
    older.unlink()
    with pytest.raises(CheckpointUnavailableError, match="HMAC mismatch"):
        store.load(TP)
    assert not marker.exists()

    # ... or a genuine file whose payload was swapped, the framing fixed up, the MAC kept.
    pipeline = popularity_pipeline()
    good = store.save(TP, pipeline, next_offset=1)
    data = good.read_bytes()
    (header_len,) = struct.unpack(">I", data[10:14])
    header, mac = data[14 : 14 + header_len], data[-32:]
    good.write_bytes(data[:14] + header + evil + struct.pack(">Q", len(evil)) + mac)
    with pytest.raises(CheckpointUnavailableError, match="HMAC mismatch"):
        store.load(TP)
    assert not marker.exists()


def _global_call(module: str, name: str, *args: str) -> bytes:
    """A protocol-5 pickle calling ``module.name(*args)`` (names may be dotted)."""

    def text(value: str) -> bytes:
        raw = value.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    return (
        b"\x80\x05" + text(module) + text(name) + b"\x93("
        + b"".join(text(a) for a in args) + b"tR."
    )  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        ("touch", r"pathlib\.Path\.touch is not allowed"),
        # Reaching through a module's imports with a dotted name: stream.core imports time.
        ("dotted", r"stream\.core\.time\.sleep is not allowed"),
        # getattr is allowed for River's bound methods, but not to dunders of anything.
        ("getattr", r"getattr\(type, '__subclasses__'\) is not allowed"),
    ],
)
def test_even_a_validly_signed_file_cannot_run_code(
    store: CheckpointStore, tmp_path: Path, payload: str, refused: str
) -> None:
    # Defence in depth for a leaked key: only allow-listed globals are resolved.
    marker = tmp_path / "pwned"
    evil = {
        "touch": pickle.dumps(TouchOnUnpickle(marker), protocol=5),
        "dotted": _global_call("stream.core", "time.sleep", "5"),
        "getattr": _global_call("builtins", "getattr", "x", "__subclasses__").replace(
            b"\x8c\x01x", b"\x8c\x08builtins\x8c\x03int\x93"
        ),
    }[payload]
    directory = store.partition_dir(TP)
    directory.mkdir(parents=True)
    (directory / "000000000001-7.ckpt").write_bytes(frame(valid_header(), evil, KEY.encode()))
    with pytest.raises(CheckpointUnavailableError, match=refused):
        store.load(TP)
    assert not marker.exists()


def test_signed_payload_that_is_not_a_pipeline_is_refused(store: CheckpointStore) -> None:
    directory = store.partition_dir(TP)
    directory.mkdir(parents=True)
    (directory / "000000000001-7.ckpt").write_bytes(
        frame(valid_header(), pickle.dumps({"a": 1}), KEY.encode())
    )
    with pytest.raises(CheckpointUnavailableError, match="payload is a dict"):
        store.load(TP)


def test_another_format_version_is_an_error_not_a_fallback(store: CheckpointStore) -> None:
    older, newer = _two_checkpoints(store)
    newer.write_bytes(frame(valid_header(80), b"future payload", KEY.encode(), version=2))
    with pytest.raises(CheckpointVersionError, match=r"format version 2.*reads version 1") as err:
        store.load(TP)
    assert str(newer) in str(err.value)
    with pytest.raises(CheckpointVersionError):
        read_info(newer)
    assert older.exists()


# --- settings, privacy --------------------------------------------------------------


def test_from_settings(tmp_path: Path) -> None:
    assert CheckpointStore.from_settings(StreamSettings(checkpoint_dir=None)) is None
    with pytest.raises(SettingsError, match="STREAM_CHECKPOINT_KEY"):
        CheckpointStore.from_settings(StreamSettings(checkpoint_dir=tmp_path))
    with pytest.raises(SettingsError, match="STREAM_CHECKPOINT_KEY"):
        CheckpointStore.from_settings(
            StreamSettings(checkpoint_dir=tmp_path, checkpoint_key=SecretStr(""))
        )
    store = CheckpointStore.from_settings(
        StreamSettings(checkpoint_dir=tmp_path, checkpoint_key=SecretStr(KEY), checkpoint_keep=5)
    )
    assert store is not None and store.directory == tmp_path and store.keep == 5
    assert KEY not in repr(store)


def test_read_only_store_lists_but_cannot_restore(store: CheckpointStore) -> None:
    _two_checkpoints(store)
    reader = CheckpointStore(store.directory, key=None)
    assert reader.partitions() == [TP]
    info = reader.newest_info(TP)
    assert info is not None and info.next_offset == 80 and not info.verified
    with pytest.raises(CheckpointError, match="STREAM_CHECKPOINT_KEY"):
        reader.load(TP)
    with pytest.raises(CheckpointError, match="STREAM_CHECKPOINT_KEY"):
        reader.save(TP, popularity_pipeline(), 1)


def test_forgotten_user_leaves_new_checkpoints_and_prune_removes_old(
    store: CheckpointStore,
) -> None:
    pipeline = popularity_pipeline()
    events = make_events(60)
    feed(pipeline, events)
    store.save(TP, pipeline, next_offset=60)
    user = events[0].user_id
    forget = Event(user_id=user, event_type="forget", timestamp=1_700_000_100.0)
    pipeline.process_one(forget, Source("events", 0, 60))
    newest = store.save(TP, pipeline, next_offset=61)

    restored, _ = store.load(TP)  # type: ignore[misc]
    assert user not in restored.history and restored.n_users == pipeline.n_users
    older_state, _ = store.read(store.files(TP)[1])
    assert user in older_state.history  # older checkpoints hold the user until rotated out

    kept, deleted = store.prune(TP)
    assert kept.path == newest and len(deleted) == 1
    assert store.files(TP) == [newest]


def test_prune_keeps_the_newest_good_file(store: CheckpointStore) -> None:
    older, newer = _two_checkpoints(store)
    _flip_byte(newer, newer.stat().st_size // 2)
    kept, deleted = store.prune(TP, dry_run=True)
    assert kept.path == older and deleted == [newer] and newer.exists()
    store.prune(TP)
    assert store.files(TP) == [older]
