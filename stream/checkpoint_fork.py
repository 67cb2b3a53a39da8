"""Checkpoints written by a forked child: the event loop pauses for a ``fork()``, not a pickle.

A checkpoint of a shard is a pickle of its whole :class:`~stream.core.Pipeline`, so writing it
costs time proportional to the state (0.66 s for 100k users). :class:`ForkedSaves` moves that
work off the event path: the worker calls :meth:`ForkedSaves.start` at a safe point (outputs
flushed, between two events), ``os.fork()`` gives a child a copy-on-write image of the state at
that instant, and the child pickles, signs (HMAC), fsyncs, renames and rotates exactly as
:meth:`~stream.checkpoint.CheckpointStore.save` does inline, then reports on a pipe and exits
with ``os._exit``. The parent goes on consuming meanwhile and commits the offsets a checkpoint
covers only once :meth:`ForkedSaves.poll` reports its child's success, so what is committed is
never more than what a written checkpoint holds: the same guarantee as the inline write.

What the child may do: only pickle and write files. Other threads of the parent (the Kafka
client's IO thread, the metrics HTTP server, a background rebuild) do not exist in the child,
so it must not touch Kafka objects, must not log (a handler's lock may have been held by
another thread at fork time), and exits with ``os._exit`` (no atexit handlers, no flushing of
buffers it shares with the parent). Pickling takes no lock: ``RebuiltRecommender.__getstate__``
drops a running build without touching it, and the build lock is held only by build threads.

A child dies with its parent (``PR_SET_PDEATHSIG`` on Linux, and a parent check before the
rename elsewhere): a worker killed with SIGKILL leaves at most a temporary file (removed by a
later rotation), never a checkpoint renamed after a restarted worker wrote its own.

While a child lives, the parent's objects of the moment are frozen out of the cyclic GC
(``gc.freeze``, undone when the last child ends): a full collection would otherwise write to
every object's header and so copy the whole shared heap.

The total work still grows with the state: it is done by the child, on the other core, and the
child's memory grows while it runs (pages it touches are copied, up to the size of the state).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass

from stream.checkpoint import CheckpointStore, TopicPartition
from stream.core import Pipeline

__all__ = ["FORK_AVAILABLE", "ForkedSaves", "SaveOutcome"]

FORK_AVAILABLE = hasattr(os, "fork") and hasattr(os, "waitpid") and sys.platform != "win32"

# A report on the pipe: b"ok" or b"error <type>: <message>" (truncated to fit one atomic write).
_MAX_REPORT = 4_000
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class SaveOutcome:
    """How one forked save ended: ``error`` is None on success."""

    tp: TopicPartition
    next_offset: int
    error: str | None
    seconds: float
    pause_seconds: float


@dataclass(slots=True)
class _Child:
    tp: TopicPartition
    next_offset: int
    pid: int
    report_fd: int
    started: float
    pause_seconds: float


def _die_with_parent(parent: int) -> None:
    """In the child: be killed when the parent dies (Linux), or exit if it already did."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(3)


def _report(fd: int, message: str) -> None:
    data = message.encode("utf-8", "replace")[:_MAX_REPORT]
    with contextlib.suppress(OSError):
        os.write(fd, data)


def _child_main(
    store: CheckpointStore, tp: TopicPartition, pipeline: Pipeline, next_offset: int, fd: int
) -> None:
    """The child's whole life: write one checkpoint, report, ``os._exit``. Never returns."""
    code = 1
    try:
        parent = os.getppid()
        _die_with_parent(parent)
        # A collection would walk (and so copy) every page of the heap for nothing.
        gc.disable()
        store.write(tp, pipeline, next_offset, still_wanted=lambda: os.getppid() == parent)
    except BaseException as exc:  # everything ends as a report: the child must not raise
        _report(fd, f"error {type(exc).__name__}: {exc}")
    else:
        _report(fd, "ok")
        code = 0
    finally:
        os._exit(code)


class ForkedSaves:
    """Checkpoints in flight, at most one per partition, each written by a forked child.

    Parameters
    ----------
    store
        Where the children write (the same store, format, key and rotation as inline writes).
    """

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store
        self._children: dict[TopicPartition, _Child] = {}

    def busy(self, tp: TopicPartition) -> bool:
        """Whether a save of ``tp`` is in flight (a second one is never started)."""
        return tp in self._children

    def in_flight(self) -> dict[TopicPartition, int]:
        """The next offset each save in flight covers, by partition."""
        return {tp: c.next_offset for tp, c in self._children.items()}

    def start(self, tp: TopicPartition, pipeline: Pipeline, next_offset: int) -> float:
        """Fork a child that writes a checkpoint of ``pipeline`` covering ``next_offset``.

        Returns the parent's pause (seconds). Raises ``OSError`` when the fork fails (no memory,
        too many processes): the caller treats that as a failed checkpoint.
        """
        if tp in self._children:
            raise RuntimeError(f"a checkpoint of {tp[0]}[{tp[1]}] is already being written")
        started = time.perf_counter()
        read_fd, write_fd = os.pipe()
        # While a child lives, a full collection in the parent would write to the header of
        # every object and so copy every page of the heap (copy-on-write): the objects of the
        # moment are set aside from collections until the last child has ended.
        gc.freeze()
        try:
            with warnings.catch_warnings():
                # Python >= 3.12 warns that a multi-threaded process forks: the child here runs
                # no code that takes a lock another thread could hold (see the module's notes).
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            self._unfreeze()
            raise
        if pid == 0:  # the child
            os.close(read_fd)
            _child_main(self.store, tp, pipeline, next_offset, write_fd)
        os.close(write_fd)
        pause = time.perf_counter() - started
        self._children[tp] = _Child(tp, next_offset, pid, read_fd, started, pause)
        return pause

    def poll(
        self, block: bool = False, partitions: list[TopicPartition] | None = None
    ) -> list[SaveOutcome]:
        """Outcomes of the saves that ended (all those of ``partitions`` when ``block``)."""
        done: list[SaveOutcome] = []
        for tp in list(self._children):
            if partitions is not None and tp not in partitions:
                continue
            child = self._children[tp]
            pid, status = os.waitpid(child.pid, 0 if block else os.WNOHANG)
            if pid == 0:
                continue
            del self._children[tp]
            done.append(self._outcome(child, status))
        self._unfreeze()
        return done

    def _unfreeze(self) -> None:
        if not self._children:
            gc.unfreeze()

    def close(self) -> None:
        """Kill and reap every child still writing (their temporary files stay until rotated)."""
        for child in self._children.values():
            with contextlib.suppress(OSError):
                os.kill(child.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.waitpid(child.pid, 0)
            with contextlib.suppress(OSError):
                os.close(child.report_fd)
        self._children.clear()
        self._unfreeze()

    @staticmethod
    def _outcome(child: _Child, status: int) -> SaveOutcome:
        chunks = []
        with contextlib.suppress(OSError):
            while chunk := os.read(child.report_fd, _MAX_REPORT):
                chunks.append(chunk)
        with contextlib.suppress(OSError):
            os.close(child.report_fd)
        report = b"".join(chunks).decode("utf-8", "replace")
        error: str | None = None
        if os.WIFSIGNALED(status):
            error = f"checkpoint writer (pid {child.pid}) killed by signal {os.WTERMSIG(status)}"
        elif os.WEXITSTATUS(status) != 0 or report != "ok":
            detail = report.removeprefix("error ") or f"exit status {os.WEXITSTATUS(status)}"
            error = detail
        seconds = time.perf_counter() - child.started
        return SaveOutcome(child.tp, child.next_offset, error, seconds, child.pause_seconds)
