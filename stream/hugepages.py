"""Transparent huge pages for the worker's heap, so that a forked checkpoint pauses for
milliseconds instead of a fraction of a second (``STREAM_HUGE_PAGES``).

A forked checkpoint (``stream/checkpoint_fork.py``) pauses the event loop for the ``fork()``
itself, and ``fork()`` copies the page tables: one entry per 4 KiB page, about 50 ms per GiB
resident, 0.2-0.5 s for a worker holding a million users. With the heap on 2 MiB transparent
huge pages the kernel copies one entry per 2 MiB instead (512 times fewer).

CPython's own small-object allocator takes its memory in 256 KiB arenas, which never become
huge pages. So the worker runs with ``PYTHONMALLOC=malloc`` (objects come from glibc's malloc)
and glibc's tunable ``glibc.malloc.hugetlb=1`` (glibc >= 2.35: malloc asks for transparent huge
pages with ``madvise``). Both must be set before the interpreter starts: the worker therefore
re-executes itself once, same PID and arguments, with them added to its environment
(:func:`reexec_with_huge_pages`). It does not when:

- ``STREAM_HUGE_PAGES=off``;
- checkpoints are not forked (no checkpoint directory, or ``STREAM_CHECKPOINT_MODE=inline``);
- the kernel has transparent huge pages ``never`` (``/sys/kernel/mm/transparent_hugepage/enabled``),
  or the C library is not glibc >= 2.35 (for example musl): then it logs why, once, and goes on;
- ``PYTHONMALLOC`` is already set to something else (a debugging allocator wins).

Measured by ``python benchmarks/checkpoint.py`` (fork pause) and
``python benchmarks/core_profile.py`` (the cost per event of malloc instead of pymalloc), both
run with and without the two variables; the README's performance section has the figures.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ACTIVE", "huge_pages_env", "reexec_with_huge_pages", "thp_mode"]

logger = logging.getLogger(__name__)

ACTIVE = "STREAM_HUGE_PAGES_ACTIVE"  # set in the re-executed worker's environment
TUNABLE = "glibc.malloc.hugetlb=1"
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: Path = THP_ENABLED) -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), or None
    where the kernel does not say (not Linux, no THP)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def _glibc_version() -> tuple[int, int] | None:
    lib, version = platform.libc_ver()
    if lib != "glibc":
        return None
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def huge_pages_env(
    environ: Mapping[str, str],
    mode: str | None,
    glibc: tuple[int, int] | None,
) -> tuple[dict[str, str] | None, str]:
    """The environment to re-execute with, or None and why not.

    >>> env, why = huge_pages_env({"PATH": "/bin"}, "madvise", (2, 36))
    >>> env["PYTHONMALLOC"], env["GLIBC_TUNABLES"], env["STREAM_HUGE_PAGES_ACTIVE"]
    ('malloc', 'glibc.malloc.hugetlb=1', '1')
    >>> huge_pages_env({}, "never", (2, 36))
    (None, 'the kernel has transparent huge pages disabled (never)')
    >>> huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "always", (2, 36))[0][
    ...     "GLIBC_TUNABLES"]
    'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
    """
    if environ.get(ACTIVE) == "1":
        return None, "already active"
    if mode is None:
        return None, "the kernel offers no transparent huge pages"
    if mode == "never":
        return None, "the kernel has transparent huge pages disabled (never)"
    if glibc is None or glibc < (2, 35):
        shown = "not glibc" if glibc is None else f"glibc {glibc[0]}.{glibc[1]}"
        return None, f"the C library has no malloc hugetlb tunable ({shown}; needs glibc >= 2.35)"
    current = environ.get("PYTHONMALLOC")
    if current and current != "malloc":
        return None, f"PYTHONMALLOC={current} is set"
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb=0" in tunables:
        return None, "GLIBC_TUNABLES sets glibc.malloc.hugetlb=0"
    if "glibc.malloc.hugetlb=" not in tunables:
        tunables = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    env = dict(environ)
    env.update({"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": tunables, ACTIVE: "1"})
    return env, ""


def reexec_with_huge_pages(wanted: bool) -> None:
    """Re-execute this process (``sys.orig_argv``) with huge pages for its heap, if ``wanted``
    and the platform allows; returns (having logged why) when it does not re-execute."""
    if os.environ.get(ACTIVE) == "1":
        logger.info("heap on transparent huge pages (PYTHONMALLOC=malloc, %s)", TUNABLE)
        return
    if not wanted:
        return
    env, why = huge_pages_env(os.environ, thp_mode(), _glibc_version())
    if env is None:
        logger.info("heap on 4 KiB pages: %s; a forked checkpoint pauses ~50 ms per GiB", why)
        return
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    logger.info("re-executing with the heap on transparent huge pages (STREAM_HUGE_PAGES=auto)")
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError as exc:  # e.g. the interpreter was replaced by an upgrade: go on as we are
        logger.warning("could not re-execute with huge pages (%s); heap on 4 KiB pages", exc)
