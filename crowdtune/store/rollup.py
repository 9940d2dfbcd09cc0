"""The metrics rollup: a summary row and pre-aggregated buckets of every metric series, kept by the store writer.

A series (run_id, name) of a million points would cost the Metrics page a scan of every point
for each draw. So the writer keeps two derived tables:

- `metric_series`: one row per series, its number `series` and what the page's catalogue shows
  (how many points, first/last step and time);
- `metric_rollup`: for each series, each axis ("step", or "time" = epoch seconds of recorded_at)
  and each level width w in LEVEL_WIDTHS, one row per non-empty bucket floor(x / w) with the
  count, sums, min and max of its points.

The Metrics page then reads a few thousand rollup rows instead of the points (views.metric_series).
Series are keyed by their number rather than two strings, so that a read-only open, which
decompresses what it scans afresh each time, filters one integer column.

Exactness: nothing is incremented. After every batch that touches `metrics`, the writer marks the
positions each touched row had before and has after the batch, deletes the buckets covering them
at every level, and recomputes those buckets: the finest level from the metric rows and every
coarser one from the finest, then the touched series' summary rows from the coarsest
level. So a re-written step (an upsert moving a point to another time, a new value) cannot count
twice, and the rollup is always what aggregating `metrics` gives (sums up to floating-point
reassociation). It runs in the batch's transaction: a batch applied twice is skipped whole by the
writer's exactly-once check.
"""

from __future__ import annotations

import duckdb

# Bucket widths, steps or seconds: powers of two (so nested buckets split exactly), 4x apart.
# 16 .. 2^28 (268M steps, 8.5 years): the coarsest level holds one or two buckets a series.
LEVEL_FACTOR = 4
LEVEL_WIDTHS: tuple[int, ...] = tuple(16 * LEVEL_FACTOR ** k for k in range(13))

TABLES_SQL = """
    CREATE TABLE metric_series (
        series INTEGER NOT NULL,
        run_id VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
        points BIGINT NOT NULL,
        first_step BIGINT,
        last_step BIGINT,
        first_recorded TIMESTAMP,
        last_recorded TIMESTAMP
    );
    CREATE TABLE metric_rollup (
        series INTEGER NOT NULL,
        axis VARCHAR NOT NULL,
        width BIGINT NOT NULL,
        bucket BIGINT NOT NULL,
        points BIGINT NOT NULL,
        valued BIGINT NOT NULL,
        value_sum DOUBLE,
        value_min DOUBLE,
        value_max DOUBLE,
        step_sum DOUBLE NOT NULL,
        time_sum DOUBLE NOT NULL,
        first_step BIGINT NOT NULL,
        last_step BIGINT NOT NULL,
        first_recorded TIMESTAMP NOT NULL,
        last_recorded TIMESTAMP NOT NULL
    );
"""

# Where a metric row sits on each axis.
_AXES = "(VALUES ('step'), ('time')) AS a(axis)"
_X = "CASE a.axis WHEN 'step' THEN m.step::DOUBLE ELSE epoch(m.recorded_at) END"

# {dirty}(series, run_id, name, axis, lo, hi): per series and axis, the x range whose buckets to
# recompute; {series}: the series to number (new ones) and summarise.
_NUMBER = """
    INSERT INTO metric_series (series, run_id, name, points)
    SELECT (SELECT coalesce(max(series), 0) FROM metric_series) + row_number() OVER (ORDER BY run_id, name),
           run_id, name, 0
    FROM (SELECT DISTINCT run_id, name FROM {series}) s
    WHERE NOT EXISTS (SELECT 1 FROM metric_series m WHERE m.run_id = s.run_id AND m.name = s.name)
"""
_AGGREGATES = {  # of metric rows m, and of finer rollup rows r
    "points": ("count(*), count(m.value), sum(m.value), min(m.value), max(m.value), sum(m.step), "
               "sum(epoch(m.recorded_at)), min(m.step), max(m.step), min(m.recorded_at), max(m.recorded_at)"),
    "rollup": ("sum(r.points), sum(r.valued), sum(r.value_sum), min(r.value_min), max(r.value_max), sum(r.step_sum), "
               "sum(r.time_sum), min(r.first_step), max(r.last_step), min(r.first_recorded), max(r.last_recorded)"),
}
_SUMMARISE = f"""
    UPDATE metric_series SET points = t.points, first_step = t.first_step, last_step = t.last_step,
                             first_recorded = t.first_recorded, last_recorded = t.last_recorded
    FROM (SELECT series, sum(points) AS points, min(first_step) AS first_step, max(last_step) AS last_step,
                 min(first_recorded) AS first_recorded, max(last_recorded) AS last_recorded
          FROM metric_rollup WHERE axis = 'step' AND width = {LEVEL_WIDTHS[-1]} GROUP BY series) t
    WHERE metric_series.series = t.series {{only}};
    DELETE FROM metric_series WHERE NOT EXISTS
        (SELECT 1 FROM metric_rollup r WHERE r.series = metric_series.series AND r.axis = 'step'
         AND r.width = {LEVEL_WIDTHS[-1]}) {{only}}
"""


def _in_range(x: str, width: str) -> str:
    """x's bucket at `width` lies in the dirty range d at that width."""
    return f"floor({x} / {width}) BETWEEN floor(d.lo / {width}) AND floor(d.hi / {width})"


def _coarser(join: str = "") -> str:
    """Every coarser level from the finest, in one statement (each costs a few ms however small, so
    one a level would cost more): a bucket at width w is floor(finest bucket * 16 / w), widths being
    powers of two. `join` restricts the finest rows (to the dirty series) and their parents (to the
    dirty ranges)."""
    first = LEVEL_WIDTHS[0]
    parent = f"floor(r.bucket * {first} / l.width)::BIGINT"
    return (f"INSERT INTO metric_rollup SELECT r.series, r.axis, l.width, {parent} AS b, {_AGGREGATES['rollup']} "
            f"FROM (SELECT * FROM metric_rollup WHERE width = {first}) r "
            f"CROSS JOIN (SELECT unnest({list(LEVEL_WIDTHS[1:])}::BIGINT[]) AS width) l {join} GROUP BY ALL")


def _backfill() -> list[str]:
    """Number every series, aggregate all its points at every level, summarise."""
    first = LEVEL_WIDTHS[0]
    return ([_NUMBER.format(series="metrics"),
             f"INSERT INTO metric_rollup SELECT s.series, a.axis, {first}, floor({_X} / {first})::BIGINT AS b, "
             f"{_AGGREGATES['points']} FROM metrics m JOIN metric_series s ON m.run_id = s.run_id AND m.name = s.name "
             f"CROSS JOIN {_AXES} GROUP BY ALL", _coarser()]
            + _SUMMARISE.format(only="").split(";"))


def _incremental(dirty: str) -> list[str]:
    """Recompute the buckets of the `dirty` ranges at every level, then summarise the dirty series."""
    first = LEVEL_WIDTHS[0]
    return [
        _NUMBER.format(series=dirty),
        f"UPDATE {dirty} SET series = s.series FROM metric_series s "
        f"WHERE {dirty}.run_id = s.run_id AND {dirty}.name = s.name",
        f"DELETE FROM metric_rollup r USING {dirty} d WHERE r.series = d.series AND r.axis = d.axis "
        f"AND {_in_range('(r.bucket * r.width::DOUBLE)', 'r.width')}",
        f"INSERT INTO metric_rollup SELECT d.series, a.axis, {first}, floor({_X} / {first})::BIGINT AS b, "
        f"{_AGGREGATES['points']} FROM metrics m JOIN {dirty} d ON m.run_id = d.run_id AND m.name = d.name "
        f"CROSS JOIN {_AXES} WHERE d.axis = a.axis AND {_in_range(_X, str(first))} GROUP BY ALL",
        _coarser(f"JOIN {dirty} d ON r.series = d.series AND r.axis = d.axis "
                 f"WHERE {_in_range(f'(r.bucket * {first}::DOUBLE)', 'l.width')}"),
        *_SUMMARISE.format(only=f"AND metric_series.series IN (SELECT series FROM {dirty})").split(";"),
    ]


# Rewrite the rollup sorted (see _compact_when_scattered).
_COMPACT = ["CREATE TEMP TABLE _rollup_sorted AS SELECT * FROM metric_rollup ORDER BY axis, width, series, bucket",
            "DELETE FROM metric_rollup", "INSERT INTO metric_rollup SELECT * FROM _rollup_sorted",
            "DROP TABLE _rollup_sorted"]

BACKFILL_SQL = ";\n".join(_backfill() + _COMPACT) + ";"


_MARKS = "CREATE TEMP TABLE IF NOT EXISTS _rollup_marks (run_id VARCHAR, name VARCHAR, step DOUBLE, time DOUBLE)"


def mark(con: duckdb.DuckDBPyConnection, rows_sql: str, params=None) -> None:
    """Record the positions of the metric rows `rows_sql` selects (run_id, name, step, recorded_at)
    as needing their buckets recomputed at the end of the batch (see refresh)."""
    con.execute(_MARKS)
    con.execute(f"INSERT INTO _rollup_marks SELECT run_id, name, step, epoch(recorded_at) FROM ({rows_sql})",
                params or [])


def refresh(con: duckdb.DuckDBPyConnection) -> None:
    """Recompute every bucket covering a position marked since the last refresh (if any), at every
    level, and the summaries of the series marked, then forget the marks. Call inside the batch's
    transaction, after its operations."""
    con.execute(_MARKS)  # a batch may name metrics without marking any row (an empty list of rows)
    if not con.execute("SELECT count(*) FROM _rollup_marks").fetchone()[0]:
        con.execute("DROP TABLE _rollup_marks")
        return
    con.execute("""
        CREATE TEMP TABLE _rollup_dirty AS
        SELECT NULL::INTEGER AS series, run_id, name, 'step' AS axis, min(step) AS lo, max(step) AS hi
        FROM _rollup_marks GROUP BY ALL
        UNION ALL
        SELECT NULL, run_id, name, 'time', min(time), max(time) FROM _rollup_marks GROUP BY ALL
    """)
    added = 0
    for sql in _incremental("_rollup_dirty"):
        result = con.execute(sql).fetchall()
        added += result[0][0] if sql.startswith("INSERT INTO metric_rollup") else 0
    con.execute("DROP TABLE _rollup_dirty")
    con.execute("DROP TABLE _rollup_marks")
    _compact_when_scattered(con, added)


# Rows appended since the rollup was last sorted, in the `state` table.
_STATE_KEY = "metric_rollup.unsorted_rows"
COMPACT_MIN_ROWS = 16_384


def _compact_when_scattered(con: duckdb.DuckDBPyConnection, added: int) -> None:
    """Keep the rollup stored in (axis, width, series, bucket) order, so that reading one level of
    a few series touches a few blocks instead of all of them: DuckDB appends new rows at the end,
    so once the rows appended since the last sort are more than a quarter of the table (and at
    least COMPACT_MIN_ROWS), rewrite it sorted (~0.3 s for 250k rows, amortised over the batches
    that appended them)."""
    unsorted = added + int(con.execute("SELECT coalesce(any_value(value::BIGINT), 0) FROM state WHERE key = ?",
                                       [_STATE_KEY]).fetchone()[0])
    if unsorted >= COMPACT_MIN_ROWS and unsorted * 4 > con.execute("SELECT count(*) FROM metric_rollup").fetchone()[0]:
        for sql in _COMPACT:
            con.execute(sql)
        unsorted = 0
    con.execute("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, "
                "updated_at = now()::TIMESTAMP", [_STATE_KEY, str(unsorted)])
