from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stream.checkpoint import CheckpointStore
from stream.checkpoint_cli import main
from stream.core import Pipeline
from stream.events import Event, Source
from stream.settings import StreamSettings

KEY = "cli-test-key-0123456789"
ROOT = Path(__file__).resolve().parents[2]


def make_events(n: int, partition: int) -> list[Event]:
    rng = random.Random(partition)
    return [
        Event(
            user_id=f"p{partition}-u{rng.randrange(12)}",  # users are keyed to one partition
            item_id=f"i{rng.randrange(30)}",
            event_type=rng.choice(["view", "click", "purchase"]),
            timestamp=1_700_000_000.0 + t,
        )
        for t in range(n)
    ]


def build(settings: StreamSettings, partition: int, n: int) -> Pipeline:
    pipeline = Pipeline.from_settings(settings)
    for offset, event in enumerate(make_events(n, partition)):
        pipeline.process_one(event, Source("events", partition, offset))
    return pipeline


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment (no stray STREAM_*, no .env) with the key and directory set."""
    monkeypatch.chdir(tmp_path)
    for var in ("STREAM_CHECKPOINT_DIR", "STREAM_CHECKPOINT_KEY", "STREAM_CHECKPOINT_KEEP"):
        monkeypatch.delenv(var, raising=False)
    directory = tmp_path / "checkpoints"
    monkeypatch.setenv("STREAM_CHECKPOINT_DIR", str(directory))
    monkeypatch.setenv("STREAM_CHECKPOINT_KEY", KEY)
    return directory


@pytest.fixture
def stored(env: Path) -> dict[int, Pipeline]:
    """Two partitions: 0 with two checkpoints (offsets 40, 90), 1 with one (offset 70)."""
    settings = StreamSettings(models=("popularity",), recommender="popularity")
    store = CheckpointStore(env, KEY)
    first = build(settings, 0, 40)
    store.save(("events", 0), first, 40)
    pipelines = {0: build(settings, 0, 90), 1: build(settings, 1, 70)}
    store.save(("events", 0), pipelines[0], 90)
    store.save(("events", 1), pipelines[1], 70)
    return pipelines


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_lists_every_file_with_its_status(
    stored: dict[int, Pipeline], env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = next((env / "events" / "1").glob("*.ckpt"))
    bad.write_bytes(bad.read_bytes()[:-10])
    code, out, _ = run(["ls"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["TOPIC", "PARTITION", "FILE"]
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1], r[2], r[4]) for r in rows[:2]] == [
        ("events", "0", "000000000002-90.ckpt", "90"),
        ("events", "0", "000000000001-40.ckpt", "40"),
    ]
    assert all(r[-1] == "verified" for r in rows[:2])
    assert rows[2][:3] == ["events", "1", bad.name] and "bad:" in lines[3]


def test_ls_without_key_says_unverified(
    stored: dict[int, Pipeline], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STREAM_CHECKPOINT_KEY")
    code, out, err = run(["ls", "--partition", "1"], capsys)
    assert code == 0 and "unverified" in out and "STREAM_CHECKPOINT_KEY" in err
    assert "events  0" not in out


def test_inspect_json(stored: dict[int, Pipeline], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["inspect", "--json"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["offsets"] == {"events": {"0": 90, "1": 70}}
    assert doc["events_learned"] == {"popularity": 160}
    assert doc["run_count"] == 160 and doc["verified"] is True and doc["errors"] == []
    assert doc["users"] == stored[0].n_users + stored[1].n_users
    assert doc["items"] == max(p.n_items for p in stored.values())
    assert doc["models"] == ["popularity"]
    parts = {p["partition"]: p for p in doc["partitions"]}
    assert doc["created_at"] == max(p["created_at"] for p in parts.values())
    assert doc["created_at"].endswith("Z")
    for n, pipeline in stored.items():
        record = pipeline.metrics_record()
        assert parts[n]["events_learned"] == pipeline.learned
        assert parts[n]["metrics"]["cumulative_metrics"]["popularity"]["hit_rate"] == (
            pytest.approx(record.cumulative_metrics["popularity"].hit_rate)
        )
    merged = doc["metrics"]["cumulative_metrics"]["popularity"]
    assert merged["evaluated"] == sum(p.evaluated_count for p in stored.values())


def test_inspect_skips_a_corrupt_newest_and_filters(
    stored: dict[int, Pipeline], env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newest = env / "events" / "0" / "000000000002-90.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # (never the same byte)
    code, out, _ = run(["inspect", "--json", "--topic", "events", "--partition", "0"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["offsets"] == {"events": {"0": 40}} and doc["events_learned"] == {"popularity": 40}


def test_inspect_human_readable(
    stored: dict[int, Pipeline], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STREAM_CHECKPOINT_KEY")
    code, out, _ = run(["inspect"], capsys)
    assert code == 0
    assert "UNVERIFIED" in out and "events[0]  next_offset 90" in out and "HR@10" in out


def test_inspect_reports_a_partition_with_nothing_usable(
    stored: dict[int, Pipeline], env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in (env / "events" / "1").glob("*.ckpt"):
        path.write_bytes(b"garbage")
    code, out, err = run(["inspect", "--json"], capsys)
    assert code == 1
    doc = json.loads(out)
    assert doc["offsets"] == {"events": {"0": 90}}
    assert doc["errors"][0]["partition"] == 1 and "move that directory away" in err


def test_export(
    stored: dict[int, Pipeline], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out" / "export.json"
    code, out, _ = run(["export", "--output", str(output)], capsys)
    assert code == 0 and "2 partition(s)" in out
    doc = json.loads(output.read_text())
    assert doc["format"] == "stream-checkpoint-export"
    assert doc["summary"]["offsets"] == {"events": {"0": 90, "1": 70}}
    parts = {p["partition"]: p for p in doc["partitions"]}
    for n, pipeline in stored.items():
        expected = {u: list(items) for u, items in pipeline.history.items()}
        assert parts[n]["history"] == expected
        assert parts[n]["header"]["next_offset"] == (90 if n == 0 else 70)
        model = parts[n]["models"]["popularity"]
        assert model["events_learned"] == pipeline.learned["popularity"]
        assert model["items"] == pipeline.models["popularity"].n_items
        top = pipeline.fallback.top_k(None, 5)
        assert [p["item_id"] for p in parts[n]["popular_items"][:5]] == [s.item for s in top]
    assert output.stat().st_mode & 0o077 == 0  # personal data: owner only


def test_export_with_matrix_factorisation_vectors(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = StreamSettings(models=("popularity", "biased_mf"), recommender="biased_mf")
    pipeline = build(settings, 0, 60)
    CheckpointStore(env, KEY).save(("events", 0), pipeline, 60)
    output = tmp_path / "mf.json"
    assert run(["export", "--output", str(output)], capsys)[0] == 0
    mf = json.loads(output.read_text())["partitions"][0]["models"]["biased_mf"]
    assert mf["events_learned"] == 60
    vectors = [v for k, v in mf.items() if k.endswith("latents") or k.endswith("vectors")]
    assert vectors, f"no latent vectors exported: {sorted(mf)}"


def test_export_needs_the_key(
    stored: dict[int, Pipeline],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("STREAM_CHECKPOINT_KEY")
    code, _, err = run(["export", "--output", str(tmp_path / "x.json")], capsys)
    assert code == 2 and "STREAM_CHECKPOINT_KEY" in err
    assert not (tmp_path / "x.json").exists()


def test_prune_keep_latest(
    stored: dict[int, Pipeline], env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["prune", "--keep-latest", "1", "--dry-run"], capsys)
    assert code == 0 and "would delete 1 file(s)" in out
    assert len(list((env / "events" / "0").glob("*.ckpt"))) == 2
    code, out, _ = run(["prune", "--keep-latest", "1"], capsys)
    assert code == 0 and "kept 000000000002-90.ckpt" in out
    assert [p.name for p in (env / "events" / "0").glob("*.ckpt")] == ["000000000002-90.ckpt"]


def test_prune_keep_latest_n_keeps_the_newest_n_that_verify(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = StreamSettings(models=("popularity",), recommender="popularity")
    store = CheckpointStore(env, KEY, keep=10)
    for offset in (10, 20, 30, 40):
        store.save(("events", 0), build(settings, 0, offset), offset)
    directory = env / "events" / "0"
    newest = sorted(directory.glob("*.ckpt"))[-1]
    newest.write_bytes(newest.read_bytes()[:-10])  # truncated: never kept, always deleted
    code, out, _ = run(["prune", "--keep-latest", "2", "--dry-run"], capsys)
    assert code == 0 and "would delete 2 file(s)" in out
    code, out, _ = run(["prune", "--keep-latest", "2"], capsys)
    assert code == 0, out
    assert "kept 000000000003-30.ckpt" in out and "and 1 older" in out
    assert sorted(p.name for p in directory.glob("*.ckpt")) == [
        "000000000002-20.ckpt",
        "000000000003-30.ckpt",
    ]
    for bad in ("0", "-1", "two"):
        code, _, err = run(["prune", "--keep-latest", bad], capsys)
        assert code == 2 and "--keep-latest" in err


def test_readme_prune_command_works_through_python_dash_m_stream(
    stored: dict[int, Pipeline], env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stream.__main__ import main as stream_main

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "checkpoint prune --keep-latest 1" in readme
    assert stream_main(["checkpoint", "prune", "--keep-latest", "1"]) == 0
    assert "kept 000000000002-90.ckpt" in capsys.readouterr().out
    assert len(list((env / "events" / "0").glob("*.ckpt"))) == 1


def test_errors_are_messages_with_exit_codes(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["ls"], capsys)
    assert code == 1 and "does not exist" in err
    code, _, err = run(["ls", "--dir", str(tmp_path)], capsys)
    assert code == 1 and "no checkpoints" in err
    monkeypatch.delenv("STREAM_CHECKPOINT_DIR")
    code, _, err = run(["inspect"], capsys)
    assert code == 2 and "STREAM_CHECKPOINT_DIR" in err
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2 and "invalid choice" in err


def test_python_dash_m_stream_checkpoint(
    stored: dict[int, Pipeline], env: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stream", "checkpoint", "inspect", "--json", "--dir", str(env)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_child_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["offsets"] == {"events": {"0": 90, "1": 70}}
    broken = subprocess.run(
        [sys.executable, "-m", "stream", "checkpoint", "ls", "--dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_child_env(),
        timeout=120,
    )
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "does not exist" in broken.stderr


def _child_env() -> dict[str, Any]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    env["STREAM_CHECKPOINT_KEY"] = KEY
    env["PYTHONPATH"] = str(ROOT)
    return env
