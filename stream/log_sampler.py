"""Sampling of a repetitive log line: a flood of bad records must not flood the log.

The first few lines of each reason are logged as they come; after that, one summary line
every ``interval_s`` says how many more there were, per reason. The line of every record still
goes out at DEBUG. Only the log is sampled: counters and dead letters stay exact.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["LogSampler"]


class LogSampler:
    """Log the first ``first`` lines per reason, then a summary every ``interval_s``.

    Parameters
    ----------
    logger
        Where the lines go.
    what
        What is counted, for the summary line (``"dead letters"``).
    first
        Lines logged one by one per reason.
    interval_s
        Seconds between two summary lines (at most one per interval, only when lines were held
        back). :meth:`flush` writes the last one at once.
    level
        Level of the sampled lines and summaries; every line is also logged at DEBUG.
    clock
        Monotonic clock (injectable for tests).

    Examples
    --------
    >>> import logging
    >>> now = [0.0]
    >>> sampler = LogSampler(logging.getLogger("doc"), "dead letters", first=2,
    ...                      interval_s=60, clock=lambda: now[0])
    >>> [sampler.log_one("invalid_json", "bad record %d", i) for i in range(5)]
    [True, True, False, False, False]
    >>> sampler.held_back
    Counter({'invalid_json': 3})
    >>> now[0] = 61.0
    >>> sampler.maybe_summarise()
    True
    >>> sampler.held_back
    Counter()
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        first: int = 5,
        interval_s: float = 60.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if first < 0 or interval_s <= 0:
            raise ValueError("first must be >= 0 and interval_s > 0")
        self.logger = logger
        self.what = what
        self.first = first
        self.interval_s = interval_s
        self.level = level
        self._clock = clock
        self.seen: Counter[str] = Counter()
        self.held_back: Counter[str] = Counter()
        self._since = clock()

    def log_one(self, reason: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log one line of ``reason`` (or count it for the summary); True when it was logged.

        ``exc_info`` adds the traceback of the exception being handled to the lines logged.
        """
        self.seen[reason] += 1
        n = self.seen[reason]
        if n <= self.first:
            self.logger.log(self.level, msg, *args, exc_info=exc_info)
            if n == self.first:
                self.logger.log(
                    self.level,
                    "further %s (%s) are counted, not logged one by one: a summary follows "
                    "every %gs",
                    self.what,
                    reason,
                    self.interval_s,
                )
            logged = True
        else:
            if self.logger.isEnabledFor(logging.DEBUG):
                self.logger.debug(msg, *args, exc_info=exc_info)
            if not self.held_back:
                self._since = self._clock()  # the interval counts from the first held-back one
            self.held_back[reason] += 1
            logged = False
        self.maybe_summarise()
        return logged

    def maybe_summarise(self, force: bool = False) -> bool:
        """Write the summary line if one is due (or ``force``); True when one was written."""
        if not self.held_back:
            return False
        now = self._clock()
        if not force and now - self._since < self.interval_s:
            return False
        total = sum(self.held_back.values())
        per_reason = ", ".join(f"{r} {n:,}" for r, n in self.held_back.most_common())
        self.logger.log(
            self.level,
            "%s: %s more in the last %.0fs, not logged one by one (%s); %s in all",
            self.what,
            f"{total:,}",
            now - self._since,
            per_reason,
            f"{sum(self.seen.values()):,}",
        )
        self.held_back.clear()
        self._since = now
        return True

    def flush(self) -> bool:
        """Write the summary of what is held back now (at shutdown)."""
        return self.maybe_summarise(force=True)
