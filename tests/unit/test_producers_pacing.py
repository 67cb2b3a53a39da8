"""Pacing arithmetic with a fake clock: rate, speed, gaps, falling behind, unsorted logs."""

from __future__ import annotations

import pytest

from producers.emitter import emit
from producers.pacing import Pacer
from producers.records import Record
from producers.sinks import ListSink


class FakeClock:
    """A clock that only moves when slept on (or advanced by the test: slow work)."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def pacer(clock: FakeClock, **kwargs: float | None) -> Pacer:
    return Pacer(clock=clock, sleep=clock.sleep, **kwargs)


def test_rate_spaces_events_evenly_from_the_first_one() -> None:
    clock = FakeClock()
    p = pacer(clock, rate=4.0)
    sends = []
    for _ in range(5):
        p.wait_one(None)
        sends.append(clock.now - 1_000.0)
    assert sends == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert p.slept_s == pytest.approx(1.0)


def test_rate_does_not_accumulate_the_senders_own_delays() -> None:
    clock = FakeClock()
    p = pacer(clock, rate=10.0)
    p.wait_one(None)
    clock.now += 0.03  # sending took 30 ms: the next wait is 70 ms, not 100 ms
    assert p.wait_one(None) == pytest.approx(0.07)
    clock.now += 0.5  # far behind: no waiting until the schedule is caught up
    assert [p.wait_one(None) for _ in range(4)] == [0.0, 0.0, 0.0, 0.0]
    assert p.wait_one(None) == pytest.approx(0.0) and p.wait_one(None) == pytest.approx(0.1)


def test_speed_follows_event_time_divided_by_the_factor() -> None:
    clock = FakeClock()
    p = pacer(clock, speed=10.0)
    due = [p.due_one(t) - 1_000.0 for t in (500.0, 500.0, 510.0, 600.0, 601.0)]
    assert due == pytest.approx([0.0, 0.0, 1.0, 10.0, 10.1])


def test_speed_sends_out_of_order_events_at_once() -> None:
    clock = FakeClock()
    p = pacer(clock, speed=1.0)
    waits = [p.wait_one(t) for t in (100.0, 103.0, 101.0, 104.0)]
    assert waits == [0.0, 3.0, 0.0, 1.0]


def test_max_gap_cuts_quiet_periods() -> None:
    clock = FakeClock()
    p = pacer(clock, speed=1.0, max_gap_s=2.0)
    due = [p.due_one(t) - 1_000.0 for t in (0.0, 1.0, 3_601.0, 3_602.0)]
    assert due == [0.0, 1.0, 3.0, 4.0]


def test_unpaced_never_sleeps() -> None:
    clock = FakeClock()
    p = pacer(clock)
    assert not p.paced
    assert [p.wait_one(t) for t in (1.0, 1_000.0, 2_000.0)] == [0.0, 0.0, 0.0]
    assert clock.sleeps == [] and p.count == 3


@pytest.mark.parametrize(
    "kwargs",
    [{"rate": 1.0, "speed": 1.0}, {"rate": 0.0}, {"speed": -1.0}, {"speed": 1.0, "max_gap_s": -1}],
)
def test_rejects_contradictory_or_nonsense_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Pacer(**kwargs)  # type: ignore[arg-type]


def test_emit_paces_with_the_records_event_times() -> None:
    clock = FakeClock()
    sink = ListSink()
    records = [Record(i, 100.0 + 4 * i, b"u", b"{}") for i in range(4)]
    result = emit(records, sink, pacer(clock, speed=2.0), clock=clock)
    assert clock.sleeps == [2.0, 2.0, 2.0]
    assert (result.offered, result.delivered, result.failed) == (4, 4, 0)
    assert result.elapsed_s == pytest.approx(6.0)
