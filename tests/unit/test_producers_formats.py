"""Event-log formats: parsing, rejection with line numbers, gzip, time filters, order, limit."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from producers.formats import EventReader, FormatError, ReadOptions, read_events
from producers.records import Record, RejectedLine
from stream.events import Event, decode_one


def write(path: Path, lines: Sequence[str | bytes], *, gz: bool = False) -> Path:
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode("utf-8")) + b"\n" for ln in lines)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def ev(user: str | int, item: str, ts: Any, kind: str = "view", **extra: Any) -> str:
    return json.dumps(
        {"user_id": user, "item_id": item, "event_type": kind, "timestamp": ts, **extra}
    )


def read(
    path: Path, fmt: str, **options: Any
) -> tuple[list[Record], list[RejectedLine], EventReader]:
    rejects: list[RejectedLine] = []
    reader = EventReader(path, fmt, ReadOptions(**options), on_reject=rejects.append)
    return list(reader.records()), rejects, reader


# --- jsonl ----------------------------------------------------------------------------------


def test_jsonl_records_are_compact_keyed_by_user_and_sorted_stably(tmp_path: Path) -> None:
    path = write(
        tmp_path / "log.jsonl",
        [
            ev("u2", "b", 20),
            ev(7, "a", 10, "purchase"),
            ev("u1", "c", 20, "rating", rating=4.5),
            ev("u3", "d", "1970-01-01T00:00:05Z", "click"),
            ev("u4", "e", 20, context={"page": "home"}),
        ],
    )
    records, rejects, reader = read(path, "jsonl")
    assert rejects == []
    assert [r.line for r in records] == [4, 2, 1, 3, 5]  # by time; ties keep file order
    assert [r.timestamp for r in records] == [5.0, 10.0, 20.0, 20.0, 20.0]
    assert [r.key for r in records] == [b"u3", b"7", b"u2", b"u1", b"u4"]
    assert records[1].value == b'{"user_id":7,"item_id":"a","event_type":"purchase","timestamp":10}'
    assert b" " not in b"".join(r.value for r in records)
    for r in records:  # the worker's own decoder accepts every value, with the same key
        event = decode_one(r.key, r.value)
        assert isinstance(event, Event) and event.user_id.encode() == r.key
    assert (reader.lines, reader.rejected, reader.skipped) == (5, 0, 0)


def test_jsonl_bad_lines_are_rejected_with_line_numbers_and_do_not_stop_the_read(
    tmp_path: Path,
) -> None:
    lines: list[str | bytes] = [
        ev("u1", "a", 1),
        "{not json",
        "[1, 2]",
        "",
        "   ",
        json.dumps({"user_id": "u1", "event_type": "view", "timestamp": 1}),
        ev("u1", "a", 1, "teleport"),
        ev("u1", "a", 1, "rating"),
        ev("u1", "a", 1, "rating", rating=9),
        ev("u1", "a", "yesterday"),
        b'{"user_id": "u\xff", "item_id": "a", "event_type": "view", "timestamp": 1}',
        '{"user_id": "u1", "item_id": "a", "event_type": "view", "timestamp": NaN}',
        '{"user_id": "u1", "user_id": "u2", "item_id": "a", "event_type": "view", "timestamp": 1}',
        ev("u2", "b", 2),
    ]
    path = write(tmp_path / "log.jsonl", lines)
    records, rejects, reader = read(path, "jsonl")
    assert [r.line for r in records] == [1, 14]
    assert [(r.line, r.reason) for r in rejects] == [
        (2, "invalid_json"),
        (3, "not_an_object"),
        (4, "empty"),
        (5, "empty"),
        (6, "missing_field"),
        (7, "unknown_event_type"),
        (8, "rating_missing"),
        (9, "rating_out_of_range"),
        (10, "invalid_field"),
        (11, "not_utf8"),
        (12, "invalid_json"),
        (13, "invalid_json"),
    ]
    assert (
        rejects[9].raw
        == b'{"user_id": "u\xff", "item_id": "a", "event_type": "view", "timestamp": 1}'
    )
    assert (
        rejects[9].to_json()["raw"]
        == '{"user_id": "u\\xff", "item_id": "a", "event_type": "view", "timestamp": 1}'
    )
    assert reader.rejected == 12 and sum(reader.reasons.values()) == 12
    assert reader.reasons["invalid_json"] == 3


def test_rejected_lines_are_logged_with_their_line_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "log.jsonl", [ev("u1", "a", 1), "oops"])
    read(path, "jsonl")
    assert any(":2: rejected (invalid_json)" in m for m in caplog.messages)


def test_an_over_long_line_is_rejected_without_being_kept(tmp_path: Path) -> None:
    import producers.formats as formats

    path = write(tmp_path / "log.jsonl", [ev("u1", "a", 1), "x" * (formats.MAX_LINE_BYTES + 10)])
    with path.open("ab") as f:
        f.write(ev("u2", "b", 2).encode() + b"\n")
    records, rejects, _ = read(path, "jsonl")
    assert [r.line for r in records] == [1, 3]
    assert [(r.line, r.reason) for r in rejects] == [(2, "line_too_long")]


def test_oversized_events_are_rejected_like_the_worker_would(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [ev("u1", "a", 1, context={"pad": "x" * 500})])
    records, rejects, _ = read(path, "jsonl", max_event_bytes=200)
    assert records == [] and rejects[0].reason == "oversized"


def test_no_validate_sends_what_the_worker_would_reject(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [ev("u1", "a", 2, "teleport"), ev("u2", "b", 1), "{bad"])
    records, rejects, _ = read(path, "jsonl", validate=False)
    assert [(r.line, r.key) for r in records] == [(2, b"u2"), (1, b"u1")]
    assert [r.reason for r in rejects] == ["invalid_json"]  # unparseable lines still can't go
    records, rejects, _ = read(
        write(tmp_path / "t.jsonl", [ev("u1", "a", "never")]), "jsonl", validate=False
    )
    assert records == [] and rejects[0].reason == "invalid_timestamp"  # cannot be ordered
    records, rejects, _ = read(tmp_path / "t.jsonl", "jsonl", validate=False, sort=False)
    assert [r.timestamp for r in records] == [None] and rejects == []


# --- csv ------------------------------------------------------------------------------------


def test_csv_with_a_column_mapping_and_a_default_event_type(tmp_path: Path) -> None:
    path = write(
        tmp_path / "log.csv",
        [
            "\ufeffuid,sku,ts,stars,kind,extra",
            'a,"x,1",30,4.5,rating,foo',
            "b,y,2024-01-01T00:00:00Z,,,bar",
            "c,z,10,,click,baz",
        ],
    )
    columns = {"user_id": "uid", "item_id": "sku", "timestamp": "ts", "rating": "stars"}
    columns["event_type"] = "kind"
    records, rejects, reader = read(path, "csv", columns=columns, event_type="view")
    assert rejects == [] and reader.header_lines == 1
    values = [json.loads(r.value) for r in records]
    assert values == [
        {"user_id": "c", "item_id": "z", "event_type": "click", "timestamp": 10},
        {"user_id": "a", "item_id": "x,1", "event_type": "rating", "rating": 4.5, "timestamp": 30},
        {"user_id": "b", "item_id": "y", "event_type": "view", "timestamp": "2024-01-01T00:00:00Z"},
    ]
    assert records[2].timestamp == 1704067200.0


def test_csv_malformed_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "log.csv",
        [
            "user_id,item_id,timestamp,rating",
            "a,x,1,3",
            "a,x,1",  # too few fields
            "a,x,1,3,9",  # too many
            "a,x,1,three",  # bad number
            "a,x,later,3",  # bad timestamp
            'a,"x,1,3',  # unterminated quote
            "",
            "a,x,1,inf",
            "b,y,2,",
        ],
    )
    records, rejects, _ = read(path, "csv", event_type="rating")
    assert [r.line for r in records] == [2]  # line 10: a rating event without a rating
    assert [(r.line, r.reason) for r in rejects] == [
        (3, "wrong_column_count"),
        (4, "wrong_column_count"),
        (5, "invalid_number"),
        (6, "invalid_field"),
        (7, "invalid_csv"),
        (8, "empty"),
        (9, "invalid_number"),
        (10, "rating_missing"),
    ]


def test_csv_tab_delimited_without_an_event_type_column(tmp_path: Path) -> None:
    path = write(tmp_path / "log.tsv", ["user_id\titem_id\ttimestamp", "a\tx\t5"])
    records, _, _ = read(path, "csv", delimiter="\t", event_type="purchase")
    assert json.loads(records[0].value)["event_type"] == "purchase"


@pytest.mark.parametrize(
    ("header", "options", "message"),
    [
        ("uid,item_id,timestamp", {"event_type": "view"}, "no column 'user_id' for user_id"),
        ("user_id,item_id,timestamp", {}, "--event-type"),
        ("user_id,item_id,timestamp", {"event_type": "view", "columns": {"rating": "r"}}, "'r'"),
    ],
)
def test_csv_header_without_a_needed_column_is_a_format_error(
    tmp_path: Path, header: str, options: dict[str, Any], message: str
) -> None:
    path = write(tmp_path / "log.csv", [header, "a,b,1"])
    with pytest.raises(FormatError, match=message):
        read(path, "csv", **options)


# --- MovieLens ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "lines"),
    [
        (
            "movielens-100k",
            ["196\t242\t3\t881250949", "186\t302\t3\t891717742", "22\t377\t1\t878887116"],
        ),
        ("movielens-1m", ["1::1193::5::978300760", "1::661::3::978302109", "2::914::3::978301968"]),
        (
            "movielens-csv",
            [
                "userId,movieId,rating,timestamp",
                "1,1,4.0,964982703",
                "1,3,4.5,964981247",
                "2,6,0.5,964982224",
            ],
        ),
    ],
)
def test_movielens_rows_become_rating_events(tmp_path: Path, fmt: str, lines: list[str]) -> None:
    records, rejects, _ = read(write(tmp_path / "ratings", lines), fmt)
    assert rejects == [] and len(records) == 3
    for r in records:
        event = decode_one(r.key, r.value)
        assert isinstance(event, Event)
        assert event.event_type == "rating" and event.rating is not None
        assert r.key == event.user_id.encode()
    times = [r.timestamp or 0.0 for r in records]
    assert times == sorted(times)
    first = json.loads(min(records, key=lambda r: r.line).value)
    data = lines[1] if fmt == "movielens-csv" else lines[0]
    user, item, rating, ts = data.replace("::", ",").replace("\t", ",").split(",")
    assert first == {
        "user_id": user,
        "item_id": item,
        "event_type": "rating",
        "rating": float(rating),
        "timestamp": int(ts),
    }


@pytest.mark.parametrize(
    ("fmt", "bad"),
    [
        (
            "movielens-100k",
            ["196\t242\t3", "196\t242\tx\t881250949", "196\t242\t3\t88125e", "1\t2\t9\t5"],
        ),
        ("movielens-1m", ["1::1193::5", "1::1193::x::978300760", "1::1::5::t", "1::1::9::5"]),
        ("movielens-csv", ["1,1,4.0", "1,1,four,964982703", "1,1,4.0,soon", "1,1,9,5"]),
    ],
)
def test_movielens_malformed_rows(tmp_path: Path, fmt: str, bad: list[str]) -> None:
    good = {
        "movielens-100k": "1\t2\t3\t4",
        "movielens-1m": "1::2::3::4",
        "movielens-csv": "1,2,3,4",
    }
    records, rejects, _ = read(write(tmp_path / "r", [good[fmt], *bad, b"\xff\xfe"]), fmt)
    assert [r.line for r in records] == [1]
    assert [(r.line, r.reason) for r in rejects] == [
        (2, "wrong_column_count"),
        (3, "invalid_number"),
        (4, "invalid_number"),
        (5, "rating_out_of_range"),
        (6, "not_utf8"),
    ]


# --- gzip, time filters, limit ----------------------------------------------------------------


def test_gzip_is_detected_by_magic_bytes_not_by_name(tmp_path: Path) -> None:
    lines = ["1\t2\t3\t4", "5\t6\t4\t1"]
    hidden = write(tmp_path / "u.data", lines, gz=True)  # gzip without .gz
    plain = write(tmp_path / "u.data.gz", lines)  # .gz that is plain text
    for path in (hidden, plain):
        records, rejects, _ = read(path, "movielens-100k")
        assert rejects == [] and [r.line for r in records] == [2, 1]


def test_truncated_gzip_is_a_format_error(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(f"1\t{i}\t3\t{i}\n".encode() for i in range(5000)))
    path = tmp_path / "u.data"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="corrupt or truncated gzip"):
        read(path, "movielens-100k")


def test_time_window_is_inclusive_start_exclusive_end(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [ev("u", str(t), t) for t in (5, 10, 15, 20, 25)])
    records, _, reader = read(path, "jsonl", start=10.0, end=20.0)
    assert [r.timestamp for r in records] == [10.0, 15.0]
    assert reader.skipped_time == 3 and reader.skipped == 3


def test_limit_after_sorting_takes_the_earliest_events(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [ev("u", str(t), t) for t in (50, 40, 30, 20, 10)])
    records, _, reader = read(path, "jsonl", limit=2)
    assert [r.timestamp for r in records] == [10.0, 20.0]
    assert (reader.skipped_limit, reader.expected, reader.limit_reached) == (3, 2, True)
    records, _, reader = read(path, "jsonl", limit=0)
    assert records == [] and reader.skipped_limit == 5


def test_unsorted_limit_keeps_file_order_and_stops_reading(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [ev("u", str(t), t) for t in (50, 40, 30, 20, 10)])
    records, _, reader = read(path, "jsonl", limit=2, sort=False)
    assert [r.timestamp for r in records] == [50.0, 40.0]
    assert reader.lines == 2 and reader.limit_reached


def test_unsorted_reading_streams_line_by_line(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [ev("u", str(t), t) for t in range(1000)])
    reader = EventReader(path, "jsonl", ReadOptions(sort=False))
    records = reader.records()
    next(records)
    assert reader.lines == 1  # nothing read ahead: a file larger than memory replays
    records.close()


def test_sorting_a_log_larger_than_the_sort_buffer_spills_runs(tmp_path: Path) -> None:
    # 30 distinct times over 600 events: many ties, which must keep their file order.
    times = [(i * 7919) % 30 for i in range(600)]
    path = write(tmp_path / "log.jsonl", [ev(f"u{i % 13}", str(i), t) for i, t in enumerate(times)])
    records, _, reader = read(path, "jsonl", sort_buffer=16, tmp_dir=tmp_path)
    expected = sorted(range(1, 601), key=lambda line: times[line - 1])
    assert [r.line for r in records] == expected
    assert reader.sort_runs == 38
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]  # runs removed


def test_read_events_yields_validated_events_in_time_order(tmp_path: Path) -> None:
    path = write(tmp_path / "log.jsonl", [ev("u1", "a", 3), "bad", ev("u2", "b", 1)])
    reader = read_events(path, "jsonl")
    events = list(reader)
    assert all(isinstance(e, Event) for e in events)
    assert [(e.user_id, e.timestamp) for e in events] == [("u2", 1.0), ("u1", 3.0)]
    assert reader.rejected == 1
    assert [e.item_id for e in read_events(path, "jsonl", limit=1)] == ["b"]


def test_unknown_format_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="unknown format 'parquet'"):
        read_events(tmp_path / "x", "parquet")
