"""Topic administration: create the topics a run needs, up front, with their final size.

Partitions are never added later (Tansu does not support ``create_partitions``, and adding
partitions to a keyed topic moves keys between partitions anyway).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from kafka import errors as kafka_errors
from kafka.admin import KafkaAdminClient

from stream.kafka import Backoff, BrokerUnavailableError, build_client
from stream.settings import StreamSettings

__all__ = ["COMPACTED", "TopicError", "ensure_topics", "topic_partitions", "topic_specs"]

logger = logging.getLogger(__name__)

_ALREADY_EXISTS = kafka_errors.TopicAlreadyExistsError.errno

COMPACTED: dict[str, str] = {"cleanup.policy": "compact"}
"""Config of a topic read as a table (latest value per key; a tombstone deletes the key)."""


class TopicError(RuntimeError):
    """The broker refused to create a topic, or it never showed up in metadata."""


def _connect(
    settings: StreamSettings, backoff: Backoff, wait_setting: str | None = None
) -> KafkaAdminClient:
    """An admin client, retrying with backoff while the broker is unreachable.

    ``wait_setting`` names the setting the deadline comes from, for the log line and error.
    """
    warned = False
    limit = f" ({wait_setting})" if wait_setting else ""
    while True:
        try:
            admin = build_client(
                KafkaAdminClient,
                **settings.kafka_common(),
                bootstrap_timeout_ms=backoff.attempt_timeout_ms(5_000),
                request_timeout_ms=15_000,
            )
        except kafka_errors.KafkaTimeoutError as exc:
            if backoff.expired():
                raise BrokerUnavailableError(
                    f"no Kafka broker reachable at {settings.bootstrap_servers} after "
                    f"{backoff.elapsed():.0f}s{limit} ({exc}); is it running? "
                    "(STREAM_BOOTSTRAP_SERVERS, or `python -m stream broker`)"
                ) from None
            if not warned:
                deadline = (
                    "forever"
                    if backoff.deadline_s is None
                    else f"for up to {backoff.deadline_s:g}s{limit} before giving up"
                )
                logger.warning(
                    "Kafka broker at %s unreachable; retrying %s "
                    "(is STREAM_BOOTSTRAP_SERVERS right?)",
                    settings.bootstrap_servers,
                    deadline,
                )
                warned = True
            backoff.sleep()
            continue
        if warned:
            logger.info(
                "Kafka broker at %s reachable after %.1fs",
                settings.bootstrap_servers,
                backoff.elapsed(),
            )
        return admin


def topic_partitions(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition counts of the topics in ``names`` that exist (with a leader everywhere)."""
    found: dict[str, int] = {}
    for info in admin.describe_topics(names):
        partitions: list[dict[str, Any]] = info.get("partitions") or []
        if info.get("error_code", 0) or not partitions:
            continue
        if all(p.get("error_code", 0) == 0 and p.get("leader_id", -1) >= 0 for p in partitions):
            found[str(info["name"])] = len(partitions)
    return found


def topic_specs(
    topics: Mapping[str, int], configs: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, dict[str, Any]]:
    """The ``create_topics`` request for ``topics`` (name → partitions) with their ``configs``.

    >>> topic_specs({"recs": 1}, {"recs": COMPACTED})
    {'recs': {'num_partitions': 1, 'configs': {'cleanup.policy': 'compact'}}}
    """
    specs: dict[str, dict[str, Any]] = {}
    for name, partitions in topics.items():
        spec: dict[str, Any] = {"num_partitions": partitions}
        if configs and configs.get(name):
            spec["configs"] = dict(configs[name])
        specs[name] = spec
    return specs


def ensure_topics(
    settings: StreamSettings,
    topics: dict[str, int],
    timeout_s: float | None = 60.0,
    *,
    wait_setting: str | None = None,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, int]:
    """Create the missing ``topics`` (name → partitions) and wait until metadata shows them.

    ``configs`` (name → topic configs, e.g. :data:`COMPACTED`) apply to topics created here;
    an existing topic keeps its configs.

    An existing topic is kept as it is (a warning names a partition count other than the one
    asked for). Retries with backoff while the broker is unreachable, for up to ``timeout_s``
    (``None``: forever), then raises :class:`~stream.kafka.BrokerUnavailableError`; the first
    "unreachable" warning and that error name ``wait_setting`` (where ``timeout_s`` came
    from, e.g. ``STREAM_BROKER_WAIT_SECONDS``) when given.

    Returns
    -------
    dict
        The partition count of every topic, as the broker reports it.
    """
    if not topics:
        return {}
    backoff = Backoff(max_s=min(5.0, settings.reconnect_backoff_max_s), deadline_s=timeout_s)
    started = time.monotonic()
    admin = _connect(settings, backoff, wait_setting)
    try:
        names = sorted(topics)
        existing = topic_partitions(admin, names)
        missing = {name: topics[name] for name in names if name not in existing}
        if missing:
            result = admin.create_topics(
                topic_specs(missing, configs),
                raise_errors=False,
            )
            for info in result["topics"]:
                code = info.get("error_code", 0)
                if code not in (0, _ALREADY_EXISTS):
                    error = kafka_errors.for_code(code).__name__
                    raise TopicError(
                        f"could not create topic {info['name']!r}: {error} "
                        f"{info.get('error_message') or ''}".rstrip()
                    )
            logger.info("created topics %s", ", ".join(f"{n}({p})" for n, p in missing.items()))
        remaining_ms = 30_000.0
        if timeout_s is not None:
            remaining_ms = max(1_000.0, (timeout_s - (time.monotonic() - started)) * 1000)
        try:
            admin.wait_for_topics(names, timeout_ms=remaining_ms)
        except kafka_errors.KafkaTimeoutError as exc:
            raise TopicError(f"topics not visible in metadata: {exc}") from None
        sizes = topic_partitions(admin, names)
        for name, wanted in topics.items():
            if sizes.get(name, wanted) == wanted:
                continue
            if name == settings.events_topic:
                _warn_events_partitions(name, sizes[name], wanted)
            else:
                logger.warning(
                    "topic %s exists with %d partitions, not %d; keeping it as it is",
                    name,
                    sizes[name],
                    wanted,
                )
        return sizes
    finally:
        admin.close()


def _warn_events_partitions(topic: str, actual: int, wanted: int) -> None:
    """The events topic's partition count decides how the worker shards its models."""
    logger.warning(
        "events topic %s has %d partition(s) but STREAM_EVENTS_PARTITIONS=%d: the worker keeps "
        "one independent set of models per partition (each learns only the users keyed to "
        "it), so its recommendations and accuracy are those of %d shards, not %d. Keeping the "
        "topic as it is: set STREAM_EVENTS_PARTITIONS=%d to accept it, or delete the topic "
        "(and the group's offsets and checkpoints) and create it again with %d",
        topic,
        actual,
        wanted,
        actual,
        wanted,
        actual,
        wanted,
    )
