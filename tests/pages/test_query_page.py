"""The Query page: read-only sandboxed SQL with a row cap and a time limit; each refusal says why."""

from pathlib import Path

import pytest

from crowdtune.store.sandbox import QueryRefused, run_query
from tests.pages.conftest import open_page, page_text

PAGE = "pages/query.py"


@pytest.mark.parametrize("sql, message", [
    ("INSERT INTO faces (face_id, kind) VALUES ('x', 'dataset')", "INSERT statements are not allowed"),
    ("UPDATE posts SET score = 0", "UPDATE statements are not allowed"),
    ("DELETE FROM posts", "DELETE statements are not allowed"),
    ("DROP TABLE posts", "DROP statements are not allowed"),
    ("CREATE TABLE x AS SELECT 1", "CREATE statements are not allowed"),
    ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH/DETACH is not allowed"),
    ("COPY posts TO '/tmp/posts.csv'", "COPY is not allowed"),
    ("SELECT * FROM read_csv('/etc/passwd')", "Refused: Permission Error"),
    ("SELECT * FROM read_text('/etc/passwd')", "Refused: Permission Error"),
    ("SELECT * FROM 'https://example.org/data.csv'", "Refused: Permission Error"),
    ("INSTALL httpfs", "INSTALL/LOAD of extensions is not allowed"),
    ("LOAD httpfs", "INSTALL/LOAD of extensions is not allowed"),
    ("SET enable_external_access = true", "SET statements are not allowed"),
    ("SELECT 1; DROP TABLE posts", "2 statements"),
])
def test_writes_files_network_and_extensions_are_refused_with_a_reason(populated_store, sql, message):
    with pytest.raises(QueryRefused, match=message.replace("(", r"\(")):
        run_query(populated_store.store_path, sql)


def test_a_query_that_runs_too_long_is_interrupted_with_a_clear_message(populated_store):
    with pytest.raises(QueryRefused, match="ran longer than 1 s and was stopped"):
        run_query(populated_store.store_path, "SELECT count(*) FROM range(100000000000) a, range(1000) b",
                  time_limit=1)


def test_reads_return_at_most_the_row_cap_and_say_when_they_were_cut(populated_store):
    result = run_query(populated_store.store_path, "SELECT * FROM posts", row_cap=10)
    assert len(result.frame) == 10 and result.truncated
    shown = run_query(populated_store.store_path, "SHOW TABLES")
    assert "posts" in shown.frame["name"].tolist() and not shown.truncated
    assert not run_query(populated_store.store_path, "DESCRIBE posts").frame.empty


def test_the_page_shows_results_with_a_chart_and_the_sql_lands_in_the_link(populated_store):
    sql = "SELECT face_id, count(*) AS posts FROM posts GROUP BY face_id ORDER BY face_id"
    at = open_page(PAGE, query={"sql": sql})
    assert at.text_area(key="query_sql").value == sql
    assert at.dataframe[0].value.to_dict("records") == [{"face_id": "sandbox", "posts": 1},
                                                        {"face_id": "tweets", "posts": 60}]
    assert len(at.get("plotly_chart")) == 1
    assert at.query_params["sql"] == sql


def test_the_page_explains_a_refusal_and_never_modifies_the_store(populated_store):
    at = open_page(PAGE, query={"sql": "DELETE FROM posts"})
    assert "DELETE statements are not allowed: the Query page is read-only." in page_text(at)
    at.text_area(key="query_sql").set_value("SELECT count(*) AS n FROM posts")
    next(b for b in at.button if b.label == "Run").click().run()
    assert at.dataframe[0].value["n"].tolist() == [61]


def test_on_an_empty_installation_the_page_says_there_is_no_store_yet(settings):
    assert "There is no store yet" in page_text(open_page(PAGE))


def test_a_store_that_is_not_duckdb_or_stays_held_is_named_with_a_fix(tmp_path):
    import subprocess
    import sys

    from crowdtune.errors import StoreUnavailable
    from crowdtune.store.connection import StoreBusy
    from crowdtune.store.writer import initialise

    garbage = tmp_path / "garbage.duckdb"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreUnavailable, match="not a readable DuckDB database") as err:
        run_query(garbage, "SELECT 1")
    assert "Move" in err.value.fix and garbage.read_bytes().startswith(b"not a database")  # nothing touched

    held = tmp_path / "held.duckdb"
    initialise(held)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, duckdb, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy, match="stayed busy for 1 s"):
            run_query(held, "SELECT 1", wait_seconds=1.0)
    finally:
        holder.kill()
        holder.wait()
    assert run_query(held, "SELECT count(*) AS n FROM faces").frame["n"][0] >= 0  # free again: it runs


# --- Statements: EXPLAIN of reads only, PIVOT, no paths in messages --------------------------------------

def test_explain_and_explain_analyze_run_only_for_reads(populated_store):
    plan = run_query(populated_store.store_path, "EXPLAIN ANALYZE SELECT count(*) FROM posts")
    assert "QUERY PROFILING" in plan.frame.iloc[0, 1] or "Total Time" in plan.frame.iloc[0, 1]
    for sql in ("EXPLAIN ANALYZE COPY (SELECT 1) TO '.tmp/run.sh'",
                "/* a */ EXPLAIN -- b\n ANALYZE (FORMAT json) COPY posts TO 'x.csv'",
                "EXPLAIN DELETE FROM posts", "EXPLAIN ANALYZE CREATE TABLE t AS PIVOT posts ON face_id USING count(*)"):
        with pytest.raises(QueryRefused, match="EXPLAIN is allowed of a read only") as err:
            run_query(populated_store.store_path, sql)
        assert err.value.fix.startswith("EXPLAIN a SELECT")


def test_pivot_is_a_read_and_runs_unless_it_feeds_a_write(populated_store):
    path = populated_store.store_path
    wide = run_query(path, "PIVOT posts ON face_id USING count(*) GROUP BY origin ORDER BY origin").frame
    assert wide.to_dict("records") == [{"origin": "generated", "sandbox": 1, "tweets": 0},
                                       {"origin": "imported", "sandbox": 0, "tweets": 60}]
    nested = run_query(path, "WITH p AS (PIVOT posts ON face_id USING count(*)) SELECT sum(tweets) AS n FROM p")
    assert nested.frame["n"].tolist() == [60]
    assert not run_query(path, "EXPLAIN ANALYZE PIVOT posts ON face_id USING count(*)").frame.empty
    for sql in ("CREATE TABLE t AS PIVOT posts ON face_id USING count(*)",
                "WITH p AS (PIVOT posts ON face_id USING count(*)) INSERT INTO faces SELECT * FROM p"):
        with pytest.raises(QueryRefused, match="statements are not allowed"):
            run_query(path, sql)


def test_a_catalogue_read_that_needs_a_folder_is_refused_without_showing_the_path(populated_store):
    with pytest.raises(QueryRefused, match="Refused: Permission Error") as err:
        run_query(populated_store.store_path, "SELECT * FROM duckdb_extensions()")
    assert str(Path.home()) not in str(err.value) and ".duckdb" not in str(err.value)
    assert run_query(populated_store.store_path, "SELECT count(*) AS n FROM duckdb_tables()").frame["n"][0] > 5


@pytest.mark.parametrize("tmp_present", [True, False], ids=["with .tmp", "without .tmp"])
def test_the_sandbox_has_no_folder_to_read_or_write_not_even_tmp(populated_store, tmp_path, monkeypatch, tmp_present):
    if tmp_present:  # DuckDB creates `.tmp` when an in-memory instance spills, and then allowed it
        (tmp_path / ".tmp").mkdir()
        (tmp_path / ".tmp" / "secret.txt").write_text("the secret in .tmp")
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    for sql in ("SELECT * FROM read_text('.tmp/secret.txt')", "SELECT * FROM glob('.tmp/*')",
                "SELECT * FROM read_csv('.tmp/secret.txt')"):
        with pytest.raises(QueryRefused, match="Refused: Permission Error"):
            run_query(populated_store.store_path, sql)
    assert sorted(tmp_path.rglob("*")) == before
