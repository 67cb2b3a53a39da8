"""The send loop shared by every producer: pace, send, count, flush; plus the progress bar.

:func:`emit` drives any iterable of :class:`~producers.records.Record` into any
:class:`~producers.sinks.Sink`, so replay and the synthetic stream pace, send and report in
exactly the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from producers.pacing import Pacer
from producers.records import Record
from producers.sinks import Sink

__all__ = ["EmitResult", "emit", "format_summary", "with_progress"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class EmitResult:
    """What one run sent: records handed to the sink, delivered, failed, wall time."""

    offered: int
    delivered: int
    failed: int
    elapsed_s: float
    interrupted: bool = False

    @property
    def rate(self) -> float:
        """Delivered events per second of wall time."""
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0


def emit(
    records: Iterable[Record],
    sink: Sink,
    pacer: Pacer | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> EmitResult:
    """Send every record (paced by ``pacer``), then flush the sink.

    Ctrl-C stops the loop cleanly: what was queued is flushed and ``interrupted`` is set.
    A :class:`~producers.sinks.SinkError` propagates after the flush.

    >>> from producers.sinks import ListSink
    >>> sink = ListSink()
    >>> emit([Record(1, 0.0, b"u", b"{}")] * 3, sink).delivered
    3
    """
    started = clock()
    offered = 0
    interrupted = False
    try:
        for record in records:
            if pacer is not None:
                pacer.wait_one(record.timestamp)
            sink.send_one(record)
            offered += 1
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("interrupted after %d events: flushing what was sent", offered)
    finally:
        sink.flush()
    return EmitResult(offered, sink.delivered, sink.failed, clock() - started, interrupted)


def with_progress(
    records: Iterable[_T],
    *,
    enabled: bool,
    total: Callable[[], int | None] = lambda: None,
    desc: str = "sending",
) -> Iterator[_T]:
    """Yield ``records`` (or any items) while showing a tqdm bar on stderr (rate, and ETA when
    ``total()`` is known).

    ``total`` is asked once the first record is available (after a sort, the count is known).
    """
    if not enabled:
        yield from records
        return
    from tqdm import tqdm

    bar = None
    try:
        for record in records:
            if bar is None:
                bar = tqdm(total=total(), desc=desc, unit="ev", unit_scale=True, mininterval=0.5)
            yield record
            bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def format_summary(title: str, rows: Iterable[tuple[str, str]]) -> str:
    """One block: a title line, then aligned ``name  value`` rows.

    >>> print(format_summary("replay", [("sent", "3"), ("rejected", "0")]))
    replay
      sent      3
      rejected  0
    """
    rows = list(rows)
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join([title, *(f"  {name.ljust(width)}  {value}" for name, value in rows)])
