"""Bringing back jobs whose worker died (SIGKILL, OOM, a crashed machine).

RQ notices an abandoned job only when its heartbeat expires (~90 s) and its worker's registration
much later. For workers on this machine we know better at once: a worker's name ends with its
host and pid (see worker._worker_name), so a job whose worker process is gone goes back to its
queue right away. Workers call this when they start; `crowdtune recover` runs it by hand.
Jobs re-run this way must be resumable or idempotent; Crowdtune's are (checkpoints, write ids).
"""

from __future__ import annotations

import logging
import socket

import psutil
import redis
from rq import Worker
from rq.registry import StartedJobRegistry

from crowdtune.runtime.queues import ALL_QUEUES, queue

log = logging.getLogger(__name__)


def _worker_is_alive(name: str | None, registered: set[str]) -> bool:
    if not name or name not in registered:
        return False
    parts = name.split(".")
    host, pid = ".".join(parts[1:-1]), parts[-1]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine's worker: trust its registration and RQ's own expiry
    try:
        cmdline = " ".join(psutil.Process(int(pid)).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "crowdtune" in cmdline or "rq" in cmdline


def release_dead_scheduler_locks(conn: redis.Redis) -> None:
    """Free the RQ scheduler lock of a queue whose holder was a process on this machine that is gone.

    Otherwise a SIGKILLed worker's lock blocks every other scheduler until it expires (~61 s), and
    scheduled jobs (controller ticks, publish retries) wait that long.
    """
    from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler

    for name in ALL_QUEUES:
        key = RQScheduler.get_locking_key(name)
        holder = conn.get(key)
        if not holder:
            continue
        info = {k.decode(): v.decode() for k, v in conn.hgetall(SCHEDULER_KEY_TEMPLATE % holder.decode()).items()}
        pid = info.get("pid", "")
        if info.get("hostname") == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid)):
            if conn.get(key) == holder:
                conn.delete(key)
                log.warning("released the scheduler lock of %s for %s: its process is gone", holder.decode(), name)


def requeue_orphans(conn: redis.Redis) -> list[str]:
    """Requeue started jobs whose worker is gone (and free its scheduler locks); return their ids."""
    release_dead_scheduler_locks(conn)
    registered = {w.name for w in Worker.all(connection=conn)}
    requeued = []
    for name in ALL_QUEUES:
        q = queue(name, conn)
        registry = StartedJobRegistry(queue=q)
        for job_id in registry.get_job_ids(cleanup=False):
            job = q.fetch_job(job_id)
            if job is None or _worker_is_alive(job.worker_name, registered):
                continue
            try:
                registry.remove_executions(job)
                q.enqueue_job(job)
            except Exception:  # recovery must never keep a worker from starting
                log.exception("could not requeue orphaned job %s", job.id)
                continue
            requeued.append(job.id)
            log.warning("requeued job %s (%s): its worker %s is gone", job.id, job.func_name, job.worker_name)
    return requeued
