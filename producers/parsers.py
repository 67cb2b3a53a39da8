"""Parsers of one line of each event-log format: text in, an event-shaped dict or a reason out.

``jsonl`` (one event object per line, the events topic's schema), ``csv`` (a header row, columns
mapped to event fields) and MovieLens ``u.data`` / ``ratings.dat`` / ``ratings.csv`` rows, which
become ``rating`` events. A parser never raises on a bad line: it returns a :class:`Bad` with a
reason code (the codes of :func:`stream.events.decode_one` where they apply). Only a file that
cannot be read in the format at all (a CSV header without the needed columns) raises
:class:`FormatError`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from stream.events import strict_json

__all__ = [
    "CSV_FIELDS",
    "FORMATS",
    "Bad",
    "CsvParser",
    "FormatError",
    "JsonlParser",
    "LineParser",
    "RatingsParser",
    "make_parser",
    "parse_column_map",
]

FORMATS: tuple[str, ...] = ("jsonl", "csv", "movielens-100k", "movielens-1m", "movielens-csv")
CSV_FIELDS: tuple[str, ...] = ("user_id", "item_id", "event_type", "rating", "timestamp")
_MOVIELENS_CSV_HEADER = "userid,movieid,rating,timestamp"


class FormatError(ValueError):
    """The file cannot be read in this format at all (unknown format, bad header, corrupt gzip)."""


class Bad(NamedTuple):
    """Why a line was not usable (a reason code of :func:`stream.events.decode_one` or ours)."""

    reason: str
    detail: str


class LineParser(Protocol):
    """Turn one line's text into an event-shaped dict, a :class:`Bad`, or ``None`` (header)."""

    def parse_one(self, text: str) -> dict[str, Any] | Bad | None: ...


def _number(text: str) -> int | float:
    """An int if the text is one (keeps epoch seconds exact), else a finite float."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not finite: {text!r}")
    return value


class JsonlParser:
    """One JSON object per line (strict: no NaN, no duplicate keys)."""

    def parse_one(self, text: str) -> dict[str, Any] | Bad | None:
        try:
            data = strict_json.decode(text)
        except RecursionError:
            return Bad("invalid_json", "nested too deeply")
        except ValueError as exc:
            return Bad("invalid_json", str(exc)[:200])
        if not isinstance(data, dict):
            return Bad("not_an_object", f"JSON {type(data).__name__}, expected an object")
        return data


class RatingsParser:
    """MovieLens ratings: ``user SEP item SEP rating SEP timestamp`` (``sep=None``: whitespace)."""

    def __init__(self, sep: str | None, header: str | None = None) -> None:
        self.sep = sep
        self.header = header
        self._first = True

    def parse_one(self, text: str) -> dict[str, Any] | Bad | None:
        if self._first:
            self._first = False
            if self.header and text.replace(" ", "").strip().lower() == self.header:
                return None
        parts = text.split(self.sep)
        if len(parts) != 4:
            return Bad("wrong_column_count", f"{len(parts)} fields, expected 4")
        user, item, rating_text, ts_text = (p.strip() for p in parts)
        try:
            rating = float(_number(rating_text))
        except ValueError:
            return Bad("invalid_number", f"rating {rating_text[:40]!r}")
        try:
            ts = _number(ts_text)
        except ValueError:
            return Bad("invalid_number", f"timestamp {ts_text[:40]!r}")
        return {
            "user_id": user,
            "item_id": item,
            "event_type": "rating",
            "rating": rating,
            "timestamp": ts,
        }


def parse_column_map(text: str | None) -> dict[str, str]:
    """``"user_id=uid,item_id=sku"`` → ``{"user_id": "uid", "item_id": "sku"}`` (validated).

    >>> parse_column_map("user_id=uid, timestamp=ts")
    {'user_id': 'uid', 'timestamp': 'ts'}
    """
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        field, sep, column = part.partition("=")
        field, column = field.strip(), column.strip()
        if not sep or not column:
            raise FormatError(f"--columns: expected FIELD=COLUMN, got {part.strip()!r}")
        if field not in CSV_FIELDS:
            raise FormatError(
                f"--columns: unknown field {field!r} (fields: {', '.join(CSV_FIELDS)})"
            )
        out[field] = column
    return out


class CsvParser:
    """A header row, then one event per row; ``columns`` maps event fields to header names.

    Fields without a mapping use their own name as the column. ``event_type`` falls back to
    ``default_event_type`` when the column is absent or empty; ``rating`` is optional.
    Quoted fields may not span lines.
    """

    def __init__(
        self,
        columns: Mapping[str, str] | None = None,
        default_event_type: str | None = None,
        delimiter: str = ",",
    ) -> None:
        self.columns = {f: f for f in CSV_FIELDS} | dict(columns or {})
        self.explicit = set(columns or {})
        self.default_event_type = default_event_type
        self.delimiter = delimiter
        self._index: dict[str, int] | None = None
        self._width = 0

    def _read_header(self, row: list[str]) -> dict[str, int]:
        names = [c.strip() for c in row]
        index: dict[str, int] = {}
        for field, column in self.columns.items():
            if column in names:
                index[field] = names.index(column)
                continue
            optional = field == "rating" or (
                field == "event_type" and self.default_event_type is not None
            )
            if field in self.explicit or not optional:
                hint = (
                    " (map one with --columns event_type=NAME or give --event-type)"
                    if field == "event_type"
                    else f" (map it with --columns {field}=NAME)"
                )
                raise FormatError(
                    f"csv header has no column {column!r} for {field}{hint}; header: {names}"
                )
        self._width = len(names)
        return index

    def parse_one(self, text: str) -> dict[str, Any] | Bad | None:
        try:
            row = next(csv.reader((text,), delimiter=self.delimiter, strict=True))
        except csv.Error as exc:
            return Bad("invalid_csv", str(exc))
        if self._index is None:
            self._index = self._read_header(row)
            return None
        if len(row) != self._width:
            return Bad("wrong_column_count", f"{len(row)} fields, the header has {self._width}")
        idx = self._index
        out: dict[str, Any] = {"user_id": row[idx["user_id"]], "item_id": row[idx["item_id"]]}
        kind = row[idx["event_type"]].strip() if "event_type" in idx else ""
        kind = kind or (self.default_event_type or "")
        if not kind:
            return Bad("missing_field", "event_type is empty and no --event-type was given")
        out["event_type"] = kind
        if "rating" in idx and (rating := row[idx["rating"]].strip()):
            try:
                out["rating"] = float(_number(rating))
            except ValueError:
                return Bad("invalid_number", f"rating {rating[:40]!r}")
        ts = row[idx["timestamp"]].strip()
        try:
            out["timestamp"] = _number(ts)
        except ValueError:
            out["timestamp"] = ts  # an ISO-8601 string (or garbage, caught by validation)
        return out


def make_parser(
    fmt: str,
    columns: Mapping[str, str] | None = None,
    event_type: str | None = None,
    delimiter: str = ",",
) -> LineParser:
    """The line parser of format ``fmt`` (csv options apply to csv only).

    Raises :class:`FormatError` for an unknown format.

    >>> make_parser("movielens-1m").parse_one("1::1193::5::978300760")["item_id"]
    '1193'
    """
    if fmt == "jsonl":
        return JsonlParser()
    if fmt == "csv":
        return CsvParser(columns, event_type, delimiter)
    if fmt == "movielens-100k":
        return RatingsParser(None)
    if fmt == "movielens-1m":
        return RatingsParser("::")
    if fmt == "movielens-csv":
        return RatingsParser(",", header=_MOVIELENS_CSV_HEADER)
    raise FormatError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
