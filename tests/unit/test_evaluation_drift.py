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
