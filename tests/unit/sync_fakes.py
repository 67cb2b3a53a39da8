"""A list-backed model-updates topic and its reader: the worker's side of the sync without a
broker. A plain module (like ``tests/integration/kafka_helpers``), imported by name from the
``test_sync_live`` and ``test_sync_light`` modules."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FakeReader", "FakeTopic", "Record"]


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
    """Reads a :class:`FakeTopic` from its beginning, as the worker's TopicReader does."""

    def __init__(self, topic: FakeTopic) -> None:
        self.topic, self.position = topic, 0
        self.rewinds = 0

    def poll(self, timeout_ms: int | None = None) -> list[Record]:
        values = self.topic.values
        out = [Record(values[o], 0, o) for o in range(self.position, len(values))]
        self.position = len(values)
        return out

    def caught_up(self) -> bool:
        return self.position >= len(self.topic.values)

    def highwaters(self) -> dict[int, int]:
        return {0: len(self.topic.values)}

    def behind(self, marks: dict[int, int]) -> bool:
        return self.position < marks.get(0, 0)

    def rewind(self) -> None:
        self.position = 0
        self.rewinds += 1
