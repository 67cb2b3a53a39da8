"""Every registered model through the same checks.

Each model of ``MODEL_REGISTRY`` (the ``blend`` entry is a stand-alone blend that learns its
own components) runs a learn -> predict -> rank loop on a small seeded stream and must:
return at most ``k`` distinct, unseen items sorted by score; not grow for unknown users or
items; survive pickling and River's ``clone`` with identical predictions; be deterministic
under a seed; forget a user completely, and an item (``forget_item``, the item cap); and
rank in ``top_k`` order. River's own estimator checks (``river.checks``) run on them too,
since our models are River rankers.

River's ``reco.BiasedMF`` itself is not run here: it has no ``top_k`` and grows its tables on
every prediction for an unknown user or item (``defaultdict``); ``MatrixFactorization`` is
the adaptation, and ``tests/unit/test_models_mf.py`` checks it learns exactly like River.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from river.base import Base
from river.checks import yield_checks

from stream.models import MODEL_REGISTRY, Recommender, Scored
from stream.settings import StreamSettings

Event = tuple[str, str, float, dict[str, Any]]

SETTINGS = StreamSettings(
    _env_file=None,
    seed=7,
    mf_factors=4,
    negative_samples=2,
    knn_neighbors=8,
    knn_history=6,
    popularity_half_life=150.0,
    blend={"knn": 1.0, "popularity": 0.3},
    # Rebuilt models (svd, ease): built inline (reproducibly) at event 50, then every 100.
    rebuild_min_events=50,
    rebuild_every=100,
    rebuild_background=False,
    svd_factors=4,
    ease_l2=10.0,
    userknn_history=6,
    userknn_item_users=8,
    userknn_neighbors=5,
)
# Configurations of a registered model that keep state of their own: checked like a model.
VARIANTS = {"blend[learned]": ("blend", {"blend_fusion": "learned", "blend_fusion_rate": 0.2})}
NAMES = sorted(MODEL_REGISTRY) + sorted(VARIANTS)
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}
K = 5
# Models fusing the top 3k of other rankings: their top-k is not a prefix of their top-k' and
# their scores depend on k (checked in tests/unit/test_models_blend.py).
FUSED = {"blend", "blend[learned]"}


def make(name: str) -> Recommender:
    if name in VARIANTS:
        registered, changes = VARIANTS[name]
        return MODEL_REGISTRY[registered](SETTINGS.model_copy(update=changes))
    return MODEL_REGISTRY[name](SETTINGS)


def clustered_stream(n: int = 400, seed: int = 3) -> list[Event]:
    """Users prefer one of four 8-item clusters; a fifth of the events are ratings."""
    rng = random.Random(seed)
    events: list[Event] = []
    for t in range(n):
        u = rng.randrange(24)
        cluster = u % 4 if rng.random() < 0.8 else rng.randrange(4)
        item = f"i{cluster * 8 + min(int(rng.expovariate(0.4)), 7)}"
        if rng.random() < 0.2:
            rating = 4.5 if cluster == u % 4 else 1.5
            x = {"event_type": "rating", "implicit": False, "timestamp": float(t)}
            events.append((f"u{u}", item, rating, x))
        else:
            kind = rng.choice(["view", "view", "view", "click", "add_to_cart", "purchase"])
            x = {"event_type": kind, "implicit": True, "timestamp": float(t)}
            events.append((f"u{u}", item, WEIGHTS[kind], x))
    return events


STREAM = clustered_stream()
USERS = sorted({e[0] for e in STREAM})
ITEMS = sorted({e[1] for e in STREAM})


def learned(name: str, events: list[Event] = STREAM) -> Recommender:
    model = make(name)
    for user, item, y, x in events:
        model.learn_one(user, item, y, x)
    return model


def snapshot(model: Recommender) -> list[Any]:
    """Everything observable: every user's top-K and a grid of predictions."""
    out: list[Any] = []
    for user in [*USERS, "stranger"]:
        out.append(model.top_k(user, K))
        out.append([model.predict_one(user, item) for item in [*ITEMS[::5], "unknown"]])
    return out


def footprint(obj: Any, prefix: str = "", depth: int = 0) -> dict[str, int]:
    """The sizes of every dict and list held by a model (and the River models inside)."""
    sizes: dict[str, int] = {}
    for name, value in vars(obj).items():
        if isinstance(value, dict | list):
            sizes[prefix + name] = len(value)
        if depth < 3 and isinstance(value, Base):
            sizes |= footprint(value, f"{prefix}{name}.", depth + 1)
        if depth < 3 and isinstance(value, dict):
            for key, inner in value.items():
                if isinstance(inner, Base):
                    sizes |= footprint(inner, f"{prefix}{name}[{key}].", depth + 1)
    return sizes


def check_ranking(ranked: list[Scored], k: int, exclude: set[Hashable]) -> None:
    assert len(ranked) <= k
    items = [s.item for s in ranked]
    assert len(set(items)) == len(items)
    assert not set(items) & exclude
    scores = [s.score for s in ranked]
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert all(s.reason is None or isinstance(s.reason, str) for s in ranked)


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_learn_predict_rank_loop(name: str) -> None:
    model = make(name)
    seen: dict[str, set[Hashable]] = {}
    served = 0
    for user, item, y, x in STREAM:
        exclude = seen.setdefault(user, set())
        ranked = model.top_k(user, K, exclude)
        check_ranking(ranked, K, exclude)
        served += bool(ranked)
        assert math.isfinite(model.predict_one(user, item))
        model.learn_one(user, item, y, x)
        exclude.add(item)
        check_ranking(model.top_k(user, K, exclude), K, exclude)
    assert model.n_items == len(ITEMS)
    assert model.n_users in (0, len(USERS))  # popularity keeps no users
    assert served > len(STREAM) // 2


def test_top_k_respects_k_and_every_kind_of_exclusion(name: str) -> None:
    model = learned(name)
    user = USERS[0]
    full = model.top_k(user, model.n_items + 10)
    check_ranking(full, model.n_items + 10, set())
    assert model.top_k(user, 0) == []
    for k in (1, 3, K):
        ranked = model.top_k(user, k)
        check_ranking(ranked, k, set())
        if name not in FUSED:
            assert ranked == full[:k]
    drop = {s.item for s in full[:2]} | {"unknown"}
    expected = model.top_k(user, K, drop)
    check_ranking(expected, K, drop)
    if name not in FUSED:
        assert expected == [s for s in full if s.item not in drop][:K]
    for exclude in (dict.fromkeys(drop), list(drop), frozenset(drop), iter(list(drop))):
        assert model.top_k(user, K, exclude) == expected


def test_unknown_user_and_item_do_not_grow_the_model(name: str) -> None:
    model = learned(name)
    before = (model.n_users, model.n_items, footprint(model))
    known_user, known_item = USERS[0], ITEMS[0]
    check_ranking(model.top_k("stranger", K), K, set())
    model.top_k(known_user, K, exclude={"ghost"})
    for user, item in [("stranger", known_item), (known_user, "ghost"), ("stranger", "ghost")]:
        assert math.isfinite(model.predict_one(user, item))
    model.rank("stranger", {known_item, "ghost"})
    model.rank(known_user, {known_item, "ghost"})
    assert (model.n_users, model.n_items, footprint(model)) == before


def test_pickle_round_trip_predicts_and_learns_identically(name: str) -> None:
    half = len(STREAM) // 2
    model = learned(name, STREAM[:half])
    twin = pickle.loads(pickle.dumps(model))
    assert twin is not model
    assert snapshot(twin) == snapshot(model)
    for user, item, y, x in STREAM[half:]:
        model.learn_one(user, item, y, x)
        twin.learn_one(user, item, y, x)
    assert snapshot(twin) == snapshot(model)


def test_clone_is_fresh_and_learns_identically(name: str) -> None:
    model = learned(name)
    clone = model.clone()
    assert type(clone) is type(model) and clone is not model
    assert (clone.n_items, clone.n_users) == (0, 0)
    assert clone.top_k(USERS[0], K) == []
    for user, item, y, x in STREAM:
        clone.learn_one(user, item, y, x)
    assert snapshot(clone) == snapshot(model)


def test_deterministic_under_a_seed(name: str) -> None:
    assert snapshot(learned(name)) == snapshot(learned(name))


def test_forget_user_makes_them_a_stranger(name: str) -> None:
    model = learned(name)
    user = USERS[3]
    users = model.n_users
    model.forget_user(user)
    assert model.n_users == max(users - 1, 0)
    assert model.top_k(user, K) == model.top_k("stranger", K)
    assert [model.predict_one(user, i) for i in ITEMS] == [
        model.predict_one("stranger", i) for i in ITEMS
    ]
    model.forget_user(user)  # forgetting twice, or a stranger, is harmless
    model.forget_user("stranger")
    # and the model goes on learning about them from scratch
    model.learn_one(user, ITEMS[0], 1.0, {"event_type": "view", "implicit": True})
    assert model.n_users == max(users - 1, 0) + (users > 0)


def test_rank_agrees_with_top_k(name: str) -> None:
    model = learned(name)
    for user in [USERS[1], USERS[5], "stranger"]:
        candidates: set[Hashable] = {*ITEMS[::2], "ghost"}
        ranked = model.rank(user, candidates)
        assert sorted(ranked, key=str) == sorted(candidates, key=str)
        order = [s.item for s in model.top_k(user, model.n_items) if s.item in candidates]
        assert ranked[: len(order)] == order


def test_learns_without_context_like_a_river_ranker(name: str) -> None:
    model = make(name)
    for user, item, y, _ in STREAM[:50]:
        model.learn_one(user, item, y)
    model.learn_one("u0", "i0", True)  # River's reco checks learn booleans
    check_ranking(model.top_k("u0", K), K, set())


def test_scores_are_predictions(name: str) -> None:
    """``top_k`` scores are ``predict_one`` (a blend's fused score depends on k: excepted)."""
    model = learned(name)
    if name in FUSED:
        pytest.skip("a blend fuses the heads of its components' rankings: scores depend on k")
    for user in [*USERS[:6], "stranger"]:
        for s in model.top_k(user, K):
            assert s.score == pytest.approx(model.predict_one(user, s.item), rel=1e-9, abs=1e-12)


def river_checks(model: Recommender) -> list[Callable[[Any], None]]:
    checks = []
    try:
        checks.extend(yield_checks(model))
    except ModuleNotFoundError as exc:
        # River's dataset checks import scikit-learn; rankers get no dataset from them anyway.
        assert exc.name == "sklearn"
    return checks


def test_river_estimator_checks(name: str) -> None:
    model = make(name)
    checks = river_checks(model)
    assert "check_reco_routine" in [c.__name__ for c in checks]
    for check in checks:
        if check.__name__ not in model._unit_test_skips():
            check(model.clone())


GONE = "gone-item-zz"


def test_forget_item_leaves_no_reference(name: str) -> None:
    """``forget_item`` (the item cap): the item is never ranked or scored again, no state
    holds it (its id is nowhere in the pickle once the rest of the stream was learned, which
    also rebuilds the full models), and seen again it is a new item."""
    stream = [(u, GONE if t % 7 == 0 else i, y, x) for t, (u, i, y, x) in enumerate(STREAM)]
    model = learned(name, stream)
    items = model.n_items
    assert GONE.encode() in pickle.dumps(model) or items == 0
    model.forget_item(GONE)
    assert model.n_items == max(items - 1, 0)
    for user in [*USERS, "stranger"]:
        assert GONE not in [s.item for s in model.top_k(user, len(ITEMS) + 5)]
        assert model.predict_one(user, GONE) == model.predict_one(user, "unknown")
    model.forget_item(GONE)  # twice, or an unknown item, is harmless
    model.forget_item("never-seen")
    for user, item, y, x in STREAM:
        model.learn_one(user, item, y, x)
    assert GONE.encode() not in pickle.dumps(model)
    check_ranking(model.top_k(USERS[0], K), K, set())
    if not hasattr(model, "request_rebuild"):  # a full model knows items from its last build
        known = model.n_items
        model.learn_one(USERS[0], GONE, 1.0, {"event_type": "view", "implicit": True})
        assert model.n_items == known + 1


def test_forget_items_is_forget_item_of_each(name: str) -> None:
    one, many = learned(name), learned(name)
    for item in ITEMS[:3]:
        one.forget_item(item)
    many.forget_items(ITEMS[:3])
    assert snapshot(one) == snapshot(many)


def test_top_k_among_the_whole_catalogue_is_top_k(name: str) -> None:
    # Two-stage recommendation (stream/retrieval.py): a model scoring only the candidates
    # ranks them as top_k does, so with every item as a candidate (in any order) it is top_k.
    model = learned(name)
    everything = [*reversed(ITEMS), "unknown"]
    for user in [*USERS[:6], "stranger"]:
        drop = {s.item for s in model.top_k(user, 2)} | {"ghost"}
        for k in (1, K, 3 * K):
            assert model.top_k_among(user, k, everything, drop) == model.top_k(user, k, drop)


def test_top_k_among_keeps_the_top_k_contract(name: str) -> None:
    model = learned(name)
    before = (model.n_users, model.n_items, footprint(model))
    some = [*ITEMS[::2], "ghost"]
    for user in [*USERS[:6], "stranger"]:
        deep = model.top_k_among(user, 3 * K, some, {ITEMS[0]})
        check_ranking(deep, 3 * K, {ITEMS[0]})
        assert {s.item for s in deep} <= set(some)
        shallow = model.top_k_among(user, K, some, {ITEMS[0]})
        if name not in FUSED:
            assert shallow == deep[:K]
        assert model.top_k_among(user, K, []) == []
        assert model.top_k_among(user, 0, some) == []
    assert (model.n_users, model.n_items, footprint(model)) == before
