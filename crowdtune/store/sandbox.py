"""The Query page's ad-hoc SQL: read-only, no file or network access, caps on rows, bytes, memory and time.

Four fences, each enough on its own for the common cases and together for the rest:
1. Only one statement, and only a read (DuckDB's own parser gives the statement type: SELECT, which
   covers WITH/FROM/VALUES/SHOW/DESCRIBE/SUMMARIZE; EXPLAIN [ANALYZE] of a read; a PIVOT, which DuckDB
   splits into several statements). Anything else is refused before it runs, with a message naming it.
2. The query runs in a process of its own, whose data memory the OS caps (RLIMIT_DATA): DuckDB's
   `memory_limit` does not count every allocation (`repeat('x', 1000000000)` took 3.9 GB under a
   256 MB limit), the OS does. The process is killed at the time limit, so a query that does not stop
   when interrupted still ends, and a crash there never takes the app down.
3. There the store is attached READ_ONLY to an in-memory database with no temp directory (so no
   directory DuckDB may write to, not even `.tmp`), one thread and a memory limit; then external
   access (file readers, COPY, ATTACH, extension INSTALL/LOAD) is forbidden and the configuration
   locked, so a query cannot turn any of it back on.
4. The result streams back in Arrow batches until the row cap or the byte cap, whichever comes first;
   the page is told where it was cut.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from crowdtune.errors import CrowdtuneError, StoreUnavailable
from crowdtune.store.connection import StoreBusy, with_lock_retry

if TYPE_CHECKING:  # the query process never builds a frame: importing pandas there cost 0.36 s a query
    import pandas as pd

DEFAULT_ROW_CAP = 10_000  # rows shown: st.dataframe stays responsive
DEFAULT_TIME_LIMIT = 10.0  # seconds from the store being attached to the last batch back
DEFAULT_MEMORY_CAP = 1 << 30  # bytes the query's process may hold in all: DuckDB, Python, the result
DEFAULT_BYTE_CAP = 32 << 20  # bytes of result (Arrow) sent to the page; 10,000 rows of 3 kB
_DUCKDB_SHARE = 0.5  # of the memory cap for DuckDB's own buffers; the rest for the interpreter and batches
_CODE_BYTES = 128 << 20  # code pages, which RLIMIT_DATA does not count (72 MB measured with duckdb + pyarrow)
_BATCH_ROWS = 2048  # DuckDB's vector size: it produces this many rows at a time anyway
_KILL_GRACE = 0.2  # seconds past the time limit before the process is killed; it stops itself first
_START_SECONDS = 30.0  # for the process to start and reach the file, beyond wait_seconds: a backstop only
_ROOT = Path(__file__).resolve().parents[__name__.count(".")]  # the folder holding this checkout's crowdtune

_CTE_WORDS = {"WITH", "RECURSIVE", "AS", "MATERIALIZED", "NOT", "USING", "KEY"}
_READ_WORDS = {"SELECT", "FROM", "VALUES", "TABLE", "PIVOT", "UNPIVOT", "PIVOT_WIDER", "PIVOT_LONGER",
               "UNION", "INTERSECT", "EXCEPT", "SHOW", "DESCRIBE", "SUMMARIZE"}
_WRITE_TYPES = {
    "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "TRANSACTION", "COPY", "ATTACH", "DETACH",
    "LOAD", "SET", "VARIABLE_SET", "EXPORT", "VACUUM", "CREATE_FUNC", "MERGE_INTO", "UPDATE_EXTENSIONS",
    "COPY_DATABASE", "ANALYZE",
}
_READ_FIX = "Use SELECT (also WITH, PIVOT, SHOW, DESCRIBE, SUMMARIZE) or EXPLAIN [ANALYZE] of a SELECT."
_MEMORY_FIX = ("Aggregate or filter before sorting or joining (GROUP BY, WHERE, LIMIT), or select fewer and "
               "shorter columns.")


class QueryRefused(CrowdtuneError):
    """The query was not run (or was stopped): it would write, reach outside the store, or exceeded a cap."""

    peak_memory: int | None = None  # bytes its process held at most, when it got as far as having one


@dataclass
class QueryResult:
    frame: pd.DataFrame
    truncated: bool  # more rows existed than shown
    seconds: float  # from the store being attached to the frame being ready
    byte_capped: bool = False  # the cut came from the byte cap, not the row cap
    peak_memory: int = 0  # bytes the query's process held at most (its peak resident set)


# 1) The statement check -------------------------------------------------------------------------------

def _words(sql: str) -> list[tuple[int, str, str]]:
    """DuckDB's tokens of `sql` without comments, as (offset, kind, upper-cased text)."""
    tokens = duckdb.tokenize(sql)
    ends = [offset for offset, _ in tokens[1:]] + [len(sql)]
    return [(offset, kind.name, sql[offset:end].strip().upper())
            for (offset, kind), end in zip(tokens, ends, strict=True) if kind.name != "comment"]


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


# 2) The query process ---------------------------------------------------------------------------------

def _attach_read_only(path: Path, wait_seconds: float, memory_limit: int) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:", config={
        "autoload_known_extensions": False, "autoinstall_known_extensions": False,
        "allow_community_extensions": False,
        "temp_directory": "",  # no spilling: DuckDB would otherwise allow reads and writes in `.tmp`
        "memory_limit": f"{memory_limit}B", "threads": 1,
    })
    quoted = str(path).replace("'", "''")
    try:
        with_lock_retry(path, wait_seconds, lambda: con.execute(f"ATTACH '{quoted}' AS store (READ_ONLY)"))
    except Exception:
        con.close()
        raise
    con.execute("USE store")
    con.execute("SET enable_progress_bar = false")  # a long query would draw it (on stderr, see _serve)
    # Order matters: attach first, then forbid external access and lock the configuration.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _duckdb_refusal(exc: Exception, time_limit: float, memory_cap: int) -> QueryRefused:
    """The message for a DuckDB error raised while the query ran."""
    if isinstance(exc, duckdb.InterruptException):
        return QueryRefused(f"The query ran longer than {time_limit:g} s and was stopped.",
                            "Narrow it (WHERE, LIMIT, fewer joins) or aggregate before joining.")
    if isinstance(exc, (duckdb.OutOfMemoryException, MemoryError)):
        return QueryRefused(f"The query needed more than its memory cap of {memory_cap >> 20} MB and was stopped.",
                            _MEMORY_FIX)
    text = _without_paths(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if isinstance(exc, duckdb.PermissionException):
        return QueryRefused(f"Refused: {text}",
                            "The Query page reads the store's tables only: no files, URLs or extensions.")
    return QueryRefused(f"The query failed: {text}", "Fix the SQL; docs/SCHEMA.md lists every table.")


def _fitting(batch: pa.RecordBatch, room: int) -> pa.RecordBatch:
    """The longest head of `batch` whose size is at most `room` bytes (binary search on the row count)."""
    low, high = 0, batch.num_rows
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if batch.slice(0, middle).nbytes <= room else (low, middle - 1)
    return batch.slice(0, low)


def _stream(con: duckdb.DuckDBPyConnection, sql: str, row_cap: int, byte_cap: int
            ) -> tuple[pa.Schema, list[pa.RecordBatch], bool, bool]:
    """Run `sql` and keep its batches up to the caps. Out: (schema, batches, truncated, byte_capped)."""
    relation = con.sql(sql)
    if relation is None:  # a read without a result
        return pa.schema([]), [], False, False
    reader = relation.to_arrow_reader(_BATCH_ROWS)
    kept, rows, size = [], 0, 0
    try:
        for batch in reader:
            more_rows = rows + batch.num_rows > row_cap
            batch = batch.slice(0, row_cap - rows) if more_rows else batch
            if size + batch.nbytes > byte_cap:
                kept.append(_fitting(batch, byte_cap - size))
                return reader.schema, kept, True, True
            kept.append(batch)
            if more_rows:
                return reader.schema, kept, True, False
            rows, size = rows + batch.num_rows, size + batch.nbytes
        return reader.schema, kept, False, False
    finally:
        reader.close()


def _serve() -> None:
    """The query process. In (stdin): the request as JSON. Out (stdout): `attached` once the store is,
    then a JSON header line ({"error", "problem", "fix"} or {"truncated", ...}) and, for a result, its
    Arrow IPC stream."""
    request = json.loads(sys.stdin.read())
    cap = request["memory_cap"]
    resource.setrlimit(resource.RLIMIT_DATA, (cap - _CODE_BYTES, cap - _CODE_BYTES))
    # The answer goes to a copy of stdout; stdout itself to stderr: DuckDB's progress bar and any other
    # print would break the answer.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)

    def answer(header: dict, body: bytes = b"") -> None:
        out.write(json.dumps(header).encode() + b"\n" + body)
        out.flush()

    try:
        con = _attach_read_only(Path(request["path"]), request["wait_seconds"], int(cap * _DUCKDB_SHARE))
    except CrowdtuneError as exc:
        return answer({"error": type(exc).__name__, "problem": exc.problem, "fix": exc.fix})
    out.write(b"attached\n")
    out.flush()
    timer = threading.Timer(request["time_limit"], con.interrupt)
    timer.start()
    try:
        schema, batches, truncated, byte_capped = _stream(con, request["sql"], request["row_cap"],
                                                          request["byte_cap"])
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
    except (duckdb.Error, MemoryError, pa.ArrowException) as exc:
        refused = _duckdb_refusal(exc, request["time_limit"], cap)
        return answer({"error": "QueryRefused", "problem": refused.problem, "fix": refused.fix})
    finally:
        timer.cancel()
    answer({"truncated": truncated, "byte_capped": byte_capped}, sink.getvalue())


_ERRORS = {cls.__name__: cls for cls in (QueryRefused, StoreBusy, StoreUnavailable)}


class _PeakWatch(threading.Thread):
    """The most memory the query process held (VmHWM, its resident high-water mark), sampled while it runs.

    Not the OS's ru_maxrss: for a child that counts the parent's pages at fork, before exec (a
    test process of 1 GB made every query look 1 GB). VmHWM belongs to the process's own memory
    since exec, so samples count only once its command line is the query process's. It is a
    high-water mark: sampling every 20 ms misses at most what the last 20 ms before exit added.
    """

    def __init__(self, process: subprocess.Popen, code: str):
        super().__init__(daemon=True, name="query-peak")
        self.pid, self.code, self.peak = process.pid, code.encode(), 0
        self.stop = threading.Event()

    def run(self) -> None:
        proc = Path(f"/proc/{self.pid}")
        while not self.stop.is_set():
            try:
                if self.code in (proc / "cmdline").read_bytes():  # exec'd: its own memory from here on
                    for line in (proc / "status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)  # kB
            except (OSError, ValueError):  # gone (or no /proc here): what was seen is all there is
                return
            self.stop.wait(0.02)

    def finish(self) -> int:
        self.stop.set()
        self.join(1)
        return self.peak


def _ask(request: dict, time_limit: float, wait_seconds: float) -> tuple[dict, bytes, float, int]:
    """Run the query process on `request`. Out: (header, Arrow bytes, when it attached the store, its peak
    memory in bytes). Kills it at the time limit plus a grace, or if it never reaches the store. A
    QueryRefused raised here carries the process's `peak_memory` too."""
    # This module by its own name and folder: the process runs the same code, wherever the module moves.
    code = f"import sys; sys.path.insert(0, {str(_ROOT)!r}); from {__name__} import _serve; _serve()"
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty process cannot block on it
        process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=errors)
        heard, reply = threading.Event(), {}  # heard: it attached the store, or answered without

        def read() -> None:
            first = process.stdout.readline()
            if first == b"attached\n":
                reply["attached_at"] = time.monotonic()
                heard.set()
                first = b""
            reply["out"] = first + process.stdout.read()
            heard.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        watch = _PeakWatch(process, code)
        watch.start()
        process.stdin.write(json.dumps(request).encode())
        process.stdin.close()
        try:
            # 1) reaching the store: bounded by the lock wait; 2) the query: by the time limit
            heard.wait(wait_seconds + _START_SECONDS)
            if "attached_at" in reply:
                reader.join(reply["attached_at"] + time_limit + _KILL_GRACE - time.monotonic())
            timed_out = reader.is_alive()
        finally:
            peak = watch.finish()  # before the kill: a zombie has no memory to read
            process.kill()  # a no-op once it has exited
            process.wait()
        if timed_out:
            raise _refused(f"The query ran longer than {time_limit:g} s and was stopped.",
                           "Narrow it (WHERE, LIMIT, fewer joins) or aggregate before joining.", peak)
        head, _, body = reply["out"].partition(b"\n")
        if not head:
            errors.seek(0)
            last = _without_paths((errors.read().decode(errors="replace").strip().splitlines() or [""])[-1])
            if process.returncode < 0 or "MemoryError" in last:  # a signal or malloc failing: the cap
                raise _refused(f"The query needed more than its memory cap of {request['memory_cap'] >> 20} MB "
                               "and was stopped.", _MEMORY_FIX, peak)
            raise _refused(f"The query's process ended without an answer (exit code {process.returncode}): "
                           f"{last}", "Simplify the query; if this repeats, report it with the query.", peak)
        return json.loads(head), body, reply.get("attached_at", time.monotonic()), peak


def _refused(problem: str, fix: str, peak_memory: int) -> QueryRefused:
    refused = QueryRefused(problem, fix)
    refused.peak_memory = peak_memory
    return refused


def run_query(path: Path, sql: str, row_cap: int = DEFAULT_ROW_CAP, time_limit: float = DEFAULT_TIME_LIMIT,
              wait_seconds: float = 5.0, memory_cap: int = DEFAULT_MEMORY_CAP,
              byte_cap: int = DEFAULT_BYTE_CAP) -> QueryResult:
    """Run one read-only query against the store file, in a process of its own.

    In: the store path, the SQL, at most `row_cap` rows and `byte_cap` bytes back, at most `time_limit`
    seconds (the whole query, the result included), at most `memory_cap` bytes held by the process,
    `wait_seconds` for a held file. Out: QueryResult(frame, truncated, seconds, byte_capped, peak_memory).
    Raises QueryRefused with a problem and a fix for anything refused, stopped or over a cap, StoreBusy if
    the file stays held, StoreUnavailable if it cannot be opened.
    """
    check_statement(sql)
    path = Path(path)
    if not path.exists():
        raise QueryRefused(f"There is no store yet at {path}.", "Start Crowdtune (`make run`) and import a dataset.")
    request = {"path": str(path), "sql": sql, "row_cap": int(row_cap), "byte_cap": int(byte_cap),
               "time_limit": float(time_limit), "wait_seconds": float(wait_seconds), "memory_cap": int(memory_cap)}
    header, body, attached_at, peak = _ask(request, time_limit, wait_seconds)
    if "error" in header:
        error = _ERRORS.get(header["error"], QueryRefused)(header["problem"], header["fix"])
        error.peak_memory = peak
        raise error
    frame = pa.ipc.open_stream(body).read_all().to_pandas()  # at most byte_cap: tens of ms
    return QueryResult(frame, header["truncated"], time.monotonic() - attached_at, header["byte_capped"], peak)
