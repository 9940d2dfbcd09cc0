"""The single writer: applies batches of row operations to DuckDB, each exactly once.

Only the `store` queue's worker calls `apply_write` (through jobs.store). A batch is one
transaction that also records its `write_id` in `applied_writes`, so a batch re-run after a
crash, a requeue or a producer's retry changes nothing the second time.

An operation is a plain dict (it travels through Redis as JSON):
    {"op": "upsert", "table": T, "rows": [{...}, ...]}   insert, or update the given columns on key conflict
    {"op": "insert", "table": T, "rows": [...]}          insert, ignore rows whose key exists
    {"op": "update", "table": T, "where": {...}, "set": {...}}
"""

from __future__ import annotations

import json
import logging
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


def _as_arrow(rows: list[dict], names: list[str], columns: dict[str, str]) -> pa.Table:
    data = {name: [_cell(row.get(name), columns[name]) for row in rows] for name in names}
    return pa.table(data)


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
        con.unregister("_batch")
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


def apply_ops(con: duckdb.DuckDBPyConnection, write_id: str, ops: list[dict]) -> int:
    """Apply one batch in one transaction; return the number of rows touched (0 if already applied)."""
    con.execute("BEGIN TRANSACTION")
    try:
        done = con.execute("SELECT 1 FROM applied_writes WHERE write_id = ?", [write_id]).fetchone()
        if done:
            con.execute("ROLLBACK")
            return 0
        touched, tables = 0, set()
        for op in ops:
            kind, table = op.get("op"), op.get("table")
            if kind in ("upsert", "insert"):
                touched += _apply_rows(con, kind, table, op.get("rows") or [])
            elif kind == "update":
                touched += _apply_update(con, table, op.get("where") or {}, op.get("set") or {})
            else:
                raise InvalidWrite(f"unknown operation {kind!r}; use upsert, insert or update")
            tables.add(table)
        if "metrics" in tables:
            rollup.refresh(con)
        if tables & {"posts", "reaction_snapshots"}:
            latest_reactions.refresh(con)
        con.execute("INSERT INTO applied_writes (write_id, row_count) VALUES (?, ?)", [write_id, touched])
        con.execute("COMMIT")
        return touched
    except Exception:
        con.execute("ROLLBACK")
        raise


def apply_write(path: Path, write_id: str, ops: list[dict], wait_seconds: float, on_wait=None) -> int:
    """Open the store (waiting while another process holds it), apply the batch, close."""
    with open_for_write(path, wait_seconds, on_wait=on_wait) as con:
        return apply_ops(con, write_id, ops)


def initialise(path: Path, wait_seconds: float = 30.0) -> None:
    """Create the store file and bring its schema up to date (run once at start-up)."""
    with open_for_write(path, wait_seconds):
        pass
