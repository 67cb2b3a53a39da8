"""Sync traffic over time (issue 12): delta bytes per event in windows, offline, to steady state.

The deltas grow as the users' histories fill (each event adds up to ``STREAM_KNN_HISTORY``
co-occurrences to each item-item model), so a short run under-states the traffic of a worker
that has been up for a while. This runs ``P`` shards in one process (:class:`LocalShards`, the
encoding, merge and dedupe of ``stream evaluate --partitions`` and of the worker) over the
synthetic stream of ``benchmarks/throughput.py`` (same generator and seed) and prints, per
window of ``--window`` events, the delta bytes per event and their ratio to the events' own
bytes; then the whole run's figures by kind of delta (light / full), the bytes of each model's
part at steady state (the second half of the run, each part framed alone: a frame's fixed cost
counts in every part) and the served model's HR@10 (merged over the shards).

    python benchmarks/sync_traffic.py [--events 60000] [--partitions 4] [--window 5000]
                                      [--set NAME=VALUE ...] [--json PATH|-]

Target (issue 12): <= 2x the input bytes at the default settings. Prints figures; asserts
nothing. No broker: the transport adds no bytes to the records themselves.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import print_table, quiet_logging, settings_overrides, write_json
from throughput import _records

from stream.core import Pipeline, merge_metrics
from stream.events import Event, decode_one
from stream.settings import StreamSettings
from stream.sync.delta import ShardDelta
from stream.sync.interval import light_interval
from stream.sync.offline import LocalShards
from stream.sync.shard import ShardSync


class _MeasuredShards(LocalShards):
    """:class:`LocalShards` that also counts each delta's bytes by window, kind and model."""

    def __init__(self, *args: Any, steady_from: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.steady_from = steady_from
        self.event = 0
        self.flushing = False  # the run's final share_all(): counted apart
        self.flushed = 0
        self.window_bytes = 0
        self.kinds: dict[str, list[int]] = {"light": [0, 0], "full": [0, 0]}
        self.parts: dict[tuple[str, str], int] = defaultdict(int)

        self._collected: ShardDelta | None = None
        for shard in self.shards:  # each delta LocalShards.share collects, seen here too
            shard.collect_one = self._recording(shard.collect_one)  # type: ignore[method-assign]

    def _recording(
        self, collect: Callable[[bool | None], ShardDelta | None]
    ) -> Callable[[bool | None], ShardDelta | None]:
        def collect_one(full: bool | None = None) -> ShardDelta | None:
            self._collected = delta = collect(full)
            return delta

        return collect_one

    def share(self, sender: ShardSync, full: bool | None = None) -> None:
        """:meth:`LocalShards.share` (encode, decode, apply everywhere), counted."""
        self._collected, before = None, self.delta_bytes
        super().share(sender, full)
        delta, size = self._collected, self.delta_bytes - before
        if delta is None:
            return
        if self.flushing:  # what the shards still held at the end: in no window nor kind
            self.flushed += size
            return
        kind = "full" if delta.full else "light"
        self.kinds[kind][0] += 1
        self.kinds[kind][1] += size
        self.window_bytes += size
        if self.event > self.steady_from:
            for name, part in delta.models.items():
                alone = dataclasses.replace(delta, models={name: part})
                self.parts[(name, kind)] += len(alone.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--window", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", default=None, metavar="PATH")
    args = parser.parse_args(argv)
    quiet_logging()
    settings = StreamSettings(_env_file=None, **settings_overrides(args.set))
    settings = settings.model_copy(update={"rebuild_background": False})
    records = _records(args.events, args.seed)
    events = [decode_one(r.key, r.value) for r in records]
    assert all(isinstance(e, Event) for e in events)
    input_bytes = sum(len(r.value) for r in records) / max(len(records), 1)
    every = light_interval(settings, args.partitions)
    shards = _MeasuredShards(
        lambda: Pipeline.from_settings(settings),
        args.partitions,
        every,
        "events",
        settings.model_sync_full_every,
        settings.model_sync_evidence,
        steady_from=args.events // 2,
    )
    print(
        f"{args.events:,} events (mean {input_bytes:.0f} B), {args.partitions} shards, a light "
        f"delta every {every} events per shard, every {settings.model_sync_full_every}th full"
    )
    windows = []
    started = time.process_time()
    for n, event in enumerate(events, 1):
        shards.event = n
        shards.process_one(event)  # type: ignore[arg-type]
        if n % args.window == 0 or n == len(events):
            size = (n - 1) % args.window + 1
            per = shards.window_bytes / size
            windows.append({"events": n, "bytes_per_event": per, "ratio": per / input_bytes})
            shards.window_bytes = 0
    shards.flushing = True
    shards.share_all()
    cpu = time.process_time() - started
    print_table(
        ["events up to", "delta bytes per event in the window", "x the events' bytes"],
        [[f"{w['events']:,}", f"{w['bytes_per_event']:.1f}", f"{w['ratio']:.2f}"] for w in windows],
    )
    total = shards.delta_bytes / max(args.events, 1)
    print(
        f"whole run: {shards.delta_records:,} deltas, {total:.1f} bytes per event "
        f"({total / input_bytes:.2f}x); light {shards.kinds['light'][0]:,} deltas "
        f"{shards.kinds['light'][1] / max(args.events, 1):.1f} B/event, full "
        f"{shards.kinds['full'][0]:,} deltas {shards.kinds['full'][1] / max(args.events, 1):.1f} "
        f"B/event; the final flush {shards.flushed / max(args.events, 1):.1f} B/event; "
        f"{cpu:.1f} CPU s"
    )
    steady = args.events - args.events // 2
    print(f"steady state (after event {args.events // 2:,}), each model's part framed alone:")
    print_table(
        ["part", "kind", "bytes per event"],
        [
            [name, kind, f"{size / max(steady, 1):.1f}"]
            for (name, kind), size in _largest_first(shards.parts)
        ],
    )
    record = merge_metrics([p.metrics_record() for p in shards.pipelines])
    served = record.cumulative_metrics[settings.recommender]
    print(f"HR@10 of {settings.recommender} over the shards: {served.hit_rate}")
    if args.json:
        write_json(
            args.json,
            {
                "events": args.events,
                "partitions": args.partitions,
                "input_bytes_per_event": input_bytes,
                "windows": windows,
                "bytes_per_event": total,
                "kinds": shards.kinds,
                "hr@10": served.hit_rate,
            },
        )
    return 0


def _largest_first(parts: dict[tuple[str, str], int]) -> list[tuple[tuple[str, str], int]]:
    """The parts, largest first."""
    return sorted(parts.items(), key=lambda kv: -kv[1])


if __name__ == "__main__":
    sys.exit(main())
