"""The synthetic stream: determinism, proportions, funnels, structure, drift, learnability."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from producers.records import encode_event
from producers.synthetic import SyntheticConfig, SyntheticStream, generate, write_jsonl
from stream.events import Event, decode_one

N = 40_000


@pytest.fixture(scope="module")
def drifting() -> tuple[SyntheticStream, list[dict[str, Any]]]:
    stream = SyntheticStream(n_events=N, n_users=400, n_items=900, seed=5, drift_at=N // 2)
    return stream, list(stream.events())


def test_same_seed_same_bytes_other_seed_other_stream(tmp_path: Path) -> None:
    options: dict[str, Any] = {"drift_at": 1_500, "ratings_fraction": 0.2, "n_items": 400}
    write_jsonl(generate(3_000, seed=9, **options), tmp_path / "a.jsonl")
    write_jsonl(generate(3_000, seed=9, **options), tmp_path / "b.jsonl")
    write_jsonl(generate(3_000, seed=10, **options), tmp_path / "c.jsonl")
    a = (tmp_path / "a.jsonl").read_bytes()
    assert a == (tmp_path / "b.jsonl").read_bytes()
    assert a != (tmp_path / "c.jsonl").read_bytes()
    assert a.count(b"\n") == 3_000


def test_every_event_passes_the_workers_validation() -> None:
    stream = SyntheticStream(n_events=5_000, ratings_fraction=0.3, seed=2)
    for record in stream.records():
        event = decode_one(record.key, record.value)
        assert isinstance(event, Event), event
        assert record.key == event.user_id.encode()


def test_timestamps_follow_the_start_time_and_spacing() -> None:
    events = list(generate(101, seed=1, start_time=1_600_000_000.0, events_per_second=4.0))
    assert events[0]["timestamp"] == 1_600_000_000.0
    assert events[100]["timestamp"] == 1_600_000_025.0
    gaps = {round(b["timestamp"] - a["timestamp"], 6) for a, b in itertools.pairwise(events)}
    assert gaps == {0.25}


def test_implicit_event_proportions(drifting: tuple[SyntheticStream, list[dict[str, Any]]]) -> None:
    _, events = drifting
    shares = Counter(e["event_type"] for e in events)
    assert set(shares) == {"view", "click", "add_to_cart", "purchase"}
    expected = {"view": 0.70, "click": 0.20, "add_to_cart": 0.07, "purchase": 0.03}
    for kind, share in expected.items():
        assert shares[kind] / len(events) == pytest.approx(share, abs=0.015), kind


def test_purchases_follow_a_funnel_on_the_same_item(
    drifting: tuple[SyntheticStream, list[dict[str, Any]]],
) -> None:
    _, events = drifting
    steps: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in events:
        steps[(e["user_id"], e["item_id"])].append(e["event_type"])
    purchases = 0
    for kinds in steps.values():
        for i, kind in enumerate(kinds):
            if kind == "purchase":
                purchases += 1
                assert {"view", "click", "add_to_cart"} <= set(kinds[:i])
    assert purchases > 500
    # Funnels interleave with other users' events instead of arriving in one block.
    adjacent = sum(a["user_id"] == b["user_id"] for a, b in itertools.pairwise(events))
    assert adjacent / len(events) < 0.5


def test_ratings_fraction_and_ratings_reflect_taste() -> None:
    stream = SyntheticStream(n_events=20_000, ratings_fraction=0.25, seed=4)
    truth = stream.ground_truth
    ratings = [e for e in stream.events() if e["event_type"] == "rating"]
    assert len(ratings) / 20_000 == pytest.approx(0.25, abs=0.02)
    assert {e["rating"] for e in ratings} <= {1.0, 2.0, 3.0, 4.0, 5.0}
    liked = [
        e["rating"]
        for e in ratings
        if truth.item_cluster[e["item_id"]] in truth.clusters_of(e["user_id"], 0)
    ]
    other = [
        e["rating"]
        for e in ratings
        if truth.item_cluster[e["item_id"]] not in truth.clusters_of(e["user_id"], 0)
    ]
    assert sum(liked) / len(liked) > 3.7 > 2.7 > sum(other) / len(other)
    only = list(generate(1_000, seed=4, ratings_fraction=1.0))
    assert {e["event_type"] for e in only} == {"rating"}


def test_structure_clusters_of_about_75_items_and_one_or_two_per_user(
    drifting: tuple[SyntheticStream, list[dict[str, Any]]],
) -> None:
    stream, _ = drifting
    truth = stream.ground_truth
    assert truth.n_clusters == 12
    sizes = Counter(truth.item_cluster.values())
    assert set(sizes.values()) == {75}
    assert {len(c) for c in truth.user_clusters[0].values()} == {1, 2}


def test_users_mostly_pick_items_from_their_clusters_and_drift_rotates_them(
    drifting: tuple[SyntheticStream, list[dict[str, Any]]],
) -> None:
    stream, events = drifting
    truth = stream.ground_truth
    drift = N // 2
    for user, before in truth.user_clusters[0].items():
        assert truth.clusters_of(user, drift - 1) == before
        assert truth.clusters_of(user, drift) == truth.user_clusters[1][user] != before

    def share(lo: int, hi: int, regime: int) -> float:
        views = [e for e in events[lo:hi] if e["event_type"] == "view"]
        hits = sum(
            truth.item_cluster[e["item_id"]] in truth.user_clusters[regime][e["user_id"]]
            for e in views
        )
        return hits / len(views)

    # Funnels started just before the drift may finish after it: leave a margin of 200.
    assert share(0, drift, 0) > 0.75
    assert share(drift + 200, N, 0) < 0.25
    assert share(drift + 200, N, 1) > 0.75


def test_drift_changes_which_items_are_popular(
    drifting: tuple[SyntheticStream, list[dict[str, Any]]],
) -> None:
    stream, events = drifting
    before, after = stream.ground_truth.cluster_ranking
    changed = sum(b[0] != a[0] for b, a in zip(before, after, strict=True))
    assert changed >= len(before) - 2
    top_before = {i for i, _ in Counter(e["item_id"] for e in events[: N // 2]).most_common(20)}
    top_after = {i for i, _ in Counter(e["item_id"] for e in events[N // 2 :]).most_common(20)}
    assert len(top_before & top_after) <= 5


def test_gradual_drift_moves_over_the_window() -> None:
    stream = SyntheticStream(
        n_events=30_000, seed=8, drift_at=10_000, drift_kind="gradual", drift_width=10_000
    )
    truth = stream.ground_truth
    assert truth.new_regime_probability(9_999) == 0.0
    assert truth.new_regime_probability(15_000) == 0.5
    assert truth.new_regime_probability(20_000) == 1.0
    events = list(stream.events())

    def new_share(lo: int, hi: int) -> float:
        views = [e for e in events[lo:hi] if e["event_type"] == "view"]
        new = sum(
            truth.item_cluster[e["item_id"]] in truth.user_clusters[1][e["user_id"]] for e in views
        )
        return new / len(views)

    early, middle, late = (
        new_share(10_000, 12_500),
        new_share(13_750, 16_250),
        new_share(17_500, 20_000),
    )
    assert early < middle < late
    assert new_share(0, 10_000) < 0.25 < 0.75 < new_share(20_200, 30_000)


def test_new_items_appear_over_time_and_never_before_their_arrival(
    drifting: tuple[SyntheticStream, list[dict[str, Any]]],
) -> None:
    stream, events = drifting
    appears = stream.ground_truth.item_appears_at
    late = {i for i, at in appears.items() if at > 0}
    assert 0.05 < len(late) / len(appears) < 0.15
    first_seen: dict[str, int] = {}
    for index, e in enumerate(events):
        first_seen.setdefault(e["item_id"], index)
    assert all(first_seen[i] >= appears[i] for i in first_seen)
    assert len(late & set(first_seen)) > len(late) // 2


def hit_rates(events: list[dict[str, Any]], k: int = 10) -> dict[str, float]:
    """Test-then-learn HR@k on items new to the user: popularity vs a simple item-KNN."""
    popularity: Counter[str] = Counter()
    history: dict[str, list[str]] = defaultdict(list)
    co: dict[str, Counter[str]] = defaultdict(Counter)
    hits = {"popularity": 0, "item_knn": 0}
    evaluated = 0
    for e in events:
        user, item = e["user_id"], e["item_id"]
        past = history[user]
        if item not in past:
            seen = set(past)
            evaluated += 1
            popular = [i for i, _ in popularity.most_common(k + len(seen)) if i not in seen][:k]
            scores: Counter[str] = Counter()
            for other in past[-20:]:
                scores.update(co[other])
            ranked = heapq.nlargest(k + len(seen), scores, key=scores.__getitem__)
            knn = [i for i in ranked if i not in seen][:k]
            knn += [i for i in popular if i not in knn][: k - len(knn)]
            hits["popularity"] += item in popular
            hits["item_knn"] += item in knn
            for other in past[-20:]:
                co[other][item] += 1
                co[item][other] += 1
            past.append(item)
        popularity[item] += 1
    return {name: n / evaluated for name, n in hits.items()}


def test_structure_is_learnable_item_knn_beats_popularity() -> None:
    rates = hit_rates(list(generate(20_000, seed=3, n_users=300, n_items=600)))
    assert rates["item_knn"] > 1.5 * rates["popularity"]
    assert rates["item_knn"] > 0.15


def test_ideal_top_k_serves_the_users_clusters_and_only_live_items() -> None:
    stream = SyntheticStream(n_events=10_000, seed=6, n_items=600)
    truth = stream.ground_truth
    user = "u3"
    top = truth.ideal_top_k(user, index=0, k=10)
    assert len(top) == 10
    assert sum(truth.item_cluster[i] in truth.clusters_of(user, 0) for i in top) >= 8
    assert all(truth.item_appears_at[i] == 0 for i in top)
    assert top[0] not in truth.ideal_top_k(user, index=0, k=10, exclude=[top[0]])


@pytest.mark.parametrize(
    "bad",
    [
        {"n_users": 0},
        {"n_items": 2},
        {"n_clusters": 3, "max_user_clusters": 3},
        {"in_cluster_prob": 1.5},
        {"event_mix": (0.5, 0.6, 0.0, 0.0)},
        {"ratings_fraction": -0.1},
        {"events_per_second": 0},
        {"drift_at": -1},
        {"drift_kind": "sideways"},
        {"drift_width": 0},
    ],
)
def test_invalid_configurations_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_records_match_the_events() -> None:
    stream = SyntheticStream(n_events=50, seed=1)
    records = list(stream.records())
    assert [r.value for r in records] == [encode_event(e) for e in stream.events()]
    assert [r.line for r in records] == list(range(1, 51))
