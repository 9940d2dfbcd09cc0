"""The metrics rollup stays what aggregating the metric points gives, whatever the writes."""

import datetime as dt
import json

import duckdb
import numpy as np
import pandas as pd

from crowdtune.store import rollup
from crowdtune.store.reads import StoreReader
from crowdtune.store.schema import MIGRATIONS, SCHEMA_VERSION
from crowdtune.store.writer import apply_write, initialise

START = dt.datetime(2026, 1, 1)
KEY = ["run_id", "name", "axis", "width", "bucket"]


def points(run_id, name, steps, value=lambda s: float(s % 7), at=lambda s: START + dt.timedelta(seconds=3 * s)):
    return [{"run_id": run_id, "name": name, "step": s, "value": value(s), "recorded_at": at(s)} for s in steps]


def aggregated_from_points(reader: StoreReader) -> pd.DataFrame:
    """Every level's buckets computed in pandas from the metric points, as the rollup should hold them."""
    raw = reader.frame("SELECT run_id, name, step, value, epoch(recorded_at) AS t, recorded_at FROM metrics")
    frames = []
    for axis, x in (("step", raw["step"].astype(float)), ("time", raw["t"])):
        for width in rollup.LEVEL_WIDTHS:
            grouped = raw.assign(bucket=np.floor(x / width).astype("int64")).groupby(["run_id", "name", "bucket"])
            frame = grouped.agg(points=("step", "size"), valued=("value", "count"), value_sum=("value", "sum"),
                                value_min=("value", "min"), value_max=("value", "max"), step_sum=("step", "sum"),
                                time_sum=("t", "sum"), first_step=("step", "min"), last_step=("step", "max"),
                                first_recorded=("recorded_at", "min"), last_recorded=("recorded_at", "max"))
            frame.loc[frame["valued"] == 0, "value_sum"] = np.nan  # SQL: the sum of no values is NULL
            frames.append(frame.reset_index().assign(axis=axis, width=width))
    return tidy(pd.concat(frames))


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[KEY + [c for c in frame.columns if c not in KEY]]
    return frame.sort_values(KEY).reset_index(drop=True).astype({"step_sum": float, "points": "int64",
                                                                  "valued": "int64", "bucket": "int64",
                                                                  "width": "int64"})


def assert_rollup_is_exact(reader: StoreReader) -> None:
    held = tidy(reader.frame("SELECT s.run_id, s.name, r.* EXCLUDE (series) FROM metric_rollup r "
                             "JOIN metric_series s USING (series)"))
    expected = aggregated_from_points(reader)
    # Counts, min, max, first/last are exact; sums may differ in the last bits (added in another order).
    pd.testing.assert_frame_equal(held, expected, check_dtype=False, check_exact=False, rtol=1e-12)
    summaries = reader.frame("SELECT run_id, name, points, first_step, last_step, first_recorded, last_recorded "
                             "FROM metric_series ORDER BY run_id, name")
    of_points = reader.frame("SELECT run_id, name, count(*) AS points, min(step) AS first_step, "
                             "max(step) AS last_step, min(recorded_at) AS first_recorded, "
                             "max(recorded_at) AS last_recorded FROM metrics "
                             "GROUP BY ALL ORDER BY run_id, name")
    pd.testing.assert_frame_equal(summaries, of_points, check_dtype=False)
    assert reader.scalar("SELECT count(DISTINCT series) = count(*) FROM metric_series")


def test_the_rollup_equals_the_points_aggregated_after_every_kind_of_write(tmp_path):
    path = tmp_path / "s.duckdb"
    reader = StoreReader(path)
    batches = [
        # two runs, one in two batches whose buckets meet at step 1000
        ("a", [{"op": "insert", "table": "metrics", "rows": points("r1", "loss", range(0, 1000))
                + points("r2", "acc", range(0, 3000, 50))}]),
        ("b", [{"op": "insert", "table": "metrics", "rows": points("r1", "loss", range(1000, 2500))}]),
        # a resumed run re-writes steps: new values, recorded later (points move to other time buckets)
        ("c", [{"op": "upsert", "table": "metrics", "rows": points(
            "r1", "loss", range(2000, 2300), value=lambda s: -1.0 * s,
            at=lambda s: START + dt.timedelta(days=2, seconds=s))}]),
        # inserting existing keys changes nothing; a value becomes NULL; a key repeats within the batch
        ("d", [{"op": "insert", "table": "metrics", "rows": points("r1", "loss", range(0, 100), value=lambda s: 99.0)},
               {"op": "upsert", "table": "metrics", "rows": [
                   {"run_id": "r2", "name": "acc", "step": 100, "value": None},
                   {"run_id": "r2", "name": "acc", "step": 150, "value": 5.0},
                   {"run_id": "r2", "name": "acc", "step": 150, "value": 6.0}]}]),
        # an update that moves points to another run
        ("e", [{"op": "update", "table": "metrics", "where": {"run_id": "r2", "name": "acc", "step": 200},
                "set": {"run_id": "r3", "value": 0.5}}]),
        # a batch naming metrics without rows, beside another write
        ("f", [{"op": "upsert", "table": "metrics", "rows": []},
               {"op": "upsert", "table": "runs", "rows": [{"run_id": "r1", "kind": "offline", "status": "running"}]}]),
    ]
    for write_id, ops in batches:
        assert apply_write(path, write_id, ops, 5) > 0
        assert_rollup_is_exact(reader)
    assert reader.scalar("SELECT value FROM metrics WHERE run_id = 'r2' AND step = 150") == 6.0
    before = reader.frame("SELECT * FROM metric_rollup ORDER BY ALL")

    # A batch re-applied under its write id is skipped whole; the same rows under a new id change nothing.
    assert apply_write(path, "c", batches[2][1], 5) == 0
    apply_write(path, "c-again", batches[2][1], 5)
    pd.testing.assert_frame_equal(reader.frame("SELECT * FROM metric_rollup ORDER BY ALL"), before)
    catalog = reader.frame("SELECT run_id, points FROM metric_series ORDER BY run_id")
    assert catalog["points"].tolist() == [2500, 59, 1]


def test_once_many_rows_were_appended_the_rollup_is_rewritten_in_level_order(tmp_path):
    path = tmp_path / "s.duckdb"
    reader = StoreReader(path)
    apply_write(path, "small", [{"op": "insert", "table": "metrics", "rows": points("r1", "loss", range(500))}], 5)
    apply_write(path, "big", [{"op": "insert", "table": "metrics", "rows": points("r0", "loss", range(60_000))}], 5)
    assert reader.scalar("SELECT value::BIGINT FROM state WHERE key = 'metric_rollup.unsorted_rows'") == 0
    stored = reader.frame("SELECT axis, width, series, bucket FROM metric_rollup ORDER BY rowid")
    pd.testing.assert_frame_equal(stored, stored.sort_values(["axis", "width", "series", "bucket"], ignore_index=True))
    assert_rollup_is_exact(reader)
    apply_write(path, "more", [{"op": "insert", "table": "metrics", "rows": points("r1", "loss", range(500, 600))}], 5)
    assert 0 < reader.scalar("SELECT value::BIGINT FROM state WHERE key = 'metric_rollup.unsorted_rows'") < 100


def test_a_v3_store_is_migrated_with_its_rollup_and_latest_reactions_backfilled(tmp_path):
    path = tmp_path / "v3.duckdb"
    con = duckdb.connect(str(path))
    for number, sql in enumerate(MIGRATIONS[:3], start=1):
        con.execute(sql)
        con.execute("INSERT INTO schema_version (version) VALUES (?)", [number])
    rows = pd.DataFrame(points("old", "val_loss", range(0, 20_000, 3)) + points("old", "ppl", range(5)))  # noqa: F841  (DuckDB reads it: FROM rows)
    con.execute("INSERT INTO metrics SELECT run_id, name, step, value, recorded_at FROM rows")
    con.execute("INSERT INTO posts (post_id, face_id, origin, status, text) VALUES ('p', 'f', 'imported', "
                "'imported', 'hello'), ('q', 'f', 'imported', 'imported', 'no reactions')")
    con.execute("INSERT INTO reaction_snapshots (post_id, observed_at, kind, count) VALUES "
                "('p', '2026-01-01 01:00', 'likes', 2), ('p', '2026-01-01 06:00', 'likes', 7), "
                "('p', '2026-01-01 01:00', 'replies', 1)")
    con.close()

    initialise(path)
    reader = StoreReader(path)
    assert reader.scalar("SELECT max(version) FROM schema_version") == SCHEMA_VERSION
    assert_rollup_is_exact(reader)
    # This store's index only: a process's reads may have other stores attached beside it.
    assert reader.scalar("SELECT count(*) FROM duckdb_indexes() WHERE index_name = 'reaction_snapshots_post' "
                         "AND database_name = current_database()") == 1
    latest = reader.rows("SELECT post_id, latest_reactions FROM posts ORDER BY post_id")
    assert [(p, json.loads(c) if c else None) for p, c in latest] == [("p", {"likes": 7, "replies": 1}), ("q", None)]
    # and the writer keeps it from there
    apply_write(path, "more",
                [{"op": "insert", "table": "metrics", "rows": points("old", "val_loss", range(20_001, 20_100))}], 5)
    assert_rollup_is_exact(reader)
