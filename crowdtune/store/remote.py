"""Reads for jobs that may run on a machine without the DuckDB file.

A job asks the single store worker (which has the file) to run one of the named reads in
`reads.NAMED_READS` and waits for the answer through Redis. Because the store queue is FIFO, the
answer includes every write queued before the question.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from crowdtune.errors import CrowdtuneError, traceback_message
from crowdtune.runtime.queues import enqueue
from crowdtune.settings import QUEUE_STORE
from crowdtune.store.reads import NAMED_READS


def read_via_store_worker(conn: redis.Redis, name: str, timeout: float = 600.0, **params: Any) -> Any:
    """Run the named read on the store worker and return its result."""
    if name not in NAMED_READS:
        raise ValueError(f"unknown read {name!r}; known: {sorted(NAMED_READS)}")
    job = enqueue(conn, QUEUE_STORE, "jobs.store.read_named", name, params, timeout=int(timeout),
                  description=f"store read {name}")
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        status = job.get_status(refresh=True)
        if status is not None and status.value == "finished":
            return job.latest_result().return_value
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
