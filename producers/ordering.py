"""Stable sorting of streams larger than memory: sorted runs spilled to disk, then merged.

Event logs are replayed in event-time order, but a log can be far larger than memory. The
:class:`ExternalSorter` keeps at most ``buffer_size`` items in memory: each full buffer is
sorted and written to a temporary file (a *run*), and the runs are merged with
:func:`heapq.merge`, at most ``fan_in`` files at a time (more runs take extra merge passes, so
open files stay bounded too). Every item carries its input position, so equal keys keep their
input order (a stable sort) and items themselves are never compared.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import pickle
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

__all__ = ["ExternalSorter"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_Entry = tuple[Any, int, T]


class ExternalSorter(Generic[T]):
    """Stable sort by ``key`` in bounded memory.

    Parameters
    ----------
    key
        The sort key of an item (e.g. its timestamp); keys must be mutually comparable.
    buffer_size
        Items held in memory at once; each full buffer becomes one sorted run on disk.
    fan_in
        Runs merged at once (bounds open files); more runs take extra merge passes.
    tmp_dir
        Where runs are written (the system temp directory by default). Removed at the end.
    chunk_size
        Items per pickled block inside a run (bounds memory while merging).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(3)
    >>> items = [(rng.randint(0, 4), i) for i in range(50)]
    >>> sorter = ExternalSorter(key=lambda it: it[0], buffer_size=7, fan_in=3)
    >>> out = list(sorter.sort(items))
    >>> out == sorted(items, key=lambda it: it[0]), sorter.runs, sorter.merge_passes
    (True, 8, 4)
    """

    def __init__(
        self,
        key: Callable[[T], Any],
        buffer_size: int = 200_000,
        fan_in: int = 64,
        tmp_dir: str | Path | None = None,
        chunk_size: int = 1_024,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        if fan_in < 2:
            raise ValueError("fan_in must be at least 2")
        self.key = key
        self.buffer_size = buffer_size
        self.fan_in = fan_in
        self.tmp_dir = tmp_dir
        self.chunk_size = max(1, min(chunk_size, buffer_size))
        self.count = 0
        self.runs = 0
        self.merge_passes = 0

    def sort(self, items: Iterable[T]) -> Generator[T, None, None]:
        """Yield ``items`` sorted by key, equal keys in input order.

        The whole input is read before the first item comes out; ``count`` then holds its
        length. Temporary files are removed when the iterator is exhausted or closed.
        """
        self.count = self.runs = self.merge_passes = 0
        buffer: list[_Entry[T]] = []
        runs: list[Path] = []
        tmp: Path | None = None
        seq = itertools.count()
        key = self.key
        try:
            for item in items:
                buffer.append((key(item), next(seq), item))
                if len(buffer) >= self.buffer_size:
                    if tmp is None:
                        tmp = Path(tempfile.mkdtemp(prefix="producers-sort-", dir=self.tmp_dir))
                    buffer.sort()
                    runs.append(self._write_run(buffer, tmp))
                    buffer = []
            self.count = next(seq)
            if tmp is None:  # everything fitted in memory: no files at all
                buffer.sort()
                for entry in buffer:
                    yield entry[2]
                return
            if buffer:
                buffer.sort()
                runs.append(self._write_run(buffer, tmp))
                buffer = []
            self.runs = len(runs)
            logger.info(
                "sorting %d items: %d sorted runs on disk in %s", self.count, len(runs), tmp
            )
            while len(runs) > self.fan_in:
                group, runs = runs[: self.fan_in], runs[self.fan_in :]
                with contextlib.ExitStack() as stack:
                    merged = heapq.merge(*(self._read_run(p, stack) for p in group))
                    runs.append(self._write_run(merged, tmp))
                for path in group:
                    path.unlink()
                self.merge_passes += 1
            self.merge_passes += 1
            with contextlib.ExitStack() as stack:
                for entry in heapq.merge(*(self._read_run(p, stack) for p in runs)):
                    yield entry[2]
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _write_run(self, entries: Iterable[_Entry[T]], tmp: Path) -> Path:
        fd, name = tempfile.mkstemp(suffix=".run", dir=tmp)
        with open(fd, "wb") as f:
            it = iter(entries)
            while chunk := list(itertools.islice(it, self.chunk_size)):
                pickle.dump(chunk, f, protocol=pickle.HIGHEST_PROTOCOL)
        return Path(name)

    @staticmethod
    def _read_run(path: Path, stack: contextlib.ExitStack) -> Iterator[_Entry[T]]:
        f = stack.enter_context(open(path, "rb"))  # noqa: SIM115 - closed by the caller's stack

        def entries() -> Iterator[_Entry[T]]:
            while True:
                try:
                    # Our own temporary files, written just above: unpickling them is safe.
                    chunk: list[_Entry[T]] = pickle.load(f)
                except EOFError:
                    return
                yield from chunk

        return entries()
