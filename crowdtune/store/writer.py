"""The single writer: applies batches of row operations to DuckDB, each exactly once.

Only the `store` queue's worker calls `apply_write` (through jobs.store). A batch is one
transaction that also records its `write_id` in `applied_writes`, so a batch re-run after a
crash, a requeue or a producer's retry changes nothing the second time.

An operation is a plain dict (it travels through Redis as JSON):
    {"op": "upsert", "table": T, "rows": [{...}, ...]}   insert, or update the given columns on key conflict
    {"op": "insert", "table": T, "rows": [...]}          insert, ignore rows whose key exists
    {"op": "delete", "table": T, "rows": [{...}, ...]}   delete the rows matching all columns of any row
    {"op": "update", "table": T, "where": {...}, "set": {...}}

A batch never fails for good because of its data. When it fails on a value the store cannot hold
(a count beyond BIGINT, text that is not UTF-8, NULL in a NOT NULL column, a text in a number
column), it is split in halves, again and again, to find the rows at fault: the rest lands in one transaction,
and the rows left out are returned (WriteOutcome.refused) and raised as an alert naming their ids.
Rows of different tables that share their first key column's value (a post and its snapshots)
land or are refused together. A held file or an I/O error is no fault of the data: it is raised
and the batch is retried whole. An InvalidWrite (unknown table, column or operation: a bug in the
producer) fails the whole batch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from crowdtune.store import latest_reactions, rollup
from crowdtune.store.connection import open_for_write
from crowdtune.store.schema import TABLE_KEYS

log = logging.getLogger(__name__)


class InvalidWrite(ValueError):
    """An operation names an unknown table or column: a bug in the producer, never retried."""


ROW_OPS = ("upsert", "insert", "delete")

# Failures caused by the rows themselves, found by splitting the batch (module docstring). Not here:
# duckdb.IOException (disk, lock) and anything else, which fail the batch so that it is retried.
DATA_ERRORS = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException, duckdb.BinderException,
               pa.ArrowException, UnicodeError, OverflowError, TypeError, ValueError)
MAX_REPORTED_KEY_CHARS = 200  # a refused row's key is shown trimmed (its id may be the 20 MB cell at fault)
MAX_ALERT_IDS = 20


@dataclass
class WriteOutcome:
    """What one batch did: rows touched (0 if its write id was applied before) and rows refused.

    Each refused row is {"table", "key": {key column: value (trimmed)}, "reason"}."""

    rows: int
    refused: list[dict] = field(default_factory=list)
    already_applied: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", [table]
    ).fetchall()
    return {name: dtype for name, dtype in rows}


def _check(table: str, names, columns: dict[str, str]) -> None:
    if table not in TABLE_KEYS:
        raise InvalidWrite(f"unknown table {table!r}; writable tables: {sorted(TABLE_KEYS)}")
    unknown = [name for name in names if name not in columns]
    if unknown:
        raise InvalidWrite(f"table {table!r} has no column(s) {unknown}")


def _cell(value: Any, dtype: str) -> Any:
    if dtype == "JSON" and value is not None and not isinstance(value, str):
        return json.dumps(value)
    return value


def _arrow_column(values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        # Mixed types (5 and "5") or an int beyond int64: as text, so the CAST to the column's
        # type decides row by row, and a bad row can be found on its own (module docstring).
        return pa.array([None if value is None else str(value) for value in values], pa.string())


def _as_arrow(rows: list[dict], names: list[str], columns: dict[str, str]) -> pa.Table:
    return pa.table({name: _arrow_column([_cell(row.get(name), columns[name]) for row in rows]) for name in names})


def _unregister(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.unregister("_batch")
    except duckdb.TransactionException:  # the statement failed: the error raised is the one to see
        pass  # (the next register replaces the view)


def _dedupe_by_key(rows: list[dict], key: tuple[str, ...]) -> list[dict]:
    """DuckDB refuses to update one row twice in one statement: the last version of a key wins."""
    merged: dict[tuple, dict] = {}
    for row in rows:
        k = tuple(row.get(c) for c in key)
        merged[k] = {**merged.get(k, {}), **row}
    return list(merged.values())


def _apply_rows(con, op: str, table: str, rows: list[dict]) -> int:
    if not rows:
        return 0
    columns = _columns(con, table)
    key = TABLE_KEYS.get(table, ())
    names = sorted({name for row in rows for name in row})
    _check(table, names, columns)
    missing_key = [c for c in key if c not in names]
    if missing_key:
        raise InvalidWrite(f"rows for {table!r} must carry the key column(s) {missing_key}")
    rows = _dedupe_by_key(rows, key)
    batch = _as_arrow(rows, names, columns)
    con.register("_batch", batch)
    # The rollup's buckets of these rows, where they were and where they will be (see crowdtune.store.rollup).
    in_batch = ("SELECT m.* FROM metrics m JOIN _batch b ON m.run_id = b.run_id AND m.name = b.name "
                "AND m.step = CAST(b.step AS BIGINT)")
    try:
        if table == "metrics" and op == "upsert":
            rollup.mark(con, in_batch)
        col_list = ", ".join(f'"{n}"' for n in names)
        select = ", ".join(f'CAST("{n}" AS {columns[n]}) AS "{n}"' for n in names)
        conflict = ", ".join(f'"{c}"' for c in key)
        if op == "insert":
            action = "DO NOTHING"
        else:
            updates = [n for n in names if n not in key]
            if "updated_at" in columns and "updated_at" not in names:
                updates_sql = [f'"{n}" = EXCLUDED."{n}"' for n in updates] + ['"updated_at" = now()::TIMESTAMP']
            else:
                updates_sql = [f'"{n}" = EXCLUDED."{n}"' for n in updates]
            action = f"DO UPDATE SET {', '.join(updates_sql)}" if updates_sql else "DO NOTHING"
        con.execute(
            f'INSERT INTO "{table}" ({col_list}) SELECT {select} FROM _batch ON CONFLICT ({conflict}) {action}'
        )
        if table == "metrics":
            rollup.mark(con, in_batch)
        elif table in ("posts", "reaction_snapshots"):
            latest_reactions.mark(con, "SELECT DISTINCT post_id FROM _batch")
    finally:
        _unregister(con)
    return len(rows)


def _apply_delete(con, table: str, rows: list[dict]) -> int:
    if not rows:
        return 0
    columns = _columns(con, table)
    names = sorted({name for row in rows for name in row})
    _check(table, names, columns)
    if not names or table == "metrics":  # metrics' rollup follows upserts and updates only
        raise InvalidWrite(f"a delete from {table!r} needs rows with columns, and metrics are never deleted")
    con.register("_batch", _as_arrow(rows, names, columns))
    try:
        if table == "reaction_snapshots" and "post_id" in names:
            latest_reactions.mark(con, "SELECT DISTINCT post_id FROM _batch")
        match = " AND ".join(f'"{table}"."{n}" = CAST(b."{n}" AS {columns[n]})' for n in names)
        con.execute(f'DELETE FROM "{table}" WHERE EXISTS (SELECT 1 FROM _batch b WHERE {match})')
    finally:
        _unregister(con)
    return len(rows)


def _apply_update(con, table: str, where: dict, values: dict) -> int:
    columns = _columns(con, table)
    _check(table, list(where) + list(values), columns)
    if not where or not values:
        raise InvalidWrite("an update needs a non-empty 'where' and 'set'")
    sets = [f'"{n}" = CAST(? AS {columns[n]})' for n in values]
    if "updated_at" in columns and "updated_at" not in values:
        sets.append('"updated_at" = now()::TIMESTAMP')
    conds = [f'"{n}" = ?' for n in where]
    params = [_cell(v, columns[n]) for n, v in values.items()] + list(where.values())
    if table == "metrics":
        # An update may move rows to other series: recompute every series it touches, whole.
        _mark_series(con, where)
    elif table == "reaction_snapshots":
        _mark_posts(con, where)
    con.execute(f'UPDATE "{table}" SET {", ".join(sets)} WHERE {" AND ".join(conds)}', params)
    # The rows it changed now match `where` with the values it set.
    after = {**where, **{n: v for n, v in values.items() if n in where}}
    if table == "metrics":
        _mark_series(con, after)
    elif table == "reaction_snapshots":
        _mark_posts(con, after)
    elif table == "posts" and "post_id" in values:
        latest_reactions.mark(con, "SELECT ?", [values["post_id"]])
    return 1


def _mark_posts(con, where: dict) -> None:
    conds = " AND ".join(f'"{n}" = ?' for n in where)
    latest_reactions.mark(con, f"SELECT DISTINCT post_id FROM reaction_snapshots WHERE {conds}", list(where.values()))


def _mark_series(con, where: dict) -> None:
    conds = " AND ".join(f'"{n}" = ?' for n in where)
    rollup.mark(con, "SELECT * FROM metrics WHERE (run_id, name) IN "
                     f"(SELECT DISTINCT run_id, name FROM metrics WHERE {conds})", list(where.values()))


def _apply_all(con: duckdb.DuckDBPyConnection, ops: list[dict]) -> int:
    """Apply the operations inside the open transaction; return the number of rows touched."""
    touched, tables = 0, set()
    for op in ops:
        kind, table = op.get("op"), op.get("table")
        if kind in ("upsert", "insert"):
            touched += _apply_rows(con, kind, table, op.get("rows") or [])
        elif kind == "delete":
            touched += _apply_delete(con, table, op.get("rows") or [])
        elif kind == "update":
            touched += _apply_update(con, table, op.get("where") or {}, op.get("set") or {})
        else:
            raise InvalidWrite(f"unknown operation {kind!r}; use upsert, insert, delete or update")
        tables.add(table)
    if "metrics" in tables:
        rollup.refresh(con)
    if tables & {"posts", "reaction_snapshots"}:
        latest_reactions.refresh(con)
    return touched


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:  # a failed COMMIT has already ended the transaction
        pass


def _units(ops: list[dict]) -> list[list[tuple[int, dict | None]]]:
    """The batch as the smallest parts that land or fail together, in order: (op index, row) lists.

    A part is one row, or the rows of different tables that share their first key column's value
    (a post, its snapshots and their delete); an update is a part of its own (row None)."""
    firsts = [TABLE_KEYS.get(op.get("table"), (None,))[0] if op.get("op") in ROW_OPS else None for op in ops]
    shared = {column for column in firsts if column is not None and firsts.count(column) > 1}
    units: dict[tuple, list[tuple[int, dict | None]]] = {}
    for index, op in enumerate(ops):
        if op.get("op") not in ROW_OPS:
            units[("op", index)] = [(index, None)]
            continue
        column = firsts[index]
        for number, row in enumerate(op.get("rows") or []):
            key = ("key", column, repr(row.get(column))) if column in shared else ("row", index, number)
            units.setdefault(key, []).append((index, row))
    return list(units.values())


def _ops_of(ops: list[dict], units: list[list[tuple[int, dict | None]]]) -> list[dict]:
    """The operations of `ops` restricted to the rows in `units` (op order kept, rows of a key in order)."""
    chosen: dict[int, list] = {}
    for unit in units:
        for index, row in unit:
            chosen.setdefault(index, []).append(row)
    return [op if op.get("op") not in ROW_OPS else {**op, "rows": chosen[index]}
            for index, op in enumerate(ops) if index in chosen]


def _failure(con: duckdb.DuckDBPyConnection, ops: list[dict]) -> Exception | None:
    """Try `ops` in a transaction that is always rolled back; the data error they raise, or None."""
    con.execute("BEGIN TRANSACTION")
    try:
        _apply_all(con, ops)
    except DATA_ERRORS as error:
        return error
    finally:
        _rollback(con)
    return None


def _bad_units(con, ops: list[dict], units: list, error: Exception) -> list[tuple[list, str]]:
    """Bisect `units` (which fail together with `error`) down to the parts that fail on their own."""
    if len(units) == 1:
        return [(units[0], _reason(error))]
    bad = []
    for half in (units[: len(units) // 2], units[len(units) // 2:]):
        failure = _failure(con, _ops_of(ops, half))
        if failure is not None:
            bad += _bad_units(con, ops, half, failure)
    return bad


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _trimmed(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_REPORTED_KEY_CHARS:
        return value[:MAX_REPORTED_KEY_CHARS] + f"... ({len(value):,} characters)"
    return value


def _refused_rows(ops: list[dict], unit: list[tuple[int, dict | None]], reason: str) -> list[dict]:
    refused = []
    for index, row in unit:
        op = ops[index]
        table = op.get("table")
        key = (op.get("where") or {}) if row is None else {c: row.get(c) for c in TABLE_KEYS.get(table, ())}
        refused.append({"table": table, "key": {c: _trimmed(v) for c, v in key.items()}, "reason": reason})
    return refused


def _refusal_alert(write_id: str, refused: list[dict]) -> dict:
    shown = "; ".join(f"{r['table']} {', '.join(str(v) for v in r['key'].values())} ({r['reason']})"
                      for r in refused[:MAX_ALERT_IDS])
    more = f"; and {len(refused) - MAX_ALERT_IDS} more" if len(refused) > MAX_ALERT_IDS else ""
    message = (f"{len(refused)} row(s) of write {write_id} could not be stored and were left out, the rest "
               f"landed: {shown}{more}. Fix the source of these rows (or the producer) and write them again.")
    return {"alert_id": f"store-refused:{write_id}"[:200], "level": "error", "source": "store",
            "message": message[:4000]}


def _record(con, write_id: str, touched: int) -> None:
    con.execute("INSERT INTO applied_writes (write_id, row_count) VALUES (?, ?)", [write_id, touched])


def apply_ops(con: duckdb.DuckDBPyConnection, write_id: str, ops: list[dict]) -> WriteOutcome:
    """Apply one batch in one transaction, leaving out the rows the store cannot hold (module docstring).

    In: an open read-write connection, the batch's write id and operations. Out: a WriteOutcome
    (rows 0 and already_applied when the write id was applied before)."""
    con.execute("BEGIN TRANSACTION")
    try:
        if con.execute("SELECT 1 FROM applied_writes WHERE write_id = ?", [write_id]).fetchone():
            _rollback(con)
            return WriteOutcome(0, already_applied=True)
        touched = _apply_all(con, ops)
        _record(con, write_id, touched)
        con.execute("COMMIT")
        return WriteOutcome(touched)
    except InvalidWrite:  # the producer's bug, not the data's: the whole batch fails, never retried
        _rollback(con)
        raise
    except DATA_ERRORS as error:
        _rollback(con)
        first_error = error
    except Exception:
        _rollback(con)
        raise
    # 2) The data is at fault: find the rows, land the others with an alert naming the refused ones.
    units = _units(ops)
    bad = _bad_units(con, ops, units, first_error)
    bad_ids = {id(unit) for unit, _ in bad}
    good = [unit for unit in units if id(unit) not in bad_ids]
    refused = [row for unit, reason in bad for row in _refused_rows(ops, unit, reason)]
    con.execute("BEGIN TRANSACTION")
    try:
        touched = _apply_all(con, _ops_of(ops, good)) if good else 0
        if refused:
            _apply_rows(con, "upsert", "alerts", [_refusal_alert(write_id, refused)])
        _record(con, write_id, touched)
        con.execute("COMMIT")
    except Exception:
        _rollback(con)
        raise
    log.warning("store write %s: %d row(s) refused, %d touched; first: %s", write_id, len(refused), touched,
                refused[0] if refused else None)
    return WriteOutcome(touched, refused)


def apply_batch(path: Path, write_id: str, ops: list[dict], wait_seconds: float, on_wait=None) -> WriteOutcome:
    """Open the store (waiting while another process holds it), apply the batch, close. Out: its WriteOutcome."""
    with open_for_write(path, wait_seconds, on_wait=on_wait) as con:
        return apply_ops(con, write_id, ops)


def apply_write(path: Path, write_id: str, ops: list[dict], wait_seconds: float, on_wait=None) -> int:
    """apply_batch, returning only the number of rows touched (0 if the write id was applied before)."""
    return apply_batch(path, write_id, ops, wait_seconds, on_wait).rows


def initialise(path: Path, wait_seconds: float = 30.0) -> None:
    """Create the store file and bring its schema up to date (run once at start-up)."""
    with open_for_write(path, wait_seconds):
        pass
