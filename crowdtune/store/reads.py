"""Read queries for pages, jobs and the CLI. Each opens the file read-only, briefly.

Pages and jobs never write SQL of their own: they call a named query here (the Query page's
sandboxed ad-hoc SQL is the one exception, see crowdtune.store.sandbox).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from crowdtune.settings import Settings
from crowdtune.store.connection import open_for_read, schema_version_of
from crowdtune.store.schema import TABLE_KEYS


class StoreReader:
    """Short read-only queries against the store file; an absent file reads as empty."""

    def __init__(self, path: Path, wait_seconds: float = 5.0):
        self.path = Path(path)
        self.wait_seconds = wait_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreReader:
        return cls(settings.store_path, settings.read_retry_seconds)

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def frame(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """Run a query and return its rows as a DataFrame (empty if there is no store yet)."""
        with open_for_read(self.path, self.wait_seconds) as con:
            if con is None:
                return pd.DataFrame()
            return con.execute(sql, params or []).df()

    def rows(self, sql: str, params: list | None = None) -> list[tuple]:
        with open_for_read(self.path, self.wait_seconds) as con:
            if con is None:
                return []
            return con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list | None = None, default=None):
        rows = self.rows(sql, params)
        return rows[0][0] if rows and rows[0] else default

    def arrays(self, sql: str, params: list | dict | None = None) -> dict:
        """Run a query and return its columns as numpy arrays by name ({} if there is no store yet):
        cheaper than a DataFrame for rows that are only computed on."""
        with self.session() as session:
            return session.arrays(sql, params)

    @contextmanager
    def session(self) -> Iterator[StoreSession]:
        """One read-only open for several queries (a page's view): a StoreReader that runs every
        frame/rows/scalar on the same connection, and lets go of the file when the block ends.

        Opening costs ~15 ms (DuckDB builds its catalog of functions each time), so a view that
        runs three queries saves two opens. Keep the block short: while it runs, writers wait.
        """
        with open_for_read(self.path, self.wait_seconds) as con:
            yield StoreSession(self, con)


class StoreSession(StoreReader):
    """A StoreReader bound to one open connection (see StoreReader.session); `con` is None when
    there is no store yet, and then every read is empty, as with StoreReader."""

    def __init__(self, reader: StoreReader, con):
        super().__init__(reader.path, reader.wait_seconds)
        self.con = con

    def frame(self, sql: str, params: list | dict | None = None) -> pd.DataFrame:
        return pd.DataFrame() if self.con is None else self.con.execute(sql, params or []).df()

    def rows(self, sql: str, params: list | dict | None = None) -> list[tuple]:
        return [] if self.con is None else self.con.execute(sql, params or []).fetchall()

    def arrays(self, sql: str, params: list | dict | None = None) -> dict:
        return {} if self.con is None else self.con.execute(sql, params or []).fetchnumpy()

    @contextmanager
    def session(self) -> Iterator[StoreSession]:
        """Already open: a nested session is this one."""
        yield self


@dataclass
class StoreSummary:
    path: Path
    exists: bool
    size_bytes: int
    schema_version: int
    row_counts: dict[str, int]


def summary(reader: StoreReader) -> StoreSummary:
    """Path, size, schema version and row count of every table."""
    if not reader.exists:
        return StoreSummary(reader.path, False, 0, 0, {})
    with open_for_read(reader.path, reader.wait_seconds) as con:
        version = schema_version_of(con)
        # The read instance may have other stores attached: this one's tables only.
        present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                             "WHERE table_catalog = current_database()").fetchall()}
        counts = {
            table: con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            for table in list(TABLE_KEYS) + ["applied_writes"]
            if table in present
        }
    size = reader.path.stat().st_size + (reader.path.with_suffix(reader.path.suffix + ".wal").stat().st_size
                                         if reader.path.with_suffix(reader.path.suffix + ".wal").exists() else 0)
    return StoreSummary(reader.path, True, size, version, counts)


def recent_jobs(reader: StoreReader, limit: int = 50) -> pd.DataFrame:
    """The job audit, newest first."""
    return reader.frame(
        "SELECT job_id, func, queue, status, worker, enqueued_at, started_at, ended_at, error "
        "FROM jobs ORDER BY coalesce(ended_at, started_at, enqueued_at) DESC NULLS LAST LIMIT ?",
        [limit],
    )


def job_record(reader: StoreReader, job_id: str) -> dict | None:
    df = reader.frame("SELECT * FROM jobs WHERE job_id = ?", [job_id])
    return None if df.empty else df.iloc[0].to_dict()


def training_posts(reader: StoreReader, face_id: str) -> list[dict]:
    """A face's posts for offline training (post_id, text, created_at as ISO text, score), oldest first: its
    imported posts, and the posts the operator edited on review, with the operator's text (written by a
    person, not sampled by the policy: offline data, never an RL sample; crowdtune.online.review)."""
    df = reader.frame(
        "SELECT post_id, text, strftime(coalesce(created_at, inserted_at), '%Y-%m-%dT%H:%M:%S') AS created_at, score "
        "FROM posts WHERE face_id = ? AND (origin = 'imported' OR (origin = 'generated' AND review = 'edit')) "
        "ORDER BY coalesce(created_at, inserted_at) NULLS FIRST, post_id",
        [face_id],
    )
    return [] if df.empty else df.astype(object).where(df.notna(), None).to_dict("records")


def post_texts(reader: StoreReader, face_id: str) -> list[str]:
    """The distinct texts of a face's posts that are on its channel (imported or published), newest first:
    what the embedding job keeps vectors of (the newest are what reward fits and style probes read first)."""
    return [row[0] for row in reader.rows(
        "SELECT text FROM posts WHERE face_id = ? AND status IN ('imported', 'published') AND coalesce(text, '') <> '' "
        "GROUP BY text ORDER BY max(coalesce(published_at, created_at)) DESC NULLS LAST, text", [face_id])]


def face_record(reader: StoreReader, face_id: str) -> dict | None:
    """A face's kind, config and scorer (dicts) and active version, or None if it does not exist."""
    import json

    rows = reader.rows("SELECT kind, config, scorer, active_version_id FROM faces WHERE face_id = ?", [face_id])
    if not rows:
        return None
    kind, config, scorer, active = rows[0]
    return {"face_id": face_id, "kind": kind, "config": json.loads(config) if config else {},
            "scorer": json.loads(scorer) if scorer else {}, "active_version_id": active}


def faces(reader: StoreReader) -> list[dict]:
    return [face_record(reader, row[0]) for row in reader.rows("SELECT face_id FROM faces ORDER BY face_id")]


def model_version(reader: StoreReader, version_id: str) -> dict | None:
    df = reader.frame("SELECT * FROM model_versions WHERE version_id = ?", [version_id])
    return None if df.empty else df.astype(object).where(df.notna(), None).iloc[0].to_dict()


def newest_version_id(reader: StoreReader) -> str | None:
    """The newest model version's id (what `crowdtune generate --version latest` samples); None before the first."""
    return reader.scalar("SELECT version_id FROM model_versions ORDER BY created_at DESC, version_id DESC LIMIT 1")


def version_card(reader: StoreReader, version_id: str) -> dict | None:
    """What a model card says of a version, or None if there is no such version: {"version": its row (metrics
    parsed), "lineage": the rows from it back through its parents (newest first), "face_id": the face its run
    trained on, "data_span": [first, last] created_at (ISO text) of that face's imported posts, "posts": their
    count}. Timestamps are ISO text, so the answer travels as JSON."""
    chain: list[dict] = []
    current = version_id
    while current and current not in {row["version_id"] for row in chain}:
        row = model_version(reader, current)
        if row is None:
            break
        row = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
        row["metrics"] = json.loads(row["metrics"]) if isinstance(row.get("metrics"), str) else row.get("metrics") or {}
        chain.append(row)
        current = row.get("parent_version_id")
    if not chain:
        return None
    face = reader.scalar("SELECT face_id FROM runs WHERE run_id = ?", [chain[0].get("run_id")])
    first, last, count = reader.rows(
        "SELECT min(created_at)::VARCHAR, max(created_at)::VARCHAR, count(*) FROM posts "
        "WHERE face_id = ? AND origin = 'imported'", [face])[0] if face else (None, None, 0)
    return {"version": chain[0], "lineage": chain, "face_id": face,
            "data_span": [first, last] if first else None, "posts": int(count or 0)}


# Reads that workers on other machines may ask the store worker for (see crowdtune.store.remote).
NAMED_READS = {
    "training_posts": training_posts,
    "post_texts": post_texts,
    "face_record": face_record,
    "model_version": model_version,
    "version_card": version_card,
}


# --------------------------------------------------------------------------------------------
# The online loop (crowdtune.online.controller, jobs.online). Results travel as JSON through the store
# worker, so rows are plain dicts; JSON columns are parsed.


def _dicts(reader: StoreReader, sql: str, params: list | None = None) -> list[dict]:
    with open_for_read(reader.path, reader.wait_seconds) as con:
        if con is None:
            return []
        cursor = con.execute(sql, params or [])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _parsed(row: dict | None, *columns: str) -> dict | None:
    import json

    if row is not None:
        for column in columns:
            if isinstance(row.get(column), str):
                row[column] = json.loads(row[column])
    return row


def online_controller(reader: StoreReader, face_id: str) -> dict | None:
    """The face's controller row (state, run_id, config ...), or None if it never ran online."""
    rows = _dicts(reader, "SELECT * FROM controllers WHERE face_id = ?", [face_id])
    return _parsed(rows[0], "config") if rows else None


def online_run(reader: StoreReader, run_id: str) -> dict | None:
    """A run's row (kind, face_id, status, config ...), or None."""
    rows = _dicts(reader, "SELECT * FROM runs WHERE run_id = ?", [run_id])
    return _parsed(rows[0], "config") if rows else None


def online_faces(reader: StoreReader) -> list[str]:
    """Faces whose controller has work: not IDLE, or published posts still waiting for their score."""
    return [r[0] for r in reader.rows(
        "SELECT face_id FROM controllers WHERE state <> 'IDLE' OR face_id IN "
        "(SELECT face_id FROM posts WHERE origin = 'generated' AND status IN ('published', 'publishing') "
        "AND score IS NULL) ORDER BY face_id")]


def online_snapshot(reader: StoreReader, face_id: str) -> dict | None:
    """Everything the controller decides from (see crowdtune.online.controller.ControllerSnapshot), or None."""
    controller = online_controller(reader, face_id)
    if controller is None:
        return None
    run_id = controller.get("run_id")
    posts = _dicts(reader, """
        WITH obs AS (
            SELECT s.post_id, s.observed_at, max(s.age_seconds) AS age
            FROM reaction_snapshots s JOIN posts p USING (post_id)
            WHERE p.face_id = ? AND p.origin = 'generated' GROUP BY ALL),
        agg AS (SELECT post_id, list(age ORDER BY observed_at) AS observed_ages, max(observed_at) AS last_observed_at
                FROM obs GROUP BY post_id)
        SELECT p.post_id, p.run_id, p.status, p.platform_id, p.published_at, p.score, p.update_id, p.publish_slot,
               p.inserted_at, p.updated_at, p.review, coalesce(agg.observed_ages, []) AS observed_ages,
               agg.last_observed_at
        FROM posts p LEFT JOIN agg USING (post_id)
        WHERE p.face_id = ? AND p.origin = 'generated'
          AND p.status IN ('awaiting_review', 'approved', 'publishing', 'published', 'shadow', 'failed')
          AND (p.run_id = ? OR (p.status IN ('published', 'publishing') AND p.score IS NULL))
        ORDER BY p.publish_slot, p.post_id""", [face_id, face_id, run_id])
    updates = [_parsed(u, "metrics", "post_ids") for u in _dicts(
        reader, "SELECT update_id, step, status, metrics, post_ids, created_at, ended_at FROM online_updates "
                "WHERE run_id = ? ORDER BY step", [run_id])]
    offline = None
    if controller.get("offline_run_id"):
        offline = {"run": online_run(reader, controller["offline_run_id"]),
                   "version_id": reader.scalar("SELECT version_id FROM model_versions WHERE run_id = ? "
                                               "ORDER BY created_at DESC LIMIT 1", [controller["offline_run_id"]])}
    return {"controller": controller, "face": face_record(reader, face_id), "posts": posts, "updates": updates,
            "offline": offline, "run": online_run(reader, run_id) if run_id else None,
            "reward_model": reward_model_status(reader, face_id), "feedback_ids": pending_feedback(reader, face_id)}


def pending_feedback(reader: StoreReader, face_id: str) -> list[str]:
    """The post ids of the face's review decisions no update has learnt from yet (update_id NULL): the posts
    rejected on review, and the unpicked candidates of each pick (crowdtune.training.rl.feedback)."""
    return [r[0] for r in reader.rows("""
        SELECT post_id FROM posts
        WHERE face_id = ? AND origin = 'generated' AND update_id IS NULL
          AND ((status = 'rejected' AND review = 'reject')
               OR (status = 'candidate' AND candidate_of IN (SELECT post_id FROM posts WHERE face_id = ?
                                                             AND review = 'pick')))
        ORDER BY post_id""", [face_id, face_id])]


def publish_inputs(reader: StoreReader, face_id: str, run_id: str, slot: int) -> dict:
    """What publishing one slot needs: controller, face, the run, the active version, the slot's post rows
    (its post, candidates and rejected samples), `published_texts` (the face's own generated posts that
    went out, may have, or wait for review, oldest first: the copy guard's second index and the diversity
    floor's window), `reward_model`
    (latest_reward_model) and `review` (the slot's review_decisions row, None before a decision)."""
    face = face_record(reader, face_id)
    active = model_version(reader, face["active_version_id"]) if face and face.get("active_version_id") else None
    slot_posts = [_parsed(p, "sampling") for p in _dicts(
        reader, "SELECT * FROM posts WHERE run_id = ? AND publish_slot = ? ORDER BY post_id", [run_id, slot])]
    published = [r[0] for r in reader.rows(
        "SELECT text FROM posts WHERE face_id = ? AND origin = 'generated' "
        "AND status IN ('published', 'publishing', 'approved', 'awaiting_review') "
        "ORDER BY COALESCE(published_at, inserted_at), post_id", [face_id])]
    review = _dicts(reader, "SELECT * FROM review_decisions WHERE decision_id = ?", [f"{run_id}:{slot}"])
    return {"controller": online_controller(reader, face_id), "face": face, "run": online_run(reader, run_id),
            "active_version": active, "slot_posts": slot_posts, "published_texts": published,
            "reward_model": latest_reward_model(reader, face_id), "review": review[0] if review else None}


def collect_inputs(reader: StoreReader, post_id: str) -> dict | None:
    """A published post, its face and its reaction snapshots so far (age_seconds, counts, audience_size)."""
    rows = _dicts(reader, "SELECT post_id, face_id, run_id, publish_slot, platform_id, published_at, score "
                          "FROM posts WHERE post_id = ?", [post_id])
    if not rows:
        return None
    snapshots = _dicts(reader, """
        SELECT observed_at, max(age_seconds) AS age_seconds, map_from_entries(list((kind, count))) AS counts,
               max(audience_size) AS audience_size
        FROM reaction_snapshots WHERE post_id = ? GROUP BY observed_at ORDER BY observed_at""", [post_id])
    for snapshot in snapshots:
        snapshot["counts"] = dict(snapshot["counts"])
    return {"post": rows[0], "face": face_record(reader, rows[0]["face_id"]), "snapshots": snapshots}


# What an update reads of each batch post's other candidates (update_inputs); the online benchmark passes
# its in-memory candidates with the same columns
UPDATE_CANDIDATE_COLUMNS = ("candidate_of", "post_id", "prompt", "text", "token_ids", "logprob", "predicted_reward",
                            "selection_probability")


def update_inputs(reader: StoreReader, update_id: str, history_limit: int = 2000) -> dict | None:
    """What one RL update needs: its row, run, controller, face, active version, batch posts (with tokens,
    scores, the reward model's prediction and selection probability, and `candidates`: the other kept
    candidates of each post's slot), the scores of the face's earlier generated posts (the reward
    baseline), the face's scored history (imported and generated posts, oldest first, at most
    `history_limit`), its newest reward model (latest_reward_model) and `last_step_figure`: the highest step
    of the run's train/loss figures so far (0 if none), where an update's step figures go on from."""
    rows = _dicts(reader, "SELECT * FROM online_updates WHERE update_id = ?", [update_id])
    if not rows:
        return None
    update = _parsed(rows[0], "post_ids", "metrics")
    face = face_record(reader, update["face_id"])
    active = model_version(reader, face["active_version_id"]) if face and face.get("active_version_id") else None
    ids = update["post_ids"] or []
    batch = _dicts(reader, "SELECT post_id, prompt, text, token_ids, token_logprobs, logprob, score, published_at, "
                           "predicted_reward, selection_probability, review "
                           "FROM posts WHERE post_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY published_at, post_id",
                   [ids])
    candidates = _dicts(reader, f"SELECT {', '.join(UPDATE_CANDIDATE_COLUMNS)} FROM posts WHERE status = 'candidate' "
                                "AND candidate_of IN (SELECT unnest(?::VARCHAR[])) ORDER BY post_id", [ids])
    for post in batch:
        post["candidates"] = [c for c in candidates if c["candidate_of"] == post["post_id"]]
    first = min((p["published_at"] for p in batch if p["published_at"] is not None), default=None)
    baseline = [r[0] for r in reader.rows(
        "SELECT score FROM posts WHERE face_id = ? AND origin = 'generated' AND score IS NOT NULL "
        "AND published_at < ? AND NOT list_contains(?::VARCHAR[], post_id) ORDER BY published_at",
        [update["face_id"], first, ids])] if first is not None else []
    history = _dicts(reader, """
        SELECT * FROM (
            SELECT post_id, text, score, coalesce(published_at, created_at) AS published_at FROM posts
            WHERE face_id = ? AND score IS NOT NULL AND status IN ('imported', 'published')
            ORDER BY coalesce(published_at, created_at) DESC NULLS LAST LIMIT ?)
        ORDER BY published_at NULLS FIRST, post_id""", [update["face_id"], history_limit])
    published = reader.scalar("SELECT count(*) FROM posts WHERE run_id = ? AND status = 'published'",
                              [update["run_id"]], default=0)
    last_step = reader.scalar("SELECT coalesce(max(step), 0) FROM metrics WHERE run_id = ? AND name = 'train/loss'",
                              [update["run_id"]], default=0)
    return {"update": update, "run": online_run(reader, update["run_id"]),
            "controller": online_controller(reader, update["face_id"]), "face": face, "active_version": active,
            "batch": batch, "baseline_scores": baseline, "history": history, "published_count": published,
            "reward_model": latest_reward_model(reader, update["face_id"]),
            "feedback": update_feedback(reader, update_id, ids), "last_step_figure": int(last_step or 0)}


_FEEDBACK_COLUMNS = ("post_id, candidate_of, prompt, text, token_ids, logprob, predicted_reward, "
                     "selection_probability, review")


def update_feedback(reader: StoreReader, update_id: str, batch_ids: list[str]) -> dict:
    """The review decisions update `update_id` learns from (the posts the controller marked with it, outside
    its batch): {"rejected": posts rejected on review, each with its slot's `candidates`, "picks": [{"chosen":
    the picked post, "unpicked": its slot's other candidates}]} (crowdtune.training.rl.feedback)."""
    marked = _dicts(reader, f"SELECT {_FEEDBACK_COLUMNS}, status FROM posts WHERE update_id = ? "
                            "AND NOT list_contains(?::VARCHAR[], post_id) ORDER BY post_id", [update_id, batch_ids])
    rejected = [p for p in marked if p["status"] == "rejected"]
    losers = [p for p in marked if p["status"] == "candidate" and p["candidate_of"]]
    anchors = sorted({p["post_id"] for p in rejected} | {p["candidate_of"] for p in losers})
    related = _dicts(reader, f"SELECT {_FEEDBACK_COLUMNS}, status FROM posts WHERE post_id IN "
                             "(SELECT unnest(?::VARCHAR[])) OR (status = 'candidate' AND candidate_of IN "
                             "(SELECT unnest(?::VARCHAR[]))) ORDER BY post_id", [anchors, anchors])
    by_id = {p["post_id"]: p for p in related}
    for post in rejected:
        post["candidates"] = [c for c in related if c["status"] == "candidate" and c["candidate_of"] == post["post_id"]]
    picks = [{"chosen": by_id[chosen], "unpicked": [p for p in losers if p["candidate_of"] == chosen]}
             for chosen in sorted({p["candidate_of"] for p in losers}) if chosen in by_id]
    return {"rejected": rejected, "picks": picks}


def latest_reward_model(reader: StoreReader, face_id: str) -> dict | None:
    """The face's newest reward_models row (figures and config parsed), or None before its first fit."""
    rows = _dicts(reader, "SELECT * FROM reward_models WHERE face_id = ? ORDER BY fitted_at DESC NULLS LAST, "
                          "model_id DESC LIMIT 1", [face_id])
    return _parsed(rows[0], "figures", "config") if rows else None


# A face's scored posts, the reward model's data: imported ones and the generated ones it published.
_SCORED_POSTS = "face_id = ? AND score IS NOT NULL AND status IN ('imported', 'published')"


def reward_model_inputs(reader: StoreReader, face_id: str) -> list[dict]:
    """The face's scored posts (imported and published), oldest first: post_id, origin, text, score,
    posted_at (coalesce(published_at, created_at); posts without a time first), and for generated
    posts the reward model's predicted_reward and reward_model_id when publishing recorded one."""
    return _dicts(reader, f"""
        SELECT post_id, origin, text, score, coalesce(published_at, created_at) AS posted_at,
               predicted_reward, reward_model_id
        FROM posts WHERE {_SCORED_POSTS}
        ORDER BY coalesce(published_at, created_at) NULLS FIRST, post_id""", [face_id])


def reward_model_status(reader: StoreReader, face_id: str) -> dict:
    """Whether the face's reward model is behind its scores: {"scored_posts": the face's scored posts
    now, "fitted_scored_posts": how many it had when its newest reward model was fitted (None before
    the first fit)}. Cheap (a count and one row): the controller reads it at every tick."""
    scored = reader.scalar(f"SELECT count(*) FROM posts WHERE {_SCORED_POSTS}", [face_id], default=0)
    latest = latest_reward_model(reader, face_id)
    fitted = ((latest or {}).get("figures") or {}).get("scored_posts") if latest else None
    return {"scored_posts": int(scored), "fitted_scored_posts": None if fitted is None else int(fitted)}


# --------------------------------------------------------------------------------------------
# Review before posting (crowdtune.online.review)

_REVIEW_COLUMNS = ("post_id, face_id, run_id, publish_slot, intent_id, status, text, predicted_reward, "
                   "predicted_reward_std, selection_probability, reward_model_id, model_version_id, inserted_at")


def review_item(reader: StoreReader, post_id: str) -> dict | None:
    """A post that may be reviewed: {"post", "candidates" (its slot's other kept samples, by post_id),
    "face" (face_record), "decision" (its slot's review_decisions row or None)}; None if there is no such post."""
    posts = _dicts(reader, f"SELECT {_REVIEW_COLUMNS} FROM posts WHERE post_id = ?", [post_id])
    if not posts:
        return None
    post = posts[0]
    candidates = _dicts(reader, f"SELECT {_REVIEW_COLUMNS} FROM posts WHERE candidate_of = ? "
                                "AND status = 'candidate' ORDER BY post_id", [post_id])
    decision = _dicts(reader, "SELECT * FROM review_decisions WHERE decision_id = ?",
                      [post.get("intent_id") or f"{post['run_id']}:{post['publish_slot']}"])
    return {"post": post, "candidates": candidates, "face": face_record(reader, post["face_id"]),
            "decision": decision[0] if decision else None}


def review_queue(reader: StoreReader, face_id: str | None = None, limit: int = 200) -> list[dict]:
    """The posts that wait for review, oldest first (at most `limit`): each a post row (the columns of
    review_item) with `candidates` (its slot's other kept samples) and `face` (face_record: its review mode)."""
    waiting = _dicts(reader, f"SELECT {_REVIEW_COLUMNS} FROM posts WHERE status = 'awaiting_review' "
                             "AND (? IS NULL OR face_id = ?) ORDER BY inserted_at, post_id LIMIT ?",
                     [face_id, face_id, limit])
    if not waiting:
        return []
    ids = [p["post_id"] for p in waiting]
    candidates = _dicts(reader, f"SELECT candidate_of, {_REVIEW_COLUMNS} FROM posts WHERE status = 'candidate' "
                                "AND candidate_of IN (SELECT unnest(?::VARCHAR[])) ORDER BY post_id", [ids])
    faces_of = {f: face_record(reader, f) for f in {p["face_id"] for p in waiting}}
    for post in waiting:
        post["candidates"] = [c for c in candidates if c["candidate_of"] == post["post_id"]]
        post["face"] = faces_of[post["face_id"]]
    return waiting


def review_decisions(reader: StoreReader, face_id: str | None = None, limit: int = 50) -> list[dict]:
    """The latest review decisions, newest first: who, when, what, the slot, the original and published text."""
    return _dicts(reader, "SELECT * FROM review_decisions WHERE (? IS NULL OR face_id = ?) "
                          "ORDER BY decided_at DESC, decision_id LIMIT ?", [face_id, face_id, limit])


NAMED_READS.update({
    "review_item": review_item,
    "review_queue": review_queue,
    "review_decisions": review_decisions,
    "latest_reward_model": latest_reward_model,
    "reward_model_inputs": reward_model_inputs,
    "reward_model_status": reward_model_status,
    "online_controller": online_controller,
    "online_run": online_run,
    "online_faces": online_faces,
    "online_snapshot": online_snapshot,
    "publish_inputs": publish_inputs,
    "collect_inputs": collect_inputs,
    "update_inputs": update_inputs,
    "pending_feedback": pending_feedback,
})
