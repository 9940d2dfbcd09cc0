"""The pages' reads: series downsampled in DuckDB, one open per view, smoothing, a page of posts."""

import datetime as dt
import itertools
import math

import hypothesis
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as hyp

from crowdtune.store import connection, views
from crowdtune.store.reads import StoreReader, StoreSession
from crowdtune.store.writer import apply_batch, apply_write

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
    """How many times a read opens the store file (takes it for one read, see connection.open_for_read)."""
    opened = []
    real = connection._FileInProcess.shared

    def counting(self, *args, **kwargs):
        opened.append(str(self.path))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(connection._FileInProcess, "shared", counting)
    return opened


def buckets_of_points(reader: StoreReader, run_id: str, name: str, x: str, width: float) -> pd.DataFrame:
    """What a series' buckets [k*width, (k+1)*width) hold, aggregated in pandas from its points."""
    points = reader.frame("SELECT step, epoch(recorded_at) AS t, value FROM metrics WHERE run_id = ? AND name = ?",
                          [run_id, name])
    key = np.floor((points["t"] if x == "time" else points["step"]) / width)
    grouped = points.groupby(key)
    return pd.DataFrame({"step": np.floor(grouped["step"].mean() + 0.5).astype("int64"),
                         "value": grouped["value"].mean(), "low": grouped["value"].min(),
                         "high": grouped["value"].max(), "points": grouped.size()}).reset_index(drop=True)


@pytest.mark.parametrize("x, max_points", [("step", 50), ("step", 600), ("time", 25), ("time", 2000)])
def test_a_long_series_is_cut_into_equal_buckets_in_duckdb_that_hold_exactly_its_points(metrics_store, x,
                                                                                        max_points):
    series = views.metric_series(metrics_store, ["run-long", "run-short"], ["loss"], x=x, max_points=max_points)
    assert list(series.columns) == views.SERIES_COLUMNS
    long = series[series["run_id"] == "run-long"].reset_index(drop=True)
    level, width = views.bucket_widths(4999, max_points)  # steps 0..4999, one a second
    assert len(long) <= max_points and long["points"].sum() == 5000 and long["step"].is_monotonic_increasing
    if max_points < 5000:
        assert len(long) > max_points / 2  # rounding W up to a rollup level keeps most of the resolution
    expected = buckets_of_points(metrics_store, "run-long", "loss", x, width)
    pd.testing.assert_frame_equal(long[expected.columns], expected, check_dtype=False)
    if x == "time":
        assert long["time"].is_monotonic_increasing
    short = series[series["run_id"] == "run-short"]
    if max_points >= 40:
        assert len(short) == 40 and (short["points"] == 1).all()  # short series: point for point
        assert short["step"].tolist() == list(range(0, 400, 10))


def test_bucket_widths_read_the_coarsest_rollup_level_that_fits_in_one_bucket():
    assert views.bucket_widths(49_999, 600) == (64, 128)  # 83.5 steps a bucket -> 2 x 64: 391 buckets
    assert views.bucket_widths(4999, 50) == (64, 128)
    assert views.bucket_widths(1000, 50) == (16, 32)  # 20.4 -> 2 x 16
    assert views.bucket_widths(10_000_000, 600) == (16384, 32768)
    level, width = views.bucket_widths(20, 600)  # too narrow for any level: the points, unrounded
    assert level == 0 and width == pytest.approx(20 / 599)


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
    shown = views.posts_page(posts_store, filters, "best", page=2, page_size=10, post="f:7")
    assert len(count_opens) == 1
    assert shown.total == 15 and shown.page == 2
    pd.testing.assert_frame_equal(shown.posts, views.post_page(posts_store, filters, "best", 2, 10))
    assert shown.post == "f:7"
    pd.testing.assert_frame_equal(shown.reactions, views.reactions_over_age(posts_store, "f:7"))
    first = views.posts_page(posts_store, filters, "best", page=2, page_size=10, post="f:29")  # not on this page
    assert first.post == "f:9" and first.reactions["kind"].tolist() == ["likes", "likes", "reposts"]


def test_the_posts_view_shows_the_last_page_for_a_page_beyond_it(posts_store):
    shown = views.posts_page(posts_store, views.PostFilters(), "newest", page=99, page_size=7, post="f:0")
    assert shown.total == 30 and shown.page == 5 and shown.posts["post_id"].tolist() == ["f:1", "f:0"]
    assert shown.reactions["age_hours"].tolist() == [1.0, 6.0]  # from created_at
    nothing = views.posts_page(posts_store, views.PostFilters(text="horses"), page=3)
    assert nothing.total == 0 and nothing.page == 1 and nothing.posts.empty and nothing.reactions.empty
    assert nothing.post is None


# --- Version metrics: whatever a run stored, the comparison table reads it -----------------------
_metric_values = hyp.one_of(hyp.none(), hyp.floats(allow_nan=True, allow_infinity=True),
                            hyp.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 10**30, -10**400, 0]),
                            hyp.integers(), hyp.booleans(), hyp.text(max_size=4))
_metric_names = hyp.sampled_from(["val_loss", "agreement", "tokens_per_second", "eval_seconds", "copy_rate"])
version_metric_cells = hyp.one_of(hyp.none(), hyp.dictionaries(_metric_names, _metric_values, max_size=5))
_stores = itertools.count()


def expected_number(value) -> float:
    """What the comparison table holds for a stored number: NaN for None or NaN, ±inf beyond float's range."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


@hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cells=hyp.lists(version_metric_cells, min_size=1, max_size=4))
def test_version_metrics_read_any_stored_metrics_without_crashing_nan_and_null_as_nan(tmp_path, cells):
    path = tmp_path / f"versions-{next(_stores)}.duckdb"
    outcome = apply_batch(path, "versions", [{"op": "upsert", "table": "model_versions", "rows": [
        {"version_id": f"v{i}", "run_id": "r", "base_model": "b", "artifact_url": f"/a/v{i}", "step": i,
         "metrics": metrics, "created_at": START + dt.timedelta(minutes=i)} for i, metrics in enumerate(cells)]}], 5)
    assert outcome.refused == []  # the store holds whatever a run reports: NaN, inf, null, a 400-digit int
    versions = views.model_versions(StoreReader(path))

    table = views.version_metrics(versions).set_index("version_id")

    assert sorted(table.index) == sorted(versions["version_id"])
    assert all(dtype == np.float64 for dtype in table.dtypes)
    for i, metrics in enumerate(cells):
        numbers = {name: value for name, value in (metrics or {}).items()
                   if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))}
        for name in table.columns:
            shown = table.loc[f"v{i}", name]
            if name not in numbers or math.isnan(expected_number(numbers[name])):
                assert math.isnan(shown), (name, metrics)
            else:
                assert shown == pytest.approx(expected_number(numbers[name]), rel=1e-12), (name, metrics)
        assert set(numbers) <= set(table.columns)  # text and bools are left out, numbers and nulls kept


@pytest.mark.parametrize("cell", [None, math.nan, "not json", "[1, 2]", "3", "null", {"nested": {"a": 1}}])
def test_version_metrics_of_a_cell_that_holds_no_json_object_is_an_empty_row(cell):
    table = views.version_metrics(pd.DataFrame({"version_id": ["v1"], "metrics": [cell]}))
    assert table["version_id"].tolist() == ["v1"] and list(table.columns) == ["version_id"]


# --- Runs table: each run's settings, and only those that differ --------------------------------
def test_runs_settings_flattens_nested_configs_and_differences_keep_what_varies(tmp_path):
    path = tmp_path / "runs.duckdb"
    apply_batch(path, "runs", [{"op": "upsert", "table": "runs", "rows": [
        {"run_id": "offline-1", "kind": "offline", "face_id": "f", "status": "completed", "started_at": START,
         "config": {"learning_rate": 2e-4, "max_steps": 60, "lora_targets": ["q_proj", "v_proj"]}},
        {"run_id": "offline-2", "kind": "offline", "face_id": "f", "status": "running",
         "started_at": START + dt.timedelta(hours=1), "config": {"learning_rate": 1e-3, "max_steps": 60,
                                                                "lora_targets": ["q_proj", "v_proj"]}},
        {"run_id": "online-1", "kind": "online", "face_id": "f", "status": "running",
         "started_at": START + dt.timedelta(hours=2),
         "config": {"algorithm": "guided", "algorithm_settings": {"learning_rate": 1e-4}, "max_steps": 60}},
        {"run_id": "queued-1", "kind": "offline", "face_id": "f", "status": "queued"}]}], 5)
    table = views.runs_settings(StoreReader(path)).set_index("run_id")

    # newest first; a run not started yet counts from when it was written (now)
    assert list(table.index) == ["queued-1", "online-1", "offline-2", "offline-1"]
    assert table.loc["online-1", "algorithm_settings.learning_rate"] == "0.0001"
    assert table.loc["offline-1", "lora_targets"] == '["q_proj", "v_proj"]'
    assert table.loc["offline-1", "algorithm"] is None and table.loc["queued-1", "max_steps"] is None

    offline = views.runs_settings(StoreReader(path)).query("run_id in ['offline-1', 'offline-2']")
    differing = views.differing_settings(offline)
    assert [c for c in differing.columns if c not in views.RUN_IDENTITY] == ["learning_rate"]
    everything = views.differing_settings(views.runs_settings(StoreReader(path)))
    # a setting one run lacks differs; max_steps is 60 or missing (the queued run has no config)
    assert {"algorithm", "algorithm_settings.learning_rate", "learning_rate", "max_steps"} <= set(everything.columns)
    assert "lora_targets" in everything.columns and list(everything["run_id"]) == list(table.index)


REVIEW_ACTIONS = ["approve", "edit", "pick", "reject", "expire"]


@hypothesis.settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(decided=hyp.lists(hyp.tuples(hyp.sampled_from(["v1", "v2", None]), hyp.sampled_from(REVIEW_ACTIONS),
                                    hyp.sampled_from(["f", "g"])), min_size=1, max_size=12))
def test_the_share_rejected_per_version_counts_each_persons_decision_under_the_version_that_drafted_it(tmp_path,
                                                                                                      decided):
    path = tmp_path / f"reviews-{next(_stores)}.duckdb"
    posts = [{"post_id": f"p{i}", "face_id": face, "origin": "generated", "status": "published", "text": f"post {i}",
              "model_version_id": version} for i, (version, _, face) in enumerate(decided)]
    decisions = [{"decision_id": f"run:{i}", "face_id": face, "post_id": f"p{i}", "action": action,
                  "decided_by": "alice", "decided_at": START} for i, (_, action, face) in enumerate(decided)]
    versions = [{"version_id": v, "base_model": "b", "artifact_url": f"/a/{v}", "created_at": START + dt.timedelta(i)}
                for i, v in enumerate(["v1", "v2"])]
    apply_write(path, "reviews", [{"op": "upsert", "table": "posts", "rows": posts},
                                  {"op": "upsert", "table": "model_versions", "rows": versions},
                                  {"op": "insert", "table": "review_decisions", "rows": decisions}], 5)
    for face in (None, "f"):
        table = views.review_by_version(StoreReader(path), face)
        by_person = [(v or views.BASE_VERSION, a) for v, a, f in decided if a != "expire" and face in (None, f)]
        assert list(table.columns) == views.REVIEW_COLUMNS
        assert sorted(table["model_version_id"]) == sorted({v for v, _ in by_person})
        for row in table.itertuples():
            mine = [a for v, a in by_person if v == row.model_version_id]
            assert (row.reviewed, row.approved, row.edited, row.picked, row.rejected) == \
                (len(mine), *(mine.count(a) for a in ("approve", "edit", "pick", "reject")))
            assert row.rejected_share == pytest.approx(mine.count("reject") / len(mine))
        shown = [v for v in table["model_version_id"] if v != views.BASE_VERSION]
        assert shown == sorted(shown, reverse=True)  # the newest version first (v2 was created after v1)


def test_the_share_rejected_per_version_of_a_store_without_reviews_is_an_empty_table(tmp_path):
    table = views.review_by_version(StoreReader(tmp_path / "absent.duckdb"))
    assert table.empty and list(table.columns) == views.REVIEW_COLUMNS


def test_near_duplicates_share_a_run_of_eight_words_or_all_words_of_a_short_post_within_one_face(tmp_path):
    texts = {"a:1": "The quick brown fox jumps over the lazy dog today",
             "a:2": "the QUICK brown fox jumps over the lazy dog, today!",      # the same words
             "a:3": "A quick brown fox jumps over the lazy dog again and again",  # 8 words in common with a:1
             "a:4": "Thank you!", "a:5": "thank you",                              # short: all words alike
             "a:6": "Thank you all for coming tonight",                            # contains a:4, is no repeat
             "a:7": "The quick brown fox jumps over a lazy cat",                   # only 6 words in a row
             "b:1": "The quick brown fox jumps over the lazy dog today"}           # another face's
    posts = [{"post_id": pid, "face_id": pid[0], "origin": "imported", "status": "imported", "text": text,
              "created_at": START + dt.timedelta(hours=i)} for i, (pid, text) in enumerate(texts.items())]
    posts.append({"post_id": "a:8", "face_id": "a", "origin": "generated", "status": "candidate",
                  "text": texts["a:1"], "created_at": START})  # an unchosen candidate is not a post of the page
    apply_write(tmp_path / "s.duckdb", "p", [{"op": "insert", "table": "posts", "rows": posts}], 5)
    reader = StoreReader(tmp_path / "s.duckdb")

    def shown(**filters):
        return set(views.post_page(reader, views.PostFilters(**filters), "oldest", 1, 50)["post_id"])

    assert shown(repeats="only") == {"a:1", "a:2", "a:3", "a:4", "a:5"}
    assert shown(face="a", repeats="hide") == {"a:1", "a:4", "a:6", "a:7"}  # the first of each group stays
    assert shown(repeats="hide") == shown(face="a", repeats="hide") | {"b:1"}
    assert views.count_posts(reader, views.PostFilters(repeats="only")) == 5
