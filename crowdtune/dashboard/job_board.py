"""What the dashboard shows about RQ jobs: queued, running, finished and failed jobs of the work
queues (a job's progress is read with crowdtune.runtime.progress).

Store writes (the `store` queue) are left out: they are bookkeeping, not work a user started.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import redis
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from crowdtune.runtime.queues import queue
from crowdtune.settings import QUEUE_CONTROL, QUEUE_DEFAULT, QUEUE_TRAIN

WORK_QUEUES = (QUEUE_TRAIN, QUEUE_DEFAULT, QUEUE_CONTROL)


@dataclass
class JobRow:
    job_id: str
    queue: str
    state: str  # queued, running, finished, failed, scheduled
    func: str | None
    description: str | None
    enqueued_at: dt.datetime | None
    ended_at: dt.datetime | None
    progress: str = ""  # a running job's last report: "embedding posts: 4,096 of 20,761"


def progress_text(meta: dict) -> str:
    """A job's meta["progress"] in a few words: its phase (a training run's is on the Runs table), or
    "done of total" for a job that reports no phase; "" for none."""
    progress = meta.get("progress") if isinstance(meta, dict) else None
    if not isinstance(progress, dict):
        return ""
    if progress.get("phase") and progress["phase"] != "training":
        return str(progress["phase"])
    total = progress.get("total")
    return f"{progress.get('step') or 0:,} of {total:,}" if total else f"{progress.get('step') or 0:,}"


def job_board(conn: redis.Redis, per_state: int = 20) -> list[JobRow]:
    """Jobs of the work queues by state: queued, scheduled, running, finished, failed (newest first)."""
    rows: list[JobRow] = []
    for name in WORK_QUEUES:
        q = queue(name, conn)
        sources = [
            ("queued", q.get_job_ids(0, per_state)),
            ("scheduled", ScheduledJobRegistry(queue=q).get_job_ids(0, per_state - 1)),
            ("running", StartedJobRegistry(queue=q).get_job_ids(0, per_state - 1)),
            ("finished", FinishedJobRegistry(queue=q).get_job_ids(0, per_state - 1, desc=True)),
            ("failed", FailedJobRegistry(queue=q).get_job_ids(0, per_state - 1, desc=True)),
        ]
        for state, ids in sources:
            for job in Job.fetch_many(list(ids), connection=conn, serializer=JSONSerializer):
                if job is None:
                    continue
                rows.append(JobRow(job.id, name, state, job.func_name, job.description, job.enqueued_at,
                                   job.ended_at, progress_text(job.meta) if state == "running" else ""))
    return rows
