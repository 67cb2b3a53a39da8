"""When the worker re-executes itself with its heap on huge pages, and when it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.hugepages import ACTIVE, huge_pages_env, thp_mode


def test_thp_mode_reads_the_bracketed_word(tmp_path: Path) -> None:
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert thp_mode(f) == "madvise"
    assert thp_mode(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("environ", "mode", "glibc", "why"),
    [
        ({ACTIVE: "1"}, "always", (2, 36), "already active"),
        ({}, None, (2, 36), "no transparent huge pages"),
        ({}, "never", (2, 36), "disabled"),
        ({}, "madvise", None, "not glibc"),
        ({}, "madvise", (2, 31), "glibc 2.31"),
        ({"PYTHONMALLOC": "debug"}, "madvise", (2, 36), "PYTHONMALLOC=debug"),
    ],
)
def test_no_reexec_where_it_cannot_help_and_why(
    environ: dict[str, str], mode: str | None, glibc: tuple[int, int] | None, why: str
) -> None:
    env, reason = huge_pages_env(environ, mode, glibc)
    assert env is None and why in reason


def test_an_operators_own_tunables_are_kept() -> None:
    env, _ = huge_pages_env(
        {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2", "X": "y"}, "always", (2, 36)
    )
    assert env is not None
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=2"  # an explicit choice wins
    assert env["X"] == "y" and env["PYTHONMALLOC"] == "malloc" and env[ACTIVE] == "1"
    env, why = huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "always", (2, 36))
    assert env is None and "hugetlb=0" in why


def test_a_failed_exec_leaves_the_worker_running_as_it_was(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import os

    import stream.hugepages as hp

    monkeypatch.delenv(ACTIVE, raising=False)
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(hp, "thp_mode", lambda: "madvise")
    monkeypatch.setattr(hp, "_glibc_version", lambda: (2, 36))
    calls: list[list[str]] = []

    def failing(path: str, argv: list[str], env: dict[str, str]) -> None:
        calls.append(argv)
        assert env[ACTIVE] == "1" and env["PYTHONMALLOC"] == "malloc"
        raise PermissionError("denied")

    monkeypatch.setattr(os, "execve", failing)
    hp.reexec_with_huge_pages(True)
    assert calls and "could not re-execute" in caplog.text
    calls.clear()
    hp.reexec_with_huge_pages(False)  # not wanted: nothing happens
    monkeypatch.setenv(ACTIVE, "1")
    hp.reexec_with_huge_pages(True)  # already on huge pages: no second exec
    assert calls == []
