"""How the online loop's work is scheduled in Redis: one pending tick per face, jobs by deterministic
id, and the locks that keep one tick per face and one attempt per publishing intent.

Redis holds only the schedule; everything a tick decides from is in the store. Ids are
deterministic, so rebuilding a lost schedule (`request_reconcile`) never runs anything twice.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import redis
from rq import Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from crowdtune.runtime import defaults
from crowdtune.runtime.queues import JobKind, job_lifetimes, queue
from crowdtune.settings import QUEUE_CONTROL, QUEUE_STORE
from crowdtune.store.writes import utc_now

log = logging.getLogger(__name__)

_ALIVE = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
_PENDING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)


class LockHeld(RuntimeError):
    """Another job holds the lock right now."""


def safe_id(text: str) -> str:
    """`text` with every character an RQ job id may not hold replaced by `_`."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def job_status(conn: redis.Redis, job_id: str) -> JobStatus | None:
    """The job's RQ status, or None when it expired or never existed."""
    try:
        status = Job.fetch(job_id, connection=conn, serializer=JSONSerializer).get_status(refresh=False)
    except NoSuchJobError:
        return None
    return JobStatus(status) if status is not None else None


def lost_in_dequeue(conn: redis.Redis, job_id: str) -> bool:
    """Whether a `queued` job is in no queue and not started: its worker popped it and died at once.

    A worker serving several queues takes a job with LPOP, and the job is recorded as started only
    after that; a SIGKILL in between leaves it `queued` forever, in no list RQ looks at, and a face
    whose next tick is such a job would never tick again. (A worker on one queue moves the job to an
    intermediate list instead, which RQ itself cleans up.)
    """
    try:
        job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    if job.get_status(refresh=False) != JobStatus.QUEUED:
        return False
    q = queue(job.origin, conn)
    if conn.lpos(q.key, job_id) is not None or conn.lpos(q.intermediate_queue_key, job_id) is not None:
        return False
    return job_id not in q.started_job_registry


def _waiting_or_running(conn: redis.Redis, job_id: str, states: tuple[JobStatus, ...]) -> bool:
    return job_status(conn, job_id) in states and not lost_in_dequeue(conn, job_id)


def enqueue_job(conn: redis.Redis, queue_name: str, func: str, *args, job_id: str, at: datetime | None = None,
                retry: Retry | None = None, timeout: int = defaults.JOB_TIMEOUT,
                kind: JobKind = JobKind.WORK, description: str | None = None, meta: dict | None = None):
    """Enqueue `func` under `job_id`, now or at `at` (naive UTC) with RQ's scheduler; return the Job.
    Redis keeps it as long as its `kind` says (crowdtune.runtime.queues.job_lifetimes)."""
    q = queue(queue_name, conn)
    lifetimes = job_lifetimes(kind)
    options = dict(job_id=job_id, job_timeout=timeout, retry=retry, result_ttl=lifetimes.result_ttl,
                   failure_ttl=lifetimes.failure_ttl, description=description, meta=meta)
    if at is not None and at > utc_now():
        return q.enqueue_at(_aware(at), func, *args, **options)
    return q.enqueue(func, *args, **options)


def ensure_job(conn: redis.Redis, queue_name: str, func: str, *args, job_id: str, **options) -> bool:
    """Enqueue the job unless a job with this id is already waiting or running; return whether it did."""
    if _waiting_or_running(conn, job_id, _ALIVE):
        return False
    enqueue_job(conn, queue_name, func, *args, job_id=job_id, **options)
    return True


def schedule_tick(conn: redis.Redis, face_id: str, at: datetime | None = None) -> str:
    """Make sure the face's controller ticks at `at` (naive UTC; None = now) or earlier. Returns the job id.

    One pending tick per face: an earlier or equal pending tick is kept, a later one is replaced.
    """
    at = at or utc_now()
    key = defaults.TICK_KEY.format(face_id=face_id)
    current = conn.hgetall(key)
    if current:
        job_id = current[b"job_id"].decode()
        if _waiting_or_running(conn, job_id, _PENDING) and float(current[b"at"]) <= _aware(at).timestamp() + 0.5:
            return job_id
        if job_status(conn, job_id) == JobStatus.SCHEDULED:
            try:
                Job.fetch(job_id, connection=conn, serializer=JSONSerializer).cancel()
            except Exception:  # it may just have been moved to the queue: then two ticks run, harmlessly
                log.debug("could not cancel tick %s", job_id)
    job = enqueue_job(conn, QUEUE_CONTROL, "jobs.online.tick", face_id,
                      job_id=f"tick-{safe_id(face_id)}-{uuid.uuid4().hex[:12]}", at=at,
                      timeout=defaults.TICK_TIMEOUT, kind=JobKind.CONTROL,
                      description=f"online controller tick of {face_id}")
    conn.hset(key, mapping={"job_id": job.id, "at": _aware(at).timestamp()})
    conn.expire(key, defaults.TICK_KEY_TTL)
    return job.id


def request_reconcile(conn: redis.Redis) -> None:
    """Ask for one reconcile job soon (the store worker does when it starts; several requests make one).

    It runs on the store queue because it reads the store: the store worker has the file, so the
    job never waits for an answer the way a job on another queue would when no store worker runs.
    """
    if conn.set(defaults.RECONCILE_KEY, "1", nx=True, ex=defaults.RECONCILE_DEBOUNCE_SECONDS):
        enqueue_job(conn, QUEUE_STORE, "jobs.online.reconcile", job_id=f"reconcile-{uuid.uuid4().hex[:12]}",
                    timeout=defaults.TICK_TIMEOUT, kind=JobKind.CONTROL,
                    description="reschedule the online controllers")


@contextmanager
def job_lock(conn: redis.Redis, key: str, token: str | None, seconds: int) -> Iterator[None]:
    """Hold `key` for the block, or raise LockHeld when another job holds it.

    `token` is the current RQ job's id: a requeued run of a killed job has the same id, so it may
    take over its own lock instead of waiting out the lifetime. The lock is released only by its holder.
    """
    token = token or uuid.uuid4().hex
    if not conn.set(key, token, nx=True, ex=seconds) and conn.get(key) != token.encode():
        raise LockHeld(key)
    try:
        yield
    finally:
        if conn.get(key) == token.encode():
            conn.delete(key)


def tick_lock(conn: redis.Redis, face_id: str, token: str | None):
    """One tick per face at a time (see job_lock)."""
    return job_lock(conn, defaults.TICK_LOCK_KEY.format(face_id=face_id), token, defaults.TICK_LOCK_SECONDS)


def intent_lock(conn: redis.Redis, intent_id: str, token: str | None):
    """One attempt at a publishing intent at a time (see job_lock)."""
    return job_lock(conn, defaults.INTENT_LOCK_KEY.format(intent_id=intent_id), token, defaults.INTENT_LOCK_SECONDS)
