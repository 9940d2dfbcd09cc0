"""What the dashboard shows about RQ jobs: queued, running, finished and failed jobs of the work
queues, and the progress a training job reports in its meta.

Training jobs put `progress` = {"step", "total", "loss", "eta_seconds"} into their job meta.
Store writes (the `store` queue) are left out: they are bookkeeping, not work a user started.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from crowdtune.queue import queue
from crowdtune.settings import QUEUE_DEFAULT, QUEUE_TRAIN

WORK_QUEUES = (QUEUE_TRAIN, QUEUE_DEFAULT)


@dataclass
class JobRow:
    job_id: str
    queue: str
    state: str  # queued, running, finished, failed, scheduled
    func: str | None
    description: str | None
    enqueued_at: dt.datetime | None
    ended_at: dt.datetime | None


@dataclass
class Progress:
    step: int
    total: int
    loss: float | None
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        return min(max(self.step / self.total, 0.0), 1.0) if self.total else 0.0


def fetch_job(conn: redis.Redis, job_id: str) -> Job | None:
    """The RQ job, or None when it expired or never existed."""
    try:
        return Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def progress_reporter(job: Job | None):
    """The on_progress callback a training job hands to its trainer: it writes what job_progress reads."""

    def report(step: int, total: int, loss: float, eta: float) -> None:
        if job is not None:
            job.meta["progress"] = {"step": step, "total": total, "loss": loss, "eta_seconds": eta}
            job.save_meta()

    return report


def job_progress(conn: redis.Redis, job_id: str) -> Progress | None:
    """The progress a running job last reported, or None if it reported none (or is gone)."""
    job = fetch_job(conn, job_id)
    if job is None:
        return None
    progress = job.get_meta(refresh=True).get("progress")
    if not isinstance(progress, dict) or "step" not in progress:
        return None
    return Progress(int(progress.get("step") or 0), int(progress.get("total") or 0),
                    progress.get("loss"), progress.get("eta_seconds"))


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
                                   job.ended_at))
    return rows
