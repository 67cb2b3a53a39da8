"""A wrong ``--format`` rejects every line: replay and evaluate must fail, not "succeed"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producers.__main__ import main as producers_main
from stream.__main__ import main as stream_main


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "x.jsonl"
    lines = [
        {"user_id": f"u{n % 7}", "item_id": f"i{n % 11}", "event_type": "view", "timestamp": n}
        for n in range(1, 301)
    ]
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in lines))
    return path


def test_replay_with_the_wrong_format_exits_2_with_a_hint(
    jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    code = producers_main(
        ["replay", str(jsonl), "--format", "movielens-100k", "--output", str(out), "-q"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    error = err.strip().splitlines()[-1]
    assert error.startswith("error: no valid event in ")
    assert "300 of 300 line(s) rejected" in error and "check --format" in error
    assert out.read_bytes() == b""
    # The right format sends everything and exits 0.
    assert producers_main(["replay", str(jsonl), "--format", "jsonl", "--output", str(out)]) == 0
    assert len(out.read_bytes().splitlines()) == 300


def test_replay_of_an_empty_file_or_a_zero_limit(
    jsonl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert producers_main(["replay", str(empty), "--dry-run", "-q"]) == 2
    assert "has no data lines" in capsys.readouterr().err
    # Asking for nothing is not a failure; a time window that leaves nothing neither.
    assert producers_main(["replay", str(jsonl), "--dry-run", "--limit", "0", "-q"]) == 0
    assert producers_main(["replay", str(jsonl), "--dry-run", "--start", "1000000", "-q"]) == 0


def test_evaluate_with_the_wrong_format_exits_2_with_a_hint(
    jsonl: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(jsonl.parent)  # no .env of the developer's
    code = stream_main(["evaluate", str(jsonl), "--format", "csv"])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "0 events" not in captured.out
    error = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "read as csv" in error[0], captured.err
    assert "check --format" in error[0] and "--columns" in error[0]
    assert stream_main(["evaluate", str(jsonl), "--format", "jsonl"]) == 0
    assert "300 events" in capsys.readouterr().out
