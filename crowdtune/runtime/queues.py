"""Redis connection and RQ queues: how work reaches the workers.

`connect()` returns a client for REDIS_URL, or for the embedded server under the data folder.
Queues are named for what they carry (settings.QUEUE_ROLES): `control` (light work that keeps its
times: ticks, reaction reads, imports), `train` (GPU/CPU-heavy training), `default` (generation and
background embedding) and `store` (writes to DuckDB, served by exactly one worker).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from crowdtune.errors import RedisUnavailable
from crowdtune.runtime import defaults
from crowdtune.runtime.redis_server import socket_path, socket_url
from crowdtune.settings import QUEUE_CONTROL, QUEUE_DEFAULT, QUEUE_STORE, QUEUE_TRAIN, Settings, load_settings

ALL_QUEUES = (QUEUE_CONTROL, QUEUE_TRAIN, QUEUE_DEFAULT, QUEUE_STORE)
# Only functions from these packages may run on Crowdtune's workers (see worker.py).
JOB_PACKAGES = ("jobs.",)


def redis_url(settings: Settings) -> str:
    return settings.redis_url or socket_url(settings.redis_dir)


def connect(settings: Settings, check: bool = True) -> redis.Redis:
    """A Redis client for the configured server; with `check`, raise RedisUnavailable if it does not answer."""
    url = redis_url(settings)
    try:
        conn = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=30, health_check_interval=30)
    except ValueError as exc:
        raise RedisUnavailable(
            f"REDIS_URL is not a valid Redis URL ({settings.redis_display_url}): {exc}",
            "Use the form redis://[:password@]host:6379/0 or unix:///path/to/redis.sock.",
        ) from None
    if check:
        ping(conn, settings)
    return conn


def ping(conn: redis.Redis, settings: Settings) -> None:
    try:
        conn.ping()
    except redis.AuthenticationError:
        raise RedisUnavailable(
            f"Redis at {settings.redis_display_url} rejected the password.",
            "Put the right password in REDIS_URL (redis://:PASSWORD@host:6379/0).",
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        if settings.embedded_redis:
            raise RedisUnavailable(
                f"The embedded Redis is not running (no server on {socket_path(settings.redis_dir)}).",
                "Start Crowdtune with `make run` (or `crowdtune up`), or set REDIS_URL to a running server.",
            ) from None
        raise RedisUnavailable(
            f"Cannot reach Redis at {settings.redis_display_url}: {exc}",
            "Check that the server runs and REDIS_URL is right, or unset REDIS_URL to use the embedded server.",
        ) from None


class JobKind(StrEnum):
    """What a job carries, which decides how long Redis keeps it (job_lifetimes)."""

    WORK = "work"                # training, publishing, imports, exports, samples: pages show their results
    CONTROL = "control"          # controller ticks, reaction reads, reconciles: frequent, read by nobody later
    STORE_WRITE = "store_write"  # a batch of rows for the store writer: the store holds them once applied
    STORE_READ = "store_read"    # rows read for one waiting job, which deletes the job once it has them


@dataclass(frozen=True)
class JobLifetimes:
    """RQ's three lifetimes of a job, in seconds."""

    result_ttl: int           # after it finished
    failure_ttl: int          # after it failed for good
    ttl: int | None = None    # waiting in its queue; None = until a worker takes it


def job_lifetimes(kind: JobKind, settings: Settings | None = None, wait_seconds: int | None = None) -> JobLifetimes:
    """How long Redis keeps a job of `kind` (settings: result_ttl_seconds, failure_ttl_seconds,
    store_result_ttl_seconds; the rest in crowdtune.runtime.defaults). `wait_seconds`: how long the
    one who asked for a store read waits for it; a read nobody waits for any more is not run."""
    if kind == JobKind.STORE_READ:
        return JobLifetimes(defaults.STORE_READ_RESULT_TTL, defaults.STORE_READ_FAILURE_TTL, wait_seconds)
    settings = settings or load_settings()
    if kind == JobKind.STORE_WRITE:
        # Never a queue lifetime: a write waits in Redis for as long as the file is held.
        return JobLifetimes(settings.store_result_ttl_seconds, settings.failure_ttl_seconds)
    if kind == JobKind.CONTROL:
        return JobLifetimes(defaults.CONTROL_RESULT_TTL, settings.failure_ttl_seconds)
    return JobLifetimes(settings.result_ttl_seconds, settings.failure_ttl_seconds)


def queue(name: str, conn: redis.Redis) -> Queue:
    # JSON, not pickle: job arguments stay plain data, readable in rq-dashboard, and loading
    # them can never run code.
    return Queue(name, connection=conn, serializer=JSONSerializer)


def enqueue(
    conn: redis.Redis,
    queue_name: str,
    func: Callable | str,
    *args: Any,
    job_id: str | None = None,
    timeout: int | None = None,
    retries: int = 0,
    retry_intervals: list[int] | None = None,
    description: str | None = None,
    meta: dict | None = None,
    kind: JobKind = JobKind.WORK,
    lifetimes: JobLifetimes | None = None,
    **kwargs: Any,
):
    """Enqueue a Crowdtune job function on a named queue and return the RQ Job; Redis keeps it for the
    `lifetimes` given, else for those of its `kind` (job_lifetimes)."""
    name = func if isinstance(func, str) else f"{func.__module__}.{func.__qualname__}"
    if not name.startswith(JOB_PACKAGES):
        raise ValueError(f"{name} is not a Crowdtune job: jobs live in the jobs/ package")
    retry = Retry(max=retries, interval=retry_intervals or 0) if retries else None
    lifetimes = lifetimes or job_lifetimes(kind)
    return queue(queue_name, conn).enqueue(
        name,
        args=args,
        kwargs=kwargs,
        job_id=job_id,
        job_timeout=timeout,
        retry=retry,
        description=description,
        meta=meta,
        result_ttl=lifetimes.result_ttl,
        failure_ttl=lifetimes.failure_ttl,
        ttl=lifetimes.ttl,
    )
