"""DatasetFace: bundled real data sets and user files, including every kind of bad input."""

from __future__ import annotations

import json
from datetime import datetime

import pandas as pd
import pytest

from faces.base import CapabilityError
from faces.dataset import ColumnMapping, DatasetConfig, DatasetFace, ImportProblem


def csv_face(path, **settings) -> DatasetFace:
    return DatasetFace(DatasetConfig(source=str(path), reaction_columns={"likes": "likes"}, **settings))


def test_trump_tweets_yields_all_20761_real_tweets_with_likes_and_reposts():
    face = DatasetFace(DatasetConfig(source="trump_tweets"))
    posts = list(face.fetch_history())
    assert len(posts) == 20_761 and face.problems == []
    assert len({p.platform_id for p in posts}) == 20_761
    first = posts[0]
    assert first.platform_id == "6971079756" and first.reactions == {"likes": 12, "reposts": 28}
    assert first.created_at == datetime(2009, 12, 23, 17, 38, 18)
    assert first.url == "https://twitter.com/realDonaldTrump/status/6971079756"


def test_hutto_tweets_yields_all_4200_rated_tweets():
    face = DatasetFace(DatasetConfig(source="hutto_tweets"))
    posts = list(face.fetch_history())
    assert len(posts) == 4_200 and face.problems == []
    assert posts[0].reactions == {"human_rating_x1000": 2726}  # 2.726315789 from ~20 raters
    ratings = [p.reactions["human_rating_x1000"] for p in posts]
    assert min(ratings) == -3750 and max(ratings) == 3550


def test_limit_and_time_window():
    face = DatasetFace()
    window = list(face.fetch_history(after=datetime(2017, 12, 31), before=datetime(2018, 1, 2)))
    assert window and all(datetime(2017, 12, 31) < p.created_at < datetime(2018, 1, 2) for p in window)
    assert len(list(face.fetch_history(limit=7))) == 7


def test_broken_rows_are_reported_with_line_and_reason_and_good_rows_still_come(tmp_path):
    path = tmp_path / "posts.csv"
    rows = [
        b"id,text,created_at,likes",
        b"1,first good post,2024-01-01T10:00:00Z,5",
        b'2,"a post over\ntwo lines",2024-01-02T10:00:00Z,6',   # lines 3-4, valid
        b"3,too,many,fields,here",                             # line 5
        b"4,bad time,yesterday-ish,1",                          # line 6
        b"5,bad count,2024-01-03T10:00:00Z,lots",              # line 7
        b"6,caf\xe9 in latin-1,2024-01-04T10:00:00Z,2",        # line 8: not utf-8
        b"7,,2024-01-05T10:00:00Z,2",                           # line 9: empty text
        b",no id,2024-01-06T10:00:00Z,2",                       # line 10
        b"8,last good post,2024-01-07T10:00:00Z,9",            # line 11
    ]
    path.write_bytes(b"\n".join(rows) + b"\n")
    seen: list[ImportProblem] = []
    face = DatasetFace(DatasetConfig(source=str(path), reaction_columns={"likes": "likes"}), on_problem=seen.append)
    posts = list(face.fetch_history())
    assert [p.platform_id for p in posts] == ["1", "2", "8"]
    assert posts[1].text == "a post over\ntwo lines" and posts[2].reactions == {"likes": 9}
    assert [p.line for p in face.problems] == [5, 6, 7, 8, 9, 10]
    reasons = {p.line: p.reason for p in face.problems}
    assert "5 fields where the header has 4" in reasons[5]
    assert "not ISO 8601" in reasons[6]
    assert "'likes' count 'lots' is not a number" in reasons[7]
    assert "not valid utf-8" in reasons[8] and "encoding" in reasons[8]
    assert "text is empty" in reasons[9] and "id ('id') is empty" in reasons[10]
    assert seen == face.problems


def test_a_10_mb_post_is_reported_not_imported(tmp_path):
    path = tmp_path / "huge.csv"
    huge = "word " * 2_100_000
    path.write_text("id,text,created_at,likes\n1,ok,2024-01-01T00:00:00Z,1\n"
                    f"2,{huge},2024-01-01T00:00:00Z,1\n3,ok too,2024-01-01T00:00:00Z,1\n")
    face = csv_face(path)
    assert [p.platform_id for p in face.fetch_history()] == ["1", "3"]
    (problem,) = face.problems
    assert problem.line == 3 and "10,500,000 characters" in problem.reason and "max_text_chars" in problem.reason


def test_empty_file_and_missing_text_column_are_problems_not_crashes(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    face = csv_face(empty)
    assert list(face.fetch_history()) == []
    assert face.problems == [ImportProblem(1, "the file is empty: no header row and no posts")]

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,body,created_at,likes\n1,hello,2024-01-01T00:00:00Z,3\n")
    face = csv_face(wrong)
    assert list(face.fetch_history()) == []
    (problem,) = face.problems
    assert problem.line == 1 and "'text' is missing" in problem.reason and "column mapping" in problem.reason


def test_jsonl_with_a_broken_line(tmp_path):
    path = tmp_path / "posts.jsonl"
    lines = [
        json.dumps({"id": "a", "text": "first", "created_at": 1700000000, "likes": 3}),
        '{"id": "b", "text": "cut off',
        json.dumps(["not", "an", "object"]),
        json.dumps({"id": "c", "text": "third", "created_at": "2024-05-01T12:00:00+02:00", "likes": 4}),
    ]
    path.write_text("\n".join(lines) + "\n")
    face = csv_face(path)
    posts = list(face.fetch_history())
    assert [p.platform_id for p in posts] == ["a", "c"]
    assert posts[0].created_at == datetime(2023, 11, 14, 22, 13, 20)
    assert posts[1].created_at == datetime(2024, 5, 1, 10, 0)  # converted to naive UTC
    reasons = [(p.line, p.reason.split(" (")[0]) for p in face.problems]
    assert reasons == [(2, "not valid JSON"), (3, "is a JSON list, not an object with the post's fields")]


def test_parquet_is_read_in_chunks_with_a_column_mapping(tmp_path):
    path = tmp_path / "posts.parquet"
    frame = pd.DataFrame({
        "post_id": [f"p{i}" for i in range(25)],
        "body": [f"post {i}" if i != 10 else None for i in range(25)],
        "when": pd.date_range("2024-01-01", periods=25, freq="h"),
        "hearts": list(range(25)),
        "boosts": list(range(25)),
    })
    frame.to_parquet(path, row_group_size=5)
    face = DatasetFace(DatasetConfig(
        source=str(path), chunk_rows=4,
        columns=ColumnMapping(text="body", id="post_id", created_at="when"),
        reaction_columns={"hearts": "likes", "boosts": "reposts"},
    ))
    posts = list(face.fetch_history())
    assert len(posts) == 24 and posts[3].reactions == {"likes": 3, "reposts": 3}
    assert posts[3].created_at == datetime(2024, 1, 1, 3, 0)
    assert face.problems == [ImportProblem(12, "the text is empty")]  # row 11 is file line 12, header = line 1


def test_the_dataset_face_cannot_publish_and_says_what_to_use():
    face = DatasetFace()
    with pytest.raises(CapabilityError) as raised:
        face.publish("hi", intent_id="x")
    assert "read-only" in str(raised.value) and "sandbox or network face" in str(raised.value)
    with pytest.raises(CapabilityError):
        face.reactions("1")
    assert not face.capabilities.publish and face.health().ok


def good_rows(n: int, start: int = 1) -> list[str]:
    return [f'{i},"post number {i}",2024-01-{1 + i % 28:02d}T10:00:00,{i}' for i in range(start, start + n)]


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
def test_a_bom_and_any_line_end_import_every_row_with_its_line(tmp_path, line_end):
    # Issue 13 findings 3 and 4: a BOM (Excel's "CSV UTF-8") or CR-only line ends imported nothing.
    path = tmp_path / "posts.csv"
    rows = ["id,text,created_at,likes", *good_rows(3), '4,"two""\nlines",2024-01-05T10:00:00,4', *good_rows(2, 5)]
    path.write_bytes(b"\xef\xbb\xbf" + ("\n".join(rows) + "\n").replace("\n", line_end).encode())
    face = csv_face(path)
    posts = list(face.fetch_history())
    assert face.problems == []
    assert [(p.platform_id, p.line) for p in posts] == [("1", 2), ("2", 3), ("3", 4), ("4", 5), ("5", 7), ("6", 8)]
    assert posts[3].text == f'two"{line_end}lines'


def test_an_unclosed_quote_is_reported_on_its_line_and_the_next_rows_still_come(tmp_path):
    # Issue 13 finding 4: an unclosed quote swallowed 90 of 99 valid rows.
    path = tmp_path / "posts.csv"
    rows = ["id,text,created_at,likes", *good_rows(9), '999,"this quote never closes,2024-01-01T00:00:00,1',
            *good_rows(90, 10), '1000,"nor does this one,2024-01-01T00:00:00,1']
    path.write_text("\n".join(rows) + "\n")
    face = csv_face(path)
    posts = list(face.fetch_history())
    assert [p.platform_id for p in posts] == [str(i) for i in range(1, 100)]
    assert [p.line for p in face.problems] == [11, 102]
    assert all("quote opened on this line never closes" in p.reason for p in face.problems)


def test_an_unclosed_quote_without_any_later_quote_costs_only_its_own_line(tmp_path):
    path = tmp_path / "posts.csv"
    plain = [f"{i},plain post {i},2024-01-02T00:00:00,{i}" for i in range(1, 1500)]
    path.write_text("\n".join(["id,text,created_at,likes", '0,"open,2024-01-01T00:00:00,1', *plain]) + "\n")
    face = csv_face(path)
    assert len(list(face.fetch_history())) == 1499
    assert [p.line for p in face.problems] == [2]


@pytest.mark.parametrize("cell, count", [
    ("1,234", 1234), ("12.0", 12), ("1.2K", 1200), ("3M", 3_000_000), (" 7 ", 7), ("1 234 567", 1_234_567),
    ("9223372036854775807", 2**63 - 1),
])
def test_counts_as_spreadsheets_and_scrapers_write_them(tmp_path, cell, count):
    path = tmp_path / "posts.csv"
    path.write_text(f'id,text,created_at,likes\n1,hello,2024-01-01T00:00:00,"{cell}"\n')
    face = csv_face(path)
    assert [p.reactions for p in face.fetch_history()] == [{"likes": count}] and face.problems == []


def test_every_cell_the_store_cannot_hold_is_reported_with_its_line_and_the_valid_rows_come(tmp_path):
    # Issue 13 findings 1 and 6: such cells passed the face and then lost their whole store batch.
    path = tmp_path / "posts.jsonl"
    ok = {"id": "ok", "text": "fine", "created_at": "2024-01-01T00:00:00", "likes": 1, "author": "a", "url": "u"}
    bad = [
        ({"likes": 1e30}, "more than the store can hold"),
        ({"likes": 2**63}, "more than the store can hold"),
        ({"likes": -5}, "negative"),
        ({"likes": "-1,000,000"}, "negative"),
        ({"likes": True}, "not a number"),
        ({"likes": {"n": 1}}, "not a number"),
        ({"likes": "Infinity"}, "not a finite number"),
        ({"text": "a \ud800 b"}, "lone surrogate"),
        ({"text": "nul \x00 byte"}, "NUL byte"),
        ({"text": 12}, "not text"),
        ({"id": "x" * 20_000_000}, "max_id_chars"),
        ({"id": "a\x00b"}, "NUL byte"),
        ({"id": ["a"]}, "not text"),
        ({"author": "y" * 300}, "max_author_chars"),
        ({"author": "\udfff"}, "lone surrogate"),
        ({"url": "https://x/" + "z" * 3000}, "max_url_chars"),
        ({"created_at": 1e30}, "not ISO 8601"),
    ]
    lines = []
    for number, (change, _) in enumerate(bad):
        lines.append(json.dumps({**ok, "id": f"good-{number}"}))
        lines.append(json.dumps({**ok, "id": f"bad-{number}", **change}))
    path.write_text("\n".join(lines) + "\n")
    face = DatasetFace(DatasetConfig(source=str(path), reaction_columns={"likes": "likes"},
                                     columns=ColumnMapping(author="author", url="url")))
    posts = list(face.fetch_history())
    assert [p.platform_id for p in posts] == [f"good-{n}" for n in range(len(bad))]
    assert [p.line for p in face.problems] == [2 * n + 2 for n in range(len(bad))]
    for problem, (_, phrase) in zip(face.problems, bad, strict=True):
        assert phrase in problem.reason, (problem, phrase)
        assert len(problem.reason) < 300  # a 20 MB cell is not quoted whole


def test_a_rating_may_be_negative_but_a_count_may_not(tmp_path):
    path = tmp_path / "rated.csv"
    path.write_text("id,text,created_at,sentiment\n1,sad,2024-01-01T00:00:00,-2.5\n")
    face = DatasetFace(DatasetConfig(source=str(path), reaction_columns={"sentiment": "human_rating_x1000"},
                                     reaction_scale={"human_rating_x1000": 1000.0}))
    assert [p.reactions for p in face.fetch_history()] == [{"human_rating_x1000": -2500}]


def test_parquet_cells_out_of_the_stores_range_are_reported_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "posts.parquet"
    pq.write_table(pa.table({
        "id": ["a", "b", "c", "d"],
        "text": ["a NUL \x00 in arrow text", "ok", "ok", "ok"],
        "created_at": ["2024-01-01T00:00:00"] * 4,
        "likes": pa.array([1, 2**64 - 1, 3, 4], pa.uint64()),
    }), path)
    face = csv_face(path)
    assert [p.platform_id for p in face.fetch_history()] == ["c", "d"]
    assert [(p.line, p.reason.split(" ")[1]) for p in face.problems] == [(2, "text"), (3, "'likes'")]


@pytest.mark.parametrize("source, problem, fix", [
    ("missing.csv", "does not exist", "Set `source`"),
    ("folder.csv", "is a folder, not a file", "one file in that folder"),
])
def test_a_source_that_cannot_be_read_names_the_problem_and_the_fix(tmp_path, source, problem, fix):
    from faces.base import FaceConfigError

    (tmp_path / "folder.csv").mkdir()
    face = csv_face(tmp_path / source)
    with pytest.raises(FaceConfigError) as raised:
        list(face.fetch_history())
    assert problem in raised.value.problem and str(tmp_path / source) in raised.value.problem
    assert fix in raised.value.fix
