from __future__ import annotations

import math
import random

import pytest

from stream.drift import DriftMonitor, make_detector
from stream.evaluation import ModelEvaluator, rank_outcome


def test_rank_outcome_positions() -> None:
    ranked = ["a", "b", "c", "d"]
    first, last, miss = (
        rank_outcome(ranked, "a"),
        rank_outcome(ranked, "d"),
        rank_outcome(ranked, "z"),
    )
    assert (first.hit, first.ndcg, first.mrr) == (1.0, 1.0, 1.0)
    assert last.hit == 1.0 and last.mrr == 0.25 and last.ndcg == pytest.approx(1 / math.log2(5))
    assert (miss.hit, miss.ndcg, miss.mrr) == (0.0, 0.0, 0.0)


def test_evaluator_window_and_cumulative() -> None:
    ev = ModelEvaluator(window=10)
    for i in range(100):
        ev.update_rank(rank_outcome(["x"], "x" if i >= 90 else "y"))
    assert ev.cumulative().hit_rate == pytest.approx(0.1)
    assert ev.windowed().hit_rate == pytest.approx(1.0)
    assert ev.cumulative().mae is None  # never rated


def test_evaluator_rating_errors() -> None:
    ev = ModelEvaluator(window=2)
    for y, p in [(4.0, 3.0), (2.0, 4.0), (5.0, 5.0)]:
        ev.update_rating(y, p)
    cum = ev.cumulative()
    assert cum.mae == pytest.approx(1.0)
    assert cum.rmse == pytest.approx(math.sqrt(5 / 3))
    assert ev.windowed().mae == pytest.approx(1.0)  # last two: |2-4|, |5-5|
    assert cum.hit_rate is None


@pytest.mark.parametrize("name", ["adwin", "page_hinkley", "kswin"])
def test_detectors_find_an_abrupt_change(name: str) -> None:
    rng = random.Random(3)
    monitor = DriftMonitor(name, delta=0.002 if name != "kswin" else 0.0001, min_events=0, seed=1)
    found = []
    for i in range(6000):
        p_miss = 0.2 if i < 3000 else 0.9
        found += monitor.update_one("m", "miss", float(rng.random() < p_miss), i + 1, None, 0.0)
    after = [d.event for d in found if d.event > 3000]
    assert after and after[0] < 3600, found


def test_no_false_alarms_on_a_stationary_stream() -> None:
    rng = random.Random(5)
    monitor = DriftMonitor("adwin", delta=0.002, min_events=500)
    found = []
    for i in range(20_000):
        found += monitor.update_one("m", "miss", float(rng.random() < 0.7), i + 1, None, 0.0)
    assert len(found) <= 1


def test_min_events_suppresses_early_reports() -> None:
    monitor = DriftMonitor("adwin", delta=0.5, min_events=10_000)
    found = []
    for i in range(2000):
        found += monitor.update_one("m", "miss", float(i > 1000), i + 1, None, 0.0)
    assert found == []


def test_unknown_detector_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown drift detector"):
        make_detector("oracle", 0.1)


def _feed(monitor: DriftMonitor, rates: list[tuple[int, float]], seed: int = 3) -> list:
    """Feed Bernoulli misses: ``rates`` = [(events, miss probability), ...] in turn."""
    rng = random.Random(seed)
    found, n = [], 0
    for events, p_miss in rates:
        for _ in range(events):
            n += 1
            found += monitor.update_one("m", "miss", float(rng.random() < p_miss), n, None, 0.0)
    return found


def test_an_improvement_is_no_alarm_unless_both_directions_are_asked_for() -> None:
    rates = [(3000, 0.9), (3000, 0.2)]  # the hit rate rises from 0.1 to 0.8
    assert _feed(DriftMonitor("adwin", 0.002, direction="worse"), rates) == []
    both = _feed(DriftMonitor("adwin", 0.002, direction="both"), rates)
    assert both and both[0].direction == "better" and both[0].event > 3000


def test_a_small_significant_change_is_held_back_by_min_change() -> None:
    rates = [(5000, 0.60), (5000, 0.70)]  # hit rate 0.40 -> 0.30: a 25 % fall
    assert _feed(DriftMonitor("adwin", 0.002, min_change=0.0), rates)  # the detector sees it
    monitor = DriftMonitor("adwin", 0.002, min_change=0.4)
    assert _feed(monitor, rates) == []
    assert monitor.suppressed >= 1


def test_a_large_fall_is_reported_with_its_levels_after_evidence() -> None:
    monitor = DriftMonitor("adwin", 0.002, min_events=500, min_change=0.4)
    found = _feed(monitor, [(5000, 0.6), (3000, 0.98)])  # hit rate 0.40 -> 0.02
    assert len(found) == 1, found
    d = found[0]
    assert 5000 < d.detected_event < d.event < 5000 + 1000
    assert d.event - d.detected_event >= 100  # evidence gathered after the detector fired
    assert d.direction == "worse"
    assert d.before == pytest.approx(0.6, abs=0.05) and d.after == pytest.approx(0.98, abs=0.03)


def test_one_session_of_misses_in_a_stationary_stream_is_no_alarm() -> None:
    # Hits are not independent: one user's 80 misses in a row (a cold user's session) make
    # ADWIN fire; the next hundred events show the level did not move.
    rates = [(4000, 0.6), (80, 1.0), (4000, 0.6)]
    assert _feed(DriftMonitor("adwin", 0.002, min_events=500, direction="both"), rates)
    assert _feed(DriftMonitor("adwin", 0.002, min_events=500, min_change=0.4), rates) == []


def test_rating_error_rise_is_reported_on_its_own_scale() -> None:
    rng = random.Random(4)
    monitor = DriftMonitor("adwin", 0.002, min_change=0.4)
    found = []
    for i in range(6000):
        error = abs(rng.gauss(0.0, 0.8 if i < 3000 else 2.0))  # mean |e| 0.64 -> 1.6
        found += monitor.update_one("mf", "abs_error", error, i + 1, None, 0.0)
    assert found and found[0].direction == "worse" and found[0].after > 2 * found[0].before


def test_bad_filter_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="direction"):
        DriftMonitor("adwin", 0.002, direction="up")
    with pytest.raises(ValueError, match="min_change"):
        DriftMonitor("adwin", 0.002, min_change=1.5)


def test_a_monitor_from_an_older_checkpoint_reports_as_it_did_then_configure_applies() -> None:
    import pickle

    monitor = DriftMonitor("adwin", 0.002)
    state = monitor.__dict__.copy()
    for name in ("direction", "min_change", "_levels", "_pending", "suppressed"):
        del state[name]
    old = DriftMonitor.__new__(DriftMonitor)
    old.__setstate__(state)
    assert (old.direction, old.min_change) == ("both", 0.0)
    old = pickle.loads(pickle.dumps(old))
    old.configure("worse", 0.4)
    assert (old.direction, old.min_change) == ("worse", 0.4)


def test_a_fall_confined_to_a_few_users_is_no_alarm_a_fall_across_many_is() -> None:
    # 300 misses in a row: ADWIN fires either way; reported only if they span >= 20 users.
    def run(session_users: int) -> list:
        rng = random.Random(8)
        monitor = DriftMonitor("adwin", 0.002, min_events=500, min_change=0.4)
        found, n = [], 0
        for phase, p_miss in ((4000, 0.6), (300, 1.0), (4000, 0.6)):
            for i in range(phase):
                n += 1
                user = f"s{i % session_users}" if p_miss == 1.0 else f"u{rng.randrange(500)}"
                miss = float(rng.random() < p_miss)
                found += monitor.update_one("m", "miss", miss, n, None, 0.0, user)
        return found

    assert run(3) == []
    assert len(run(40)) == 1


def test_forgetting_a_model_drops_its_waiting_candidate() -> None:
    monitor = DriftMonitor("adwin", 0.002, min_events=0, min_change=0.4)
    _feed(monitor, [(3000, 0.6), (90, 1.0)])  # fired; its evidence is still being gathered
    assert ("m", "miss") in monitor._pending
    monitor.forget_models({"m"})
    assert ("m", "miss") not in monitor._pending and not monitor._pending_users


def test_a_detection_for_the_better_leaves_a_waiting_candidate_alone() -> None:
    monitor = DriftMonitor("adwin", 0.002, min_events=0, min_change=0.4)
    _feed(monitor, [(3000, 0.6), (90, 1.0)])
    waiting = list(monitor._pending[("m", "miss")])

    class Better:  # what ADWIN looks like when it fires on a rise of the hit rate
        drift_detected, width, estimation = True, 10, 0.1

        def update(self, value: float) -> None:
            self.estimation = 0.05

    real = monitor._detectors[("m", "miss")]
    monitor._detectors[("m", "miss")] = Better()
    try:
        import river.drift

        river_adwin = river.drift.ADWIN
        river.drift.ADWIN = Better  # type: ignore[misc]  # isinstance() sees an ADWIN
        monitor.update_one("m", "miss", 1.0, 3061, None, 0.0, "u")
    finally:
        river.drift.ADWIN = river_adwin  # type: ignore[misc]
        monitor._detectors[("m", "miss")] = real
    assert monitor._pending[("m", "miss")][0] == waiting[0]  # the same candidate, one more value
    assert monitor._pending[("m", "miss")][5] == waiting[5] + 1
