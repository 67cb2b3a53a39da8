"""Small helpers shared by the benchmark scripts: tables, percentiles, quiet logging.

Benchmarks print figures and assert nothing; these helpers only format them.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["fmt", "percentile", "print_table", "quiet_logging", "settings_overrides", "write_json"]


def settings_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--set NAME=VALUE`` arguments as ``StreamSettings`` keyword arguments.

    NAME is a setting's field name (``negative_samples``; ``STREAM_NEGATIVE_SAMPLES`` is
    accepted too); an unknown one raises ``ValueError`` instead of being ignored like an
    unknown env variable. Values stay strings: ``StreamSettings`` parses them.

    >>> settings_overrides(["negative_samples=2", "models=popularity,knn"])
    {'negative_samples': '2', 'models': 'popularity,knn'}
    """
    from stream.settings import StreamSettings

    overrides: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lower().removeprefix("stream_")
        if not sep or not name:
            raise ValueError(f"--set expects NAME=VALUE, got {pair!r}")
        if name not in StreamSettings.model_fields:
            raise ValueError(f"--set {pair!r}: StreamSettings has no setting {name!r}")
        overrides[name] = value
    return overrides


def quiet_logging(level: int = logging.WARNING) -> None:
    """Configure logging for a benchmark run: warnings only, kafka-python's chatter muted."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    # The core logs every drift detection as a warning; the benchmarks tabulate them instead.
    logging.getLogger("stream.core").setLevel(logging.ERROR)


def fmt(value: float | int | None, digits: int = 4) -> str:
    """A number for a table cell (``-`` for missing values, thousands separators for ints)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation; ``None`` for no values.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
    2.5
    >>> percentile([5.0], 99)
    5.0
    """
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def print_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    title: str | None = None,
    out: TextIO = sys.stdout,
) -> None:
    """Columns padded to their widest cell; the first column left-aligned, the rest right."""
    if title:
        print(f"\n{title}", file=out)
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for n, row in enumerate(table):
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  " + "  ".join(cells).rstrip(), file=out)
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths), file=out)
    out.flush()


def write_json(path: str, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` (``-`` = stdout) as indented JSON."""
    text = json.dumps(document, indent=2, sort_keys=False, default=str)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")
        print(f"\nJSON written to {path}")
