"""What the System page and `crowdtune status` show: Redis, workers, queues, jobs, the store."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from rq import Worker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from crowdtune.errors import CrowdtuneError, traceback_message
from crowdtune.runtime import defaults
from crowdtune.runtime.queues import ALL_QUEUES, connect, queue
from crowdtune.settings import Settings
from crowdtune.store.reads import StoreReader, StoreSummary, summary


@dataclass
class WorkerInfo:
    name: str
    state: str
    queues: list[str]
    current_job: str | None
    current_job_func: str | None
    last_heartbeat: dt.datetime | None
    successful: int
    failed: int
    cpu_percent: float | None = None  # the worker and its job processes at its last heartbeat (% of one core)
    memory_mb: float | None = None    # their resident memory then (None: a worker that does not report them)


@dataclass
class QueueInfo:
    name: str
    queued: int
    started: int
    failed: int
    scheduled: int


@dataclass
class FailedJob:
    job_id: str
    queue: str
    func: str | None
    ended_at: dt.datetime | None
    error: str


@dataclass
class ScheduledJob:
    job_id: str
    queue: str
    func: str | None
    at: dt.datetime | None


@dataclass
class SystemStatus:
    redis_url: str
    redis_ok: bool
    redis_error: str | None = None
    redis_version: str | None = None
    workers: list[WorkerInfo] = field(default_factory=list)
    queues: list[QueueInfo] = field(default_factory=list)
    failed_jobs: list[FailedJob] = field(default_factory=list)
    scheduled_jobs: list[ScheduledJob] = field(default_factory=list)
    store: StoreSummary | None = None
    store_error: str | None = None


def system_status(settings: Settings, failed_limit: int = 20) -> SystemStatus:
    """Gather the status; a part that cannot be reached is reported, never raised."""
    status = SystemStatus(redis_url=settings.redis_display_url, redis_ok=False)
    try:
        conn = connect(settings)
        status.redis_ok = True
        status.redis_version = conn.info("server").get("redis_version")
    except CrowdtuneError as exc:
        status.redis_error = str(exc)
        conn = None
    if conn is not None:
        for worker in Worker.all(connection=conn, serializer=JSONSerializer):
            job = worker.get_current_job()
            cpu, rss = conn.hmget(worker.key, [defaults.WORKER_CPU_FIELD, defaults.WORKER_MEMORY_FIELD])
            status.workers.append(
                WorkerInfo(
                    name=worker.name,
                    state=str(getattr(worker.get_state(), "value", worker.get_state())),
                    queues=worker.queue_names(),
                    current_job=job.id if job else None,
                    current_job_func=job.func_name if job else None,
                    last_heartbeat=worker.last_heartbeat,
                    successful=worker.successful_job_count,
                    failed=worker.failed_job_count,
                    cpu_percent=float(cpu) if cpu is not None else None,
                    memory_mb=int(rss) / 1e6 if rss is not None else None,
                )
            )
        for name in ALL_QUEUES:
            q = queue(name, conn)
            failed = FailedJobRegistry(queue=q)
            scheduled = ScheduledJobRegistry(queue=q)
            status.queues.append(
                QueueInfo(name, q.count, StartedJobRegistry(queue=q).count, failed.count, scheduled.count)
            )
            for job_id in failed.get_job_ids(0, failed_limit - 1, desc=True):
                job = q.fetch_job(job_id)
                if job is None:
                    continue
                result = job.latest_result()
                error = traceback_message(result.exc_string if result else job.exc_info)
                status.failed_jobs.append(FailedJob(job_id, name, job.func_name, job.ended_at, error))
            for job_id in scheduled.get_job_ids(0, failed_limit - 1):
                job = q.fetch_job(job_id)
                try:
                    at = scheduled.get_scheduled_time(job_id)
                except Exception:
                    at = None
                status.scheduled_jobs.append(ScheduledJob(job_id, name, job.func_name if job else None, at))
    try:
        status.store = summary(StoreReader.from_settings(settings))
    except CrowdtuneError as exc:
        status.store_error = str(exc)
    return status
