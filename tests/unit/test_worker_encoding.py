"""The worker's record encoding (``json_bytes``) gives exactly pydantic's ``model_dump_json``
bytes: it calls the model's serializer directly, so a pydantic release that changed what that
serializer does by default would fail here."""

from __future__ import annotations

from stream.events import Recommendation
from stream.worker import json_bytes


def test_json_bytes_is_model_dump_json_encoded() -> None:
    recommendation = Recommendation.model_validate(
        {
            "user_id": 'usér-ü "quoted" \\ 😀',
            "items": [
                {"item_id": f"item-{i}", "score": 0.1 * i, "reason": None if i % 2 else "knn"}
                for i in range(10)
            ],
            "model": "blend",
            "model_version": 3,
            "source_topic": "events",
            "source_partition": 2,
            "source_offset": 12_345,
            "event_timestamp": 1_700_000_000.5,
        }
    )
    for record in (recommendation,):
        assert json_bytes(record) == record.model_dump_json().encode()
