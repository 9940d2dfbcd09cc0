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
    reasons = dict((p.line, p.reason) for p in face.problems)
    assert "5 fields where the header has 4" in reasons[5]
    assert "not ISO 8601" in reasons[6]
    assert "'likes' count 'lots' is not a number" in reasons[7]
    assert "not valid utf-8" in reasons[8] and "encoding" in reasons[8]
    assert "text is empty" in reasons[9] and "id ('id') is empty" in reasons[10]
    assert seen == face.problems


def test_a_10_mb_post_is_reported_not_imported(tmp_path):
    path = tmp_path / "huge.csv"
    huge = "word " * 2_100_000
    path.write_text(f"id,text,created_at,likes\n1,ok,2024-01-01T00:00:00Z,1\n2,{huge},2024-01-01T00:00:00Z,1\n3,ok too,2024-01-01T00:00:00Z,1\n")
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
    assert [(p.line, p.reason.split(" (")[0]) for p in face.problems] == [(2, "not valid JSON"), (3, "is a JSON list, not an object with the post's fields")]


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
