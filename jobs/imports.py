"""Import job (queue `control`): pull a face's history into the store.

Posts are upserted by platform id (`<face_id>:<platform_id>`), so a second import updates them in
place; each import adds a new set of reaction snapshots. Each batch is one atomic store write with
an id derived from the job, so a worker killed mid-import leaves whole batches only, and the
re-run job skips the batches that already landed. Once every batch landed, a reward model the face
already has is refitted on the new scores (crowdtune.online.reward_fits.refit_if_behind, queue
`default`; the first fit comes with online training), and the posts are embedded in the background
(jobs.embeddings, queue `default`, in chunks).

An import is done when its rows are in the store: the job waits for the store worker to apply
every batch it queued (at most MAX_IN_FLIGHT batches ahead of it), reports the rows WRITTEN as its
progress, and returns what landed. Counts in the result:
    read        valid rows the face yielded
    landed      distinct posts written to the store by this import
    refused     rows not imported: the face's problems (bad rows, with line and reason) and any row
                the store itself refused (crowdtune.store.writer; reported with its line too)
    duplicates  rows whose id an earlier row of the file already had, merged by DUPLICATE_RULE
so that read = landed + duplicates + rows the store refused. Duplicate rule: the last row of an id
wins, all of it: its text, time, author, url, score and its reaction snapshot (the earlier row's
snapshot of this import is deleted, so no kind of the earlier row survives).

A re-run after a killed worker counts a batch that landed before the kill as landed in full.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from rq import get_current_job

from crowdtune.actions import embed_face_posts
from crowdtune.errors import CrowdtuneError
from crowdtune.online.reward_fits import refit_if_behind
from crowdtune.runtime.queues import connect
from crowdtune.scoring import ScorerConfig, score_at_maturity
from crowdtune.settings import load_settings
from crowdtune.states import PostStatus
from crowdtune.store.remote import read_via_store_worker
from crowdtune.store.writes import StoreWriter, delete_op, insert_op, upsert_op, utc_now, write_outcome
from faces.base import HistoryPost
from faces.registry import build_face

log = logging.getLogger(__name__)

BATCH_SIZE = 2_000  # rows per store write: ~1 MB of JSON in Redis; a bad row costs only itself (writer bisects)
MAX_IN_FLIGHT = 3  # batches queued ahead of the store worker: it never idles, and progress stays near the truth
MAX_PROBLEMS_KEPT = 200
DUPLICATE_RULE = "the last row of an id wins, all of it"


def post_id(face_id: str, platform_id: str) -> str:
    return f"{face_id}:{platform_id}"


def history_rows(face_id: str, posts: list[HistoryPost], observed_at, audience_size: int | None,
                 scorer: ScorerConfig, replacing: frozenset[str] | set[str] = frozenset()) -> list[dict]:
    """The store operations for one batch of history: post upserts and new reaction snapshots.

    In: the posts (distinct ids), when they were observed, the audience, the scorer, and the post ids
    whose earlier row went to the store in an earlier batch of this import (`replacing`): their score
    is overwritten even when the new row has none, and their snapshots at `observed_at` are replaced."""
    post_rows, snapshot_rows = [], []
    for post in posts:
        pid = post_id(face_id, post.platform_id)
        audience = post.audience_size if post.audience_size is not None else audience_size
        age = max(0.0, (observed_at - post.created_at).total_seconds())
        score = score_at_maturity([(age, post.reactions, audience)], scorer) if post.reactions else None
        row = {"post_id": pid, "face_id": face_id, "origin": "imported", "status": PostStatus.IMPORTED,
               "platform_id": post.platform_id, "text": post.text, "url": post.url, "author": post.author,
               "created_at": post.created_at, "audience_size": audience}
        if score is not None or pid in replacing:
            row.update(score=score, scored_at=observed_at if score is not None else None)
        post_rows.append(row)
        snapshot_rows += [{"post_id": pid, "observed_at": observed_at, "kind": kind, "count": int(count),
                           "age_seconds": age, "audience_size": audience}
                          for kind, count in post.reactions.items()]
    ops = [upsert_op("posts", post_rows)]
    if replacing:
        ops.append(delete_op("reaction_snapshots", [{"post_id": pid, "observed_at": observed_at}
                                                    for pid in sorted(replacing)]))
    if snapshot_rows:
        ops.append(insert_op("reaction_snapshots", snapshot_rows))
    return ops


@dataclass
class _Batch:
    """A batch queued to the store: its write id, each post's line, the ids an earlier batch wrote."""

    write_id: str
    lines: dict[str, int | None]
    replacing: set[str] = field(default_factory=set)


def import_history(face_id: str, limit: int | None = None) -> dict:
    """Import up to `limit` posts of the face and return once they are in the store.

    Out: {"face_id", "read", "landed", "refused", "duplicates", "duplicate_rule", "batches", "summary"
    (the final line the CLI and the Training page show), "problems": the first MAX_PROBLEMS_KEPT
    [{"line", "reason"}] by line} (module docstring), plus "imported" (= landed), "problem_count"
    (= refused) and "embedding_job" (the id of the embedding chunk it queued, None when one waited).
    A face that cannot be read at all raises its CrowdtuneError, whose problem and fix are also put in
    the job's meta["error"]."""
    job = get_current_job()
    try:
        return _import(face_id, limit, job)
    except CrowdtuneError as exc:
        if job is not None:  # the CLI and the page show these two lines, not a traceback's last one
            job.meta["error"] = {"problem": exc.problem, "fix": exc.fix}
            job.save_meta()
        raise


def _import(face_id: str, limit: int | None, job) -> dict:
    # 1) the face and how to score its posts
    settings = load_settings()
    conn = connect(settings)
    writer = StoreWriter(conn)
    job_key = job.id if job is not None else f"local-{utc_now():%Y%m%d%H%M%S%f}"
    record = read_via_store_worker(conn, "face_record", face_id=face_id)
    if record is None:
        raise CrowdtuneError(f"There is no face called {face_id!r}.",
                             "Add it first on the Training page or with `crowdtune face add`.")
    face = build_face(record["kind"], record["config"], name=face_id)
    scorer = ScorerConfig(**(record.get("scorer") or {}))
    observed_at = utc_now()
    audience = face.audience_size() if face.capabilities.publish else None

    tally = {"read": 0, "landed": 0, "duplicates": 0}
    store_problems: list[dict] = []
    last_line: dict[str, int | None] = {}  # every post id of this import -> line of its last row so far
    batch: dict[str, HistoryPost] = {}
    replacing: set[str] = set()
    in_flight: deque[_Batch] = deque()
    batch_no = 0

    def report_progress() -> None:
        if job is not None:
            job.meta["progress"] = {"step": tally["landed"], "total": limit, "loss": None, "eta_seconds": None,
                                    "read": tally["read"], "refused": len(getattr(face, "problems", [])) +
                                    len(store_problems), "duplicates": tally["duplicates"]}
            job.save_meta()

    def settle(wait_for_all: bool) -> None:
        """Collect the outcomes of applied batches; wait while too many (or, at the end, any) are pending."""
        pause = 0.02
        while in_flight:
            outcome = write_outcome(conn, in_flight[0].write_id)
            if outcome is None:
                if not wait_for_all and len(in_flight) <= MAX_IN_FLIGHT:
                    return
                time.sleep(pause)
                pause = min(pause * 1.5, 0.5)
                continue
            done = in_flight.popleft()
            refused = {}
            for row in outcome.get("refused") or []:
                refused.setdefault(row["key"].get("post_id"), row["reason"])
            for pid, reason in refused.items():
                store_problems.append({"line": done.lines.get(pid),
                                       "reason": f"the store could not hold this row ({reason})"})
            tally["landed"] += len(done.lines) - len(done.replacing) - len(set(refused) - done.replacing)
            report_progress()

    def flush() -> None:
        nonlocal batch_no, batch, replacing
        if not batch:
            return
        write_id = f"import:{job_key}:{batch_no}"
        writer.submit(history_rows(face_id, list(batch.values()), observed_at, audience, scorer, replacing),
                      write_id=write_id)
        in_flight.append(_Batch(write_id, {pid: post.line for pid, post in batch.items()}, replacing))
        batch_no, batch, replacing = batch_no + 1, {}, set()
        settle(wait_for_all=False)

    # 2) read, merge duplicates (the last row wins), queue batches, collect what landed
    for post in face.fetch_history(limit=limit):
        tally["read"] += 1
        pid = post_id(face_id, post.platform_id)
        if pid in last_line:
            tally["duplicates"] += 1
            if pid not in batch:
                replacing.add(pid)  # its earlier row went out in an earlier batch
            batch.pop(pid, None)  # re-added last: the batch keeps file order
        last_line[pid] = post.line
        batch[pid] = post
        if len(batch) >= BATCH_SIZE:
            flush()
    flush()
    settle(wait_for_all=True)
    # Its scores are in the store: a reward model the face has learns from them.
    try:
        refit_if_behind(conn, face_id, only_refit=True)
    except Exception:  # the posts are imported either way; the controller asks again at its next tick
        log.warning("could not queue the reward model fit of %s", face_id, exc_info=True)
    # ... and their vectors are computed now, in the background, for every run, fit and guard to come.
    try:
        embedding_job = embed_face_posts(conn, face_id)
    except Exception:  # a post without a vector is embedded at its first use instead
        embedding_job = None
        log.warning("could not queue the embedding of %s's posts", face_id, exc_info=True)

    # 3) what was not imported, in line order, and an alert when anything was not
    problems = [{"line": p.line, "reason": p.reason} for p in getattr(face, "problems", [])] + store_problems
    problems.sort(key=lambda p: p["line"] if p["line"] is not None else 0)
    if problems:
        first = problems[0]
        writer.upsert("alerts", [{
            "alert_id": f"import-problems:{job_key}", "level": "warning", "source": f"import {face_id}",
            "message": f"{len(problems)} row(s) of {face_id} were not imported; first: line {first['line']}: "
                       f"{first['reason']}",
        }])
    report_progress()
    summary = (f"Imported {tally['landed']:,} posts into the store; {len(problems):,} row(s) refused; "
               f"{tally['duplicates']:,} duplicate(s) merged ({DUPLICATE_RULE}).")
    return {"face_id": face_id, "read": tally["read"], "landed": tally["landed"], "refused": len(problems),
            "duplicates": tally["duplicates"], "duplicate_rule": DUPLICATE_RULE, "batches": batch_no,
            "summary": summary, "imported": tally["landed"], "problem_count": len(problems),
            "problems": problems[:MAX_PROBLEMS_KEPT], "embedding_job": embedding_job}
