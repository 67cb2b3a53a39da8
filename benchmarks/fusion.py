"""The default blend against the same blend with the learned fusion, on suite streams.

One test-then-learn pass per stream (``benchmarks/streams.py``) of a pipeline built from the
``StreamSettings`` defaults, plus a second blend, ``blend_learned``, over the *same* component
instances with ``STREAM_BLEND_FUSION=learned``: both fuse the very rankings the components
were evaluated on, so the difference is the fusion alone. Prints each model's HR@10 and
NDCG@10, the CPU µs/event the pipeline attributes to each, and how often the learned fusion
learned (the chosen item was one of its candidates). Prints figures; asserts nothing.

    python benchmarks/fusion.py [STREAM ...] [--seed 7] [--scale 1.0] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import quiet_logging, settings_overrides
from streams import STREAMS

from stream.core import Pipeline, PipelineConfig
from stream.evaluate import evaluate
from stream.models import Blend, build_models
from stream.models.registry import build_blend
from stream.settings import StreamSettings

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("streams", nargs="*", default=sorted(STREAMS), choices=sorted(STREAMS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a StreamSettings override for both blends (repeatable)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    quiet_logging()
    try:
        settings = StreamSettings(_env_file=None, seed=args.seed, **settings_overrides(args.set))
    except ValueError as exc:
        parser.error(str(exc))
    if "blend" not in settings.models:
        parser.error("STREAM_MODELS must hold the blend")
    for name in args.streams:
        spec = STREAMS[name]
        events = spec.events(args.seed, args.scale)
        models = build_models(settings)
        learned = settings.model_copy(update={"blend_fusion": "learned"})
        models["blend_learned"] = build_blend(learned, models)
        pipeline = Pipeline(PipelineConfig.from_settings(settings), models)
        started = time.perf_counter()
        result = evaluate(events, settings, pipeline=pipeline)
        spent = time.perf_counter() - started
        held = " (held out)" if spec.held_out else ""
        print(f"\n{name}{held}: {len(events):,} events, {spent:.0f} s")
        print(f"{'model':<15}{'HR@10':>8}{'NDCG@10':>9}{'µs/event':>10}")
        for model, metrics in result.models.items():
            cost = pipeline.model_seconds[model] / len(events) * 1e6
            print(f"{model:<15}{metrics.hit_rate or 0:>8.4f}{metrics.ndcg or 0:>9.4f}{cost:>10.0f}")
        blend = models["blend_learned"]
        assert isinstance(blend, Blend)
        print(f"learned fusion: {blend.updates:,} updates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
