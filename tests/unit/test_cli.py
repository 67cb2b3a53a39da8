"""What the command lines promise: help for everything, log levels, pipes, evaluate's options."""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from producers.__main__ import build_parser as producers_parser
from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.__main__ import _build_parser as stream_parser
from stream.__main__ import main
from stream.cli_help import parse_log_level, subparsers

REPO = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``.env`` or STREAM_ variables of the developer's shell leak into these runs."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("STREAM_"):
            monkeypatch.delenv(name)


# --- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [stream_parser, producers_parser], ids=["stream", "producers"])
def test_every_command_has_a_description_and_every_option_help_with_its_default(
    build: object,
) -> None:
    parser = build()  # type: ignore[operator]
    commands = list(subparsers(parser))
    assert len(commands) >= 2
    for sub, _ in commands:
        assert sub.description, f"{sub.prog} has no description"
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{sub.prog} {action.option_strings[0]} has no help"
            default = action.default
            if default not in (None, False, argparse.SUPPRESS):
                flat = " ".join(text.split())
                shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
                assert f"default: {shown}" in flat or "default" in action.help.lower(), (
                    f"{sub.prog} {action.option_strings[0]}: default {default!r} not shown"
                )


def test_the_options_the_issue_named_show_their_defaults() -> None:
    demo = next(p for p, _ in subparsers(stream_parser()) if p.prog.endswith(" demo"))
    flat = " ".join(demo.format_help().split())
    for needle in (
        "--users USERS synthetic users (default: 500)",
        "(default: 1000)",
        "(default: 7)",
    ):
        assert needle in flat
    synthetic = next(p for p, _ in subparsers(producers_parser()) if p.prog.endswith("synthetic"))
    flat = " ".join(synthetic.format_help().split())
    assert "share of events that are explicit ratings (default: 0.0)" in flat
    assert "--seed SEED seed: same seed, same events (default: 0)" in flat
    worker = next(p for p, _ in subparsers(stream_parser()) if p.prog.endswith(" worker"))
    flat = " ".join(worker.format_help().split())
    assert "[env STREAM_BOOTSTRAP_SERVERS, default localhost:9092]" in flat
    assert "[env STREAM_CHECKPOINT_DIR, default unset]" in flat


# --- log level ----------------------------------------------------------------------------------


def test_log_level_is_accepted_before_and_after_the_command() -> None:
    parser = stream_parser()
    assert parser.parse_args(["--log-level", "ERROR", "settings"]).log_level == "ERROR"
    assert parser.parse_args(["settings", "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert parser.parse_args(["worker", "--max-events", "1", "--log-level", "debug"]).log_level
    ns = parser.parse_args(["checkpoint", "ls", "--log-level", "WARNING"])
    assert ns.log_level == "WARNING"
    ns = parser.parse_args(["--log-level", "ERROR", "evaluate", "x", "--format", "jsonl"])
    assert ns.log_level == "ERROR"
    assert parser.parse_args(["settings"]).log_level is None  # then STREAM_LOG_LEVEL, else INFO


def test_parse_log_level_flag_wins_and_names_the_source_of_a_bad_value() -> None:
    env = {"STREAM_LOG_LEVEL": "warning"}
    assert parse_log_level(None, env) == logging.WARNING
    assert parse_log_level("debug", env) == logging.DEBUG
    assert parse_log_level(None, {}) == logging.INFO
    with pytest.raises(ValueError, match=r"STREAM_LOG_LEVEL='verbose' is not a log level"):
        parse_log_level(None, {"STREAM_LOG_LEVEL": "verbose"})
    with pytest.raises(ValueError, match=r"--log-level 'loud' is not a log level"):
        parse_log_level("loud", env)


def test_an_invalid_log_level_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAM_LOG_LEVEL", "verbose")
    assert main(["settings"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: STREAM_LOG_LEVEL='verbose' is not a log level")
    assert main(["settings", "--log-level", "chatty"]) == 2
    assert "--log-level 'chatty'" in capsys.readouterr().err


# --- a reader that goes away -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["stream", "settings"], 141),
        (["stream", "settings", "--markdown"], 141),
        (["stream", "schema"], 141),
        # The JSONL sink reports it as an error of the destination: one line, exit 1.
        (["producers", "synthetic", "--events", "2000", "--output", "-", "--quiet"], 1),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_a_closed_stdout_ends_quietly(argv: list[str], code: int, tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # like `| head` that has already exited: every write fails with EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=child_env(),
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert proc.returncode == code, proc.stderr


# --- evaluate ---------------------------------------------------------------------------------


def _csv(path: Path, n: int = 400) -> Path:
    lines = ["uid;sku;ts"]
    lines += [f"u{i % 20};i{(i * 7) % 30};{1_700_000_000 + i}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_reads_csv_with_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _csv(tmp_path / "log.csv")
    code = main(
        [
            "evaluate",
            str(log),
            "--format",
            "csv",
            "--columns",
            "user_id=uid,item_id=sku,timestamp=ts",
            "--event-type",
            "click",
            "--delimiter",
            ";",
            "--report",
            str(tmp_path / "report"),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("400 events")
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["events"] == 400


def test_evaluate_rejects_a_bad_columns_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _csv(tmp_path / "log.csv")
    code = main(["evaluate", str(log), "--format", "csv", "--columns", "user=uid"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --columns: unknown field 'user'")


def _drifting_log(path: Path) -> Path:
    stream = SyntheticStream(
        SyntheticConfig(n_events=6_000, n_users=60, n_items=200, seed=3, drift_at=3_000)
    )
    with path.open("wb") as f:
        for record in stream.records():
            f.write(record.value + b"\n")
    return path


def test_evaluate_summarises_drift_instead_of_one_warning_per_detection(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every detection reported (no filter), so that there are many to summarise.
    monkeypatch.setenv("STREAM_DRIFT_DIRECTION", "both")
    monkeypatch.setenv("STREAM_DRIFT_MIN_CHANGE", "0")
    log = _drifting_log(tmp_path / "drift.jsonl")
    caplog.set_level(logging.INFO)
    report = tmp_path / "report"
    assert main(["evaluate", str(log), "--format", "jsonl", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    drifts = json.loads((report / "metrics.json").read_text())["drifts"]
    assert len(drifts) >= 2, "the stream should make the detectors fire"
    assert not [r for r in caplog.records if "drift detected by" in r.getMessage()]
    lines = out[out.index("drift detected") :].splitlines()
    assert lines[0].startswith(f"drift detected {len(drifts)} times")
    series = {(d["model"], d["metric"]) for d in drifts}
    assert len(lines) == 1 + len(series)  # one line per model and metric, not per detection
    # Per detection, at DEBUG only.
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="stream.core")
    assert main(["evaluate", str(log), "--format", "jsonl"]) == 0
    debug = [r for r in caplog.records if "drift detected by" in r.getMessage()]
    assert len(debug) == len(drifts) and {r.levelno for r in debug} == {logging.DEBUG}


def _evaluate_on(stderr_tty: bool, log: Path, tmp_path: Path) -> str:
    cmd = [sys.executable, "-m", "stream", "evaluate", str(log), "--format", "jsonl"]
    if not stderr_tty:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, cwd=tmp_path, env=child_env(), timeout=180
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr
    controller, terminal = pty.openpty()
    # A new pty is 0 columns wide, where tqdm draws nothing; a real terminal has a size.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        proc2 = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=terminal, cwd=tmp_path, env=child_env()
        )
        os.close(terminal)
        chunks = []
        while True:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc2.wait(timeout=180) == 0
    finally:
        os.close(controller)
    return b"".join(chunks).decode("utf-8", "replace")


def test_evaluate_shows_progress_on_a_terminal_and_is_quiet_otherwise(tmp_path: Path) -> None:
    log = _drifting_log(tmp_path / "log.jsonl")
    on_terminal = _evaluate_on(True, log, tmp_path)
    assert "evaluating" in on_terminal and "6.00k/6.00k" in on_terminal, on_terminal[-2000:]
    assert "ev/s" in on_terminal
    off_terminal = _evaluate_on(False, log, tmp_path)
    assert "evaluating" not in off_terminal and "ev/s" not in off_terminal


@pytest.mark.parametrize(
    "name",
    [
        "stream.cli_help",
        "stream.drift",
        "stream.evaluate",
        "stream.hugepages",
        "stream.log_sampler",
        "stream.worker",
    ],
)
def test_docstring_examples(name: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed
