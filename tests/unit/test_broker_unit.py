"""EmbeddedBroker's failure paths and the edges' backoff, without a Kafka broker.

The "binaries" here are tiny shell scripts standing in for a broker that cannot start (they
are selected the way users select their own Tansu: ``CALF_TANSU_BIN``).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from stream.broker import BrokerError, EmbeddedBroker, free_port
from stream.kafka import Backoff


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-tansu"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_bootstrap_before_start_is_an_error() -> None:
    with pytest.raises(BrokerError, match="not been started"):
        _ = EmbeddedBroker().bootstrap


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "nope"))
    with pytest.raises(
        BrokerError, match=r"no Tansu broker binary for this platform(.|\n)*CALF_TANSU_BIN"
    ):
        EmbeddedBroker().start()


def test_a_broker_that_exits_at_once_reports_its_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(
        "CALF_TANSU_BIN", str(_script(tmp_path, "echo 'boom: bad flag' >&2; exit 2"))
    )
    broker = EmbeddedBroker(port=free_port(), startup_timeout_s=5)
    with pytest.raises(BrokerError, match=r"exited at start with code 2(.|\n)*boom: bad flag"):
        broker.start()
    assert not broker.running


def test_a_broker_that_never_answers_times_out_and_is_killed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", str(_script(tmp_path, "echo starting; exec sleep 60")))
    broker = EmbeddedBroker(port=free_port(), startup_timeout_s=1)
    with pytest.raises(BrokerError, match=r"no Kafka broker answered(.|\n)*starting"):
        broker.start()
    assert not broker.running
    assert broker.log_path is None  # its temporary log was removed with it


def test_stray_tansu_environment_is_not_passed_to_the_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "env.txt"
    monkeypatch.setenv("STORAGE_ENGINE", "postgres://elsewhere")
    monkeypatch.setenv("CALF_TANSU_BIN", str(_script(tmp_path, f'env > {out}; echo "$@" >> {out}')))
    with pytest.raises(BrokerError):
        EmbeddedBroker(port=free_port(), startup_timeout_s=1).start()
    text = out.read_text()
    assert "postgres://elsewhere" not in text
    assert "--storage-engine memory://tansu/" in text
    assert os.environ["STORAGE_ENGINE"] == "postgres://elsewhere"  # ours is untouched


def test_backoff_grows_to_its_cap_and_honours_the_deadline() -> None:
    backoff = Backoff(initial_s=0.5, max_s=3.0, deadline_s=None)
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert not backoff.expired() and backoff.remaining() is None
    assert backoff.attempt_timeout_ms(5_000) == 5_000
    backoff.reset()
    assert backoff.next_delay() == 0.5
    done = Backoff(deadline_s=0)
    assert done.expired()
    assert done.attempt_timeout_ms(5_000) == 100  # never a zero or negative timeout


# --- the CI rule of tests/conftest.py: integration tests are never skipped in CI ---------------

_SKIPPING_TEST = """
import pytest

def test_needs_a_broker():
    pytest.skip("no broker here")

@pytest.mark.xfail(reason="known")
def test_known_failure():
    assert False
"""


def _run_suite(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    tests = tmp_path / "tests"
    (tests / "integration").mkdir(parents=True)
    shutil.copy(Path(__file__).parents[1] / "conftest.py", tests / "conftest.py")
    (tests / "integration" / "test_skips.py").write_text(_SKIPPING_TEST)
    (tests / "test_plain.py").write_text(_SKIPPING_TEST)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tests)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )


def test_integration_skips_fail_in_ci_only(tmp_path: Path) -> None:
    local = _run_suite(tmp_path / "local", ci=None)
    assert local.returncode == 0, local.stdout
    assert "2 skipped, 2 xfailed" in local.stdout

    ci = _run_suite(tmp_path / "ci", ci="true")
    assert ci.returncode == 1, ci.stdout
    assert "FAILED tests/integration/test_skips.py::test_needs_a_broker" in ci.stdout
    assert "skipped in CI" in ci.stdout
    # Outside tests/integration a skip stays a skip, and an xfail is never turned into a failure.
    assert "1 failed, 1 skipped, 2 xfailed" in ci.stdout
