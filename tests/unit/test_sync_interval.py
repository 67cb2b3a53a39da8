"""The sync interval follows the shard count (issue 12, ``STREAM_MODEL_SYNC_EVENTS=auto``): a
light delta every ``ceil(STREAM_MODEL_SYNC_STALENESS / (P - 1))`` events, an explicit integer
kept as given, bad values refused naming the setting, and ``evaluate --partitions`` using it."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from sync_fakes import FakeReader, FakeTopic

from stream.__main__ import main
from stream.core import Pipeline
from stream.events import Event
from stream.settings import SettingsError, StreamSettings, load_settings
from stream.sync.interval import auto_interval, light_interval
from stream.sync.live import WorkerSync
from stream.sync.offline import LocalShards


def _settings(**extra: object) -> StreamSettings:
    return StreamSettings(_env_file=None, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("staleness", "partitions", "every"),
    [(30, 1, 30), (30, 2, 30), (30, 4, 10), (30, 8, 5), (30, 16, 2), (30, 31, 1), (30, 99, 1)],
)
def test_auto_interval_is_the_staleness_budget_over_the_other_shards(
    staleness: int, partitions: int, every: int
) -> None:
    assert auto_interval(staleness, partitions) == every
    # What a shard misses of the others' learning stays within the budget plus one round-up.
    if partitions > 1:
        assert (partitions - 1) * every < staleness + partitions - 1


def test_auto_is_the_default_and_an_integer_keeps_todays_behaviour() -> None:
    s = _settings()
    assert s.model_sync_events == "auto" and s.model_sync_staleness == 30
    assert [light_interval(s, p) for p in (2, 4, 8)] == [30, 10, 5]
    assert light_interval(_settings(model_sync_staleness=70), 8) == 10
    for p in (1, 4, 8):
        assert light_interval(_settings(model_sync_events=10), p) == 10
        assert light_interval(_settings(model_sync_events=0), p) == 0  # still: no sync


@pytest.mark.parametrize(("value", "parsed"), [("auto", "auto"), (" AUTO ", "auto"), ("12", 12)])
def test_the_env_accepts_auto_or_a_whole_number(
    monkeypatch: pytest.MonkeyPatch, value: str, parsed: object
) -> None:
    monkeypatch.setenv("STREAM_MODEL_SYNC_EVENTS", value)
    assert load_settings().model_sync_events == parsed
    monkeypatch.setenv("STREAM_MODEL_SYNC_EVENTS", "0")
    assert load_settings().model_sync_events == 0


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("STREAM_MODEL_SYNC_EVENTS", "-1"),
        ("STREAM_MODEL_SYNC_EVENTS", "ten"),
        ("STREAM_MODEL_SYNC_EVENTS", "2.5"),
        ("STREAM_MODEL_SYNC_EVENTS", ""),
        ("STREAM_MODEL_SYNC_EVENTS", "automatic"),
        ("STREAM_MODEL_SYNC_STALENESS", "0"),
        ("STREAM_MODEL_SYNC_STALENESS", "many"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=env):
        load_settings()
    with pytest.raises(SettingsError, match=env):  # in code as well as from the environment
        load_settings(**{env.removeprefix("STREAM_").lower(): value})
    assert main(["worker"]) == 2  # refused at start, before any broker is asked
    assert env in capsys.readouterr().err
    assert main(["evaluate", "e.jsonl", "--format", "jsonl", "--partitions", "8"]) == 2
    assert env in capsys.readouterr().err


def test_the_worker_sync_starts_from_the_configured_partition_count() -> None:
    # The worker then sets the events topic's count as the broker reports it (worker.py).
    topic = FakeTopic()
    sync = WorkerSync(_settings(events_partitions=8), FakeReader(topic), topic.send)
    assert sync.every_events == 5
    fixed = _settings(events_partitions=8, model_sync_events=10)
    assert WorkerSync(fixed, FakeReader(topic), topic.send).every_events == 10


def _events(n: int, seed: int = 4) -> list[Event]:
    rng = random.Random(seed)
    return [
        Event(
            user_id=f"u{rng.randrange(150)}",
            item_id=f"i{min(int(rng.paretovariate(1.2)), 80)}",
            event_type="click",
            timestamp=float(t),
        )
        for t in range(n)
    ]


def _deltas(events: list[Event], partitions: int, every: int) -> int:
    s = _settings()
    shards = LocalShards(
        lambda: Pipeline.from_settings(s), partitions, every, full_every=s.model_sync_full_every
    )
    for event in events:
        shards.process_one(event)
    shards.share_all()
    return shards.delta_records


def test_evaluate_partitions_8_shares_every_5_events_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    events = _events(600)
    log = tmp_path / "events.jsonl"
    log.write_text("".join(e.model_dump_json() + "\n" for e in events))
    argv = ["evaluate", str(log), "--format", "jsonl", "--partitions", "8", "-q"]
    assert main(argv) == 0
    line = re.search(
        r"8 partitions: a delta every (\d+) events per shard; ([\d,]+) deltas",
        capsys.readouterr().out,
    )
    assert line is not None
    every, deltas = int(line.group(1)), int(line.group(2).replace(",", ""))
    assert every == 5
    assert deltas == _deltas(events, 8, 5) != _deltas(events, 8, 10)
    # An explicit integer is used as given at any P.
    monkeypatch.setenv("STREAM_MODEL_SYNC_EVENTS", "10")
    assert main(argv) == 0
    assert "a delta every 10 events per shard" in capsys.readouterr().out


def test_the_worker_follows_the_events_topics_partition_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stream.worker import Worker

    s = _settings(model_sync=True, events_partitions=1, metrics_port=0)
    worker = Worker(s)
    topic = FakeTopic()
    worker._sync = WorkerSync(s, FakeReader(topic), topic.send)
    worker._follow_partitions(None)  # metadata not known yet: as configured
    assert worker._sync.every_events == 30
    worker._follow_partitions(4)  # at start, as the broker reports the topic
    assert worker._sync.every_events == 10
    with caplog.at_level("WARNING", logger="stream.worker"):
        worker._follow_partitions(8)  # partitions added while running
    assert worker._sync.every_events == 5
    assert "8 partitions, not 4: a light delta every 5 events" in caplog.text
