"""Crowdtune's RQ workers.

`PreloadedWorker` imports torch, transformers, peft and Lightning (and every job module) once in
the parent, so each forked job starts in a fraction of a second instead of paying seconds of
imports. The parent never runs a torch computation: a child forked from a parent that computed
can hang forever in a futex wait. Each job is seeded from its id, since children forked from one
parent would otherwise share the parent's RNG state.

`StoreWorker` is the single writer of the DuckDB file: it serves only the `store` queue, without
forking, and holds a Redis lease so that a second one anywhere refuses to start.

Both are ordinary RQ workers: `rq info`, rq-dashboard and `rq worker -w crowdtune.runtime.workers.PreloadedWorker`
work as with any RQ deployment. Jobs travel as JSON (rq's JSONSerializer), and only functions of
the `jobs` package run: a job naming anything else fails without being imported.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import logging
import os
import pkgutil
import random
import signal
import socket
import threading
import time

from rq.exceptions import InvalidJobOperation
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker, Worker

from crowdtune.runtime import defaults
from crowdtune.runtime.queues import JOB_PACKAGES

log = logging.getLogger(__name__)

STORE_LEASE_KEY = defaults.STORE_LEASE_KEY
STORE_LEASE_SECONDS = defaults.STORE_LEASE_SECONDS


def preload() -> None:
    """Import the heavy libraries and all job modules. Imports only: no tensor is created here."""
    import peft  # noqa: F401
    import pytorch_lightning  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import jobs

    for module in pkgutil.iter_modules(jobs.__path__):
        importlib.import_module(f"jobs.{module.name}")


def seed_for(job_id: str) -> int:
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "little")


class CrowdtuneJob(Job):
    """A job that refuses foreign functions and seeds every RNG before it runs."""

    def perform(self):
        if not self.func_name.startswith(JOB_PACKAGES):
            raise PermissionError(
                f"Refused to run {self.func_name!r}: Crowdtune workers run only functions of the jobs package."
            )
        seed = int(self.meta.get("seed", seed_for(self.id)))
        random.seed(seed)
        try:
            import numpy as np

            np.random.seed(seed)
        except ImportError:
            pass
        import sys

        if "torch" in sys.modules:
            torch = sys.modules["torch"]
            threads = os.environ.get("CROWDTUNE_TORCH_THREADS")
            if threads:
                torch.set_num_threads(int(threads))
            torch.manual_seed(seed)
        return super().perform()


def _worker_name(kind: str) -> str:
    return f"{kind}.{socket.gethostname()}.{os.getpid()}"


class _JobEvents:
    """One event-log line when a job ends (and, with `log_starts`, when it starts), with its run, face
    and job ids (crowdtune.runtime.logs); lines the job logs itself carry the same ids, in a forked
    job process too, since the ids are bound before the fork."""

    log_starts = True

    def execute_job(self, job: Job, queue):
        from crowdtune.runtime.logs import bound_ids, ids_of_job

        started = time.monotonic()
        with bound_ids(**ids_of_job(job)):
            if self.log_starts:
                log.info("job started: %s", job.func_name, extra={"queue": queue.name})
            try:
                return super().execute_job(job, queue)
            finally:
                self._log_end(job, queue, time.monotonic() - started)

    def _log_end(self, job: Job, queue, seconds: float) -> None:
        try:
            try:
                status = job.get_status(refresh=True)
            except InvalidJobOperation:  # a store read its asker deleted already: this process's view says
                status = job.get_status(refresh=False)
            status = getattr(status, "value", str(status))
            result = job.latest_result() if status != "finished" else None
        except Exception:  # noqa: BLE001 - Redis went away mid-job: the line still goes out
            status, result = "unknown", None
        fields = {"queue": queue.name, "status": status, "seconds": round(seconds, 3)}
        if status == "finished":
            log.info("job finished: %s", job.func_name, extra=fields)
        else:
            cause = ((result.exc_string or "").strip().splitlines() or [""])[-1] if result is not None else ""
            log.warning("job %s: %s%s", status, job.func_name, f": {cause[:500]}" if cause else "", extra=fields)


class _AuditMixin:
    """Record each job's start and end in the store's `jobs` table (through the store queue)."""

    def _audit(self, job: Job, queue, **values) -> None:
        from crowdtune.store.writes import StoreWriter

        row = {
            "job_id": job.id,
            "func": job.func_name,
            "queue": queue.name,
            "description": (job.description or "")[:500],
            "worker": self.name,
            "enqueued_at": job.enqueued_at,
            **values,
        }
        try:
            write_id = f"audit-{job.id}-{values.get('status')}-{time.time_ns()}"
            StoreWriter(self.connection).upsert("jobs", [row], write_id=write_id)
        except Exception:  # the audit must never take a worker down
            log.exception("could not record job %s in the store", job.id)

    def execute_job(self, job: Job, queue):
        from crowdtune.store.writes import utc_now

        self._audit(job, queue, status="started", started_at=utc_now())
        try:
            return super().execute_job(job, queue)
        finally:
            status = job.get_status(refresh=True)
            result = job.latest_result()
            values = {"status": getattr(status, "value", str(status)), "ended_at": utc_now()}
            if result is not None and result.type == result.Type.FAILED:
                values["error"] = (result.exc_string or "")[-4000:]
            elif result is not None and result.type == result.Type.SUCCESSFUL:
                values["result"] = result.return_value
            self._audit(job, queue, **values)


class _UsageMixin:
    """With each RQ heartbeat, the CPU and resident memory of the worker and its job processes (the forked
    work horse trains) go into the worker's own hash, beside RQ's last_heartbeat: the System page shows
    them per worker, and they expire with the worker. CPU is % of one core since the previous beat."""

    def heartbeat(self, timeout=None, pipeline=None):
        super().heartbeat(timeout, pipeline)
        # the first beat comes from the worker itself; a forked work horse beats too, but counts only itself
        if self.__dict__.setdefault("_usage_owner", os.getpid()) != os.getpid():
            return
        try:
            cpu, rss = self._usage()
            connection = pipeline if pipeline is not None else self.connection
            connection.hset(self.key, mapping={defaults.WORKER_CPU_FIELD: f"{cpu:.1f}",
                                               defaults.WORKER_MEMORY_FIELD: str(rss)})
        except Exception:  # figures for a page: never a reason for a heartbeat to fail
            log.debug("could not record the worker's CPU and memory", exc_info=True)

    def _usage(self) -> tuple[float, int]:
        import psutil

        # psutil measures CPU between two calls on one Process object: keep one per process seen
        known: dict[int, psutil.Process] = self.__dict__.setdefault("_usage_processes", {})
        me = known.setdefault(os.getpid(), psutil.Process())
        processes = [me, *(known.setdefault(child.pid, child) for child in me.children(recursive=True))]
        cpu = rss = 0.0
        for process in processes:
            try:
                cpu += process.cpu_percent(None)
                rss += process.memory_info().rss
            except psutil.Error:  # a job process that ended between the listing and the reading
                known.pop(process.pid, None)
        alive = {process.pid for process in processes}
        for pid in [pid for pid in known if pid not in alive]:
            del known[pid]
        return cpu, int(rss)


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class PreloadedWorker(_UsageMixin, _JobEvents, _AuditMixin, Worker):
    """Forking worker for `train` and `default`, with the ML stack imported once."""

    job_class = CrowdtuneJob
    serializer = JSONSerializer

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("job_class", CrowdtuneJob)
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("name", _worker_name("worker"))
        super().__init__(*args, **kwargs)
        preload()
        use_shared_rate_limits(self.connection)

    def main_work_horse(self, job, queue):
        # RQ puts the horse in its own process group: without this, a SIGKILLed worker would
        # leave its job running, and the requeued copy would train on the same checkpoint.
        _die_with_parent()
        return super().main_work_horse(job, queue)

    def work(self, *args, **kwargs):
        from crowdtune.runtime.recovery import requeue_orphans

        requeue_orphans(self.connection)
        _request_reconcile(self.connection)
        return super().work(*args, **kwargs)


def use_shared_rate_limits(conn) -> None:
    """Network faces in this worker and its job processes count their requests in Redis, so every
    worker of an account keeps one limit together (faces.limits)."""
    from faces.limits import RedisBuckets, use_budget

    use_budget(RedisBuckets(conn, defaults.RATE_LIMIT_PREFIX))


def _request_reconcile(conn) -> None:
    """The online controllers' schedule lives in Redis: any worker starting asks for it to be rebuilt
    from the store (a job on the store queue, so it waits for the store worker instead of blocking)."""
    try:
        from crowdtune.online.schedule import request_reconcile

        request_reconcile(conn)
    except Exception:
        log.exception("could not ask for the online controllers to be reconciled")


_DELETE_IF_HOLDER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def _gone_from_this_machine(name: str) -> bool:
    """Whether a worker name (kind.host.pid) is that of a process on this machine that no longer runs."""
    import psutil

    parts = name.split(".")
    host, pid = ".".join(parts[1:-1]), parts[-1]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:  # a killed process its parent has not reaped yet is a zombie: its pid exists, it writes nothing
        return psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class StoreWorker(_UsageMixin, _JobEvents, SimpleWorker):
    """The single writer: serves the `store` queue in-process and holds a lease in Redis."""

    log_starts = False  # several batches a second: one line each is enough

    job_class = CrowdtuneJob
    serializer = JSONSerializer

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("job_class", CrowdtuneJob)
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("name", _worker_name("store"))
        super().__init__(*args, **kwargs)
        bad = [q.name for q in self.queues if q.name != "store"]
        if bad:
            raise ValueError(f"the store worker serves only the 'store' queue, not {bad}")
        self._lease_stop = threading.Event()

    def acquire_lease(self, wait_seconds: float = STORE_LEASE_SECONDS + 5) -> None:
        """Become the single writer; wait out the lease of a writer that died, refuse a live one."""
        from crowdtune.errors import CrowdtuneError

        deadline = time.monotonic() + wait_seconds
        while not self.connection.set(STORE_LEASE_KEY, self.name, nx=True, ex=STORE_LEASE_SECONDS):
            holder = self.connection.get(STORE_LEASE_KEY)
            if holder and _gone_from_this_machine(holder.decode()):
                # The writer on this machine was killed (SIGKILL, OOM): its lease is void. Delete it
                # only if it still names that writer, then try again.
                self.connection.eval(_DELETE_IF_HOLDER, 1, STORE_LEASE_KEY, holder)
                continue
            live = {w.name for w in Worker.all(connection=self.connection)}
            # A registered holder is alive: refuse now. An unregistered one died: wait out its lease.
            if time.monotonic() > deadline or (holder and holder.decode() in live):
                raise CrowdtuneError(
                    f"Another store worker ({holder.decode() if holder else '?'}) already writes the store.",
                    "Run exactly one store worker, on the machine that holds the DuckDB file; "
                    "other machines run `crowdtune worker` without --store.",
                )
            time.sleep(0.5)
        threading.Thread(target=self._keep_lease, daemon=True, name="store-lease").start()

    def _keep_lease(self) -> None:
        while not self._lease_stop.wait(STORE_LEASE_SECONDS / 3):
            try:
                if self.connection.get(STORE_LEASE_KEY) in (None, self.name.encode()):
                    self.connection.set(STORE_LEASE_KEY, self.name, ex=STORE_LEASE_SECONDS)
            except Exception:
                log.warning("could not renew the store writer lease; retrying")

    def release_lease(self) -> None:
        self._lease_stop.set()
        try:
            if self.connection.get(STORE_LEASE_KEY) == self.name.encode():
                self.connection.delete(STORE_LEASE_KEY)
        except Exception:
            pass

    def work(self, *args, **kwargs):
        from crowdtune.runtime.recovery import requeue_orphans

        self.acquire_lease()
        requeue_orphans(self.connection)
        _request_reconcile(self.connection)
        try:
            return super().work(*args, **kwargs)
        finally:
            self.release_lease()
