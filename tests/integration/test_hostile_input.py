"""10,000 generated malformed records through a running worker on a real broker.

The records come from the Hypothesis strategies of ``tests/unit/test_decoder_properties.py``
(random bytes, truncated JSON, wrong types, huge strings and numbers, NaN/Infinity, deep
nesting, missing keys, duplicated keys, bad UTF-8, non-objects), drawn by a derandomized (so
seeded, repeatable) ``@given`` run, and interleaved with valid synthetic events. The worker
runs in-process; afterwards: it did not crash, the dead-letter topic holds exactly one letter
per malformed record with a reason and the original key and bytes (matched by offset), every
valid record produced exactly one recommendation, and the Prometheus dead-letter counters by
reason add up.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from kafka_helpers import consume, produce

from producers.synthetic import SyntheticConfig, SyntheticStream
from stream.events import DeadLetter, Event, Recommendation, Rejected, decode_one
from stream.kafka.admin import ensure_topics
from stream.settings import StreamSettings

pytestmark = pytest.mark.integration

N_HOSTILE = 10_000
N_VALID = 2_000
MAX_EVENT_BYTES = 65_536


def _strategies() -> ModuleType:
    """The unit test module that defines the hostile-record strategies (one source of truth)."""
    name = "decoder_properties_strategies"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).parents[1] / "unit" / "test_decoder_properties.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def draw_hostile(n: int) -> list[tuple[str, bytes | None, bytes | None]]:
    """``n`` malformed records (family, key, value), from a derandomized Hypothesis run."""
    props = _strategies()
    # Smaller extremes than the unit test (which goes to 100k): still past every limit
    # (ids 256 chars, context 8 KiB, 64 KiB records, recursion ~1000) at a tenth of the bytes.
    props.bounds.update(string=6_000, depth=15_000)
    out: list[tuple[str, bytes | None, bytes | None]] = []

    @settings(
        max_examples=n + n // 10,  # a few drawn records are valid and left out
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(props.hostile_records(include_mutated=False))
    def collect(record: tuple[str, bytes | None, bytes | None, frozenset[str]]) -> None:
        family, key, value, reasons = record
        if reasons and "accepted" not in reasons and len(out) < n:
            out.append((family, key, value))

    while len(out) < n:  # the few valid ones drawn (large padded events) are left out
        collect()
    return out


def test_ten_thousand_malformed_records_through_the_worker(
    kafka_bootstrap: str,
    kafka_settings: Callable[..., StreamSettings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stream.worker import Worker

    started = time.monotonic()
    hostile = draw_hostile(N_HOSTILE)
    drawn_s = time.monotonic() - started
    valid = list(
        SyntheticStream(
            SyntheticConfig(n_events=N_VALID, n_users=80, n_items=200, seed=11)
        ).records()
    )
    # Interleave at seeded random positions; remember what each offset should become.
    rng = random.Random(7)
    slots = ["bad"] * len(hostile) + ["ok"] * len(valid)
    rng.shuffle(slots)
    bad_iter, ok_iter = iter(hostile), iter(valid)
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    families: dict[int, str] = {}
    for slot in slots:
        if slot == "bad":
            family, key, value = next(bad_iter)
            families[len(values)] = family
        else:
            record = next(ok_iter)
            key, value = record.key, record.value
        keys.append(key)
        values.append(value)
    # Too big for its dead letter (base64 > the producer's 1 MiB): it once crashed the worker.
    giant = len(values)
    families[giant] = "giant"
    keys.append(b"giant")
    values.append(b'{"pad": "' + b"x" * 900_000 + b'"}')
    expected_reason: dict[int, str] = {}
    for offset, value in enumerate(values):
        decoded = decode_one(keys[offset], value, max_bytes=MAX_EVENT_BYTES)
        if offset in families:
            assert isinstance(decoded, Rejected), (families[offset], value)
            expected_reason[offset] = decoded.reason
        else:
            assert isinstance(decoded, Event) and decoded.event_type != "forget"
    total_bytes = sum(len(v or b"") for v in values)

    s = kafka_settings(
        models=("popularity",),
        recommender="popularity",
        max_event_bytes=MAX_EVENT_BYTES,
        metrics_every_events=5_000,
    )
    ensure_topics(s, {s.events_topic: 1}, timeout_s=30)
    produce(kafka_bootstrap, s.events_topic, values, keys)
    produced = consume(kafka_bootstrap, s.events_topic, n=None, timeout_s=120)
    assert [(r.key, r.value) for r in produced] == list(zip(keys, values, strict=True))

    worker = Worker(s)
    caplog.set_level(logging.INFO, logger="stream.worker")
    run_started = time.monotonic()
    summary = worker.run(max_events=len(values), idle_timeout=60)
    run_s = time.monotonic() - run_started

    assert summary.stopped_by == f"max events ({len(values)}) consumed"
    assert summary.consumed == len(values)
    assert summary.dead_lettered == N_HOSTILE + 1 and summary.processed == N_VALID

    # One dead letter per malformed record, with its reason and its original bytes.
    letters = [
        DeadLetter.model_validate_json(r.value or b"")
        for r in consume(kafka_bootstrap, s.dead_letter_topic, n=None, timeout_s=120)
    ]
    by_offset = {d.source_offset: d for d in letters}
    assert len(letters) == len(by_offset) == N_HOSTILE + 1
    assert set(by_offset) == set(families)
    for offset, letter in by_offset.items():
        assert letter.source_topic == s.events_topic and letter.source_partition == 0
        assert letter.reason == expected_reason[offset] and letter.detail
        sent = values[offset]
        if offset == giant:
            assert letter.value_b64 is None and f"{s.events_topic}[0]@{giant}" in letter.detail
            continue
        assert letter.value_b64 == (None if sent is None else base64.b64encode(sent).decode())
        key = keys[offset]
        assert letter.key_b64 == (None if key is None else base64.b64encode(key).decode())

    # Exactly one recommendation per valid record.
    recs = Counter(
        Recommendation.model_validate_json(r.value or b"").source_offset
        for r in consume(kafka_bootstrap, s.recommendations_topic, n=None, timeout_s=120)
    )
    assert set(recs) == set(range(len(values))) - set(families)
    assert set(recs.values()) == {1}

    # The Prometheus counter by reason adds up to the same letters.
    by_reason = Counter(expected_reason.values())
    for reason, count in by_reason.items():
        sample = worker.registry.get_sample_value("stream_dead_letters_total", {"reason": reason})
        assert sample == count, reason
    assert summary.committed == {(s.events_topic, 0): len(values)}

    # The log is sampled, not flooded: the first few letters per reason, then summaries whose
    # counts add up with them to every letter.
    lines = [r.getMessage() for r in caplog.records if r.name == "stream.worker"]
    one_by_one = [m for m in lines if m.startswith("dead letter ")]
    per_reason = Counter(m.split()[2] for m in one_by_one)
    assert set(per_reason) == set(by_reason)
    assert all(n == min(Worker.LOG_FIRST_PER_REASON, by_reason[r]) for r, n in per_reason.items())
    summaries = [m for m in lines if m.startswith("dead letters: ")]
    assert summaries and summaries[-1].endswith(f"; {N_HOSTILE + 1:,} in all")
    held_back = sum(int(m.split()[2].replace(",", "")) for m in summaries)
    assert len(one_by_one) + held_back == N_HOSTILE + 1
    log_bytes = sum(len(m) for m in lines)
    assert log_bytes < 20_000, log_bytes

    print(
        f"\n{N_HOSTILE} malformed + {N_VALID} valid records ({total_bytes / 1e6:.1f} MB) "
        f"drawn in {drawn_s:.1f}s, worker run {run_s:.1f}s "
        f"({len(values) / run_s:.0f} records/s); families {dict(Counter(families.values()))}; "
        f"reasons {dict(by_reason)}; worker log {len(lines)} lines, {log_bytes:,} bytes"
    )
