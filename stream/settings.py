"""Settings: one frozen pydantic-settings class, env prefix ``STREAM_``, ``.env`` supported.

Read once at the entry point (:func:`load_settings`); CLI flags override it by passing
keyword arguments. Every other module receives the object, never reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as PydanticSettingsError

__all__ = ["EVENT_TYPES", "SettingsError", "StreamSettings", "load_settings"]

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "rating")

ModelName = Literal[
    "popularity",
    "knn",
    "knn_classic",
    "sequence",
    "bpr",
    "biased_mf",
    "funk_mf",
    "svd",
    "ease",
    "userknn",
    "blend",
]
DriftDetectorName = Literal["adwin", "page_hinkley", "kswin"]


class SettingsError(ValueError):
    """A setting is wrong; the message names it (``STREAM_<NAME>``)."""


class StreamSettings(BaseSettings):
    """Every knob of the worker, the demo and the offline evaluator.

    Each field ``name`` is read from the environment variable ``STREAM_<NAME>`` (or ``.env``).
    """

    model_config = SettingsConfigDict(
        env_prefix="STREAM_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        use_attribute_docstrings=True,
    )

    # --- Kafka ---------------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "localhost:9092", description="Kafka bootstrap servers, comma-separated."
    )
    events_topic: str = "events"
    """Topic the worker consumes events from (key = user id)."""
    recommendations_topic: str = "recommendations"
    """Topic of the top-K records (key = user id; compaction recommended)."""
    metrics_topic: str = "metrics"
    """Topic of the accuracy and drift records."""
    dead_letter_topic: str = "events.dlq"
    """Topic of records the worker could not use, with the reason."""
    events_partitions: int = Field(
        1, ge=1, le=10_000, description="Partitions of the events topic when the worker creates it."
    )
    group_id: str = "stream-reco"
    """Consumer group of the workers (partitions are split among its members)."""
    client_id: str = "stream-reco"
    """Kafka client id (shows up in broker logs and quotas)."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a new group starts: earliest learns from the retained history."""
    poll_timeout_ms: int = Field(200, ge=1, le=60_000)
    """Longest wait for records in one poll."""
    max_poll_records: int = Field(500, ge=1, le=100_000)
    """Most records handled per poll."""
    # Like Kafka's auto.commit.interval.ms, except that only offsets whose outputs were
    # flushed are committed. Per batch, the flush and the commit round trip cost the events
    # arriving meanwhile tens of milliseconds (measured: benchmarks/throughput.py).
    commit_interval_ms: int = Field(1_000, ge=0, le=60_000)
    """Flush outputs (no checkpoints: and commit) this often, also when idle; 0: every poll."""
    fetch_max_wait_ms: int = Field(
        20, ge=0, le=60_000, description="Longest a fetch waits for data (latency vs requests)."
    )
    session_timeout_ms: int = Field(6_000, ge=1_000)
    """Group session timeout: a silent worker loses its partitions after it."""
    heartbeat_interval_ms: int = Field(1_000, ge=100)
    """Group heartbeat interval."""
    max_poll_interval_ms: int = Field(60_000, ge=1_000)
    """Longest time between polls before the worker is evicted."""
    producer_linger_ms: int = Field(5, ge=0, le=10_000)
    """Producer batching delay for outputs."""
    producer_acks: Literal["0", "1", "all"] = "all"
    """Acknowledgements for outputs (all = durable; idempotent producer)."""
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none",
        description="Compression of the records the worker and the producers write: none, gzip, "
        "snappy, lz4 or zstd (records compressed with any of them are read whatever it says).",
    )
    max_event_bytes: int = Field(
        65_536, ge=64, le=10_000_000, description="Larger event payloads are dead-lettered."
    )
    reconnect_backoff_max_s: float = Field(30.0, gt=0)
    """Longest wait between two reconnection attempts to an unreachable broker."""
    broker_wait_seconds: float = Field(
        300.0, gt=0, description="How long the worker waits for a broker at start, then exits 1."
    )

    # Kafka security: passed straight through to kafka-python.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka security protocol, passed to kafka-python."""
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None
    ) = None
    """SASL mechanism, passed to kafka-python."""
    sasl_plain_username: str | None = None
    """SASL username."""
    sasl_plain_password: SecretStr | None = None
    """SASL password (secret)."""
    ssl_cafile: Path | None = None
    """CA bundle for SSL."""
    ssl_certfile: Path | None = None
    """Client certificate for SSL."""
    ssl_keyfile: Path | None = None
    """Client key for SSL."""
    ssl_password: SecretStr | None = None
    """Password of the SSL key (secret)."""
    ssl_check_hostname: bool = True
    """Verify the broker's hostname against its certificate."""

    # --- Serving / observability -------------------------------------------------------------
    metrics_port: int = Field(
        8000, ge=0, le=65_535, description="Prometheus /metrics port; 0 = off."
    )
    metrics_host: str = "0.0.0.0"
    """Address the /metrics, /healthz, /readyz server listens on."""
    metrics_every_events: int = Field(
        1_000, ge=1, description="Publish a metrics record every N events."
    )
    metrics_every_seconds: float = Field(10.0, gt=0)
    """Also publish a metrics record at least this often, idle or not."""

    # --- stream serve (the recommendations HTTP service) --------------------------------------
    serve_host: str = "127.0.0.1"
    """Address `stream serve` listens on (0.0.0.0: every interface; set a token then)."""
    serve_port: int = Field(
        8080, ge=0, le=65_535, description="Port of `stream serve`; 0 = any free port."
    )
    serve_token: SecretStr | None = None
    """Bearer token `stream serve` requires on /users/... requests when set (secret)."""

    # --- Recommendation ----------------------------------------------------------------------
    top_k: int = Field(10, ge=1, le=1_000)
    """K: items per recommendation, and the K of HR@K, NDCG@K, MRR@K."""
    models: Annotated[tuple[ModelName, ...], NoDecode] = Field(
        ("popularity", "knn", "knn_classic", "sequence", "biased_mf", "blend"),
        description="Models to run (comma list): popularity, knn, knn_classic, sequence, bpr, "
        "biased_mf, funk_mf, svd, ease, userknn, blend.",
    )
    recommender: ModelName = Field(
        "blend",
        description="The model whose top-K is published (default: blend, or knn, or the first "
        "model when STREAM_MODELS leaves the blend out).",
    )
    seed: int = 42
    """Seed of every random choice (initialisation, negative sampling): runs are repeatable."""
    history_size: int = Field(200, ge=1, le=100_000, description="Items remembered per user.")

    # Event -> learning target
    rating_min: float = 0.5
    """Lowest valid rating (lower ones are dead-lettered)."""
    rating_max: float = 5.0
    """Highest valid rating (higher ones are dead-lettered)."""
    weight_view: float = Field(1.0, gt=0)
    """Learning target of a view."""
    weight_click: float = Field(2.0, gt=0)
    """Learning target of a click."""
    weight_add_to_cart: float = Field(3.0, gt=0)
    """Learning target of an add-to-cart."""
    weight_purchase: float = Field(5.0, gt=0)
    """Learning target of a purchase."""

    # Matrix factorization (river.reco)
    mf_factors: int = Field(10, ge=1, le=1_024)
    """Latent factors of the matrix factorisation."""
    mf_learning_rate: float = Field(0.05, gt=0)
    """SGD learning rate of the latent factors."""
    mf_bias_learning_rate: float = Field(0.03, gt=0)
    """SGD learning rate of the biases (biased_mf)."""
    mf_l2: float = Field(0.01, ge=0)
    """L2 regularisation of factors and biases."""
    mf_init_std: float = Field(0.1, gt=0)
    """Standard deviation of the initial factors."""
    negative_samples: int = Field(
        4, ge=0, le=100, description="Sampled negatives per implicit event."
    )

    # KNN
    knn_neighbors: int = Field(100, ge=1, le=10_000, description="Neighbours kept per item.")
    knn_history: int = Field(
        20, ge=1, le=10_000, description="Recent items per user used to score."
    )
    knn_half_life: float | None = Field(
        20_000.0, gt=0, description="Co-occurrences halve every this many events; unset = never."
    )
    knn_weighted: bool = False
    """Co-occurrences weighted by the event's learning target (view 1 ... purchase 5); off:
    every interaction counts 1 (measured better on the suite's implicit streams)."""
    knn_alpha: float = Field(0.7, ge=0, le=1)
    """Asymmetric cosine: sim(h, j) = C_hj / (N_h ** alpha * N_j ** (1 - alpha)); 0.5 = cosine."""
    knn_distance_decay: float = Field(0.9, gt=0, le=1)
    """A co-occurrence of items d positions apart in a user's sequence counts this ** d."""
    knn_recency: float = Field(0.85, gt=0, le=1)
    """Scoring: the most recent history item counts 1, each older one this times the next."""

    # Classic item KNN (knn_classic: symmetric cosine, no recency weighting, no distance decay)
    knn_classic_neighbors: int = Field(100, ge=1, le=10_000)
    """knn_classic: neighbours kept per item."""
    knn_classic_half_life: float | None = Field(20_000.0, gt=0)
    """knn_classic: co-occurrences halve every this many events; unset = never."""

    # Sequence (item-to-item transitions: a directed KNN over the last few items)
    sequence_history: int = Field(5, ge=1, le=1_000)
    """Previous items a transition is counted from, and used to score."""
    sequence_decay: float = Field(0.5, gt=0, le=1)
    """A transition from d steps back counts this ** d (and so does a history item when scoring)."""

    # BPR (implicit-feedback ranking factorisation)
    bpr_factors: int = Field(32, ge=1, le=1_024)
    """Latent factors of the BPR model."""
    bpr_learning_rate: float = Field(0.1, gt=0, le=10)
    """SGD step of the BPR model."""
    bpr_l2: float = Field(0.002, ge=0)
    """L2 regularisation of the BPR model."""

    # User-based KNN
    userknn_history: int = Field(50, ge=1, le=10_000)
    """userknn: recent distinct items kept per user (compared to find neighbours)."""
    userknn_item_users: int = Field(50, ge=1, le=10_000)
    """userknn: recent users kept per item (the candidate neighbours an item brings)."""
    userknn_neighbors: int = Field(30, ge=1, le=10_000)
    """userknn: most similar users whose items are scored."""

    # Full rebuilds (svd, ease): rebuilt from a sliding window, in the background
    rebuild_window: int = Field(100_000, ge=10, le=10_000_000)
    """svd/ease: most recent interactions a rebuild uses."""
    rebuild_every: int = Field(10_000, ge=1)
    """svd/ease: a rebuild starts every this many events."""
    rebuild_min_events: int = Field(1_000, ge=1)
    """svd/ease: the first build starts once this many events were learned."""
    rebuild_background: bool | None = Field(
        None,
        description="svd/ease: true: build in a background thread, swapped in at the first "
        "event after it finished; false: inline at the event that triggers it (reproducible); "
        "unset: true in the worker, false in `stream evaluate`.",
    )
    rebuild_nice: int = Field(15, ge=0, le=19)
    """svd/ease: nice value of the background build thread (Linux; 0 = the loop's priority)."""
    rebuild_history: int = Field(100, ge=1, le=10_000)
    """svd/ease: a user's recent distinct items scored against the last build (live fold-in)."""
    rebuild_recency: float = Field(0.9, gt=0, le=1)
    """svd/ease: scoring, the most recent item counts 1, each older one this times the next."""
    svd_factors: int = Field(32, ge=1, le=1_024)
    """svd: singular vectors of the window's user-item matrix kept."""
    ease_l2: float = Field(200.0, gt=0)
    """ease: the L2 penalty lambda of the closed-form solution."""
    ease_max_items: int = Field(3_000, ge=1, le=20_000)
    """ease: most frequent items of the window in a build (memory: this squared x 4 bytes)."""

    # Popularity
    popularity_half_life: float = Field(5_000.0, gt=0, description="Half-life in events.")

    # Blend
    blend: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    """Blend components and their prior weights (JSON object; rankings are rank-fused); unset:
    every other model of STREAM_MODELS at weight 1 (the online weights then decide)."""
    blend_learning_rate: float = Field(10.0, ge=0, le=1_000)
    """Rate of the blend's online weights: a component with a share s of the leader's recent
    gains weighs prior * exp(-rate * (1 - s)); 0 = the fixed STREAM_BLEND weights."""
    blend_half_life: float = Field(500.0, gt=0)
    """Evaluated events after which an outcome counts half in the blend's weights."""
    # Learned fusion (issue 10): how the blend combines its components' rankings
    blend_fusion: Literal["rrf", "learned"] = "rrf"
    """How the blend fuses its components' top lists: rrf (reciprocal-rank fusion under the
    online Hedge weights) or learned (a linear model over each component's rank of an item,
    learned online from every evaluated event by a softmax step towards the consumed item)."""
    blend_fusion_rate: float = Field(0.05, ge=0, le=10)
    """Step size of the learned fusion (STREAM_BLEND_FUSION=learned); 0 keeps it at the
    STREAM_BLEND priors."""

    # --- Evaluation / drift ---------------------------------------------------------------
    metric_window: int = Field(1_000, ge=10, le=10_000_000)
    """Events in the rolling window of the windowed metrics."""
    drift_detector: DriftDetectorName = "adwin"
    """River drift detector: adwin, page_hinkley or kswin."""
    drift_delta: float = Field(0.002, gt=0, lt=1, description="ADWIN delta / sensitivity.")
    drift_min_events: int = Field(500, ge=0, description="No drift is reported before this many.")
    drift_direction: Literal["worse", "both"] = "worse"
    """Which detections are reported: worse (the miss rate or rating error went up) or both
    (improvements too). A detector tests for any change; an accuracy that improves is no alarm."""
    drift_min_change: float = Field(0.4, ge=0, lt=1)
    """A detection is reported only once the events after it show (99 % confidence) that the
    level moved by at least this share of what it was (hit rate for miss, mean error for
    abs_error): 0.4 = the hit rate fell by 40 %. 0 with direction both: every detection."""

    # --- Model updates: champion / challenger, drift reaction --------------------------------
    promotion: bool = True
    """Champion / challenger: serve whichever configured model wins on the windowed metric
    (STREAM_RECOMMENDER is served first); off: always STREAM_RECOMMENDER."""
    promotion_metric: Literal["hr", "ndcg", "mrr"] = "hr"
    """Windowed metric (at K) a challenger must win on: hr, ndcg or mrr."""
    promotion_margin: float = Field(0.10, ge=0, le=10)
    """Relative lead a challenger needs over the served model (0.10: 10 % higher)."""
    promotion_min_events: int = Field(2_000, ge=1, le=10_000_000)
    """Evaluated events a challenger must lead by the margin without a break (and evidence
    in both windows, up to STREAM_METRIC_WINDOW) before it is served."""
    drift_reaction: bool = True
    """React when the served model's drift detector fires and its hit rate fell: decays sped
    up for a while, full models asked to rebuild from the post-drift window."""
    drift_reaction_drop: float = Field(0.40, gt=0, lt=1)
    """Relative fall of the served model's recent HR@K (vs one window before the detection)
    that confirms a detection."""
    drift_reaction_cooldown: int = Field(10_000, ge=0)
    """Evaluated events after a reaction during which detections are ignored."""
    drift_reaction_span: int = Field(5_000, ge=1)
    """Evaluated events a reaction lasts (the half-lives of decaying models divided by 4)."""

    # --- Model sync across shards (issue 12, stream/sync) ------------------------------------
    model_sync_events: int | Literal["auto"] = Field(
        "auto",
        description="Events a shard (partition) learns between two item-state deltas it "
        "shares with the other shards (the worker and `stream evaluate --partitions`); "
        "auto: ceil(STREAM_MODEL_SYNC_STALENESS / (P - 1)) for P partitions (the events "
        "topic's, or --partitions); 0: no sync, each partition its own model.",
    )
    model_sync: bool | Literal["auto"] = Field(
        "auto",
        description="The worker's shards share item state through STREAM_MODEL_UPDATES_TOPIC "
        "(every STREAM_MODEL_SYNC_EVENTS events or STREAM_MODEL_SYNC_MS); false: each "
        "partition learns alone; auto: on when the events topic has more than one partition "
        "as the worker starts.",
    )
    model_sync_ms: int = Field(
        1_000,
        ge=1,
        le=3_600_000,
        description="The worker also shares a shard's delta this often (milliseconds) when it "
        "learned anything since its last one.",
    )
    model_sync_poll_ms: int = Field(
        50,
        ge=0,
        le=60_000,
        description="While the worker handles a poll batch, it reads the model-updates topic "
        "and applies the other shards' deltas this often (milliseconds; between batches "
        "always). A read costs ~0.8 ms of CPU; measured publish-to-apply median: 36 ms at "
        "20, 84 ms at 50, 160 ms at 100; 0: only between batches (a batch takes a second "
        "or more).",
    )
    model_sync_full_every: int = Field(
        20,
        ge=1,
        le=1_000_000,
        description="Every Nth delta of a shard is full (all shared item state); those between "
        "are light: only popularity counts and factor models' item biases, the fast-moving "
        "part (the rest waits for the next full one). 1: every delta full.",
    )
    model_updates_topic: str = Field("model-updates", min_length=1)
    """Topic of the item-state deltas the worker's shards share (one partition)."""
    # --- Sync interval derived from the shard count (issue 12: STREAM_MODEL_SYNC_EVENTS=auto) --
    model_sync_staleness: int = Field(
        30,
        ge=1,
        le=10_000_000,
        description="With STREAM_MODEL_SYNC_EVENTS=auto: events of the other shards' learning "
        "a shard may miss; each shares a light delta every ceil(this / (P - 1)) events "
        "(P = 4: 10, P = 8: 5).",
    )
    # --- Shared decision evidence (issue 12: promotion and drift reaction across shards) ----
    model_sync_evidence: bool = Field(
        True,
        description="With the sync on: the shards share each evaluation's outcome (rank of "
        "the item per model) in their deltas, and each decides promotions and drift reactions "
        "on every shard's evaluations, as one partition would; off: on its own only.",
    )
    # --- Two-stage recommendation and sampled challengers (issue 11) ----------------------
    retrieval: Literal["candidates", "exact"] = "candidates"
    """candidates: models score only the union of the items the cheap sources retrieve (the
    neighbours of the user's recent items, the trending items); exact: every model ranks the
    whole catalogue (cost grows with it)."""
    retrieval_candidates: int = Field(100, ge=1, le=100_000)
    """Candidates each retrieval source contributes (knn, sequence, popularity head)."""
    challenger_sample: float = Field(1.0, gt=0, le=1)
    """Share of evaluated events the challengers (every model but the served one) are
    evaluated on: an event is in the sample when CRC-32 of "user\\x1fitem" / 2**32 is below
    it; 1 = every event. The served model is always evaluated."""

    # --- Checkpoints ------------------------------------------------------------------------
    checkpoint_dir: Path | None = None
    """Directory of checkpoints (off when unset); put it on durable storage."""
    checkpoint_every_events: int = Field(10_000, ge=1)
    """Checkpoint (and commit) after this many events."""
    checkpoint_every_seconds: float = Field(60.0, gt=0)
    """Checkpoint (and commit) at least this often."""
    checkpoint_keep: int = Field(3, ge=1, le=1_000)
    """Checkpoints kept per partition (older ones are deleted)."""
    checkpoint_key: SecretStr | None = None
    """HMAC key signing checkpoints; required with STREAM_CHECKPOINT_DIR (secret)."""
    checkpoint_relearn_changed: bool = Field(
        False,
        description="On restore, rebuild empty a model whose own settings (STREAM_KNN_*, "
        "STREAM_MF_*, ...) changed since its checkpoint, instead of refusing to start.",
    )
    # --- Checkpoints off the event path (issue 11, item 4) ---------------------------------
    checkpoint_mode: Literal["auto", "fork", "inline"] = Field(
        "auto",
        description="Who writes a checkpoint: fork (a forked child, while the loop goes on; "
        "offsets are committed once it succeeded), inline (the loop), auto (fork where the "
        "platform has fork(), else inline).",
    )
    huge_pages: Literal["auto", "off"] = Field(
        "auto",
        description="auto: a worker that forks its checkpoints re-executes itself once with its "
        "heap on transparent huge pages (PYTHONMALLOC=malloc, glibc.malloc.hugetlb=1), so a "
        "fork pauses the loop for milliseconds, not ~50 ms per GiB; skipped, with a log line, "
        "where the kernel or C library cannot. off: never.",
    )

    # --- Bounded memory (issue 11): users expire, items are capped ------------------------
    user_ttl_seconds: float | None = Field(
        None,
        ge=0,
        description="A user whose last event is this many seconds older than the newest "
        "event seen (event time) is forgotten by every model; unset or 0 = never.",
    )
    max_users: int | None = Field(
        None,
        ge=1,
        description="Users held per pipeline (shard); past it the least recently seen is "
        "forgotten by every model; unset = no cap.",
    )
    max_items: int | None = Field(
        None,
        ge=1,
        description="Items held per pipeline (shard); past it the least recently seen are "
        "evicted from every model and history; unset = no cap.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        # ``STREAM_MODELS=knn,biased_mf`` as well as a JSON list.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return tuple(v.strip() for v in text.split(",") if v.strip())
        return value

    @field_validator("blend", mode="before")
    @classmethod
    def _parse_blend(cls, value: Any) -> Any:
        # STREAM_BLEND='{"knn": 1, "popularity": 0.3}'; a clear error instead of a traceback.
        if isinstance(value, str):
            import json

            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError(f'not a JSON object like {{"knn": 1.0}}: {exc}') from None
        return value

    @field_validator("model_sync_events", mode="before")
    @classmethod
    def _sync_events(cls, value: Any) -> Any:
        # "auto" or a whole number of events; one clear message instead of a union's two.
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return text
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"must be auto or a whole number >= 0, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be auto or a whole number >= 0, got {value!r}")
        if not 0 <= value <= 10_000_000:
            raise ValueError(f"must be auto or between 0 and 10000000, got {value}")
        return value

    @field_validator("compression_type", mode="before")
    @classmethod
    def _codec_name(cls, value: Any) -> Any:
        # Kafka's own spelling is lower case; LZ4 or " zstd" mean the same.
        return value.strip().lower() if isinstance(value, str) else value

    def kafka_compression(self) -> str | None:
        """``compression_type`` as kafka-python's producers take it (``None``: uncompressed)."""
        return None if self.compression_type == "none" else self.compression_type

    @field_validator("serve_token")
    @classmethod
    def _token_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty token would "protect" the service with an empty password: unset it instead.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty; unset it to serve without a token")
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers_not_empty(cls, value: str) -> str:
        if not [s for s in value.split(",") if s.strip()]:
            raise ValueError("must name at least one host:port")
        return value

    @field_validator("checkpoint_mode")
    @classmethod
    def _fork_exists(cls, value: str) -> str:
        import os

        if value == "fork" and not hasattr(os, "fork"):
            raise ValueError("fork is not available on this platform; use inline or auto")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_recommender(cls, data: Any) -> Any:
        # STREAM_MODELS=knn,popularity without STREAM_RECOMMENDER: publish knn, not an error.
        if isinstance(data, dict) and data.get("recommender") is None and data.get("models"):
            models = cls._split_models(data["models"])
            if "blend" not in models:
                data = {**data, "recommender": "knn" if "knn" in models else models[0]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> StreamSettings:
        if self.rating_min >= self.rating_max:
            raise ValueError("STREAM_RATING_MIN must be below STREAM_RATING_MAX")
        if not self.models:
            raise ValueError("STREAM_MODELS must name at least one model")
        if self.recommender not in self.models:
            raise ValueError(
                f"STREAM_RECOMMENDER {self.recommender!r} is not one of STREAM_MODELS "
                f"{list(self.models)}"
            )
        if "blend" in self.models:
            if len(self.blend_weights()) == 0:
                raise ValueError("STREAM_MODELS has a blend but nothing for it to fuse")
            missing = [m for m in self.blend if m not in self.models or m == "blend"]
            if missing:
                raise ValueError(
                    f"STREAM_BLEND names models that are not in STREAM_MODELS: {missing}"
                )
        return self

    def blend_weights(self) -> dict[str, float]:
        """The blend's components and prior weights: STREAM_BLEND, or every other configured
        model at 1."""
        return dict(self.blend) or {m: 1.0 for m in self.models if m != "blend"}

    def implicit_weight(self, event_type: str) -> float:
        """The learning target of an implicit event type."""
        return float(getattr(self, f"weight_{event_type}"))

    def kafka_common(self) -> dict[str, Any]:
        """Connection and security options shared by kafka-python consumers, producers, admins."""
        opts: dict[str, Any] = {
            "bootstrap_servers": [
                s.strip() for s in self.bootstrap_servers.split(",") if s.strip()
            ],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "reconnect_backoff_max_ms": int(self.reconnect_backoff_max_s * 1000),
        }
        if self.sasl_mechanism:
            opts["sasl_mechanism"] = self.sasl_mechanism
        if self.sasl_plain_username is not None:
            opts["sasl_plain_username"] = self.sasl_plain_username
        if self.sasl_plain_password is not None:
            opts["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        if self.ssl_cafile:
            opts["ssl_cafile"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            opts["ssl_certfile"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            opts["ssl_keyfile"] = str(self.ssl_keyfile)
        if self.ssl_password is not None:
            opts["ssl_password"] = self.ssl_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_check_hostname"] = self.ssl_check_hostname
        return opts


def load_settings(**overrides: Any) -> StreamSettings:
    """Read settings from the environment and ``.env``; ``overrides`` (CLI flags) win.

    Overrides whose value is ``None`` are ignored, so unset CLI flags keep the env value.
    A wrong setting raises :class:`SettingsError` naming the ``STREAM_`` variable.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return StreamSettings(**given)
    except PydanticSettingsError as exc:  # a value pydantic-settings could not even parse
        raise SettingsError(f"invalid settings: {exc}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            name = f"STREAM_{loc.split('.')[0].upper()}" if loc else "settings"
            problems.append(f"{name}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
