"""The sync's cheaper apply paths (issue 12's traffic and speed targets) change nothing: a
delta's neighbour lists and factor sums are bit for bit those of the per-row, per-item code."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest

from stream.models import ItemKNN, MatrixFactorization
from stream.models.mf import _dequantise


@pytest.mark.parametrize(("directed", "neighbors"), [(False, 15), (True, 8), (False, 50)])
def test_a_deltas_neighbour_lists_are_those_of_one_refresh_per_row(
    directed: bool, neighbors: int
) -> None:
    rng = random.Random(3)
    model = ItemKNN(neighbors=neighbors, history=10, directed=directed)
    for _ in range(3_000):  # a long tail: short rows beside long ones
        model.learn_one(f"u{rng.randrange(80)}", f"i{int(1_000 * rng.random() ** 3)}", 1.0)
    one, many = pickle.loads(pickle.dumps(model)), pickle.loads(pickle.dumps(model))
    rows = rng.sample(range(len(model._items)), 120)
    one._co[rows[0]] = {}  # an empty row too
    many._co[rows[0]] = {}
    assert any(len(model._co[r]) > neighbors for r in rows)  # long rows pick their top
    assert any(len(model._co[r]) <= neighbors for r in rows[1:])
    for row in rows:
        one._refresh(row)
    many._refresh_rows(rows)
    assert np.array_equal(one._nbr_rows, many._nbr_rows)
    assert np.array_equal(one._nbr_sims, many._nbr_sims)
    assert np.array_equal(one._nbr_len, many._nbr_len)
    assert one._pending == many._pending


def _mf_pair() -> tuple[MatrixFactorization, MatrixFactorization, dict[str, object]]:
    """A receiver (twice) that knows some of the items of a sender's full delta."""
    rng = random.Random(5)
    sender = MatrixFactorization("biased", n_factors=6, negative_samples=2, seed=1)
    receiver = MatrixFactorization("biased", n_factors=6, negative_samples=2, seed=2)
    for _ in range(600):
        sender.learn_one(f"u{rng.randrange(40)}", f"i{rng.randrange(60)}", 1.0, {"implicit": True})
        receiver.learn_one(
            f"v{rng.randrange(40)}", f"i{rng.randrange(90)}", 1.0, {"implicit": True}
        )
    receiver.item_delta()  # tracking on: the receiver's own changes stay pending
    for _ in range(50):
        receiver.learn_one(
            f"v{rng.randrange(40)}", f"i{rng.randrange(90)}", 1.0, {"implicit": True}
        )
    delta = sender.item_delta()
    return receiver, pickle.loads(pickle.dumps(receiver)), delta


def test_a_full_mf_delta_adds_up_as_one_item_at_a_time() -> None:
    columns, rows, delta = _mf_pair()
    columns.apply_item_delta(delta)
    # The same changes as rows of [item, vector, bias]: the per-item path.
    changes = _dequantise(delta)
    biases = np.asarray(delta["biases"], dtype=np.float64)
    items = list(delta["items"])  # type: ignore[call-overload]
    rows.apply_item_delta(
        {
            "items": [
                [i, v.tolist(), float(b)] for i, v, b in zip(items, changes, biases, strict=True)
            ],
            "mean": delta["mean"],
        }
    )
    assert columns._items == rows._items
    assert np.array_equal(columns._vectors, rows._vectors)
    assert np.array_equal(columns._biases, rows._biases)
    for item, vector in rows.river_model.i_latents.items():
        assert np.array_equal(columns.river_model.i_latents[item], vector), item
    assert dict(columns.river_model.i_biases) == dict(rows.river_model.i_biases)
    assert columns._item_sync is not None and rows._item_sync is not None
    assert columns._item_sync.keys() == rows._item_sync.keys()
    for item, (vector, bias) in rows._item_sync.items():
        assert np.array_equal(columns._item_sync[item][0], vector) and (
            columns._item_sync[item][1] == bias
        )


def test_an_mf_delta_of_mismatched_columns_is_an_error() -> None:
    columns, _, delta = _mf_pair()
    with pytest.raises(ValueError):
        columns.apply_item_delta({**delta, "biases": np.zeros(3, dtype=np.float32)})


def test_a_light_mf_delta_scans_only_what_was_learned_since_and_finds_the_same() -> None:
    """Light deltas look only at the items learned since the last one (and those whose
    float16 rest is still large): the same items and changes as a scan of every pending one."""
    rng = random.Random(9)
    tracked = MatrixFactorization("biased", n_factors=4, negative_samples=2, seed=3)
    for _ in range(200):
        tracked.learn_one(f"u{rng.randrange(30)}", f"i{rng.randrange(50)}", 1.0, {"implicit": True})
    tracked.item_delta()
    scanned = pickle.loads(pickle.dumps(tracked))
    other = MatrixFactorization("biased", n_factors=4, negative_samples=2, seed=4)
    other.item_delta()
    sent = 0
    for step in range(60):
        user, item = f"u{rng.randrange(30)}", f"i{rng.randrange(50)}"
        for model in (tracked, scanned):
            model.learn_one(user, item, 1.0, {"implicit": True})
        other.learn_one(f"w{rng.randrange(30)}", f"i{rng.randrange(70)}", 1.0, {"implicit": True})
        if step % 3 == 2:
            scanned._light_due = None  # every pending item scanned
            a, b = tracked.item_delta_light(), scanned.item_delta_light()
            assert a["items"] == b["items"] and np.array_equal(a["biases"], b["biases"])
            sent += len(a["items"])
        if step % 7 == 6:
            light = other.item_delta_light()
            tracked.apply_item_delta(light)
            scanned.apply_item_delta(light)
        if step == 40:
            assert tracked.item_delta().keys() == scanned.item_delta().keys()
    assert sent > 0
    tracked.item_delta_light()
    assert tracked._light_due == set()  # nothing learned since: nothing to look at
    assert tracked.item_delta_light()["items"] == []
