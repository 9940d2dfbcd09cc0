"""The Query page's ad-hoc SQL: read-only, no file or network access, a row cap and a time limit.

Three fences, each enough on its own for the common cases and together for the rest:
1. Only one statement, and only a read (DuckDB's own parser gives the statement type: SELECT, which
   covers WITH/FROM/VALUES/SHOW/DESCRIBE/SUMMARIZE; EXPLAIN [ANALYZE] of a read; a PIVOT, which DuckDB
   splits into several statements). Anything else is refused before it runs, with a message naming it.
2. The store is attached READ_ONLY to an in-memory database with no temp directory (so no folder
   DuckDB may read or write, not even `.tmp`) whose configuration then forbids external access (no
   file readers, COPY, ATTACH, extension INSTALL/LOAD) and is locked, so a query cannot turn it back on. While it is attached, the app's other reads in this process wait
   (connection.holding_alone): DuckDB's file lock belongs to the process, so two handles must not
   overlap.
3. The query runs as `SELECT * FROM (query) LIMIT cap + 1` and a timer interrupts it at the limit.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from crowdtune.errors import CrowdtuneError
from crowdtune.store.connection import holding_alone, with_lock_retry

DEFAULT_ROW_CAP = 10_000
DEFAULT_TIME_LIMIT = 10.0

_CTE_WORDS = {"WITH", "RECURSIVE", "AS", "MATERIALIZED", "NOT", "USING", "KEY"}
_READ_WORDS = {"SELECT", "FROM", "VALUES", "TABLE", "PIVOT", "UNPIVOT", "PIVOT_WIDER", "PIVOT_LONGER",
               "UNION", "INTERSECT", "EXCEPT", "SHOW", "DESCRIBE", "SUMMARIZE"}
_WRITE_TYPES = {
    "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "TRANSACTION", "COPY", "ATTACH", "DETACH",
    "LOAD", "SET", "VARIABLE_SET", "EXPORT", "VACUUM", "CREATE_FUNC", "MERGE_INTO", "UPDATE_EXTENSIONS",
    "COPY_DATABASE", "ANALYZE",
}
_READ_FIX = "Use SELECT (also WITH, PIVOT, SHOW, DESCRIBE, SUMMARIZE) or EXPLAIN [ANALYZE] of a SELECT."


class QueryRefused(CrowdtuneError):
    """The query was not run (or was stopped): it would write, reach outside the store, or took too long."""


@dataclass
class QueryResult:
    frame: pd.DataFrame
    truncated: bool  # more rows existed than the cap
    seconds: float


def _words(sql: str) -> list[tuple[int, str, str]]:
    """DuckDB's tokens of `sql` without comments, as (offset, kind, upper-cased text)."""
    tokens = duckdb.tokenize(sql)
    ends = [offset for offset, _ in tokens[1:]] + [len(sql)]
    return [(offset, kind.name, sql[offset:end].strip().upper())
            for (offset, kind), end in zip(tokens, ends) if kind.name != "comment"]


def _main_word(sql: str) -> str:
    """The keyword that decides what a statement does: its first, after a WITH clause; `(` for `(SELECT ...)`."""
    words = _words(sql)
    if words and words[0][2] == "(":
        return "("  # only a SELECT may start with a parenthesis
    depth = 0
    for _, kind, text in words:
        if kind == "operator":
            depth += text.count("(") - text.count(")")
        elif depth == 0 and kind == "keyword" and text not in _CTE_WORDS:
            return text
    return ""


def _explained(sql: str) -> str:
    """The statement an EXPLAIN [ANALYZE] [(options)] explains, as text ("" if none)."""
    words = _words(sql)[1:]  # past EXPLAIN
    if words and words[0][1] == "keyword" and words[0][2] == "ANALYZE":
        words = words[1:]
    if words and words[0][2] == "(":  # options, e.g. (FORMAT json)
        depth = 0
        while words:
            depth += words[0][2].count("(") - words[0][2].count(")") if words[0][1] == "operator" else 0
            words = words[1:]
            if depth == 0:
                break
    return sql[words[0][0]:] if words else ""


def check_statement(sql: str) -> duckdb.StatementType:
    """Refuse anything but one read statement.

    In: the SQL text. Out: its type: SELECT, EXPLAIN (of a read) or MULTI (a read DuckDB splits into
    parts, e.g. PIVOT). Raises QueryRefused(problem, fix) for anything else.
    """
    if not sql.strip():
        raise QueryRefused("The query is empty.", "Write a SELECT, e.g. `SELECT * FROM posts LIMIT 10`.")
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"The query does not parse: {_without_paths(str(exc).splitlines()[0])}",
                           "Fix the SQL; docs/SCHEMA.md lists every table and column.") from None
    if len(statements) != 1:
        raise QueryRefused(f"The text holds {len(statements)} statements; one is run at a time.",
                           "Keep one SELECT (remove the others or the trailing `;` parts).")
    try:
        kind = statements[0].type
    except ValueError:  # a type the Python API has no member for (UPDATE EXTENSIONS in DuckDB 2.0)
        raise QueryRefused("This kind of statement is not allowed on the Query page: it is not a read.",
                           _READ_FIX) from None
    if kind == duckdb.StatementType.SELECT:
        return kind
    word = _main_word(sql) if kind == duckdb.StatementType.MULTI else ""
    if word in _READ_WORDS or word == "(":
        return kind
    if kind == duckdb.StatementType.MULTI and word != "EXPLAIN":  # EXPLAIN of a PIVOT is a MULTI too
        raise QueryRefused(f"{word or 'This'} statements are not allowed: the Query page is read-only.",
                           _READ_FIX)
    if kind == duckdb.StatementType.EXPLAIN or word == "EXPLAIN":
        inner = _explained(sql)
        try:
            # Why the inner statement: EXPLAIN ANALYZE runs it (a COPY in it would write a file).
            check_statement(inner)
        except QueryRefused as refused:
            raise QueryRefused(f"EXPLAIN is allowed of a read only. {refused.problem}",
                               "EXPLAIN a SELECT, e.g. `EXPLAIN ANALYZE SELECT count(*) FROM posts`.") from None
        return kind
    name = kind.name
    if name in ("ATTACH", "DETACH"):
        raise QueryRefused("ATTACH/DETACH is not allowed: the Query page reads the store only.",
                           "Query the store's own tables (see docs/SCHEMA.md).")
    if name in ("COPY", "EXPORT", "COPY_DATABASE"):
        raise QueryRefused(f"{name} is not allowed: the Query page never writes files.",
                           "Run a SELECT and use the download button under the result.")
    if name == "LOAD":
        raise QueryRefused("INSTALL/LOAD of extensions is not allowed on the Query page.",
                           "Use the built-in functions, or query a copy of the file with your own `duckdb`.")
    if name in _WRITE_TYPES:
        raise QueryRefused(f"{name} statements are not allowed: the Query page is read-only.",
                           "Change data through the app's pages or the `crowdtune` CLI; here, use SELECT.")
    raise QueryRefused(f"{name} statements are not allowed on the Query page.", _READ_FIX)


def _without_paths(text: str) -> str:
    """`text` with every quoted path left out: a message never shows a folder of this machine."""
    return re.sub(r"\s*([\"'])[^\"']*[/\\][^\"']*\1", "", text)


def _attach_read_only(path: Path, wait_seconds: float) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config={
        "autoload_known_extensions": False, "autoinstall_known_extensions": False,
        "allow_community_extensions": False,
        "temp_directory": "",  # no spilling: DuckDB would otherwise allow reads and writes in `.tmp`
    })
    quoted = str(path).replace("'", "''")
    try:
        with_lock_retry(path, wait_seconds, lambda: con.execute(f"ATTACH '{quoted}' AS store (READ_ONLY)"))
    except Exception:
        con.close()
        raise
    con.execute("USE store")
    # Order matters: attach first, then forbid external access and lock the configuration.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def run_query(path: Path, sql: str, row_cap: int = DEFAULT_ROW_CAP, time_limit: float = DEFAULT_TIME_LIMIT,
              wait_seconds: float = 5.0) -> QueryResult:
    """Run one read-only query against the store file.

    In: the store path, the SQL, at most `row_cap` rows back, at most `time_limit` seconds.
    Out: QueryResult(frame, truncated, seconds). Raises QueryRefused with a problem and a fix
    for anything refused or interrupted, StoreBusy if the file stays held, StoreUnavailable if it
    cannot be opened.
    """
    kind = check_statement(sql)
    path = Path(path)
    if not path.exists():
        raise QueryRefused(f"There is no store yet at {path}.", "Start Crowdtune (`make run`) and import a dataset.")
    body = sql.strip().rstrip(";")
    explain = kind == duckdb.StatementType.EXPLAIN or _main_word(body) == "EXPLAIN"  # EXPLAIN PIVOT is a MULTI
    wrapped = body if explain else f"SELECT * FROM ({body}) LIMIT {int(row_cap) + 1}"
    with holding_alone(path):  # its own handle on the file: no read of this process may hold it meanwhile
        con = _attach_read_only(path, wait_seconds)
        timed_out = threading.Event()

        def interrupt():
            timed_out.set()
            con.interrupt()

        timer = threading.Timer(time_limit, interrupt)
        started = time.monotonic()
        timer.start()
        try:
            frame = con.execute(wrapped).df()
        except duckdb.Error as exc:
            if timed_out.is_set() or isinstance(exc, duckdb.InterruptException):
                raise QueryRefused(f"The query ran longer than {time_limit:g} s and was stopped.",
                                   "Narrow it (WHERE, LIMIT, fewer joins) or aggregate before joining.") from None
            text = _without_paths(str(exc).splitlines()[0])
            if isinstance(exc, duckdb.PermissionException):
                raise QueryRefused(f"Refused: {text}",
                                   "The Query page reads the store's tables only: no files, URLs or extensions.") from None
            raise QueryRefused(f"The query failed: {text}", "Fix the SQL; docs/SCHEMA.md lists every table.") from None
        finally:
            timer.cancel()
            con.close()
    truncated = len(frame) > row_cap
    return QueryResult(frame.head(row_cap), truncated, time.monotonic() - started)
