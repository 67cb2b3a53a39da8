"""The core: one event at a time, evaluate, learn, recommend, watch for drift.

:class:`Pipeline` knows nothing of Kafka or Prometheus. The live worker, the offline evaluator
and the tests all drive this same object with :meth:`Pipeline.process_one` (or
:meth:`Pipeline.run` over a plain iterable of events), so offline and live numbers agree.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
import zlib
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from stream.drift import DriftMonitor
from stream.evaluation import ModelEvaluator, rank_outcome
from stream.events import (
    CONTROL_TYPES,
    DriftRecord,
    Event,
    MetricsRecord,
    ModelMetrics,
    PromotionRecord,
    ReactionRecord,
    Recommendation,
    Source,
)
from stream.models import MODEL_SETTINGS, Blend, Recommender, Scored, build_models, learns
from stream.models.blend import DEPTH
from stream.models.popularity import Popularity
from stream.retention import Retention
from stream.retrieval import CandidateRetriever, RetrievalMode, Round, is_source
from stream.settings import StreamSettings
from stream.updates import ModelUpdates, PromotionSettings, ReactionSettings

__all__ = [
    "PIPELINE_SETTINGS",
    "Pipeline",
    "PipelineConfig",
    "StepResult",
    "built_with",
    "challenger_draw",
    "merge_metrics",
    "merge_model_metrics",
    "user_digest",
]

logger = logging.getLogger(__name__)

_FALLBACK_REASON = "popular now"


PIPELINE_SETTINGS: tuple[str, ...] = (
    "models",
    "recommender",
    "top_k",
    "history_size",
    "weight_view",
    "weight_click",
    "weight_add_to_cart",
    "weight_purchase",
    "metric_window",
    "drift_detector",
    "drift_delta",
    "drift_min_events",
    "drift_direction",
    "drift_min_change",
    "popularity_half_life",  # the cold-start fallback's, even without a popularity model
    "seed",
    "promotion",
    "promotion_metric",
    "promotion_margin",
    "promotion_min_events",
    "drift_reaction",
    "drift_reaction_drop",
    "drift_reaction_cooldown",
    "drift_reaction_span",
)
"""Settings a :class:`Pipeline` holds on to once built (besides each model's own,
``MODEL_SETTINGS``); everything else (topics, rating range, cadences) is read live."""


def built_with(settings: StreamSettings) -> dict[str, Any]:
    """The settings a Pipeline built from ``settings`` is tied to, as JSON values.

    Checkpointed with the Pipeline, so a restore can tell what changed since.

    >>> s = StreamSettings(models=("popularity", "knn"), recommender="knn")
    >>> held = built_with(s)
    >>> held["models"], held["knn_neighbors"], "mf_factors" in held
    (['popularity', 'knn'], 100, False)
    """
    names = set(PIPELINE_SETTINGS)
    for model in settings.models:
        names.update(MODEL_SETTINGS.get(model, ()))
    held = settings.model_dump(mode="json", include=names)
    if "blend" in held:  # what the blend fuses, also when STREAM_BLEND is left to its default
        held["blend"] = settings.blend_weights()
    return held


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The part of the settings the core needs (no secrets: this is checkpointed)."""

    top_k: int = 10
    recommender: str = "knn"
    history_size: int = 200
    rating_min: float = 0.5
    rating_max: float = 5.0
    implicit_weights: tuple[tuple[str, float], ...] = (
        ("view", 1.0),
        ("click", 2.0),
        ("add_to_cart", 3.0),
        ("purchase", 5.0),
    )
    metric_window: int = 1_000
    drift_detector: str = "adwin"
    drift_delta: float = 0.002
    drift_min_events: int = 500
    popularity_half_life: float = 5_000.0
    seed: int = 42
    promotion: bool = True
    promotion_metric: str = "hr"
    promotion_margin: float = 0.10
    promotion_min_events: int = 2_000
    drift_reaction: bool = True
    drift_reaction_drop: float = 0.40
    drift_reaction_cooldown: int = 10_000
    drift_reaction_span: int = 5_000
    # Two-stage recommendation and sampled challengers (issue 11).
    retrieval: RetrievalMode = "candidates"
    retrieval_candidates: int = 100
    challenger_sample: float = 1.0
    # Drift reports (issue 13). New fields go last: a checkpoint holds the values by position.
    drift_direction: str = "worse"
    drift_min_change: float = 0.4

    def __getstate__(self) -> list[Any]:
        return [getattr(self, f.name) for f in fields(self)]

    def __setstate__(self, state: list[Any]) -> None:
        # A checkpoint of an older version holds fewer values (fields are only ever appended):
        # the ones it lacks take their defaults.
        for index, f in enumerate(fields(self)):
            object.__setattr__(self, f.name, state[index] if index < len(state) else f.default)

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> PipelineConfig:
        return cls(
            top_k=settings.top_k,
            recommender=settings.recommender,
            history_size=settings.history_size,
            rating_min=settings.rating_min,
            rating_max=settings.rating_max,
            implicit_weights=tuple(
                (t, settings.implicit_weight(t))
                for t in ("view", "click", "add_to_cart", "purchase")
            ),
            metric_window=settings.metric_window,
            drift_detector=settings.drift_detector,
            drift_delta=settings.drift_delta,
            drift_min_events=settings.drift_min_events,
            drift_direction=settings.drift_direction,
            drift_min_change=settings.drift_min_change,
            popularity_half_life=settings.popularity_half_life,
            seed=settings.seed,
            promotion=settings.promotion,
            promotion_metric=settings.promotion_metric,
            promotion_margin=settings.promotion_margin,
            promotion_min_events=settings.promotion_min_events,
            drift_reaction=settings.drift_reaction,
            drift_reaction_drop=settings.drift_reaction_drop,
            drift_reaction_cooldown=settings.drift_reaction_cooldown,
            drift_reaction_span=settings.drift_reaction_span,
            retrieval=settings.retrieval,
            retrieval_candidates=settings.retrieval_candidates,
            challenger_sample=settings.challenger_sample,
        )

    def promotion_settings(self) -> PromotionSettings:
        return PromotionSettings(
            enabled=self.promotion,
            metric=self.promotion_metric,  # type: ignore[arg-type]
            margin=self.promotion_margin,
            min_events=self.promotion_min_events,
        )

    def reaction_settings(self) -> ReactionSettings:
        return ReactionSettings(
            enabled=self.drift_reaction,
            drop=self.drift_reaction_drop,
            cooldown_events=self.drift_reaction_cooldown,
            span_events=self.drift_reaction_span,
        )


@dataclass(slots=True)
class StepResult:
    """What one event produced: the fresh recommendation and any drift detected."""

    event: Event
    source: Source
    recommendation: Recommendation | None  # None for control events (forget)
    evaluated: bool
    drifts: list[DriftRecord] = field(default_factory=list)
    promotions: list[PromotionRecord] = field(default_factory=list)
    reactions: list[ReactionRecord] = field(default_factory=list)


class Pipeline:
    """Test-then-learn over every configured model, then recommend with the chosen one.

    Per event: (1) for each model, rank the user's top-K excluding items they already
    interacted with and score whether the event's item is in it (only for items new to the
    user: re-interactions with a known item are not predictions) and, on rating events, the
    rating error of rating models; (2) feed those per-event streams to the drift detectors;
    (3) learn every model; (4) consult the model updates (:mod:`stream.updates`: promote a
    challenger, react to drift on the served model); (5) publish the served model's fresh
    top-K (``config.recommender`` until a promotion). Users a model cannot
    serve (cold start) are filled from a recency-weighted popularity model; items the user
    already interacted with are never recommended (so ``a`` gets nothing below).

    Each model is ranked once per evaluated event: a blend over the pipeline's own models
    fuses the rankings its components made for their own evaluation (ranked deep enough
    for it), instead of ranking them again.

    Examples
    --------
    >>> from stream.settings import StreamSettings
    >>> s = StreamSettings(models=("popularity", "knn"), recommender="knn", drift_min_events=0)
    >>> p = Pipeline.from_settings(s)
    >>> events = [Event(user_id=u, item_id=i, event_type="click", timestamp=t)
    ...           for t, (u, i) in enumerate([("a", "x"), ("a", "y"), ("b", "x")])]
    >>> [[i.item_id for i in r.recommendation.items] for r in p.run(events)]
    [[], [], ['y']]
    >>> p.run_count, p.evaluators["knn"].evaluated
    (3, 3)
    """

    # The shard's model-sync progress (a stream.sync.SyncState, set by the sync; pickled
    # with the pipeline). Class-level so older checkpoints read None.
    sync_state: Any = None

    def __init__(
        self,
        config: PipelineConfig,
        models: dict[str, Recommender],
        fallback: Popularity | None = None,
    ) -> None:
        if config.recommender not in models:
            raise ValueError(f"recommender {config.recommender!r} is not one of {list(models)}")
        self.config = config
        self.models = models
        # The settings this was built with (:func:`built_with`); {} when built by hand.
        self.built_with: dict[str, Any] = {}
        self._learners = [(n, m) for n, m in models.items() if learns(n, m)]
        own = models.get("popularity")
        if isinstance(own, Popularity):
            fallback = own
        else:
            if fallback is None:
                fallback = Popularity(half_life=config.popularity_half_life)
            self._learners.append(("_fallback_popularity", fallback))
        self.fallback: Popularity = fallback
        self._weights = dict(config.implicit_weights)
        # A blend over the pipeline's own instances fuses the rankings its components just
        # made for their evaluation: each model is ranked once per event, deep enough for
        # every blend it feeds (a top-m list begins with the top-k one, m >= k).
        k = config.top_k
        self._depth = dict.fromkeys(models, k)
        self._fusing: dict[str, Blend] = {}
        for name, model in models.items():
            if isinstance(model, Blend) and all(
                models.get(c) is component and not isinstance(component, Blend)
                for c, component in model.active
            ):
                self._fusing[name] = model
                for c, _ in model.active:
                    self._depth[c] = max(self._depth[c], DEPTH * k)
        self.evaluators = {name: ModelEvaluator(config.metric_window) for name in models}
        self.drift = DriftMonitor(
            config.drift_detector,
            config.drift_delta,
            config.drift_min_events,
            config.seed,
            direction=config.drift_direction,
            min_change=config.drift_min_change,
        )
        # Per user, the items they interacted with, most recent last (dict = ordered set).
        self.history: dict[Hashable, dict[Hashable, None]] = {}
        self.run_count = 0
        self.evaluated_count = 0
        # Events each model has learned from (a blend counts the events its components learned).
        self.learned: dict[str, int] = dict.fromkeys(models, 0)
        # CPU seconds spent in each model (ranking for evaluation + learning), for events/s.
        self.model_seconds: dict[str, float] = dict.fromkeys(models, 0.0)
        # Which model is served (champion / challenger) and the reaction to drift.
        self.updates = ModelUpdates(
            config.promotion_settings(),
            config.reaction_settings(),
            config.recommender,
            config.metric_window,
            models,
        )
        # Users expire and items are evicted under the memory limits (off until configured).
        self.retention = Retention()
        self._setup_retrieval()

    def apply_retrieval(self, settings: StreamSettings) -> None:
        """Rank and sample as ``settings`` say from the next event on (a restore applies the
        current STREAM_RETRIEVAL* / STREAM_CHALLENGER_SAMPLE: they change no learned state)."""
        self.config = replace(
            self.config,
            retrieval=settings.retrieval,
            retrieval_candidates=settings.retrieval_candidates,
            challenger_sample=settings.challenger_sample,
        )
        self._setup_retrieval()

    def _setup_retrieval(self) -> None:
        """The candidate retriever (None: exact ranking) and the challenger sample, from the
        configuration (a Pipeline pickled before they existed ranks exactly, unsampled)."""
        config = self.config
        mode = getattr(config, "retrieval", "exact")
        self._sample = float(getattr(config, "challenger_sample", 1.0))
        self._retriever: CandidateRetriever | None = None
        if mode == "candidates":
            sources: dict[str, Recommender] = {n: m for n, m in self.models.items() if is_source(m)}
            if self.fallback not in sources.values():
                sources["_fallback_popularity"] = self.fallback
            self._retriever = CandidateRetriever(
                sources, int(getattr(config, "retrieval_candidates", 100))
            )

    def __getstate__(self) -> dict[str, Any]:
        # The retriever only points at the models: rebuilt from the configuration on load
        # (a checkpoint admits only the classes of state, see stream/checkpoint.py).
        state = self.__dict__.copy()
        state.pop("_retriever", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "retention" not in state:  # a checkpoint from before the memory limits
            self.retention = Retention()
        self._setup_retrieval()

    @property
    def served(self) -> str:
        """The model whose top-K is published now (``config.recommender`` until a promotion)."""
        return self.updates.served

    @classmethod
    def from_settings(cls, settings: StreamSettings) -> Pipeline:
        pipeline = cls(PipelineConfig.from_settings(settings), build_models(settings))
        pipeline.built_with = built_with(settings)
        pipeline.bound_memory(settings)
        return pipeline

    # --- per event ------------------------------------------------------------------------

    def target(self, event: Event) -> float:
        """The learning target: the rating, or the implicit event's configured weight."""
        if event.event_type == "rating":
            assert event.rating is not None  # guaranteed by decode_one
            return event.rating
        return self._weights[event.event_type]

    def serve(self, name: str, user: Hashable, exclude: Iterable[Hashable]) -> list[Scored]:
        """Model ``name``'s top-K for ``user``, topped up from popularity when it runs short."""
        excluded = exclude if isinstance(exclude, dict | set | frozenset) else set(exclude)
        if self._retriever is not None:
            return self._served_one(name, user, excluded, Round())
        return self._top_up(
            name, user, self.models[name].top_k(user, self.config.top_k, excluded), excluded
        )

    def _served_one(
        self,
        name: str,
        user: Hashable,
        excluded: dict[Hashable, None] | set[Hashable] | frozenset[Hashable],
        ranked: dict[str, list[Scored]],
    ) -> list[Scored]:
        """:meth:`serve` within one event: ``ranked`` holds the models ranked so far."""
        k = self.config.top_k
        blend = self._fusing.get(name)
        if blend is not None:
            # Only what the fusion reads: a component too light to count is not ranked here.
            top = blend.fuse(
                {c: self._ranked_one(c, user, excluded, ranked) for c in blend.consulted}, k
            )
        else:
            top = self._ranked_one(name, user, excluded, ranked)[:k]
        return self._top_up(name, user, top, excluded)

    def _ranked_one(
        self,
        name: str,
        user: Hashable,
        excluded: dict[Hashable, None] | set[Hashable] | frozenset[Hashable],
        ranked: dict[str, list[Scored]],
    ) -> list[Scored]:
        top = ranked.get(name)
        if top is not None:
            return top
        retriever = self._retriever
        model = self.models[name]
        if retriever is None or not isinstance(ranked, Round) or is_source(model):
            top = ranked[name] = model.top_k(user, self._depth[name], excluded)
        else:
            candidates = retriever.candidates_one(user, excluded, ranked)
            # The candidates hold no excluded item: nothing left to exclude.
            top = ranked[name] = self.models[name].top_k_among(user, self._depth[name], candidates)
        return top

    def _top_up(
        self, name: str, user: Hashable, ranked: list[Scored], excluded: Iterable[Hashable]
    ) -> list[Scored]:
        k = self.config.top_k
        if len(ranked) < k and name != "popularity":
            have = {s.item for s in ranked}
            extra = self.fallback.top_k(user, k + len(have), excluded)
            for s in extra:
                if s.item not in have:
                    ranked.append(Scored(s.item, s.score, s.reason or _FALLBACK_REASON))
                    if len(ranked) == k:
                        break
        return ranked

    def process_one(self, event: Event, source: Source) -> StepResult:
        """Evaluate, learn and recommend for one valid event (or apply a ``forget``)."""
        self.run_count += 1
        if event.event_type in CONTROL_TYPES:
            self.forget_user(event.user_id)
            return StepResult(event, source, None, False)
        # One shared string per item id: every history entry would otherwise hold its event's
        # own copy (~50 bytes each, measured in benchmarks/memory.py).
        user, item = event.user_id, sys.intern(event.item)
        retention = self.retention
        if retention.active:  # an expired user is a cold user for this very event
            self._drop_users(retention.expired_before(user, event.timestamp), "ttl")
        seen = self.history.get(user)
        excluded: dict[Hashable, None] = seen if seen is not None else {}
        y = self.target(event)
        drifts: list[DriftRecord] = []

        evaluated = item not in excluded
        if evaluated:
            self.evaluated_count += 1
        clock = time.perf_counter
        lo, hi = self.config.rating_min, self.config.rating_max
        ranked: dict[str, list[Scored]] = Round()
        served_name = self.updates.served
        challengers = self._sample >= 1.0 or self.sampled_one(user, item)
        for name, model in self.models.items():
            if not challengers and name != served_name:
                continue  # a challenger outside the sample: not evaluated on this event
            evaluator = self.evaluators[name]
            if evaluated:
                started = clock()
                served = [s.item for s in self._served_one(name, user, excluded, ranked)]
                self.model_seconds[name] += clock() - started
                evaluator.served.update(served)
                outcome = rank_outcome(served, item)
                evaluator.update_rank(outcome)
                drifts += self.drift.update_one(
                    name, "miss", 1.0 - outcome.hit, self.run_count, source, event.timestamp, user
                )
            if event.event_type == "rating" and model.predicts_ratings:
                # A rating outside the valid scale is never the better guess: clip to it.
                y_pred = min(max(float(model.predict_one(user, item)), lo), hi)
                evaluator.update_rating(y, y_pred)
                drifts += self.drift.update_one(
                    name,
                    "abs_error",
                    abs(y - y_pred),
                    self.run_count,
                    source,
                    event.timestamp,
                    user,
                )

        if evaluated:
            for name, blend in self._fusing.items():
                if blend.learns_online:
                    started = clock()
                    blend.observe_one(
                        {c: self._ranked_one(c, user, excluded, ranked) for c, _ in blend.active},
                        item,
                    )
                    self.model_seconds[name] += clock() - started

        x = {
            "event_type": event.event_type,
            "implicit": event.implicit,
            "timestamp": event.timestamp,
        }
        for name, model in self._learners:
            started = clock()
            model.learn_one(user, item, y, x)
            self.model_seconds[name] = self.model_seconds.get(name, 0.0) + clock() - started
        for name in self.models:
            self.learned[name] += 1
        self._remember(user, item)
        if retention.active:
            over_users, over_items = retention.seen_one(user, item, event.timestamp)
            self._drop_users(over_users, "cap")
            self._drop_items(over_items)
        # Champion / challenger and the drift reaction (stream/updates), before recommending.
        promotions, reactions = self.updates.after_one(
            self.models,
            self.evaluators,
            self.evaluated_count,
            evaluated,
            drifts,
            user,
            self.run_count,
        ).records(self.run_count, source, event.timestamp, self.config.top_k)

        # One line per detection only at DEBUG: a long log has hundreds of them. The worker
        # logs them summarised with each metrics record; `evaluate` summarises them at the end.
        for d in drifts:
            logger.debug(
                "drift detected by %s on %s/%s at event %d (%s)",
                d.detector,
                d.model,
                d.metric,
                d.event,
                source,
            )
        recommendation = self.recommend(event, source)
        return StepResult(event, source, recommendation, evaluated, drifts, promotions, reactions)

    def recommend(self, event: Event, source: Source) -> Recommendation:
        """The served model's current top-K for the event's user, as a publishable record."""
        name = self.updates.served
        ranked = self.serve(name, event.user_id, self.history.get(event.user_id, {}))
        # One validation of plain data: pydantic checks the K items in one call (~35% cheaper
        # than building K RecommendedItem objects; model_construct is slower still).
        return Recommendation.model_validate(
            {
                "user_id": event.user_id,
                "items": [
                    {"item_id": str(s.item), "score": float(s.score), "reason": s.reason}
                    for s in ranked
                ],
                "model": name,
                "model_version": self.updates.current_version(self.models),
                "source_topic": source.topic,
                "source_partition": source.partition,
                "source_offset": source.offset,
                "event_timestamp": event.timestamp,
            }
        )

    def _remember(self, user: Hashable, item: Hashable) -> None:
        seen = self.history.get(user)
        if seen is None:
            seen = self.history[user] = {}
        seen.pop(item, None)
        seen[item] = None
        if len(seen) > self.config.history_size:
            del seen[next(iter(seen))]

    def forget_user(self, user: Hashable) -> None:
        """Remove a user from the history and from every model (privacy requests)."""
        self._drop_user(user)
        self.retention.discard_user(user)
        # Logs outlive the erasure: they get a pseudonym, never the id itself.
        logger.info("forgot a user (id sha256 %s)", user_digest(user))

    def sampled_one(self, user: Hashable, item: Hashable) -> bool:
        """Whether the challengers are evaluated on the event of ``user`` with ``item``:
        always with ``challenger_sample`` 1, else when :func:`challenger_draw` falls below it
        (the served model is evaluated on every event whatever this says)."""
        return self._sample >= 1.0 or challenger_draw(user, item) < self._sample

    # --- whole streams and summaries ----------------------------------------------------

    def run(self, events: Iterable[Event], topic: str = "offline") -> Iterator[StepResult]:
        """Drive the pipeline over a plain iterable (offline evaluation, tests)."""
        for offset, event in enumerate(events):
            yield self.process_one(event, Source(topic, 0, offset))

    @property
    def n_users(self) -> int:
        return len(self.history)

    @property
    def n_items(self) -> int:
        return max(self.fallback.n_items, self.models[self.updates.served].n_items)

    def _coverage(self, evaluator: ModelEvaluator) -> float | None:
        known = self.n_items
        return len(evaluator.served) / known if known else None

    def metrics_record(self, drifts: list[DriftRecord] | None = None) -> MetricsRecord:
        """Windowed and cumulative accuracy of every model, as a publishable record."""
        return MetricsRecord(
            k=self.config.top_k,
            events=self.run_count,
            evaluated=self.evaluated_count,
            window=self.config.metric_window,
            window_metrics={n: e.windowed() for n, e in self.evaluators.items()},
            cumulative_metrics={
                n: e.cumulative().model_copy(update={"coverage": self._coverage(e)})
                for n, e in self.evaluators.items()
            },
            drifts=list(drifts or []),
            users=self.n_users,
            items=self.n_items,
            served={self.updates.served: 1},
            users_expired_ttl=self.retention.expired_ttl,
            users_expired_cap=self.retention.expired_cap,
            items_evicted=self.retention.evicted_items,
        )

    # --- bounded memory (stream/retention.py decides, this removes) ------------------------

    def bound_memory(self, settings: StreamSettings) -> None:
        """Apply STREAM_USER_TTL_SECONDS / STREAM_MAX_USERS / STREAM_MAX_ITEMS.

        Read live (not part of what a model learned): a restored pipeline takes the current
        values, and the users and items it holds are adopted as seen at the newest event.
        """
        self.retention.configure(
            settings.user_ttl_seconds,
            settings.max_users,
            settings.max_items,
            users=self.history,
            items=reversed(self.fallback.known_items()) if settings.max_items else (),
        )

    def _drop_user(self, user: Hashable) -> None:
        self.history.pop(user, None)
        for _, model in self._learners:
            model.forget_user(user)

    def _drop_users(self, users: list[Hashable], reason: str) -> None:
        """Expired users: forgotten like a privacy request, counted instead of logged each."""
        if not users:
            return
        for user in users:
            self._drop_user(user)
        logger.debug("expired %d users (%s)", len(users), reason)

    def _drop_items(self, items: list[Hashable]) -> None:
        """Evict items from every model, every user's history and the coverage counts."""
        if not items:
            return
        gone = set(items)
        for _, model in self._learners:
            model.forget_items(gone)
        for seen in self.history.values():
            for item in seen.keys() & gone:
                del seen[item]
        for evaluator in self.evaluators.values():
            evaluator.served -= gone
        logger.debug("evicted %d items (cap)", len(items))


def user_digest(user: Hashable) -> str:
    """A short pseudonym of a user id for logs (the first 12 hex digits of its SHA-256).

    >>> user_digest("alice")
    '2bd806c97f0e'
    """
    return hashlib.sha256(str(user).encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _weighted(values: list[tuple[float | None, int]]) -> float | None:
    total = sum(n for v, n in values if v is not None)
    if total == 0:
        return None
    return sum(v * n for v, n in values if v is not None) / total


def merge_model_metrics(parts: list[ModelMetrics], window: int | None) -> ModelMetrics:
    """Combine one model's metrics from several shards, weighting by evaluations.

    With ``window`` set, each shard weighs by the evaluations in its window. RMSE combines
    as the root of the weighted mean square.
    """

    def n_rank(m: ModelMetrics) -> int:
        return min(m.evaluated, window) if window else m.evaluated

    def n_rate(m: ModelMetrics) -> int:
        return min(m.rated, window) if window else m.rated

    rmse_sq = _weighted([(None if m.rmse is None else m.rmse**2, n_rate(m)) for m in parts])
    return ModelMetrics(
        hit_rate=_weighted([(m.hit_rate, n_rank(m)) for m in parts]),
        ndcg=_weighted([(m.ndcg, n_rank(m)) for m in parts]),
        mrr=_weighted([(m.mrr, n_rank(m)) for m in parts]),
        mae=_weighted([(m.mae, n_rate(m)) for m in parts]),
        rmse=None if rmse_sq is None else rmse_sq**0.5,
        coverage=_weighted([(m.coverage, m.evaluated) for m in parts]),
        evaluated=sum(m.evaluated for m in parts),
        rated=sum(m.rated for m in parts),
    )


def merge_metrics(records: list[MetricsRecord]) -> MetricsRecord:
    """One metrics record for several shards (partitions) of the same configuration."""
    if len(records) == 1:
        return records[0]
    first = records[0]
    names = list(dict.fromkeys(n for r in records for n in r.cumulative_metrics))

    def merged(attr: str, window: int | None) -> dict[str, ModelMetrics]:
        return {
            n: merge_model_metrics(
                [getattr(r, attr)[n] for r in records if n in getattr(r, attr)], window
            )
            for n in names
        }

    return MetricsRecord(
        k=first.k,
        events=sum(r.events for r in records),
        evaluated=sum(r.evaluated for r in records),
        window=first.window,
        window_metrics=merged("window_metrics", first.window),
        cumulative_metrics=merged("cumulative_metrics", None),
        drifts=[d for r in records for d in r.drifts],
        users=sum(r.users for r in records),
        items=max(r.items for r in records),
        promotions=[p for r in records for p in r.promotions],
        reactions=[x for r in records for x in r.reactions],
        served=_summed([r.served for r in records]),
        users_expired_ttl=sum(r.users_expired_ttl for r in records),
        users_expired_cap=sum(r.users_expired_cap for r in records),
        items_evicted=sum(r.items_evicted for r in records),
        partitions={
            t: sorted({p for r in records for p in r.partitions.get(t, ())})
            for t in dict.fromkeys(t for r in records for t in r.partitions)
        },
    )


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


def challenger_draw(user: Hashable, item: Hashable) -> float:
    """Where an event falls in [0, 1) for the challenger sample: CRC-32 of
    ``f"{user}\\x1f{item}"`` (UTF-8) over 2**32, the same in every process and run.

    >>> challenger_draw("alice", "x") == challenger_draw("alice", "x")
    True
    >>> 0.0 <= challenger_draw("alice", "x") < 1.0
    True
    """
    key = f"{user}\x1f{item}".encode("utf-8", "surrogatepass")
    return zlib.crc32(key) / 4_294_967_296.0
