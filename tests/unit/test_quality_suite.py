"""The quality suite's parts: its stream generators, its yardsticks and its verdicts.

The benchmark itself prints figures and asserts nothing; what is checked here is that the
streams are what their docstrings say (seeded, time-ordered, valid, the structure they
claim), that the two item-KNN references compute exactly the issue's definitions on small
hand-computed examples, and that the summary compares the default with the right models.
"""

from __future__ import annotations

import doctest
import importlib
import json
import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import quality
from reference import PlainItemKNN, RecencyItemKNN
from streams import STREAMS

from stream.evaluate import EvaluationResult
from stream.events import IMPLICIT_TYPES, Event, ModelMetrics
from stream.models import MODEL_REGISTRY, Blend
from stream.settings import StreamSettings

SYNTHETIC = [name for name in STREAMS if name != "ml100k"]  # ml100k is a download

# --- streams --------------------------------------------------------------------------------


def test_registry_has_the_issues_streams_and_marks_the_held_out_ones() -> None:
    tuning = {n for n, s in STREAMS.items() if not s.held_out}
    held_out = {n for n, s in STREAMS.items() if s.held_out}
    assert tuning == {"clusters", "sequential", "ml100k"}
    assert {"popularity_churn", "mixed", "sparse_catalogue"} <= held_out
    assert len(STREAMS) >= 6
    for spec in STREAMS.values():
        assert spec.description and spec.generate.__doc__


@pytest.mark.parametrize("name", SYNTHETIC)
def test_stream_is_seeded_valid_and_time_ordered(name: str) -> None:
    spec = STREAMS[name]
    events = spec.events(3, 0.04)
    assert events == spec.events(3, 0.04)
    assert events != spec.events(4, 0.04)
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)
    for e in events:
        assert e.item_id is not None
        if e.event_type == "rating":
            assert e.rating is not None and 1.0 <= e.rating <= 5.0
        else:
            assert e.event_type in IMPLICIT_TYPES and e.rating is None


@pytest.mark.parametrize("name", SYNTHETIC)
def test_scale_multiplies_the_number_of_events(name: str) -> None:
    small, large = len(STREAMS[name].events(1, 0.02)), len(STREAMS[name].events(1, 0.04))
    assert 1.8 * small <= large <= 2.2 * small


def _successor_share(events: list[Event]) -> float:
    """Share of each item's transitions (a user's next new item) going to its top successor."""
    last: dict[str, str] = {}
    moves: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        item = e.item_id or ""
        prev = last.get(e.user_id)
        if prev is not None and prev != item:
            moves[prev][item] += 1
        last[e.user_id] = item
    total = sum(sum(c.values()) for c in moves.values())
    return sum(c.most_common(1)[0][1] for c in moves.values()) / total


def test_sequential_stream_next_item_depends_on_the_last() -> None:
    sequential = _successor_share(STREAMS["sequential"].events(0, 0.4))
    clusters = _successor_share(STREAMS["clusters"].events(0, 0.4))
    assert sequential > 0.5 > 2 * clusters


def test_popularity_churn_items_live_briefly() -> None:
    events = STREAMS["popularity_churn"].events(0, 0.5)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for n, e in enumerate(events):
        first.setdefault(e.item_id or "", n)
        last[e.item_id or ""] = n
    spans = sorted(last[i] - first[i] for i in first)
    assert spans[len(spans) // 2] < 0.15 * len(events)  # the median item's active span


def test_mixed_stream_is_half_ratings_in_whole_and_half_stars() -> None:
    events = STREAMS["mixed"].events(0, 0.2)
    ratings = [e.rating for e in events if e.event_type == "rating"]
    assert 0.4 < len(ratings) / len(events) < 0.6
    assert any(r is not None and r % 1 == 0.5 for r in ratings)
    assert any(r is not None and r % 1 == 0.0 for r in ratings)


def test_sparse_catalogue_is_large_and_thin() -> None:
    events = STREAMS["sparse_catalogue"].events(0, 0.5)
    per_item = Counter(e.item_id for e in events)
    assert len(per_item) > 10_000
    assert len(events) / len(per_item) < 4


def test_repeat_purchase_rebuys_staples() -> None:
    events = STREAMS["repeat_purchase"].events(0, 0.2)
    bought = Counter((e.user_id, e.item_id) for e in events if e.event_type == "purchase")
    assert sum(1 for c in bought.values() if c > 1) > 50


# --- yardsticks -----------------------------------------------------------------------------


def _learn(model: PlainItemKNN | RecencyItemKNN, pairs: list[tuple[str, str]]) -> None:
    for user, item in pairs:
        model.learn_one(user, item, 1.0, {"implicit": True})


def test_plain_reference_matches_the_definition_by_hand() -> None:
    model = PlainItemKNN(window=3)
    _learn(
        model,
        [
            ("a", "x"), ("a", "y"), ("a", "z"),
            ("a", "x"),  # re-interaction: x becomes the most recent, nothing is counted
            ("a", "w"),  # pairs with z, x, y; then y (the oldest) leaves the window
            ("b", "y"), ("b", "w"), ("c", "z"),
            ("a", "v"),  # pairs with z, x, w only: y has left a's window
        ],
    )  # fmt: skip
    # c: xy 1, xz 1, yz 1, wx 1, wz 1, wy 2, vz 1, vx 1, vw 1; n: x 1, y 2, z 2, w 2, v 1.
    top = model.top_k("b", 10, exclude={"y", "w"})
    assert [s.item for s in top] == ["x", "z", "v"]
    expected = [2 / math.sqrt(2), 1 / 2 + 1 / 2, 1 / math.sqrt(2)]
    assert [s.score for s in top] == pytest.approx(expected)
    # c's window is [z] (n_z 2): x and v tie at 1 / sqrt(2), y and w at 1 / sqrt(2 * 2);
    # ties keep the order the items first came in.
    top = model.top_k("c", 10, exclude={"z"})
    assert [s.item for s in top] == ["x", "v", "y", "w"]
    assert [s.score for s in top] == pytest.approx([1 / math.sqrt(2)] * 2 + [0.5] * 2)
    assert model.predict_one("b", "v") == pytest.approx(1 / math.sqrt(2))
    assert model.top_k("c", 2, exclude={"z"}) == top[:2]


def test_recency_reference_matches_the_definition_by_hand() -> None:
    model = RecencyItemKNN()
    _learn(model, [("a", "x"), ("a", "y"), ("a", "z"), ("b", "y"), ("b", "x"), ("c", "z")])
    # Pairs d apart count 0.9 ** d: c_xy = 0.9 (a) + 0.9 (b), c_yz = 0.9, c_xz = 0.81;
    # n_x = 2, n_y = 2, n_z = 2. b's window: x (weight 1), y (weight 0.85).
    z = (1.0 * 0.81 + 0.85 * 0.9) / (2**0.7 * 2**0.3)
    assert model.predict_one("b", "z") == pytest.approx(z)
    # c's window is [z]: sim(z -> j) = c_zj / (n_z ** 0.7 * n_j ** 0.3).
    top = model.top_k("c", 5, exclude={"z"})
    assert [(s.item, s.score) for s in top] == [
        ("y", pytest.approx(0.9 / (2**0.7 * 2**0.3))),
        ("x", pytest.approx(0.81 / (2**0.7 * 2**0.3))),
    ]


def test_asymmetric_normalisation_of_the_recency_reference() -> None:
    model = RecencyItemKNN()
    _learn(model, [("a", "x"), ("a", "y"), ("b", "x"), ("c", "x")])
    # c_xy = 0.9, n_x = 3, n_y = 1: from y's side 0.9 / (1 * 3 ** 0.3), from x's 0.9 / 3 ** 0.7.
    assert model.predict_one("c", "y") == pytest.approx(0.9 / 3**0.7)
    model.learn_one("d", "y", 1.0)
    assert model.predict_one("d", "x") == pytest.approx(0.9 / (2**0.7 * 3**0.3))


@pytest.mark.parametrize("cls", [PlainItemKNN, RecencyItemKNN])
def test_yardsticks_rank_without_creating_state(cls: type[PlainItemKNN]) -> None:
    model = cls()
    _learn(model, [(u, i) for u in "abcd" for i in "pqrst"[: "abcd".index(u) + 2]])
    users, items = model.n_users, model.n_items
    assert model.top_k("stranger", 5) == []
    assert model.predict_one("stranger", "p") == 0.0 and model.predict_one("a", "nope") == 0.0
    deep = model.top_k("a", 10)
    assert model.top_k("a", 2) == deep[:2]
    assert all(s.item not in {"p"} for s in model.top_k("a", 10, exclude={"p"}))
    assert (model.n_users, model.n_items) == (users, items)
    model.forget_user("a")
    assert model.top_k("a", 5) == [] and model.n_users == users - 1


# --- the suite ------------------------------------------------------------------------------


def test_suite_runs_every_registered_model_blends_last_and_the_default() -> None:
    settings = quality.suite_settings({})
    assert sorted(settings.models) == sorted(MODEL_REGISTRY)
    blends = [n for n in settings.models if isinstance(MODEL_REGISTRY[n](settings), Blend)]
    assert list(settings.models[-len(blends) :]) == blends
    assert settings.recommender == StreamSettings(_env_file=None).recommender
    pipeline = quality.suite_pipeline(settings)
    assert list(pipeline.models) == [*settings.models, "reference", "reference_recency"]


def _run(hit_rates: dict[str, float], blends: set[str], default: str) -> quality.StreamRun:
    result = EvaluationResult(
        events=100,
        k=10,
        default_model=default,
        models={n: ModelMetrics(hit_rate=h) for n, h in hit_rates.items()},
        events_per_second={},
        total_events_per_second=1.0,
        drifts=[],
    )
    return quality.StreamRun(STREAMS["ml100k"], result, 0.0, 0.0, frozenset(blends))


def test_verdict_compares_the_default_with_single_models_of_ours_only() -> None:
    run = _run(
        {
            "popularity": 0.1,
            "knn": 0.2,
            "mf": 0.2,
            "blend": 0.243,
            "other_blend": 0.4,
            "reference": 0.22,
            "reference_recency": 0.5,
        },
        {"blend", "other_blend"},
        "blend",
    )
    v = quality.verdict(run)
    assert (v.best, v.best_hr, v.reference_hr, v.popularity_hr) == ("knn", 0.2, 0.22, 0.1)
    assert v.vs_reference == pytest.approx(1.1045, abs=1e-4)
    assert v.vs_best == pytest.approx(1.215)
    checks = v.checks(ml100k=True)
    assert checks == {
        "vs_reference": True,
        "vs_best": True,
        "vs_popularity": True,
        "ml100k_hr": True,
        "ml100k_rmse": None,  # no biased_mf in this run
    }
    worse = quality.verdict(_run({"popularity": 0.3, "knn": 0.25, "reference": 0.2}, set(), "knn"))
    assert worse.best == "popularity"  # the default itself is not its own competitor
    assert worse.checks(ml100k=False) == {
        "vs_reference": True,
        "vs_best": False,
        "vs_popularity": False,
    }


def test_suite_end_to_end_writes_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite.json"
    code = quality.main(
        ["--streams", "clusters,mixed", "--scale", "0.01", "--json", str(out), "--markdown"]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert list(report["streams"]) == ["clusters", "mixed"]
    for figures in report["streams"].values():
        assert set(figures["models"]) == {*MODEL_REGISTRY, "reference", "reference_recency"}
        assert figures["summary"]["default"] == report["recommender"]
    assert report["streams"]["mixed"]["held_out"] is True
    printed = capsys.readouterr().out
    assert "mixed (held out)" in printed and "| stream |" in printed


@pytest.mark.parametrize(
    "argv", [["--streams", "nope"], ["--set", "no_such_setting=1"], ["--scale", "0"]]
)
def test_suite_refuses_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert quality.main(argv) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["reference", "quality_sections"])
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
