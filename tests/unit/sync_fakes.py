"""A list-backed model-updates topic and its reader: the worker's side of the sync without a
broker. A plain module (like ``tests/integration/kafka_helpers``), imported by name from the
``test_sync_live`` and ``test_sync_light`` modules."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stream.settings import StreamSettings

__all__ = ["FakeReader", "FakeTopic", "Record", "delta_topic", "sync_settings"]


@dataclass
class Record:
    value: bytes | None
    partition: int = 0
    offset: int = 0


class FakeTopic:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def send(self, key: bytes, value: bytes) -> None:
        self.values.append(value)


class FakeReader:
    """Reads a :class:`FakeTopic` from its beginning, as the worker's TopicReader does: at most
    ``per_poll`` records a poll; :meth:`caught_up` against the end the topic had at the first
    poll (or at the last :meth:`rewind`), not its current end; ``on_poll`` is called before each
    poll (a test's clock)."""

    def __init__(self, topic: FakeTopic, per_poll: int = 1_000_000) -> None:
        self.topic, self.position = topic, 0
        self.per_poll = per_poll
        self.rewinds = 0
        self.rewound_to: int | None = None
        self.start_mark: int | None = None
        self.on_poll: Callable[[], None] | None = None

    def poll(self, timeout_ms: int | None = None) -> list[Record]:
        if self.on_poll is not None:
            self.on_poll()
        values = self.topic.values
        if self.start_mark is None:
            self.start_mark = len(values)
        end = min(len(values), self.position + self.per_poll)
        out = [Record(values[o], 0, o) for o in range(self.position, end)]
        self.position = end
        return out

    def caught_up(self) -> bool:
        return self.start_mark is not None and self.position >= self.start_mark

    def highwaters(self) -> dict[int, int]:
        return {0: len(self.topic.values)}

    def behind(self, marks: dict[int, int]) -> bool:
        return self.position < marks.get(0, 0)

    def rewind(self, offsets: dict[int, int] | None = None) -> None:
        self.position = (offsets or {}).get(0, 0)
        self.rewound_to = self.position
        self.start_mark = len(self.topic.values)
        self.rewinds += 1


def sync_settings(**extra: Any) -> StreamSettings:
    """The sync tests' settings: popularity and knn without decay or pruned rows (their item
    state merges exactly), a delta every 15 events, no time trigger."""
    values: dict[str, Any] = {
        "models": ("popularity", "knn"),
        "recommender": "knn",
        "popularity_half_life": math.inf,
        "knn_half_life": None,
        "knn_neighbors": 500,
        "model_sync": True,
        "model_sync_events": 15,
        "model_sync_ms": 3_600_000,
        **extra,
    }
    return StreamSettings(_env_file=None, **values)


def delta_topic(settings: StreamSettings, n: int) -> FakeTopic:
    """A topic of ``n`` full deltas of shard ``events[1]``, one event each over a fixed set of
    20 items (the shard's own state stops growing early)."""
    from stream.core import Pipeline
    from stream.events import Event, Source
    from stream.sync import ShardSync

    sender = ShardSync(Pipeline.from_settings(settings), "events", 1)
    topic = FakeTopic()
    for o in range(n):
        event = Event(user_id=f"u{o % 50}", item_id=f"i{o % 20}", event_type="click", timestamp=o)
        sender.pipeline.process_one(event, Source("events", 1, o))
        sender.note_one(o)
        delta = sender.collect_one(full=True)
        assert delta is not None
        topic.send(b"events:1", delta.encode())
    return topic
