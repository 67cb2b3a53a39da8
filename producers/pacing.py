"""When to send each event: as fast as possible, at N events/s, or at X times real time.

Pure arithmetic around an injected clock and sleep (tests use a fake clock). Due times are
computed from the start of the run, not from the previous send, so small delays do not add
up; a sender that falls behind sends at once until it has caught up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Pacer"]


class Pacer:
    """Schedule events by a fixed ``rate`` (events/s) or a ``speed`` factor on event time.

    Parameters
    ----------
    rate
        Events per second of wall-clock time.
    speed
        Multiple of real time: ``speed=60`` plays an hour of log in a minute.
    max_gap_s
        With ``speed``: longest wait between two events (quiet periods of the log are cut
        to this), ``None`` for no cap.
    clock, sleep
        Monotonic clock and sleep function (injectable for tests).

    Neither ``rate`` nor ``speed``: no waiting at all. With ``speed``, an event whose time is
    before one already seen (an unsorted log) is due at once.

    Examples
    --------
    >>> now = [0.0]
    >>> def sleep(s): now[0] += s
    >>> pacer = Pacer(speed=2.0, clock=lambda: now[0], sleep=sleep)
    >>> [pacer.wait_one(t) for t in (100.0, 110.0, 104.0, 130.0)]
    [0.0, 5.0, 0.0, 10.0]
    >>> now[0]
    15.0
    """

    def __init__(
        self,
        *,
        rate: float | None = None,
        speed: float | None = None,
        max_gap_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate is not None and speed is not None:
            raise ValueError("give a rate or a speed, not both")
        if rate is not None and not rate > 0:
            raise ValueError("rate must be positive")
        if speed is not None and not speed > 0:
            raise ValueError("speed must be positive")
        if max_gap_s is not None and max_gap_s < 0:
            raise ValueError("max_gap_s must not be negative")
        self.rate = rate
        self.speed = speed
        self.max_gap_s = max_gap_s
        self.clock = clock
        self.sleep = sleep
        self.count = 0
        self.slept_s = 0.0
        self._t0: float | None = None
        self._offset_s = 0.0  # wall seconds from t0 at which the latest event time is due
        self._high: float | None = None  # latest event time seen

    @property
    def paced(self) -> bool:
        """Whether events are paced at all."""
        return self.rate is not None or self.speed is not None

    def due_one(self, timestamp: float | None = None) -> float:
        """The clock time at which the next event (with event time ``timestamp``) is due."""
        if self._t0 is None:
            self._t0 = self.clock()
        index = self.count
        self.count += 1
        if self.rate is not None:
            return self._t0 + index / self.rate
        if self.speed is None or timestamp is None:
            return self._t0 + self._offset_s
        if self._high is None:
            self._high = timestamp
        elif timestamp > self._high:
            gap = (timestamp - self._high) / self.speed
            if self.max_gap_s is not None:
                gap = min(gap, self.max_gap_s)
            self._offset_s += gap
            self._high = timestamp
        return self._t0 + self._offset_s

    def wait_one(self, timestamp: float | None = None) -> float:
        """Sleep until the next event is due; returns the seconds slept."""
        if not self.paced:
            self.count += 1
            return 0.0
        delay = self.due_one(timestamp) - self.clock()
        if delay <= 0:
            return 0.0
        self.sleep(delay)
        self.slept_s += delay
        return delay
