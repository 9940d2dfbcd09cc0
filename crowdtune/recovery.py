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

from crowdtune.queue import ALL_QUEUES, queue

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


def requeue_orphans(conn: redis.Redis) -> list[str]:
    """Requeue started jobs whose worker is gone; return their ids."""
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
