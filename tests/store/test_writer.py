"""The single writer applies batches exactly once, migrates the schema and refuses bad files."""

import duckdb
import pytest

from crowdtune.errors import StoreUnavailable
from crowdtune.store.reads import StoreReader, summary
from crowdtune.store.schema import SCHEMA_VERSION
from crowdtune.store.writer import InvalidWrite, apply_write, initialise


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
    ops = [{"op": "upsert", "table": "state", "rows": [{"key": "k", "value": {"a": 1}}, {"key": "k", "value": {"a": 2}}]}]
    apply_write(path, "w", ops, 5)
    assert StoreReader(path).scalar("SELECT value->>'a' FROM state") == "2"


def test_update_changes_matching_rows(tmp_path):
    path = tmp_path / "s.duckdb"
    apply_write(path, "a", [{"op": "insert", "table": "runs", "rows": [{"run_id": "r", "kind": "offline", "status": "running"}]}], 5)
    apply_write(path, "b", [{"op": "update", "table": "runs", "where": {"run_id": "r"}, "set": {"status": "stopped"}}], 5)
    assert StoreReader(path).scalar("SELECT status FROM runs") == "stopped"


@pytest.mark.parametrize("ops, message", [
    ([{"op": "insert", "table": "nope", "rows": [{"a": 1}]}], "unknown table"),
    ([{"op": "insert", "table": "runs", "rows": [{"run_id": "r", "kind": "k", "status": "s", "colour": 1}]}], "no column"),
    ([{"op": "insert", "table": "runs", "rows": [{"kind": "k", "status": "s"}]}], "key column"),
    ([{"op": "drop", "table": "runs"}], "unknown operation"),
])
def test_invalid_operations_are_refused_and_leave_nothing_behind(tmp_path, ops, message):
    path = tmp_path / "s.duckdb"
    good = {"op": "insert", "table": "alerts", "rows": [{"alert_id": "a", "level": "info", "source": "t", "message": "m"}]}
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
