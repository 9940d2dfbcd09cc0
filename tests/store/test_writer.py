"""The single writer applies batches exactly once, migrates the schema and refuses bad files."""

import duckdb
import pytest

from crowdtune.errors import StoreUnavailable
from crowdtune.store.reads import StoreReader, summary
from crowdtune.store.schema import SCHEMA_VERSION
from crowdtune.store.writer import InvalidWrite, apply_batch, apply_write, initialise


def test_new_store_is_created_at_the_current_schema_version(tmp_path):
    path = tmp_path / "s.duckdb"
    initialise(path)
    info = summary(StoreReader(path))
    assert info.exists and info.schema_version == SCHEMA_VERSION
    assert info.row_counts["posts"] == 0


def test_a_batch_applied_twice_under_one_write_id_changes_nothing_the_second_time(tmp_path):
    path = tmp_path / "s.duckdb"
    rows = [{"run_id": "r1", "name": "loss", "step": s, "value": 1.0 / (s + 1)} for s in range(5)]
    ops = [{"op": "insert", "table": "metrics", "rows": rows}]
    assert apply_write(path, "w1", ops, wait_seconds=5) == 5
    assert apply_write(path, "w1", ops, wait_seconds=5) == 0
    assert StoreReader(path).scalar("SELECT count(*) FROM metrics") == 5


def test_upsert_updates_only_the_columns_given_and_keeps_the_rest(tmp_path):
    path = tmp_path / "s.duckdb"
    apply_write(path, "a", [{"op": "upsert", "table": "posts", "rows": [
        {"post_id": "f:1", "face_id": "f", "origin": "imported", "status": "imported", "text": "hello",
         "created_at": "2020-01-02T03:04:05", "url": "http://x/1"}]}], 5)
    apply_write(path, "b", [{"op": "upsert", "table": "posts", "rows": [
        {"post_id": "f:1", "face_id": "f", "origin": "imported", "status": "imported", "text": "hello, edited"}]}], 5)
    row = StoreReader(path).rows("SELECT text, url, created_at::VARCHAR FROM posts")
    assert row == [("hello, edited", "http://x/1", "2020-01-02 03:04:05")]


def test_rows_repeating_a_key_within_one_batch_merge_instead_of_failing(tmp_path):
    path = tmp_path / "s.duckdb"
    rows = [{"key": "k", "value": {"a": 1}}, {"key": "k", "value": {"a": 2}}]
    ops = [{"op": "upsert", "table": "state", "rows": rows}]
    apply_write(path, "w", ops, 5)
    assert StoreReader(path).scalar("SELECT value->>'a' FROM state") == "2"


def test_update_changes_matching_rows(tmp_path):
    path = tmp_path / "s.duckdb"
    run = {"run_id": "r", "kind": "offline", "status": "running"}
    apply_write(path, "a", [{"op": "insert", "table": "runs", "rows": [run]}], 5)
    stop = {"op": "update", "table": "runs", "where": {"run_id": "r"}, "set": {"status": "stopped"}}
    apply_write(path, "b", [stop], 5)
    assert StoreReader(path).scalar("SELECT status FROM runs") == "stopped"


@pytest.mark.parametrize("ops, message", [
    ([{"op": "insert", "table": "nope", "rows": [{"a": 1}]}], "unknown table"),
    ([{"op": "insert", "table": "runs", "rows": [{"run_id": "r", "kind": "k", "status": "s", "colour": 1}]}],
     "no column"),
    ([{"op": "insert", "table": "runs", "rows": [{"kind": "k", "status": "s"}]}], "key column"),
    ([{"op": "drop", "table": "runs"}], "unknown operation"),
])
def test_invalid_operations_are_refused_and_leave_nothing_behind(tmp_path, ops, message):
    path = tmp_path / "s.duckdb"
    good = {"op": "insert", "table": "alerts",
            "rows": [{"alert_id": "a", "level": "info", "source": "t", "message": "m"}]}
    with pytest.raises(InvalidWrite, match=message):
        apply_write(path, "w", [good, *ops], 5)
    assert StoreReader(path).scalar("SELECT count(*) FROM alerts") == 0
    assert StoreReader(path).scalar("SELECT count(*) FROM applied_writes") == 0


def test_a_corrupt_file_gets_a_clear_message_and_is_not_deleted(tmp_path):
    path = tmp_path / "s.duckdb"
    path.write_bytes(b"this is not a database" * 1000)
    with pytest.raises(StoreUnavailable) as err:
        initialise(path)
    assert "not a readable DuckDB database" in err.value.problem
    assert "Move" in err.value.fix
    assert path.read_bytes().startswith(b"this is not a database")
    with pytest.raises(StoreUnavailable):
        summary(StoreReader(path))


def test_a_store_from_a_newer_crowdtune_is_refused_untouched(tmp_path):
    path = tmp_path / "s.duckdb"
    initialise(path)
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION + 5])
    con.close()
    with pytest.raises(StoreUnavailable, match="newer than this Crowdtune"):
        initialise(path)
    with pytest.raises(StoreUnavailable, match="newer than this Crowdtune"):
        summary(StoreReader(path))
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION + 5
    con.close()


def test_reading_a_store_that_does_not_exist_yet_reads_as_empty(tmp_path):
    reader = StoreReader(tmp_path / "missing.duckdb")
    assert reader.frame("SELECT 1").empty
    assert not summary(reader).exists
    assert not (tmp_path / "missing.duckdb").exists()


def imported_batch(posts: list[tuple[str, str, object]]) -> list[dict]:
    """Ops as an import writes them: (platform id, text, likes) -> post upserts and snapshot inserts."""
    return [
        {"op": "upsert", "table": "posts", "rows": [
            {"post_id": f"f:{pid}", "face_id": "f", "origin": "imported", "status": "imported", "text": text}
            for pid, text, _ in posts]},
        {"op": "insert", "table": "reaction_snapshots", "rows": [
            {"post_id": f"f:{pid}", "observed_at": "2025-01-01T00:00:00", "kind": "likes", "count": likes}
            for pid, _, likes in posts]},
    ]


def test_a_batch_with_rows_the_store_cannot_hold_lands_the_others_and_names_the_bad_ones(tmp_path):
    # Issue 13 finding 1: one cell (a count of 1e30, a lone surrogate) lost its whole batch of 500.
    path = tmp_path / "s.duckdb"
    posts = [(str(i), f"post {i}", i) for i in range(500)]
    posts[17] = ("17", "fine text", 10**30)         # beyond BIGINT
    posts[250] = ("250", "a \ud800 b", 3)           # not encodable as UTF-8
    posts[499] = ("499", None, 1)                  # NULL in a NOT NULL column
    outcome = apply_batch(path, "w", imported_batch(posts), 5)
    reader = StoreReader(path)
    landed = {row[0] for row in reader.rows("SELECT post_id FROM posts")}
    assert landed == {f"f:{i}" for i in range(500)} - {"f:17", "f:250", "f:499"}
    # A refused post takes its snapshots with it, and the other way round: no half posts.
    assert reader.scalar("SELECT count(*) FROM reaction_snapshots") == 497
    refused = {(r["table"], r["key"]["post_id"]) for r in outcome.refused}
    assert refused == {(t, f"f:{i}") for t in ("posts", "reaction_snapshots") for i in (17, 250, 499)}
    assert all(r["reason"] for r in outcome.refused)
    alert = reader.scalar("SELECT message FROM alerts WHERE alert_id = 'store-refused:w'")
    assert "f:17" in alert and "f:250" in alert and "f:499" in alert
    assert reader.scalar("SELECT row_count FROM applied_writes WHERE write_id = 'w'") == outcome.rows == 2 * 497
    again = apply_batch(path, "w", imported_batch(posts), 5)
    assert again.already_applied and again.rows == 0


def test_a_column_mixing_numbers_and_numeric_text_is_cast_row_by_row(tmp_path):
    path = tmp_path / "s.duckdb"
    outcome = apply_batch(path, "w", imported_batch([("1", "a", 5), ("2", "b", "7"), ("3", "c", "seven")]), 5)
    reader = StoreReader(path)
    assert reader.rows("SELECT post_id, count FROM reaction_snapshots ORDER BY post_id") == [("f:1", 5), ("f:2", 7)]
    assert [r["key"]["post_id"] for r in outcome.refused] == ["f:3", "f:3"]


def test_delete_removes_the_rows_matching_every_given_column_and_refreshes_latest_reactions(tmp_path):
    path = tmp_path / "s.duckdb"
    apply_write(path, "a", imported_batch([("1", "a", 5), ("2", "b", 6)]), 5)
    apply_write(path, "b", [{"op": "delete", "table": "reaction_snapshots", "rows": [
        {"post_id": "f:1", "observed_at": "2025-01-01T00:00:00"}]}], 5)
    reader = StoreReader(path)
    assert reader.rows("SELECT post_id FROM reaction_snapshots") == [("f:2",)]
    assert reader.rows("SELECT post_id, latest_reactions FROM posts ORDER BY post_id") == [
        ("f:1", None), ("f:2", '{"likes":6}')]
