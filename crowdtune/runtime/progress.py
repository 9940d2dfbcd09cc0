"""The progress a running job reports, and how the dashboard reads it back.

Training jobs put `progress` = {"step", "total", "loss", "eta_seconds", "phase", "reported_at"}
into their RQ job's meta: `phase` says what the run does now ("training", "evaluating: sampling 8
posts", "copy guard: embedding ..."), `reported_at` is the time of the report (Unix seconds).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer


@dataclass
class Progress:
    step: int
    total: int
    loss: float | None
    eta_seconds: float | None
    phase: str | None = None
    reported_at: float | None = None

    @property
    def fraction(self) -> float:
        return min(max(self.step / self.total, 0.0), 1.0) if self.total else 0.0

    def summary(self) -> str:
        """One line for a progress bar: "step 20/60, evaluating: sampling 8 posts, ETA 4.2 min"."""
        parts = [f"step {self.step}/{self.total}"]
        if self.phase and self.phase != "training":
            parts.append(self.phase)
        if self.eta_seconds is not None:
            parts.append(f"ETA {self.eta_seconds / 60:.1f} min")
        return ", ".join(parts)


def fetch_job(conn: redis.Redis, job_id: str) -> Job | None:
    """The RQ job, or None when it expired or never existed."""
    try:
        return Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def progress_reporter(job: Job | None):
    """The on_progress callback a training job hands to its trainer: it writes what job_progress reads."""

    def report(step: int, total: int, loss: float, eta: float | None, phase: str = "training") -> None:
        if job is not None:
            loss = None if loss is None or math.isnan(loss) else loss  # NaN before the first step: not JSON
            job.meta["progress"] = {"step": step, "total": total, "loss": loss, "eta_seconds": eta, "phase": phase,
                                    "reported_at": time.time()}
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
                    progress.get("loss"), progress.get("eta_seconds"), progress.get("phase"),
                    progress.get("reported_at"))
