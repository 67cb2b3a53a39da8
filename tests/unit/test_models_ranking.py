"""The shared top-k selection of the models against a plain sort (property-based)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.models._ranking import best_rows, grow, select

# Few distinct values so that ties (and -inf / nan) are frequent.
value = st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, 3.25, math.inf * -1, math.nan])
scores_st = st.lists(st.one_of(value, st.floats(-1e6, 1e6)), min_size=0, max_size=3_000)


def reference(scores: list[float], m: int) -> list[float]:
    """The m largest finite scores, best first."""
    return sorted((s for s in scores if math.isfinite(s)), reverse=True)[:m]


def reference_rows(scores: list[float], m: int) -> list[int]:
    """Their rows, ties broken by the lower row."""
    finite = [r for r, s in enumerate(scores) if math.isfinite(s)]
    return sorted(finite, key=lambda r: (-scores[r], r))[:m]


@settings(max_examples=300, deadline=None)
@given(scores_st, st.integers(0, 60))
def test_best_rows_returns_the_m_largest_finite_scores_best_first(
    scores: list[float], m: int
) -> None:
    array = np.array(scores, dtype=np.float64)
    assert best_rows(array, m).tolist() == reference_rows(scores, m)


@settings(max_examples=200, deadline=None)
@given(scores_st, st.integers(0, 30), st.sets(st.integers(0, 3_100), max_size=80), st.booleans())
def test_select_skips_excluded_items(
    scores: list[float], k: int, excluded: set[int], positive_only: bool
) -> None:
    items = [f"i{r}" for r in range(len(scores))]
    index = {item: r for r, item in enumerate(items)}
    exclude = {f"i{r}" for r in excluded}  # some are not in the index: ignored
    rows, values = select(np.array(scores, dtype=np.float64), index, k, exclude, positive_only)
    kept = [s for s, i in zip(scores, items, strict=True) if i not in exclude]
    if positive_only:
        kept = [s for s in kept if s > 0]
    assert values == reference(kept, k)
    assert all(items[r] not in exclude for r in rows)
    assert [scores[r] for r in rows] == values


def test_ties_are_broken_by_row_on_large_vectors() -> None:
    scores = np.zeros(5_000)
    scores[[10, 4_000, 20, 3_000]] = 1.0
    assert best_rows(scores, 3).tolist() == [10, 20, 3_000]
    assert best_rows(scores, 5).tolist() == [10, 20, 3_000, 4_000, 0]


def test_grow_doubles_and_keeps_rows() -> None:
    array = np.arange(6.0).reshape(3, 2)
    bigger = grow(array, 4)
    assert bigger.shape == (16, 2)
    assert bigger[:3].tolist() == array.tolist() and not bigger[3:].any()
    assert grow(bigger, 16) is bigger
    assert grow(bigger, 17).shape == (32, 2)


def test_sampled_threshold_path_matches_a_sort() -> None:
    rng = np.random.default_rng(5)
    for n in (257, 1_000, 2_000, 20_000):
        for values in (rng.random(n), rng.integers(0, 7, n).astype(float), rng.normal(size=n)):
            values[rng.choice(n, n // 10, replace=False)] = -np.inf
            scores = values.tolist()
            for m in (1, 10, 30, n // 9):
                assert best_rows(values, m).tolist() == reference_rows(scores, m)
