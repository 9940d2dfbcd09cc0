"""The pages' reads: series downsampled in DuckDB, one open per view, smoothing, a page of posts."""

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest

from crowdtune.store import views
from crowdtune.store.reads import StoreReader, StoreSession
from crowdtune.store.writer import apply_write

START = dt.datetime(2026, 1, 1)


@pytest.fixture
def metrics_store(tmp_path):
    """run-long: 5,000 steps of `loss` (a sawtooth, so each bucket has a known min and max);
    run-short: 40 points of `loss` every 10 steps; run-long also logs `acc` every 100 steps."""
    path = tmp_path / "s.duckdb"
    rows = [{"run_id": "run-long", "name": "loss", "step": s, "value": float(s % 10),
             "recorded_at": START + dt.timedelta(seconds=s)} for s in range(5000)]
    rows += [{"run_id": "run-short", "name": "loss", "step": s, "value": 1.0 / (s + 1),
              "recorded_at": START + dt.timedelta(hours=2, seconds=s)} for s in range(0, 400, 10)]
    rows += [{"run_id": "run-long", "name": "acc", "step": s, "value": s / 5000,
              "recorded_at": START + dt.timedelta(seconds=s)} for s in range(0, 5000, 100)]
    apply_write(path, "m", [{"op": "insert", "table": "metrics", "rows": rows}], 5)
    return StoreReader(path)


@pytest.fixture
def count_opens(monkeypatch):
    """How many times the store file is opened (duckdb.connect on a path)."""
    opened = []
    real = duckdb.connect

    def counting(database=":memory:", *args, **kwargs):
        opened.append(str(database))
        return real(database, *args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", counting)
    return opened


def test_a_long_series_is_cut_into_at_most_max_points_buckets_in_duckdb(metrics_store):
    series = views.metric_series(metrics_store, ["run-long", "run-short"], ["loss"], max_points=50)
    long = series[series["run_id"] == "run-long"]
    assert len(long) == 50 and long["points"].sum() == 5000
    assert (long["points"] == 100).all()  # equal buckets of the step range
    assert (long["low"] == 0).all() and (long["high"] == 9).all() and np.allclose(long["value"], 4.5)
    assert long["step"].is_monotonic_increasing and long["step"].iloc[0] == 50  # mean step of 0..99
    short = series[series["run_id"] == "run-short"]
    assert len(short) == 40 and (short["points"] == 1).all()  # short series: point for point
    assert short["step"].tolist() == list(range(0, 400, 10))
    assert list(series.columns) == views.SERIES_COLUMNS


def test_the_time_axis_buckets_by_recorded_at(metrics_store):
    series = views.metric_series(metrics_store, ["run-long"], ["loss"], x="time", max_points=25)
    assert len(series) == 25 and series["points"].sum() == 5000
    assert series["time"].is_monotonic_increasing


def test_buckets_within_the_catalogs_ranges_match_those_of_a_scan_of_their_own(metrics_store):
    with metrics_store.session() as session:
        catalog = views.metric_catalog(session)
        for x in ("step", "time"):
            for runs, names in ((["run-long", "run-short"], ["loss", "acc"]), (["run-long"], ["loss"])):
                own = views.metric_series(session, runs, names, x=x, max_points=30)
                ranged = views.metric_series(session, runs, names, x=x, max_points=30, catalog=catalog)
                pd.testing.assert_frame_equal(own, ranged)
    assert set(catalog.columns) >= {"first_step", "last_step", "first_recorded", "last_recorded", "points"}


def test_a_view_runs_its_queries_on_one_open(metrics_store, count_opens):
    with metrics_store.session() as session:
        assert isinstance(session, StoreSession)
        catalog = views.metric_catalog(session)
        views.metric_series(session, ["run-long"], ["loss", "acc"], catalog=catalog)
        with session.session() as nested:  # a view function opening "its" session reuses this one
            assert nested is session
        assert session.scalar("SELECT count(*) FROM metrics") == 5090
    assert len(count_opens) == 1
    views.metric_catalog(metrics_store)  # a plain reader still opens per call
    assert len(count_opens) == 2


def test_a_session_on_an_absent_store_reads_as_empty(tmp_path):
    with StoreReader(tmp_path / "none.duckdb").session() as session:
        assert views.metric_catalog(session).empty
        assert views.metric_series(session, ["r"], ["loss"]).empty
        assert views.count_posts(session, views.PostFilters()) == 0
        assert views.post_page(session, views.PostFilters()).empty
        assert views.posts_page(session, views.PostFilters()).total == 0


def test_smoothing_is_the_per_series_exponential_moving_average(metrics_store):
    series = views.metric_series(metrics_store, ["run-long", "run-short"], ["loss", "acc"], max_points=40)
    smoothed = views.smooth(series, 0.8)
    expected = series.groupby(["run_id", "name"], sort=False)["value"].transform(
        lambda s: s.ewm(alpha=0.2, adjust=True).mean())
    np.testing.assert_allclose(smoothed["smoothed"], expected)
    assert (views.smooth(series, 0)["smoothed"] == series["value"]).all()


@pytest.fixture
def posts_store(tmp_path):
    """30 posts (odd ones about cats, score = i), each with likes at 1 h and 6 h; f:0 has a
    snapshot without age_seconds (its age comes from created_at)."""
    path = tmp_path / "s.duckdb"
    posts = [{"post_id": f"f:{i}", "face_id": "f", "origin": "imported", "status": "imported",
              "text": f"post {i} {'cats' if i % 2 else 'dogs'}", "created_at": START + dt.timedelta(hours=i),
              "score": float(i)} for i in range(30)]
    snapshots = [{"post_id": f"f:{i}", "observed_at": START + dt.timedelta(hours=i + h), "kind": "likes",
                  "count": i * h, "age_seconds": h * 3600 if i else None} for i in range(30) for h in (1, 6)]
    snapshots.append({"post_id": "f:9", "observed_at": START + dt.timedelta(hours=11), "kind": "reposts",
                      "count": 2, "age_seconds": 7200})
    apply_write(path, "p", [{"op": "insert", "table": "posts", "rows": posts},
                            {"op": "insert", "table": "reaction_snapshots", "rows": snapshots}], 5)
    return StoreReader(path)


def test_a_page_of_posts_carries_the_latest_reactions_and_the_count_matches(posts_store):
    filters = views.PostFilters(text="cats")
    with posts_store.session() as session:
        assert views.count_posts(session, filters) == 15
        page = views.post_page(session, filters, "best", page=2, page_size=10)
        ages = views.reactions_over_age(session, "f:29")
    assert page["post_id"].tolist() == ["f:9", "f:7", "f:5", "f:3", "f:1"]
    assert page["likes"].tolist() == [54, 42, 30, 18, 6]
    assert page["reposts"].iloc[0] == 2 and page["reposts"].iloc[1:].isna().all()
    assert ages["age_hours"].tolist() == [1.0, 6.0] and ages["count"].tolist() == [29, 174]


def test_the_posts_view_reads_count_page_and_reactions_in_one_open(posts_store, count_opens):
    filters = views.PostFilters(text="cats")
    shown = views.posts_page(posts_store, filters, "best", page=2, page_size=10)
    assert len(count_opens) == 1
    assert shown.total == 15 and shown.page == 2
    pd.testing.assert_frame_equal(shown.posts, views.post_page(posts_store, filters, "best", 2, 10))
    for post_id in shown.posts["post_id"]:
        pd.testing.assert_frame_equal(shown.reactions(post_id), views.reactions_over_age(posts_store, post_id),
                                      check_dtype=False)
    assert shown.reactions("f:9")["kind"].tolist() == ["likes", "likes", "reposts"]


def test_the_posts_view_shows_the_last_page_for_a_page_beyond_it(posts_store):
    shown = views.posts_page(posts_store, views.PostFilters(), "newest", page=99, page_size=7)
    assert shown.total == 30 and shown.page == 5 and shown.posts["post_id"].tolist() == ["f:1", "f:0"]
    assert shown.reactions("f:0")["age_hours"].tolist() == [1.0, 6.0]  # from created_at
    nothing = views.posts_page(posts_store, views.PostFilters(text="horses"), page=3)
    assert nothing.total == 0 and nothing.page == 1 and nothing.posts.empty and nothing.reactions("f:1").empty
