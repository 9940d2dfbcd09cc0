"""The Query page: read-only sandboxed SQL with caps on rows, bytes, memory and time; each refusal says why."""

import time
from pathlib import Path

import duckdb
import hypothesis
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from crowdtune.store.sandbox import (
    DEFAULT_BYTE_CAP,
    DEFAULT_MEMORY_CAP,
    DEFAULT_TIME_LIMIT,
    QueryRefused,
    run_query,
)
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
    hold = "import sys, duckdb, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(held)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreBusy, match="stayed busy for 1 s"):
            run_query(held, "SELECT 1", wait_seconds=1.0)
    finally:
        holder.kill()
        holder.wait()
    assert run_query(held, "SELECT count(*) AS n FROM faces").frame["n"][0] >= 0  # free again: it runs


# --- Statements: EXPLAIN of reads only, PIVOT, trailing comments, no paths in messages -----------------

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


_comment_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=30)
_tails = st.lists(st.one_of(
    _comment_text.map(lambda text: f"-- {text}\n"),
    _comment_text.filter(lambda text: "*/" not in text and "/*" not in text).map(lambda text: f"/* {text} */"),
    st.sampled_from([" ", "\n", "\t", "\r\n", ";"]),
), max_size=4).map("".join).map(lambda tail: tail.rstrip(";") if tail.count(";") > 1 else tail)


@hypothesis.settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=st.one_of(_tails, _comment_text.map(lambda text: f" -- {text}")))
def test_a_trailing_comment_or_whitespace_leaves_the_result_unchanged(populated_store, tail):
    result = run_query(populated_store.store_path, f"SELECT count(*) AS n FROM posts{tail}")
    assert result.frame["n"].tolist() == [61]


def test_the_issues_trailing_comment_query_runs(populated_store):
    assert run_query(populated_store.store_path, "SELECT count(*) FROM posts -- how many?").frame.iloc[0, 0] == 61


# --- Caps: memory, bytes, time -------------------------------------------------------------------------

HEAVY = [
    "SELECT repeat('x', 1000000000) AS s",  # one 1 GB string: DuckDB's memory_limit does not count it
    "SELECT range(100000000) AS l",  # one 800 MB list
    "SELECT string_agg(repeat('x', 1000), '') FROM range(1000000)",
    "SELECT count(*) FROM range(100000000) a JOIN range(100000000) b USING (range)",  # a 100M-row hash table
    "SELECT * FROM range(30000000) ORDER BY random() LIMIT 5 OFFSET 100",
    "SELECT repeat('x', 100000) AS t FROM range(10000)",  # 1 GB of rows, 100 kB each
]


@pytest.mark.parametrize("sql", HEAVY)
def test_no_query_holds_more_than_its_memory_cap(populated_store, sql):
    started = time.monotonic()
    try:
        result = run_query(populated_store.store_path, sql)
    except QueryRefused as refused:
        assert f"more than its memory cap of {DEFAULT_MEMORY_CAP >> 20} MB" in refused.problem
        assert "GROUP BY" in refused.fix
        peak = refused.peak_memory
    else:
        peak = result.peak_memory
    # The OS's count for this query's process alone (wait4), refused or not.
    assert 0 < peak <= DEFAULT_MEMORY_CAP
    assert time.monotonic() - started <= DEFAULT_TIME_LIMIT + 1


def test_a_result_larger_than_the_byte_cap_is_cut_and_says_so(populated_store):
    result = run_query(populated_store.store_path, "SELECT repeat('x', 100000) AS t FROM range(10000)")
    assert result.truncated and result.byte_capped
    assert 0 < len(result.frame) * 100_000 <= DEFAULT_BYTE_CAP and set(result.frame["t"].str.len()) == {100_000}
    small = run_query(populated_store.store_path, "SELECT * FROM posts", byte_cap=2_000)
    assert 0 < len(small.frame) < 61 and small.byte_capped


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM range(100000000000) a, range(1000) b",  # interrupted by DuckDB
    "SELECT length(repeat('x', 500000000))",  # folded while planning, 5 s, deaf to interrupts: killed
    "SELECT repeat('x', 10000) AS t FROM range(100000000) ORDER BY t DESC",  # a sort, then a long result
])
def test_every_query_ends_within_its_time_limit_plus_one_second(populated_store, sql):
    started = time.monotonic()
    with pytest.raises(QueryRefused, match="ran longer than 1 s and was stopped|more than its memory cap"):
        run_query(populated_store.store_path, sql, time_limit=1)
    assert time.monotonic() - started <= 1 + 1


def test_the_page_names_a_memory_refusal_and_a_byte_cut_without_failing(populated_store):
    text = page_text(open_page(PAGE, query={"sql": "SELECT repeat('x', 1000000000) AS s"}))
    assert "more than its memory cap of 1024 MB" in text and "GROUP BY" in text
    cut = page_text(open_page(PAGE, query={"sql": "SELECT repeat('x', 100000) AS t FROM range(10000)"}))
    assert "(cut at 32 MB; more rows exist" in cut


# --- Every statement kind DuckDB has, plain and under EXPLAIN [ANALYZE], with and without `.tmp` ---------

K = duckdb.StatementType
# One example per kind; files named in them are in `.tmp`, the one folder DuckDB would allow by default.
KIND_EXAMPLES = {
    K.SELECT: "SELECT count(*) AS n FROM posts",
    K.INSERT: "INSERT INTO faces (face_id, kind) VALUES ('x', 'dataset')",
    K.UPDATE: "UPDATE posts SET score = 0",
    K.CREATE: "CREATE TABLE t AS SELECT * FROM read_text('.tmp/secret.txt')",
    K.DELETE: "DELETE FROM posts",
    K.PREPARE: "PREPARE p AS SELECT * FROM read_text('.tmp/secret.txt')",
    K.EXECUTE: "EXECUTE p",
    K.ALTER: "ALTER TABLE posts ADD COLUMN c INTEGER",
    K.TRANSACTION: "BEGIN TRANSACTION",
    K.COPY: "COPY (SELECT 'echo hi') TO '.tmp/run.sh'",
    K.ANALYZE: "ANALYZE posts",  # DuckDB parses it as VACUUM
    K.VARIABLE_SET: "SET VARIABLE secret = (SELECT content FROM read_text('.tmp/secret.txt'))",  # parsed as SET
    K.CREATE_FUNC: "CREATE MACRO secret() AS TABLE SELECT * FROM read_text('.tmp/secret.txt')",  # as CREATE
    K.EXPLAIN: "EXPLAIN ANALYZE COPY (SELECT 'echo hi') TO '.tmp/run.sh'",
    K.DROP: "DROP TABLE posts",
    K.EXPORT: "EXPORT DATABASE '.tmp/export'",
    K.PRAGMA: "PRAGMA table_info('posts')",
    K.VACUUM: "VACUUM",
    K.CALL: "CALL pragma_version()",
    K.SET: "SET temp_directory = '.tmp'",
    K.LOAD: "LOAD '.tmp/x.duckdb_extension'",
    K.RELATION: None,  # built by the Python relation API, never parsed from text
    K.EXTENSION: None,  # a statement an extension's own parser adds; none is loaded here
    K.LOGICAL_PLAN: None,  # internal: a plan handed to the executor
    K.ATTACH: "ATTACH '.tmp/other.duckdb' AS other",
    K.DETACH: "DETACH store",
    K.MULTI: "PIVOT posts ON face_id USING count(*) GROUP BY origin",
    K.COPY_DATABASE: "COPY FROM DATABASE store TO memory",  # DuckDB parses it as PRAGMA
    K.MERGE_INTO: "MERGE INTO faces USING (SELECT 'x' AS face_id) s USING (face_id) WHEN MATCHED THEN DELETE",
    K.INVALID: "SELECT FROM WHERE",  # text that parses to nothing valid
}
READS = {K.SELECT, K.MULTI}
FILE_READS = ["SELECT * FROM read_text('.tmp/secret.txt')", "SELECT * FROM read_csv('.tmp/secret.txt')",
              "SELECT * FROM '.tmp/secret.txt'", "SELECT * FROM glob('.tmp/*')", "SELECT * FROM duckdb_extensions()",
              "SELECT * FROM read_blob('.tmp/secret.txt')", "FROM parquet_metadata('.tmp/secret.txt')"]
SECRET = "the secret in .tmp"


def test_the_examples_cover_every_statement_kind_duckdb_has():
    assert set(KIND_EXAMPLES) == set(K.__members__.values())  # a new DuckDB kind gets an example here
    for kind, sql in KIND_EXAMPLES.items():
        if sql is None or kind == K.INVALID:
            continue
        parsed = duckdb.extract_statements(sql)[0].type
        assert parsed == kind or kind in (K.ANALYZE, K.VARIABLE_SET, K.CREATE_FUNC, K.COPY_DATABASE), kind


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder`: path -> (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.mark.parametrize("tmp_present", [True, False], ids=["with .tmp", "without .tmp"])
def test_no_statement_of_any_kind_writes_or_reads_a_file(populated_store, tmp_path, monkeypatch, tmp_present):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    if tmp_present:
        (cwd / ".tmp").mkdir()
        (cwd / ".tmp" / "secret.txt").write_text(SECRET)
    monkeypatch.chdir(cwd)
    store_dir = populated_store.store_path.parent
    before, store_before = _tree(cwd), _tree(store_dir)
    statements = [sql for sql in KIND_EXAMPLES.values() if sql is not None] + FILE_READS
    ran, peaks = [], []
    for sql in statements:
        for prefix in ("", "EXPLAIN ", "EXPLAIN ANALYZE "):
            started = time.monotonic()
            try:
                result = run_query(populated_store.store_path, prefix + sql, time_limit=3)
            except QueryRefused as refused:
                assert refused.problem and refused.fix and SECRET not in str(refused)
                peaks.append(refused.peak_memory or 0)  # None: refused before any process started
            else:
                ran.append(prefix + sql)
                assert SECRET not in result.frame.to_string()
                peaks.append(result.peak_memory)
            assert time.monotonic() - started <= 3 + 1, prefix + sql
    assert _tree(cwd) == before and _tree(store_dir) == store_before  # nothing written, nothing touched
    assert 0 < max(peaks) <= DEFAULT_MEMORY_CAP
    reads = {prefix + KIND_EXAMPLES[kind] for kind in READS for prefix in ("", "EXPLAIN ", "EXPLAIN ANALYZE ")}
    assert reads <= set(ran)
    # Beyond the reads only plans ran (EXPLAIN without ANALYZE of a file read): planned, never read.
    assert {sql for sql in set(ran) - reads if not sql.startswith("EXPLAIN SELECT")} == set(), ran
