"""Import job (queue `default`): pull a face's history into the store.

Posts are upserted by platform id (`<face_id>:<platform_id>`), so a second import updates them in
place; each import adds a new set of reaction snapshots. Each batch is one atomic store write with
an id derived from the job, so a worker killed mid-import leaves whole batches only, and the
re-run job skips the batches that already landed.
"""

from __future__ import annotations

import logging

from rq import get_current_job

from crowdtune.errors import CrowdtuneError
from crowdtune.runtime.queues import connect
from crowdtune.scoring import ScorerConfig, score_at_maturity
from crowdtune.settings import load_settings
from crowdtune.store.remote import read_via_store_worker
from crowdtune.store.writes import StoreWriter, utc_now
from faces.base import HistoryPost
from faces.registry import build_face

log = logging.getLogger(__name__)

BATCH_SIZE = 500
MAX_PROBLEMS_KEPT = 200


def post_id(face_id: str, platform_id: str) -> str:
    return f"{face_id}:{platform_id}"


def history_rows(face_id: str, posts: list[HistoryPost], observed_at, audience_size: int | None,
                 scorer: ScorerConfig) -> list[dict]:
    """The store operations for one batch of history: post upserts and new reaction snapshots."""
    post_rows, snapshot_rows = [], []
    for post in posts:
        pid = post_id(face_id, post.platform_id)
        audience = post.audience_size if post.audience_size is not None else audience_size
        age = max(0.0, (observed_at - post.created_at).total_seconds())
        score = score_at_maturity([(age, post.reactions, audience)], scorer) if post.reactions else None
        row = {"post_id": pid, "face_id": face_id, "origin": "imported", "status": "imported",
               "platform_id": post.platform_id, "text": post.text, "url": post.url, "author": post.author,
               "created_at": post.created_at, "audience_size": audience}
        if score is not None:
            row.update(score=score, scored_at=observed_at)
        post_rows.append(row)
        snapshot_rows += [{"post_id": pid, "observed_at": observed_at, "kind": kind, "count": int(count),
                           "age_seconds": age, "audience_size": audience}
                          for kind, count in post.reactions.items()]
    ops = [{"op": "upsert", "table": "posts", "rows": post_rows}]
    if snapshot_rows:
        ops.append({"op": "insert", "table": "reaction_snapshots", "rows": snapshot_rows})
    return ops


def import_history(face_id: str, limit: int | None = None) -> dict:
    """Import up to `limit` posts of the face; return counts and the rows that could not be imported."""
    settings = load_settings()
    conn = connect(settings)
    writer = StoreWriter(conn)
    job = get_current_job()
    job_key = job.id if job is not None else f"local-{utc_now():%Y%m%d%H%M%S%f}"

    record = read_via_store_worker(conn, "face_record", face_id=face_id)
    if record is None:
        raise CrowdtuneError(f"There is no face called {face_id!r}.",
                             "Add it first on the Settings page or with `crowdtune face add`.")
    face = build_face(record["kind"], record["config"])
    scorer = ScorerConfig(**(record.get("scorer") or {}))
    observed_at = utc_now()
    audience = face.audience_size() if face.capabilities.publish else None

    imported, batch_no, batch = 0, 0, []

    def flush() -> None:
        nonlocal imported, batch_no, batch
        if not batch:
            return
        writer.submit(history_rows(face_id, batch, observed_at, audience, scorer),
                      write_id=f"import:{job_key}:{batch_no}")
        imported += len(batch)
        batch_no += 1
        batch = []
        if job is not None:
            job.meta["progress"] = {"step": imported, "total": limit, "loss": None, "eta_seconds": None}
            job.save_meta()

    for post in face.fetch_history(limit=limit):
        batch.append(post)
        if len(batch) >= BATCH_SIZE:
            flush()
    flush()

    problems = [{"line": p.line, "reason": p.reason} for p in getattr(face, "problems", [])]
    if problems:
        first = problems[0]
        writer.upsert("alerts", [{
            "alert_id": f"import-problems:{job_key}", "level": "warning", "source": f"import {face_id}",
            "message": f"{len(problems)} row(s) of {face_id} were not imported; first: line {first['line']}: {first['reason']}",
        }])
    return {"face_id": face_id, "imported": imported, "batches": batch_no,
            "problem_count": len(problems), "problems": problems[:MAX_PROBLEMS_KEPT]}
