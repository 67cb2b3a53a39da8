"""``python -m producers``: flags, summaries, files out, and clear one-line errors."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from producers.__main__ import guess_format, main
from producers.synthetic import generate, write_jsonl
from stream.broker import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``.env`` or STREAM_ variables of the developer's shell leak into these runs."""
    monkeypatch.chdir(tmp_path)
    for name in ("STREAM_BOOTSTRAP_SERVERS", "STREAM_EVENTS_TOPIC", "STREAM_RATING_MAX"):
        monkeypatch.delenv(name, raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def event(user: str, item: str, ts: float, kind: str = "view") -> dict[str, Any]:
    return {"user_id": user, "item_id": item, "event_type": kind, "timestamp": ts}


@pytest.mark.parametrize("command", ["replay", "synthetic"])
def test_help_names_the_environment_variables(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    text = " ".join(out.split())
    for flag in ("--bootstrap-servers", "--topic", "--output", "--rate", "--speed"):
        assert flag in text
    assert "$STREAM_BOOTSTRAP_SERVERS" in text and "$STREAM_EVENTS_TOPIC" in text


def test_missing_file_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "replay", "nope.jsonl")
    assert code == 2
    assert one_line_error(err) == "error: no such file: nope.jsonl"


def test_unknown_or_unguessable_format(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "log.bin").write_text("x\n")
    code, _, err = run(capsys, "replay", "log.bin", "--format", "parquet")
    assert code == 2 and "unknown format 'parquet'" in one_line_error(err)
    code, _, err = run(capsys, "replay", "log.bin")
    assert code == 2 and "cannot tell the format of log.bin" in one_line_error(err)


def test_unreachable_broker_is_one_line_and_bounded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write_jsonl([event("u1", "a", 1)], tmp_path / "log.jsonl")
    server = f"127.0.0.1:{free_port()}"  # nothing listens there
    code, _, err = run(
        capsys, "replay", "log.jsonl", "--bootstrap-servers", server, "--connect-timeout", "1"
    )
    assert code == 1
    assert one_line_error(err) == f"error: no Kafka broker reachable at {server} within 1s"


def test_settings_come_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_jsonl([event("u1", "a", 1)], tmp_path / "log.jsonl")
    monkeypatch.setenv("STREAM_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("STREAM_EVENTS_TOPIC", "from-env")
    code, _, err = run(capsys, "replay", "log.jsonl", "--connect-timeout", "1")
    assert code == 1 and "no Kafka broker reachable at 127.0.0.1:" in err
    monkeypatch.setenv("STREAM_BOOTSTRAP_SERVERS", " , ")
    code, _, err = run(capsys, "replay", "log.jsonl", "--dry-run")
    assert code == 2 and "STREAM_BOOTSTRAP_SERVERS" in one_line_error(err)


def test_replay_to_a_file_in_time_order_with_rejects_and_summary(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = [
        json.dumps(event("u1", "a", 30)),
        "{broken",
        json.dumps(event("u2", "b", 10)),
        json.dumps(event("u1", "c", 20, "teleport")),
        json.dumps(event("u3", "d", 5)),
        json.dumps(event("u3", "e", 99)),
    ]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = run(
        capsys,
        "replay",
        "log.jsonl",
        "--output",
        "out.jsonl",
        "--rejects",
        "rejects.jsonl",
        "--end",
        "1970-01-01T00:01:00Z",
    )
    assert code == 0, err
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(e["user_id"], e["timestamp"]) for e in out] == [("u3", 5), ("u2", 10), ("u1", 30)]
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (2, "invalid_json"),
        (4, "unknown_event_type"),
    ]
    assert rejects[0]["raw"] == "{broken"
    summary = dict(
        line.strip().split(None, 1) for line in err.splitlines() if line.startswith("  ")
    )
    assert summary["lines"] == "6"
    assert summary["sent"] == "3"
    assert summary["skipped"] == "1 (1 outside --start/--end)"
    assert summary["rejected"] == "2 (invalid_json 1, unknown_event_type 1)"
    assert summary["failed"] == "0"
    assert any("log.jsonl:2: rejected (invalid_json)" in m for m in caplog.messages)


def test_gzip_from_stdin_unsorted_with_a_limit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = gzip.compress(b"".join(f"{u}\t{u * 10}\t4\t{1000 - u}\n".encode() for u in range(1, 9)))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data))))
    code, out, err = run(
        capsys,
        "replay",
        "-",
        "--format",
        "movielens-100k",
        "--no-sort",
        "--limit",
        "3",
        "--output",
        "-",
    )
    assert code == 0, err
    assert [json.loads(line)["user_id"] for line in out.splitlines()] == ["1", "2", "3"]
    assert "stopped reading at --limit" in err


def test_csv_header_problem_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "log.csv").write_text("uid,sku,ts\na,b,1\n")
    code, _, err = run(capsys, "replay", "log.csv", "--dry-run", "--event-type", "view")
    assert code == 2
    assert "error: csv header has no column 'user_id'" in err and "Traceback" not in err
    code, _, err = run(
        capsys,
        "replay",
        "log.csv",
        "--dry-run",
        "--event-type",
        "view",
        "--columns",
        "user_id=uid,item_id=sku,timestamp=ts",
    )
    assert code == 0 and "sent      1" in err
    code, _, err = run(capsys, "replay", "log.csv", "--dry-run", "--columns", "colour=uid")
    assert code == 2 and "unknown field 'colour'" in one_line_error(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "log.jsonl", "--rate", "5", "--speed", "2"],
        ["replay", "log.jsonl", "--start", "tomorrow-ish"],
        ["replay", "log.jsonl", "--start", "20", "--end", "10"],
        ["replay", "log.jsonl", "--max-gap", "3"],
        ["replay", "log.jsonl", "--output", "x.jsonl", "--dry-run"],
        ["replay", "log.jsonl", "--limit", "-1"],
        ["replay", "log.jsonl", "--event-type", "teleport"],
        ["replay", "log.jsonl", "--delimiter", ";;"],
        ["synthetic", "--events", "10", "--in-cluster-prob", "2"],
        ["synthetic", "--drift-kind", "sideways"],
        [],
    ],
)
def test_bad_options_exit_2_without_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    write_jsonl([event("u1", "a", 1)], tmp_path / "log.jsonl")
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err and err.strip()


def test_synthetic_output_is_the_python_api_stream(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["synthetic", "--events", "2000", "--seed", "4", "--drift-at", "1000"]
    code, _, err = run(capsys, *argv, "--ratings-fraction", "0.1", "--output", "a.jsonl")
    assert code == 0, err
    assert "sent    2,000" in err and "abrupt drift at 1,000" in err
    write_jsonl(generate(2000, seed=4, drift_at=1000, ratings_fraction=0.1), tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    code, _, err = run(capsys, *argv, "--dry-run")
    assert code == 0 and "nowhere (dry run)" in err


def test_unwritable_output_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "synthetic", "--events", "5", "--output", str(tmp_path))
    assert code == 1 and "cannot write" in one_line_error(err)


def test_the_module_runs_as_a_program_without_tracebacks(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "producers", "replay", "missing.dat", "--format", "movielens-1m"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "error: no such file: missing.dat\n"


def test_guess_format() -> None:
    assert guess_format("data/ml-100k/u.data") == "movielens-100k"
    assert guess_format("ratings.csv.gz") == "movielens-csv"
    assert guess_format("clicks.csv") == "csv"
    assert guess_format("events.ndjson") == "jsonl"
    assert guess_format("events.parquet") is None
