"""Named read queries behind the dashboard's pages. Every function reads through a StoreReader
and returns small, display-ready DataFrames: big tables are cut down in DuckDB (LIMIT/OFFSET for
posts; for metric series, the buckets the store writer keeps in its rollup, or a bucketing of the
points), never loaded whole into pandas. A plain StoreReader opens the file per call;
a page passes a StoreSession (`with reader.session() as session:`) to run its view's queries on one
open (~15 ms each saved). An absent store reads as empty frames with the right columns, so pages
can draw empty states.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from crowdtune.store import rollup
from crowdtune.store.reads import StoreReader

# At most this many points per (run, metric) series reach the browser. A Metrics chart is ~600-700 px
# wide (two a row on the wide layout): about a bucket per pixel, each with its min..max band.
MAX_POINTS_PER_SERIES = 600

RUN_COLUMNS = ["run_id", "kind", "face_id", "status", "base_model", "parent_version_id", "job_id",
               "started_at", "ended_at", "error"]
POST_COLUMNS = ["post_id", "face_id", "origin", "status", "text", "url", "created_at", "published_at", "score",
                "model_version_id"]
SNAPSHOT_COLUMNS = ["kind", "age_hours", "count", "observed_at"]
SERIES_COLUMNS = ["run_id", "name", "step", "time", "value", "low", "high", "points"]
CATALOG_COLUMNS = ["run_id", "name", "points", "first_step", "last_step", "first_recorded", "last_recorded", "series"]
VERSION_COLUMNS = ["version_id", "run_id", "parent_version_id", "base_model", "artifact_url", "step", "metrics",
                   "note", "created_at", "active_for"]

_RANGE_INTERVALS = {"1h": "1 hour", "24h": "24 hours", "7d": "7 days", "30d": "30 days"}


def _frame(reader: StoreReader, sql: str, params: list, columns: list[str]) -> pd.DataFrame:
    df = reader.frame(sql, params)
    return pd.DataFrame(columns=columns) if df.empty and not len(df.columns) else df


def faces_frame(reader: StoreReader) -> pd.DataFrame:
    """Every face: id, kind, config (JSON text, never secrets), active version, timestamps."""
    return _frame(reader, "SELECT face_id, kind, config, active_version_id, created_at, updated_at "
                          "FROM faces ORDER BY face_id", [],
                  ["face_id", "kind", "config", "active_version_id", "created_at", "updated_at"])


def latest_runs(reader: StoreReader, limit: int = 20) -> pd.DataFrame:
    """The newest runs first, with their status and error."""
    return _frame(reader, f"SELECT {', '.join(RUN_COLUMNS)} FROM runs "
                          "ORDER BY coalesce(started_at, updated_at) DESC NULLS LAST, run_id DESC LIMIT ?",
                  [limit], RUN_COLUMNS)


RUN_IDENTITY = ["run_id", "kind", "face_id", "status", "base_model", "started_at"]


def _config_dict(config) -> dict | None:
    """A stored config (a dict, or its JSON text) as a dict; None when it is not a readable JSON object."""
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError:
            return None
    return config if isinstance(config, dict) else None


def _flat_settings(config, prefix: str = "") -> dict[str, str]:
    """A run's config as {dotted name: JSON text}: nested settings (algorithm_settings.learning_rate) flattened."""
    config = _config_dict(config)
    if config is None:
        return {}
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return flat


def runs_settings(reader: StoreReader, limit: int = 50) -> pd.DataFrame:
    """The newest runs first, one row each: RUN_IDENTITY, then one column per setting of their configs
    (nested ones flattened with dots, every value as the JSON a run file holds; None where a run's
    config has no such setting), settings in alphabetical order. The runs table of the Metrics page."""
    runs = _frame(reader, f"SELECT {', '.join(RUN_IDENTITY)}, config FROM runs "
                          "ORDER BY coalesce(started_at, updated_at) DESC NULLS LAST, run_id DESC LIMIT ?",
                  [limit], [*RUN_IDENTITY, "config"])
    settings = pd.DataFrame([_flat_settings(config) for config in runs["config"]], index=runs.index)
    settings = settings.reindex(columns=sorted(settings.columns)).astype(object)
    return pd.concat([runs[RUN_IDENTITY], settings.where(settings.notna(), None)], axis=1)


def differing_settings(table: pd.DataFrame) -> pd.DataFrame:
    """runs_settings' `table` with only the settings whose values differ between its rows (a setting one run
    lacks differs too); the RUN_IDENTITY columns stay. One row, or none, has no differences to show."""
    keep = [column for column in table.columns if column not in RUN_IDENTITY
            and table[column].map(lambda v: "\0" if v is None else v).nunique() > 1]
    return table[[c for c in RUN_IDENTITY if c in table.columns] + keep]


def runs_with_status(reader: StoreReader, statuses: tuple[str, ...]) -> pd.DataFrame:
    """Runs whose status is one of `statuses` (e.g. queued, running), newest first."""
    marks = ", ".join("?" for _ in statuses)
    return _frame(reader, f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE status IN ({marks}) "
                          "ORDER BY coalesce(started_at, updated_at) DESC NULLS LAST", list(statuses), RUN_COLUMNS)


def open_alerts(reader: StoreReader, limit: int = 50) -> pd.DataFrame:
    """Unresolved alerts nobody dismissed as they read now, newest first."""
    return _frame(reader, "SELECT level, source, message, created_at, alert_id FROM alerts a "
                          "WHERE resolved_at IS NULL AND NOT EXISTS (SELECT 1 FROM alert_dismissals d "
                          "WHERE d.alert_id = a.alert_id AND d.message = a.message) "
                          "ORDER BY created_at DESC LIMIT ?", [limit],
                  ["level", "source", "message", "created_at", "alert_id"])


def dismissed_alerts(reader: StoreReader, alert_ids: list[str]) -> set[tuple[str, str]]:
    """Which of `alert_ids` were dismissed, as (alert_id, message) pairs (e.g. failed jobs, `job:<id>`)."""
    if not alert_ids:
        return set()
    marks = ", ".join("?" for _ in alert_ids)
    return {(alert_id, message) for alert_id, message in reader.rows(
        f"SELECT alert_id, message FROM alert_dismissals WHERE alert_id IN ({marks})", list(alert_ids))}


def alert_dismissals(reader: StoreReader, limit: int = 20) -> pd.DataFrame:
    """The latest dismissals: which alert, its message then, who dismissed it and when, newest first."""
    return _frame(reader, "SELECT dismissed_at, dismissed_by, alert_id, message FROM alert_dismissals "
                          "ORDER BY dismissed_at DESC LIMIT ?", [limit],
                  ["dismissed_at", "dismissed_by", "alert_id", "message"])


def review_backlog(reader: StoreReader) -> tuple[int, object]:
    """(posts waiting for review, when the oldest was drafted or None): the Overview's count."""
    rows = reader.rows("SELECT count(*), min(inserted_at) FROM posts WHERE status = 'awaiting_review'")
    return (int(rows[0][0]), rows[0][1]) if rows else (0, None)


def metric_catalog(reader: StoreReader) -> pd.DataFrame:
    """One row per (run, metric): how many points, step range and when first and last recorded,
    and the series' number in the rollup (`series`).

    Read from the series' summary rows (kept by the store writer, see crowdtune.store.rollup), not
    from the points. Read in the same session as metric_series, it also gives the series' bounds.
    """
    return _frame(reader, f"SELECT {', '.join(CATALOG_COLUMNS)} FROM metric_series "
                          "ORDER BY last_recorded DESC, run_id, name", [], CATALOG_COLUMNS)


def bucket_widths(span: float, max_points: int) -> tuple[int, float]:
    """How to cut a series spanning `span` (steps or seconds) into at most `max_points` buckets
    [k*W, (k+1)*W): (w, W). W is span / (max_points - 1) rounded up to a whole multiple of w, the
    coarsest rollup level no wider than that, so each bucket is 1 to 4 rows of that level (at most
    ~4 x max_points rows a series, whatever its length) and there are more than max_points / 2
    buckets. w = 0: no level is that fine; the points themselves are read, W is not rounded."""
    target = span / max(max_points - 1, 1)
    fitting = [width for width in rollup.LEVEL_WIDTHS if width <= target]
    if not fitting:
        return 0, max(target, 1e-9)
    return fitting[-1], math.ceil(target / fitting[-1]) * fitting[-1]


_POINT_BUCKETS = ("round(avg(m.step))::BIGINT AS step, to_timestamp(avg(epoch(m.recorded_at)))::TIMESTAMP AS time, "
                  "avg(m.value) AS value, min(m.value) AS low, max(m.value) AS high, count(*) AS points")


def metric_series(reader: StoreReader, run_ids: list[str], names: list[str], x: str = "step",
                  time_range: str = "all", max_points: int = MAX_POINTS_PER_SERIES,
                  catalog: pd.DataFrame | None = None) -> pd.DataFrame:
    """Metric values of the given runs and metrics, at most `max_points` per (run, metric).

    A series longer than `max_points` is cut into equal buckets [k*W, (k+1)*W) of its x (step, or
    recorded_at's epoch seconds when x == "time"), W from bucket_widths, and each bucket becomes
    one point with the mean value, its min and max (`low`, `high`), the number of points and their
    mean step and time. Shorter series come back point for point. Out: SERIES_COLUMNS, ordered by
    run, metric and step.

    Over all time, buckets are merged from 1 to 4 rows of a level of the metrics rollup (at most
    ~4 x max_points rows a series, whatever its length) where a level is fine enough, else
    aggregated from the points in DuckDB; within a time range (last 24 h ...) from the points of the
    range, so a narrow range shows every point of it.
    `catalog`: metric_catalog read in the same session (`reader` a StoreSession), saving a query.
    """
    if not run_ids or not names:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    with reader.session() as session:
        if time_range in _RANGE_INTERVALS:
            return _series_in_range(session, run_ids, names, x, _RANGE_INTERVALS[time_range], max_points)
        catalog = metric_catalog(session) if catalog is None else catalog
        chosen = catalog[catalog["run_id"].isin(run_ids) & catalog["name"].isin(names)]
        if chosen.empty:
            return pd.DataFrame(columns=SERIES_COLUMNS)
        if x == "time":
            spans = (chosen["last_recorded"] - chosen["first_recorded"]).dt.total_seconds()
        else:
            spans = chosen["last_step"] - chosen["first_step"]
        plan = pd.DataFrame([bucket_widths(float(span), max_points) if n > max_points else (0, 0.0)
                             for span, n in zip(spans, chosen["points"], strict=True)], columns=["level", "width"])
        plan.index = chosen.index
        from_rollup = plan["level"] > 0
        parts = []
        if from_rollup.any():
            parts.append(_series_from_rollup(session, chosen[from_rollup], plan[from_rollup],
                                             "time" if x == "time" else "step"))
        if not from_rollup.all():
            x_expr = "epoch(m.recorded_at)" if x == "time" else "m.step"
            points = plan[~from_rollup]
            parts.append(_frame(session, f"""
                WITH plan AS (SELECT unnest($series::INTEGER[]) AS series, unnest($width::DOUBLE[]) AS width)
                SELECT m.run_id, m.name, {_POINT_BUCKETS}
                FROM metrics m JOIN metric_series s ON m.run_id = s.run_id AND m.name = s.name
                JOIN plan p USING (series)
                GROUP BY m.run_id, m.name, CASE WHEN p.width = 0 THEN m.step ELSE floor({x_expr} / p.width) END""",
                {"series": chosen.loc[points.index, "series"].tolist(), "width": points["width"].tolist()},
                SERIES_COLUMNS))
        parts = [part for part in parts if not part.empty]
        if len(parts) == 1 and from_rollup.all():
            return parts[0]  # already in order
        if not parts:
            return pd.DataFrame(columns=SERIES_COLUMNS)
        series = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return series.sort_values(["run_id", "name", "step"], ignore_index=True)[SERIES_COLUMNS]


def _series_from_rollup(reader: StoreReader, chosen: pd.DataFrame, plan: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The buckets of the `chosen` catalogue rows from their `plan` level: each bucket k of width W
    merges the level's rows whose bucket // (W / level) is k (exact: W is a whole multiple of the
    level's width, whose buckets nest in it). The few thousand rows come ordered by run, metric and
    bucket and are merged in numpy, which on a fresh read-only open costs less than DuckDB's hash
    aggregate (and than building DataFrames of them)."""
    chosen = chosen.assign(level=plan["level"], per=plan["width"] // plan["level"]).sort_values(["run_id", "name"])
    rows = reader.arrays("""
        WITH plan AS (SELECT unnest($series::INTEGER[]) AS series, unnest($level::BIGINT[]) AS level,
                             unnest($per::BIGINT[]) AS per, unnest(range(len($series::INTEGER[]))) AS rank)
        SELECT p.rank, r.bucket // p.per AS bucket, r.points, r.valued, r.value_sum, r.value_min, r.value_max,
               r.step_sum, r.time_sum
        FROM metric_rollup r JOIN plan p ON r.series = p.series AND r.width = p.level WHERE r.axis = $axis
        ORDER BY p.rank, r.bucket""",
        {"series": chosen["series"].tolist(), "level": chosen["level"].tolist(),
         "per": chosen["per"].astype(int).tolist(), "axis": axis})
    if not rows or not len(rows["rank"]):
        return pd.DataFrame(columns=SERIES_COLUMNS)
    ranks, buckets = rows["rank"], rows["bucket"]
    starts = np.flatnonzero(np.r_[True, (ranks[1:] != ranks[:-1]) | (buckets[1:] != buckets[:-1])])

    def summed(column: str) -> np.ndarray:
        return np.add.reduceat(np.nan_to_num(np.asarray(rows[column], dtype=float)), starts)

    points, valued = summed("points"), summed("valued")
    step, seconds = summed("step_sum") / points, summed("time_sum") / points
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(valued > 0, summed("value_sum") / valued, np.nan)
    of = ranks[starts]
    out = pd.DataFrame({
        "run_id": chosen["run_id"].to_numpy()[of], "name": chosen["name"].to_numpy()[of],
        # as DuckDB's round() and to_timestamp() do for the points: half away from zero, microseconds
        "step": (np.sign(step) * np.floor(np.abs(step) + 0.5)).astype("int64"),
        "time": pd.to_datetime(np.round(seconds * 1e6).astype("int64"), unit="us"),
        "value": value,
        "low": np.fmin.reduceat(np.asarray(rows["value_min"], dtype=float), starts),
        "high": np.fmax.reduceat(np.asarray(rows["value_max"], dtype=float), starts),
        "points": points.astype("int64")})
    if axis == "time":  # buckets follow time; a re-run step can make their mean steps go back
        out = out.iloc[np.lexsort((out["step"].to_numpy(), of))].reset_index(drop=True)
    return out


def _series_in_range(reader: StoreReader, run_ids: list[str], names: list[str], x: str, interval: str,
                     max_points: int) -> pd.DataFrame:
    """metric_series within the last `interval`, from the points recorded in it (no rollup level
    is cut at the range's start): buckets floor(x / W), W = the range's span / (max_points - 1)."""
    x_expr = "epoch(m.recorded_at)" if x == "time" else "m.step"
    where = ("WHERE m.run_id IN (SELECT unnest($runs::VARCHAR[])) AND m.name IN (SELECT unnest($names::VARCHAR[])) "
             f"AND m.recorded_at >= now()::TIMESTAMP - INTERVAL '{interval}'")
    sql = f"""
        WITH bounds AS (
            SELECT m.run_id, m.name, count(*) AS n, greatest((max({x_expr}) - min({x_expr})) / $gaps, 1e-9) AS width
            FROM metrics m {where} GROUP BY m.run_id, m.name)
        SELECT m.run_id, m.name, {_POINT_BUCKETS}
        FROM metrics m JOIN bounds b ON m.run_id = b.run_id AND m.name = b.name
        {where}
        GROUP BY m.run_id, m.name, CASE WHEN b.n <= $max_points THEN m.step ELSE floor({x_expr} / b.width) END
        ORDER BY m.run_id, m.name, step
    """
    params = {"runs": list(run_ids), "names": list(names), "max_points": max_points, "gaps": max(max_points - 1, 1)}
    return _frame(reader, sql, params, SERIES_COLUMNS)


def smooth(series: pd.DataFrame, smoothing: float) -> pd.DataFrame:
    """Add `smoothed`: an exponential moving average per (run, metric), TensorBoard-style.

    `smoothing` in [0, 1): 0 leaves values as they are, 0.9 averages over roughly the last ten points.
    """
    out = series.copy()
    if out.empty:
        out["smoothed"] = pd.Series(dtype=float)
        return out
    if smoothing <= 0:
        out["smoothed"] = out["value"]
        return out
    # groupby().ewm() runs in one vectorised pass (a per-group lambda costs ~0.5 ms a series).
    ewm = out.groupby(["run_id", "name"], sort=False)["value"].ewm(alpha=1 - smoothing, adjust=True).mean()
    out["smoothed"] = ewm.droplevel([0, 1])
    return out


@dataclass
class PostFilters:
    """What the Posts page filters on; empty strings mean 'any'."""

    face: str = ""
    version: str = ""
    origin: str = "any"
    text: str = ""
    repeats: str = "any"  # any | only (posts with a near-duplicate in their face) | hide (later near-duplicates)


NEAR_DUPLICATE_WORDS = 8
# Near-duplicates within a face: two posts share a run of NEAR_DUPLICATE_WORDS words (lower-cased, punctuation
# dropped), or a post shorter than that has the same words as the other. One row per post that has one, and
# whether one of them came before it (then it repeats that one; the first of a group repeats nothing).
_NEAR_DUPLICATES = f"""
WITH words AS (
    SELECT post_id, face_id, coalesce(published_at, created_at, TIMESTAMP '1970-01-01') AS moment,
           list_filter(string_split_regex(lower(text), '[^[:alnum:]'']+'), lambda word: word <> '') AS w
    FROM posts WHERE status <> 'candidate'
), grams AS (
    SELECT post_id, face_id, moment, unnest(CASE WHEN len(w) >= {NEAR_DUPLICATE_WORDS}
        THEN [array_to_string(w[i:i + {NEAR_DUPLICATE_WORDS - 1}], ' ')
              for i in range(1, len(w) - {NEAR_DUPLICATE_WORDS - 2})]
        ELSE ['=' || array_to_string(w, ' ')] END) AS gram
    FROM words WHERE len(w) > 0
)
SELECT a.post_id, bool_or(b.moment < a.moment OR (b.moment = a.moment AND b.post_id < a.post_id)) AS repeats_earlier
FROM grams a JOIN grams b ON a.gram = b.gram AND a.face_id = b.face_id AND a.post_id <> b.post_id
GROUP BY a.post_id
"""


_POST_ORDER = {
    "newest": "coalesce(p.published_at, p.created_at) DESC NULLS LAST, p.post_id",
    "oldest": "coalesce(p.published_at, p.created_at) ASC NULLS LAST, p.post_id",
    "best": "p.score DESC NULLS LAST, p.post_id",
    "worst": "p.score ASC NULLS LAST, p.post_id",
}


def _post_where(filters: PostFilters) -> tuple[str, list]:
    # A best-of-N candidate that was not chosen is shown with its slot's post (post_candidates), not as a post.
    clauses, params = ["p.status <> 'candidate'"], []
    if filters.face:
        clauses.append("p.face_id = ?")
        params.append(filters.face)
    if filters.version:
        clauses.append("p.model_version_id = ?")
        params.append(filters.version)
    if filters.origin in ("imported", "generated"):
        clauses.append("p.origin = ?")
        params.append(filters.origin)
    if filters.text:
        clauses.append("p.text ILIKE ?")
        params.append(f"%{filters.text}%")
    if filters.repeats == "only":
        clauses.append(f"p.post_id IN (SELECT post_id FROM ({_NEAR_DUPLICATES}))")
    elif filters.repeats == "hide":
        clauses.append(f"p.post_id NOT IN (SELECT post_id FROM ({_NEAR_DUPLICATES}) WHERE repeats_earlier)")
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def count_posts(reader: StoreReader, filters: PostFilters) -> int:
    """How many posts match the filters."""
    where, params = _post_where(filters)
    return int(reader.scalar(f"SELECT count(*) FROM posts p {where}", params, default=0))


def _page_rows(reader: StoreReader, filters: PostFilters, sort: str, page: int, page_size: int) -> pd.DataFrame:
    """One page of matching posts (POST_COLUMNS, then their latest count per reaction kind as
    columns) and `matching`: how many match in all (a window count, so the page and the count share
    one pass over posts)."""
    where, params = _post_where(filters)
    order = _POST_ORDER.get(sort, _POST_ORDER["newest"])
    offset = (max(page, 1) - 1) * page_size
    rows = _frame(reader, f"SELECT {', '.join('p.' + c for c in POST_COLUMNS)}, p.latest_reactions, "
                          f"count(*) OVER () AS matching FROM posts p {where} ORDER BY {order} LIMIT ? OFFSET ?",
                  params + [page_size, offset], [*POST_COLUMNS, "latest_reactions", "matching"])
    return _with_latest_reactions(rows)


def _with_latest_reactions(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows with `latest_reactions` (JSON kept by the store writer, see
    crowdtune.store.latest_reactions) spread into a column per kind (`likes`, `reposts`, ...)."""
    counts = pd.DataFrame([json.loads(c) if isinstance(c, str) else {} for c in rows.pop("latest_reactions")],
                          index=rows.index)
    return rows.join(counts[sorted(counts.columns)]) if len(counts.columns) else rows


def post_page(reader: StoreReader, filters: PostFilters, sort: str = "newest", page: int = 1,
              page_size: int = 25) -> pd.DataFrame:
    """One page of posts (LIMIT/OFFSET in SQL); count_posts gives how many match in all.

    Each post carries its latest count per reaction kind as extra columns (`likes`, `reposts`, ...).
    """
    return _page_rows(reader, filters, sort, page, page_size).drop(columns="matching")


@dataclass
class PostsPage:
    """What the Posts page shows: `total` matching posts, page number `page` (clamped to the last
    page) of them with their latest reactions (post_page's columns), and `reactions`, the reaction
    snapshots of one of them, `post` (reactions_over_age's columns; None and empty on an empty page), and
    the candidates `post` was chosen among (post_candidates' columns)."""

    total: int
    page: int
    posts: pd.DataFrame
    post: str | None
    reactions: pd.DataFrame
    candidates: pd.DataFrame  # post_candidates of `post` (empty when it was not chosen among candidates)


def posts_page(reader: StoreReader, filters: PostFilters, sort: str = "newest", page: int = 1,
               page_size: int = 25, post: str | None = None) -> PostsPage:
    """count_posts + post_page + reactions_over_age of `post` if it is on the page, else of the
    page's first post, on one open.

    A page beyond the last one (an old link) shows the last page.
    """
    with reader.session() as session:
        rows = _page_rows(session, filters, sort, page, page_size)
        total = int(rows["matching"].iloc[0]) if not rows.empty else count_posts(session, filters)
        last = max(1, -(-total // page_size))
        if rows.empty and page > last:
            page = last
            rows = _page_rows(session, filters, sort, page, page_size)
        posts = rows.drop(columns="matching")
        if posts.empty:
            return PostsPage(total, page, posts, None, pd.DataFrame(columns=SNAPSHOT_COLUMNS),
                             pd.DataFrame(columns=CANDIDATE_COLUMNS))
        post = post if post in set(posts["post_id"]) else posts["post_id"].iloc[0]
        created_at = posts.loc[posts["post_id"] == post, "created_at"].iloc[0]
        return PostsPage(total, page, posts, post, reactions_over_age(session, post, created_at),
                         post_candidates(session, post))


CANDIDATE_COLUMNS = ["post_id", "chosen", "text", "predicted_reward", "predicted_reward_std", "selection_probability",
                     "score", "reward_model_id"]


def post_candidates(reader: StoreReader, post_id: str) -> pd.DataFrame:
    """The candidates a published post was chosen among (best-of-N, crowdtune.online.candidates): the post
    itself (`chosen` true, with its real score once mature) and the others (`chosen` false, never published,
    so no score), each with the reward model's prediction and its selection probability; best prediction
    first. Empty for a post that was not chosen among several (an imported post, a single sample)."""
    return _frame(reader, """
        SELECT post_id, post_id = ? AS chosen, text, predicted_reward, predicted_reward_std, selection_probability,
               score, reward_model_id
        FROM posts
        WHERE (post_id = ? OR candidate_of = ?)
          AND EXISTS (SELECT 1 FROM posts c WHERE c.candidate_of = ? AND c.status = 'candidate')
        ORDER BY predicted_reward DESC NULLS LAST, selection_probability DESC, post_id""",
                  [post_id] * 4, CANDIDATE_COLUMNS)


def latest_posts(reader: StoreReader, limit: int = 10) -> pd.DataFrame:
    """The newest posts with their score and latest reactions."""
    return post_page(reader, PostFilters(), "newest", 1, limit)


_UNKNOWN = object()


def reactions_over_age(reader: StoreReader, post_id: str, created_at=_UNKNOWN) -> pd.DataFrame:
    """Every reaction snapshot of one post: kind, hours since the post was written, count.
    `created_at`: the post's, when the caller has it (saves looking the post up)."""
    if created_at is _UNKNOWN:
        return _frame(reader, "SELECT kind, coalesce(age_seconds, epoch(observed_at - p.created_at)) / 3600.0 "
                              "AS age_hours, count, observed_at FROM reaction_snapshots r JOIN posts p USING (post_id) "
                              "WHERE post_id = ? ORDER BY kind, observed_at", [post_id], SNAPSHOT_COLUMNS)
    return _frame(reader, "SELECT kind, coalesce(age_seconds, epoch(observed_at - ?::TIMESTAMP)) / 3600.0 "
                          "AS age_hours, count, observed_at FROM reaction_snapshots WHERE post_id = ? "
                          "ORDER BY kind, observed_at",
                  [None if pd.isna(created_at) else created_at, post_id], SNAPSHOT_COLUMNS)


def post_filter_choices(reader: StoreReader) -> dict[str, list[str]]:
    """Faces and model versions that posts can be filtered by."""
    faces = [r[0] for r in reader.rows("SELECT face_id FROM faces ORDER BY face_id")]
    versions = [r[0] for r in reader.rows("SELECT version_id FROM model_versions ORDER BY created_at DESC")]
    return {"faces": faces, "versions": versions}


def score_by_day(reader: StoreReader, limit_days: int = 90) -> pd.DataFrame:
    """Mean score of scored posts per day and origin, over the last `limit_days` days that have any."""
    return _frame(reader, "WITH days AS (SELECT date_trunc('day', coalesce(published_at, created_at)) AS day, origin, "
                          "avg(score) AS score, count(*) AS posts FROM posts WHERE score IS NOT NULL "
                          "GROUP BY ALL) SELECT * FROM days ORDER BY day DESC LIMIT ?", [limit_days * 2],
                  ["day", "origin", "score", "posts"])


def model_versions(reader: StoreReader) -> pd.DataFrame:
    """Every model version, newest first, with `active_for`: the faces it publishes for (comma-separated)."""
    df = _frame(reader, "SELECT v.*, (SELECT string_agg(face_id, ', ' ORDER BY face_id) FROM faces f "
                        "WHERE f.active_version_id = v.version_id) AS active_for "
                        "FROM model_versions v ORDER BY created_at DESC, version_id DESC", [], VERSION_COLUMNS)
    return df[[c for c in VERSION_COLUMNS if c in df.columns]] if not df.empty else df


GALLERY_COLUMNS = ["when", "source", "step", "score", "text"]


def version_gallery(reader: StoreReader, version_id: str, limit: int = 200) -> pd.DataFrame:
    """The posts a version wrote, newest first, at most `limit`: the evaluation samples of the run that made
    it, up to the version's step (source "evaluation", with its step), and the posts generated with it
    (source: their status, published, candidate, rejected ..., with their score once scored)."""
    return _frame(reader, """
        SELECT * FROM (
            SELECT s.recorded_at AS "when", 'evaluation' AS source, s.step, NULL::DOUBLE AS score, s.text,
                   s.sample AS sample
            FROM evaluation_samples s JOIN model_versions v ON s.run_id = v.run_id
            WHERE v.version_id = ? AND s.step <= coalesce(v.step, s.step)
            UNION ALL
            SELECT coalesce(p.published_at, p.created_at, p.inserted_at), p.status, NULL, p.score, p.text, NULL
            FROM posts p WHERE p.model_version_id = ?
        ) ORDER BY "when" DESC, step DESC NULLS LAST, sample LIMIT ?""", [version_id, version_id, limit],
                  GALLERY_COLUMNS)[GALLERY_COLUMNS]


REVIEW_COLUMNS = ["model_version_id", "reviewed", "approved", "edited", "picked", "rejected", "rejected_share"]
BASE_VERSION = "(base model)"  # how review_by_version names posts drafted without an adapter


def review_by_version(reader: StoreReader, face_id: str | None = None) -> pd.DataFrame:
    """The operator's review decisions per model version (the version that drafted the reviewed slot), the
    newest version first: reviewed (decisions taken by a person; a timeout is none), approved, edited,
    picked, rejected, and rejected_share (rejected / reviewed). Posts drafted by the base model count under
    BASE_VERSION; `face_id` None = every face."""
    return _frame(reader, f"""
        SELECT coalesce(p.model_version_id, '{BASE_VERSION}') AS model_version_id, count(*) AS reviewed,
               count(*) FILTER (WHERE d.action = 'approve') AS approved,
               count(*) FILTER (WHERE d.action = 'edit') AS edited,
               count(*) FILTER (WHERE d.action = 'pick') AS picked,
               count(*) FILTER (WHERE d.action = 'reject') AS rejected,
               count(*) FILTER (WHERE d.action = 'reject') / count(*) AS rejected_share
        FROM review_decisions d LEFT JOIN posts p ON p.post_id = d.post_id
        LEFT JOIN model_versions v ON v.version_id = p.model_version_id
        WHERE d.action <> 'expire' AND (? IS NULL OR d.face_id = ?)
        GROUP BY 1 ORDER BY max(v.created_at) DESC NULLS LAST, 1""", [face_id, face_id], REVIEW_COLUMNS)


def lineage(versions: pd.DataFrame, version_id: str) -> list[str]:
    """The chain from `version_id` back through its parents to the first version (no cycles)."""
    parents = ({} if versions.empty
               else dict(zip(versions["version_id"], versions["parent_version_id"], strict=True)))
    chain, current = [], version_id
    while current and current not in chain:
        chain.append(current)
        current = parents.get(current)
        current = current if isinstance(current, str) else None
    return chain


def _is_metric(value) -> bool:
    """Whether a stored metric value belongs in the table: a number (NaN and inf included) or None."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _metric_number(value: int | float | None) -> float:
    """A metric value as a float: None as NaN, inf kept, an int beyond float's range as ±inf."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except OverflowError:  # json.loads reads a 1 followed by 400 digits as an int
        return math.inf if value > 0 else -math.inf  # copysign would convert the int (and overflow)


def _metrics_object(metrics) -> dict:
    """A version's `metrics` cell as a dict: {} when it is NULL (pandas reads it as NaN, which is truthy,
    so `metrics or {}` would keep it), not JSON, or JSON that is no object (a list, a number)."""
    if isinstance(metrics, dict):
        return metrics
    if not isinstance(metrics, str):
        return {}
    try:
        values = json.loads(metrics)  # Python's json reads NaN and Infinity, as the writer's json.dumps writes them
    except ValueError:
        return {}
    return values if isinstance(values, dict) else {}


def version_metrics(versions: pd.DataFrame) -> pd.DataFrame:
    """The `metrics` JSON of each version spread into columns, for a comparison table.

    In: model_versions' frame (`version_id`, `metrics` as JSON text or NULL). Out: one row per version,
    `version_id` then one float column per metric name some version stores as a number or null (text and
    nested values are left out); NaN where a version lacks it or stored NaN or null; inf as stored."""
    rows = []
    for version_id, metrics in zip(versions.get("version_id", []), versions.get("metrics", []), strict=False):
        values = _metrics_object(metrics)
        rows.append({"version_id": version_id,
                     **{name: _metric_number(value) for name, value in values.items()
                        if _is_metric(value) and name != "version_id"}})
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["version_id"])
    return frame.astype({name: "float64" for name in frame.columns if name != "version_id"})


def training_jobs(reader: StoreReader, limit: int = 50) -> pd.DataFrame:
    """The job audit (newest first): what Crowdtune's workers ran, with status and error."""
    return _frame(reader, "SELECT job_id, func, queue, status, description, worker, enqueued_at, started_at, "
                          "ended_at, error FROM jobs "
                          "ORDER BY coalesce(ended_at, started_at, enqueued_at) DESC NULLS LAST LIMIT ?",
                  [limit], ["job_id", "func", "queue", "status", "description", "worker", "enqueued_at", "started_at",
                            "ended_at", "error"])


# --------------------------------------------------------------------------------------------
# The online loop: each face's controller, its RL updates and what it does next.

ONLINE_COLUMNS = ["face_id", "kind", "state", "run_id", "run_status", "started_at", "published", "scored", "updates",
                  "active_version_id", "paused_reason"]
UPDATE_COLUMNS = ["face_id", "run_id", "step", "status", "version_id", "paused", "error", "created_at", "ended_at"]
SCHEDULE_COLUMNS = ["face_id", "next_post_at", "next_reaction_at", "next_reaction_post", "note"]


def online_controllers(reader: StoreReader) -> pd.DataFrame:
    """Every face that has trained online: its controller state and current run, how many of the run's
    posts are published and scored, its completed RL updates, and why it is paused (if it is)."""
    return _frame(reader, """
        SELECT c.face_id, f.kind, c.state, c.run_id, r.status AS run_status, c.started_at,
               (SELECT count(*) FROM posts p WHERE p.run_id = c.run_id AND p.status = 'published') AS published,
               (SELECT count(*) FROM posts p WHERE p.run_id = c.run_id AND p.score IS NOT NULL) AS scored,
               (SELECT count(*) FROM online_updates u WHERE u.run_id = c.run_id AND u.status = 'completed') AS updates,
               f.active_version_id, c.paused_reason
        FROM controllers c LEFT JOIN faces f USING (face_id) LEFT JOIN runs r ON r.run_id = c.run_id
        ORDER BY c.face_id""", [], ONLINE_COLUMNS)


def online_updates(reader: StoreReader, limit: int = 50) -> pd.DataFrame:
    """The newest RL updates of every face: status, the version each made, why one failed or paused."""
    return _frame(reader, f"SELECT {', '.join(UPDATE_COLUMNS)} FROM online_updates "
                          "ORDER BY created_at DESC, step DESC LIMIT ?", [limit], UPDATE_COLUMNS)


def online_schedule(reader: StoreReader, face_ids: list[str], now=None) -> pd.DataFrame:
    """When each face's controller publishes next and reads reactions next (naive UTC wall clock).

    Derived from the store by the controller's own rules (crowdtune.online.controller.decide for the next
    post, the maturity windows for reactions), so it shows what the next tick will do, Redis or not.
    next_post_at is empty when the face does not publish now (IDLE, OFFLINE, STOPPING, paused, or a
    post still being published: `note` says which); next_reaction_at when no post waits for a score.
    Out: SCHEDULE_COLUMNS, one row per face that has a controller.
    """
    from crowdtune.online.controller import AudienceClock, ControllerSnapshot, collection_due, decide
    from crowdtune.store.reads import online_snapshot
    from crowdtune.store.writes import utc_now

    now = now or utc_now()
    rows = []
    for face_id in face_ids:
        raw = online_snapshot(reader, face_id)
        if raw is None:
            continue
        snap = ControllerSnapshot.from_read(raw)
        decision = decide(snap, now)
        clock = AudienceClock(snap.started_at or now, snap.config.time_acceleration)
        reads = sorted((due, post.post_id) for post in snap.posts
                       if (due := collection_due(post, snap.config, clock, now)) is not None)
        notes = list(decision.notes)
        if decision.resume_slot is not None:
            notes.append(f"post {decision.resume_slot} is being published")
        rows.append({"face_id": face_id, "next_post_at": decision.publish_at,
                     "next_reaction_at": reads[0][0] if reads else None,
                     "next_reaction_post": reads[0][1] if reads else None, "note": "; ".join(notes)})
    return pd.DataFrame(rows, columns=SCHEDULE_COLUMNS)


def getting_started(reader: StoreReader) -> dict:
    """What a newcomer has done so far, for the Overview's first-steps checklist.

    Out: {"imported": {face_id: imported posts}, "latest_version": id or None (newest first),
    "active": {face_id: active version id or None}, "online": {face_id: controller state}}.
    """
    with reader.session() as session:  # no store yet: every read is empty
        imported = dict(session.rows("SELECT face_id, count(*) FROM posts WHERE origin = 'imported' GROUP BY face_id"))
        latest = session.rows("SELECT version_id FROM model_versions ORDER BY created_at DESC, version_id DESC LIMIT 1")
        active = dict(session.rows("SELECT face_id, active_version_id FROM faces"))
        online = dict(session.rows("SELECT face_id, state FROM controllers"))
    return {"imported": imported, "latest_version": latest[0][0] if latest else None, "active": active,
            "online": online}


# --------------------------------------------------------------------------------------------
# Rewards and reward models (crowdtune.training.rl.rewards, crowdtune.online.reward_fits)

HISTORY_REWARD_COLUMNS = ["origin", "posted_at", "score", "reward"]
REWARD_FIT_COLUMNS = ["model_id", "fitted_at", "scored_posts", "history_posts", "generated_posts",
                      "validation_spearman", "validation_posts", "validation_mae", "validation_coverage",
                      "online_agreement", "online_agreement_posts", "artifact_url"]


def history_rewards(reader: StoreReader, face_id: str) -> tuple[pd.DataFrame, float]:
    """The rewards a face's scored posts (imported and published) get in training, each against its
    own era (rewards.era_rewards, with the reward settings of the face's online run if it has one).

    Out: (HISTORY_REWARD_COLUMNS oldest first, the clip bounding the rewards)."""
    from crowdtune.training.rl.rewards import RewardConfig, era_rewards

    with reader.session() as session:
        posts = _frame(session, "SELECT origin, coalesce(published_at, created_at) AS posted_at, score FROM posts "
                                "WHERE face_id = ? AND score IS NOT NULL AND status IN ('imported', 'published') "
                                "ORDER BY posted_at NULLS FIRST, post_id", [face_id], HISTORY_REWARD_COLUMNS[:3])
        config = session.scalar("SELECT config FROM controllers WHERE face_id = ?", [face_id])
    reward = RewardConfig(**((json.loads(config) if isinstance(config, str) else config or {}).get("reward") or {}))
    posts["reward"] = era_rewards(posts["score"].tolist(), posts["posted_at"].tolist(), reward) if len(posts) else []
    return posts[HISTORY_REWARD_COLUMNS], reward.clip


def latest_online_config(reader: StoreReader, face_id: str) -> dict | None:
    """The config (OnlineConfig's values, as stored when the run started) of the face's newest online run;
    None when the face never trained online or that config is unreadable."""
    df = _frame(reader, "SELECT config FROM runs WHERE face_id = ? AND kind = 'online' "
                        "ORDER BY coalesce(started_at, updated_at) DESC NULLS LAST, run_id DESC LIMIT 1",
                [face_id], ["config"])
    return None if df.empty else _config_dict(df["config"].iloc[0])


def reward_model_fits(reader: StoreReader, face_id: str) -> pd.DataFrame:
    """Every fit of a face's reward model, oldest first, with its figures as columns (REWARD_FIT_COLUMNS;
    NaN where a figure could not be computed, e.g. no online agreement before 8 predicted posts)."""
    figures = ", ".join(f"TRY_CAST(figures ->> '{name}' AS DOUBLE) AS {name}"
                        for name in ("scored_posts", "validation_mae", "validation_coverage", "online_agreement",
                                     "online_agreement_posts"))
    return _frame(reader, f"SELECT model_id, fitted_at, history_posts, generated_posts, validation_spearman, "
                          f"validation_posts, artifact_url, {figures} FROM reward_models WHERE face_id = ? "
                          "ORDER BY fitted_at NULLS FIRST, model_id", [face_id], REWARD_FIT_COLUMNS
                  ).reindex(columns=REWARD_FIT_COLUMNS)
