"""Producers of the events topic: replay of event logs and a synthetic stream with drift.

Python API (no Kafka needed)::

    from producers import generate, write_jsonl, read_events
    write_jsonl(generate(10_000, seed=1, drift_at=5_000), "events.jsonl")
    for event in read_events("events.jsonl", "jsonl"):   # stream.events.Event, time order
        ...

Command line: ``python -m producers {replay,synthetic} --help``.
"""

from __future__ import annotations

from producers.emitter import EmitResult, emit
from producers.formats import FORMATS, EventReader, FormatError, ReadOptions, read_events
from producers.ordering import ExternalSorter
from producers.pacing import Pacer
from producers.records import Record, RejectedLine, encode_event, parse_time
from producers.sinks import JsonlSink, KafkaSink, ListSink, NullSink, Sink, SinkError
from producers.synthetic import (
    GroundTruth,
    SyntheticConfig,
    SyntheticStream,
    generate,
    write_jsonl,
)

__all__ = [
    "FORMATS",
    "EmitResult",
    "EventReader",
    "ExternalSorter",
    "FormatError",
    "GroundTruth",
    "JsonlSink",
    "KafkaSink",
    "ListSink",
    "NullSink",
    "Pacer",
    "ReadOptions",
    "Record",
    "RejectedLine",
    "Sink",
    "SinkError",
    "SyntheticConfig",
    "SyntheticStream",
    "emit",
    "encode_event",
    "generate",
    "parse_time",
    "read_events",
    "write_jsonl",
]
