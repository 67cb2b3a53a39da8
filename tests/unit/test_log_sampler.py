"""A flood of one log line: the first few per reason, then a periodic summary."""

from __future__ import annotations

import logging

import pytest

from stream.log_sampler import LogSampler

LOGGER = "test.log_sampler"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def messages(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_first_lines_per_reason_then_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    clock = Clock()
    sampler = LogSampler(
        logging.getLogger(LOGGER), "dead letters", first=3, interval_s=60, clock=clock
    )
    for i in range(10_000):
        sampler.log_one("invalid_json", "dead letter invalid_json at events[0]@%d", i)
        if i % 4 == 0:
            sampler.log_one("not_utf8", "dead letter not_utf8 at events[0]@%d", i)
    lines = messages(caplog)
    one_by_one = [m for m in lines if m.startswith("dead letter ")]
    assert one_by_one == [
        "dead letter invalid_json at events[0]@0",
        "dead letter not_utf8 at events[0]@0",
        "dead letter invalid_json at events[0]@1",
        "dead letter invalid_json at events[0]@2",
        "dead letter not_utf8 at events[0]@4",
        "dead letter not_utf8 at events[0]@8",
    ]
    notes = [m for m in lines if m.startswith("further dead letters")]
    assert len(notes) == 2 and "every 60s" in notes[0]
    assert len(lines) == 8  # no summary yet: the interval has not passed
    assert sampler.seen == {"invalid_json": 10_000, "not_utf8": 2_500}  # exact counts

    clock.now += 61
    sampler.log_one("invalid_json", "dead letter invalid_json at events[0]@%d", 10_000)
    summary = messages(caplog)[-1]
    assert summary.startswith("dead letters: 12,495 more in the last 61s, not logged one by one")
    assert "(invalid_json 9,998, not_utf8 2,497); 12,501 in all" in summary

    clock.now += 10  # within the interval: held back again, no line
    sampler.log_one("not_utf8", "x")
    assert len(messages(caplog)) == 9
    assert not sampler.maybe_summarise()
    assert sampler.flush()  # shutdown: the rest at once
    assert messages(caplog)[-1].startswith("dead letters: 1 more")
    assert not sampler.flush()  # nothing held back: no empty summary


def test_every_line_still_goes_out_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    sampler = LogSampler(logging.getLogger(LOGGER), "dead letters", first=1, interval_s=60)
    for i in range(5):
        sampler.log_one("empty", "dead letter empty at %d", i)
    assert len(messages(caplog, logging.DEBUG)) == 4
    assert len([m for m in messages(caplog) if m.startswith("dead letter empty")]) == 1


def test_errors_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    sampler = LogSampler(logging.getLogger(LOGGER), "errors", first=1, level=logging.ERROR)
    try:
        raise ZeroDivisionError("model bug")
    except ZeroDivisionError:
        sampler.log_one(
            "ZeroDivisionError", "processing failed at %s", "events[0]@1", exc_info=True
        )
    assert caplog.records[0].exc_info is not None


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        LogSampler(logging.getLogger(LOGGER), "x", interval_s=0)
