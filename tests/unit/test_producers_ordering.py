"""External merge sort: stable, correct over many runs and merge passes, bounded, cleaned up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.ordering import ExternalSorter


def by_key(item: tuple[int, int]) -> int:
    return item[0]


@given(
    keys=st.lists(st.integers(min_value=0, max_value=6), max_size=300),
    buffer_size=st.integers(min_value=1, max_value=20),
    fan_in=st.integers(min_value=2, max_value=5),
)
@settings(max_examples=60, deadline=None)
def test_external_sort_equals_pythons_stable_sort(
    keys: list[int], buffer_size: int, fan_in: int
) -> None:
    items = [(k, i) for i, k in enumerate(keys)]  # the index shows whether ties kept their order
    sorter: ExternalSorter[tuple[int, int]] = ExternalSorter(by_key, buffer_size, fan_in)
    assert list(sorter.sort(items)) == sorted(items, key=by_key)
    assert sorter.count == len(items)
    spilled = len(items) >= buffer_size
    assert sorter.runs == (-(-len(items) // buffer_size) if spilled else 0)


def test_many_runs_take_several_merge_passes(tmp_path: Path) -> None:
    items = [((i * 37) % 101, i) for i in range(1000)]
    sorter: ExternalSorter[tuple[int, int]] = ExternalSorter(
        by_key, buffer_size=10, fan_in=4, tmp_dir=tmp_path
    )
    assert list(sorter.sort(items)) == sorted(items, key=by_key)
    assert sorter.runs == 100 and sorter.merge_passes > 3
    assert list(tmp_path.iterdir()) == []


def test_temporary_files_go_when_the_consumer_stops_early(tmp_path: Path) -> None:
    sorter: ExternalSorter[tuple[int, int]] = ExternalSorter(
        by_key, buffer_size=5, tmp_dir=tmp_path
    )
    out = sorter.sort((50 - i, i) for i in range(50))
    assert next(out) == (1, 49)
    assert len(list(tmp_path.iterdir())) == 1  # the run directory, while merging
    out.close()
    assert list(tmp_path.iterdir()) == []


def test_small_inputs_never_touch_the_disk(tmp_path: Path) -> None:
    sorter: ExternalSorter[tuple[int, int]] = ExternalSorter(
        by_key, buffer_size=100, tmp_dir=tmp_path
    )
    out = sorter.sort((3 - i, i) for i in range(3))
    assert next(out) == (1, 2)
    assert list(tmp_path.iterdir()) == [] and sorter.runs == 0


class Tracked:
    """An item that counts how many of its kind are alive (unpickled copies included)."""

    alive = 0
    peak = 0
    __slots__: ClassVar[tuple[str, ...]] = ("key", "pad")

    def __new__(cls, *args: Any) -> Tracked:
        Tracked.alive += 1
        Tracked.peak = max(Tracked.peak, Tracked.alive)
        return super().__new__(cls)

    def __init__(self, key: int) -> None:
        self.key = key
        self.pad = "x" * 100

    def __getstate__(self) -> tuple[int, str]:
        return (self.key, self.pad)

    def __setstate__(self, state: tuple[int, str]) -> None:
        self.key, self.pad = state

    def __del__(self) -> None:
        Tracked.alive -= 1


def test_memory_stays_bounded_by_the_buffer_not_the_input(tmp_path: Path) -> None:
    def produce(n: int) -> Iterator[Tracked]:
        for i in range(n):
            yield Tracked((i * 7919) % 1000)

    Tracked.alive = Tracked.peak = 0
    sorter: ExternalSorter[Tracked] = ExternalSorter(
        lambda t: t.key, buffer_size=200, fan_in=8, tmp_dir=tmp_path, chunk_size=50
    )
    last = -1
    for item in sorter.sort(produce(20_000)):
        assert item.key >= last
        last = item.key
    # At most one buffer while spilling, or fan_in chunks (plus one being read) while merging.
    assert Tracked.peak <= 8 * 50 + 50 + 200
    assert sorter.count == 20_000 and sorter.runs == 100


@pytest.mark.parametrize(("buffer_size", "fan_in"), [(0, 2), (1, 1)])
def test_rejects_nonsense_parameters(buffer_size: int, fan_in: int) -> None:
    with pytest.raises(ValueError):
        ExternalSorter(by_key, buffer_size=buffer_size, fan_in=fan_in)
