"""Reads for jobs that may run on a machine without the DuckDB file.

A job asks the single store worker (which has the file) to run one of the named reads in
`reads.NAMED_READS` and waits for the answer through Redis. Because the store queue is FIFO, the
answer includes every write queued before the question. The answer is rows: the asker deletes the
job as soon as it has them (and Redis would drop it a minute later anyway), and a question nobody
waits for any more expires from the queue unasked.

A read of a face's posts (thousands of rows: snapshots.SNAPSHOT_READS) is answered with the URL of a
Parquet file under artifacts_url instead (read_rows_via_store_worker): Redis carries a URL, not the posts.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rq.exceptions import InvalidJobOperation

from crowdtune.errors import CrowdtuneError, traceback_message
from crowdtune.runtime.queues import JobKind, enqueue, job_lifetimes
from crowdtune.settings import QUEUE_STORE, load_settings
from crowdtune.store.reads import NAMED_READS
from crowdtune.store.snapshots import SNAPSHOT_READS, read_snapshot


def read_via_store_worker(conn: redis.Redis, name: str, timeout: float = 600.0, **params: Any) -> Any:
    """Run the named read on the store worker and return its result."""
    if name not in NAMED_READS:
        raise ValueError(f"unknown read {name!r}; known: {sorted(NAMED_READS)}")
    return _answer(conn, "jobs.store.read_named", name, params, timeout)


def read_rows_via_store_worker(conn: redis.Redis, name: str, timeout: float = 600.0, **params: Any) -> list[dict]:
    """Run a named read of many rows (one of snapshots.SNAPSHOT_READS) on the store worker and return its
    rows, the same as read_via_store_worker would, read from the Parquet snapshot the store worker wrote."""
    if name not in SNAPSHOT_READS:
        raise ValueError(f"{name!r} is not a snapshot read; those are {list(SNAPSHOT_READS)}")
    cache = load_settings().data_dir / "cache" / "snapshots"
    for attempt in range(2):
        answer = _answer(conn, "jobs.store.snapshot_named", name, params, timeout)
        try:
            return read_snapshot(answer, cache)
        except FileNotFoundError:
            if attempt:  # pruned twice between the answer and the read: something else is wrong
                raise
    raise AssertionError("unreachable")


def _answer(conn: redis.Redis, func: str, name: str, params: dict, timeout: float) -> Any:
    wait = max(1, round(timeout))
    job = enqueue(conn, QUEUE_STORE, func, name, params, timeout=wait,
                  lifetimes=job_lifetimes(JobKind.STORE_READ, wait_seconds=wait), description=f"store read {name}")
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        try:
            status = job.get_status(refresh=True)
        except InvalidJobOperation:  # expired unasked (its queue lifetime is our wait): we waited long enough
            break
        if status is not None and status.value == "finished":
            answer = job.latest_result().return_value
            job.delete()
            return answer
        if status is not None and status.value in ("failed", "stopped", "canceled"):
            result = job.latest_result()
            cause = traceback_message(result.exc_string if result else None, default=str(status.value))
            raise CrowdtuneError(
                f"The store worker could not read {name}: {cause}",
                "See the failed job on the System page.",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise CrowdtuneError(
        f"The store worker did not answer the read {name!r} within {timeout:.0f} s.",
        "Check that exactly one store worker runs (`crowdtune status`) and that the store file is not held open.",
    )
