"""The metrics rollup: pre-aggregated buckets of every metric series, kept by the store writer.

A series (run_id, name) of a million points would cost the Metrics page a scan of every point
for each draw. So the writer keeps `metric_rollup`: for each series, each axis ("step", or
"time" = epoch seconds of recorded_at) and each level width w in LEVEL_WIDTHS, one row per
non-empty bucket floor(x / w) with the count, sums, min and max of its points. The Metrics page
then reads a few thousand of these rows instead of the points (see views.metric_series), and the
catalogue (how many points, first/last step and time per series) is the coarsest level.

Exactness: the rollup is never incremented. After every batch that touches `metrics`, the writer
marks the positions each touched row had before and has after the batch, deletes the buckets
covering them at every level, and recomputes those buckets: the finest level from the metric
rows, each coarser one from its four children. So a re-written step (an upsert moving a point
to another time, a new value) cannot count twice, and the rollup is always what aggregating
`metrics` would give (sums up to floating-point reassociation). It runs in the batch's
transaction: a batch applied twice is skipped whole by the writer's exactly-once check.
"""

from __future__ import annotations

import duckdb

# Bucket widths, steps or seconds: powers of two (so nested buckets split exactly), 4x apart.
# 16 .. 2^28 (268M steps, 8.5 years): the coarsest level holds one or two buckets a series.
LEVEL_FACTOR = 4
LEVEL_WIDTHS: tuple[int, ...] = tuple(16 * LEVEL_FACTOR ** k for k in range(13))
CATALOG_WIDTH = LEVEL_WIDTHS[-1]

TABLE_SQL = """
    CREATE TABLE metric_rollup (
        run_id VARCHAR NOT NULL,
        name VARCHAR NOT NULL,
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

# dirty(run_id, name, axis, lo, hi): per series and axis, the x range whose buckets to recompute.
_DELETE = """
    DELETE FROM metric_rollup r USING {dirty} d
    WHERE r.run_id = d.run_id AND r.name = d.name AND r.axis = d.axis
      AND r.bucket BETWEEN floor(d.lo / r.width) AND floor(d.hi / r.width)
"""
_FINEST = """
    INSERT INTO metric_rollup
    SELECT m.run_id, m.name, a.axis, {width}, floor({x} / {width})::BIGINT AS bucket,
           count(*), count(m.value), sum(m.value), min(m.value), max(m.value), sum(m.step), sum(epoch(m.recorded_at)),
           min(m.step), max(m.step), min(m.recorded_at), max(m.recorded_at)
    FROM metrics m CROSS JOIN {axes} {join}
    GROUP BY ALL
"""
_COARSER = """
    INSERT INTO metric_rollup
    SELECT r.run_id, r.name, r.axis, {width}, floor(r.bucket / {factor})::BIGINT AS bucket,
           sum(r.points), sum(r.valued), sum(r.value_sum), min(r.value_min), max(r.value_max), sum(r.step_sum),
           sum(r.time_sum), min(r.first_step), max(r.last_step), min(r.first_recorded), max(r.last_recorded)
    FROM metric_rollup r {join}
    WHERE r.width = {child}
    GROUP BY ALL
"""


def _statements(dirty: str | None) -> list[str]:
    """The SQL that (re)computes the rollup: of the `dirty` ranges, or of every series when None."""
    def join(alias: str, x: str, width: int) -> str:
        if dirty is None:
            return ""
        return (f"JOIN {dirty} d ON {alias}.run_id = d.run_id AND {alias}.name = d.name AND d.axis = "
                f"{'a' if alias == 'm' else 'r'}.axis AND floor({x} / {width}) BETWEEN floor(d.lo / {width}) "
                f"AND floor(d.hi / {width})")

    first = LEVEL_WIDTHS[0]
    out = [] if dirty is None else [_DELETE.format(dirty=dirty)]
    out.append(_FINEST.format(width=first, x=_X, axes=_AXES, join=join("m", _X, first)))
    for child, width in zip(LEVEL_WIDTHS, LEVEL_WIDTHS[1:]):
        # A parent's bucket is its children's bucket // factor: the children's x range lies inside it.
        join_sql = join("r", f"(r.bucket * {child}::DOUBLE)", width)
        out.append(_COARSER.format(width=width, factor=LEVEL_FACTOR, child=child, join=join_sql))
    return out


BACKFILL_SQL = ";\n".join(_statements(None)) + ";"


def mark(con: duckdb.DuckDBPyConnection, rows_sql: str, params=None) -> None:
    """Record the positions of the metric rows `rows_sql` selects (run_id, name, step, recorded_at)
    as needing their buckets recomputed at the end of the batch (see refresh)."""
    con.execute("CREATE TEMP TABLE IF NOT EXISTS _rollup_marks "
                "(run_id VARCHAR, name VARCHAR, step DOUBLE, time DOUBLE)")
    con.execute(f"INSERT INTO _rollup_marks SELECT run_id, name, step, epoch(recorded_at) FROM ({rows_sql})",
                params or [])


def refresh(con: duckdb.DuckDBPyConnection) -> None:
    """Recompute every bucket covering a position marked since the last refresh, at every level,
    then forget the marks. Call inside the batch's transaction, after its operations, if it marked."""
    con.execute("""
        CREATE TEMP TABLE _rollup_dirty AS
        SELECT run_id, name, 'step' AS axis, min(step) AS lo, max(step) AS hi FROM _rollup_marks GROUP BY ALL
        UNION ALL
        SELECT run_id, name, 'time', min(time), max(time) FROM _rollup_marks GROUP BY ALL
    """)
    for sql in _statements("_rollup_dirty"):
        con.execute(sql)
    con.execute("DROP TABLE _rollup_dirty")
    con.execute("DROP TABLE _rollup_marks")
