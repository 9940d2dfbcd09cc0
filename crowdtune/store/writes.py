"""How everyone but the store worker writes: rows go to the `store` queue, never to the file.

Producers (workers on any machine, the app, the CLI) need only Redis. The store worker applies
each batch exactly once (see writer.py); while the DuckDB file is held by someone else, batches
wait in Redis, which persists them, and catch up in order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import uuid
from collections.abc import Iterable
from enum import Enum
from typing import Any

import redis

from crowdtune.settings import QUEUE_STORE
from crowdtune.store.schema import TABLE_KEYS

# A batch is retried this often if the store worker dies while applying it; re-applying is a no-op.
_RETRIES = 20


def utc_now() -> dt.datetime:
    """Naive UTC, the store's convention for every timestamp."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


# The op vocabulary: every write is a list of these, applied in one transaction (see writer.py).


def upsert_op(table: str, rows: Iterable[dict]) -> dict:
    """Insert rows; on a key conflict update the columns the rows carry."""
    return {"op": "upsert", "table": _checked_table(table), "rows": list(rows)}


def insert_op(table: str, rows: Iterable[dict]) -> dict:
    """Insert rows; rows whose key already exists are left as they are."""
    return {"op": "insert", "table": _checked_table(table), "rows": list(rows)}


def update_op(table: str, where: dict, values: dict) -> dict:
    """Set `values` on the rows matching every column of `where`."""
    return {"op": "update", "table": _checked_table(table), "where": where, "set": values}


def delete_op(table: str, rows: Iterable[dict]) -> dict:
    """Delete the rows of `table` that match all the columns of any of `rows`."""
    return {"op": "delete", "table": _checked_table(table), "rows": list(rows)}


def alert_op(alert_id: str, level: str, source: str, message: str) -> dict:
    """Raise (or refresh) the dashboard alert `alert_id`."""
    return upsert_op("alerts", [{"alert_id": alert_id, "level": level, "source": source,
                                 "message": message[:2000], "created_at": utc_now()}])


def alert_dismissed_op(alerts: Iterable[tuple[str, str]], dismissed_by: str) -> dict:
    """The operator dismissed these (alert_id, message) pairs: each stays hidden until raised with another
    message. Inserted, never replaced: the first dismissal of a message is the one kept."""
    now = utc_now()
    return insert_op("alert_dismissals", [{"alert_id": alert_id, "message": message, "dismissed_by": dismissed_by,
                                           "dismissed_at": now} for alert_id, message in alerts])


def metrics_op(run_id: str, step: int, values: dict[str, float]) -> dict:
    """One metric row per name at `step` of the run (keyed by run, name and step: a repeat changes nothing)."""
    return upsert_op("metrics", [{"run_id": run_id, "name": name, "step": step, "value": value}
                                 for name, value in values.items() if value is not None])


def samples_op(run_id: str, step: int, texts: list[str]) -> dict:
    """The posts a run sampled at an evaluation `step`, numbered in order (keyed: a repeat changes nothing)."""
    return insert_op("evaluation_samples", [{"run_id": run_id, "step": step, "sample": i, "text": text}
                                            for i, text in enumerate(texts)])


def controller_op(face_id: str, **values: Any) -> dict:
    """Set columns of the face's online controller."""
    return update_op("controllers", {"face_id": face_id}, values)


def post_op(post_id: str, **values: Any) -> dict:
    """Set columns of one post."""
    return update_op("posts", {"post_id": post_id}, values)


def plain(value: Any) -> Any:
    """Make a value JSON-safe for the queue: timestamps become naive-UTC ISO strings."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return plain(value.item())
    return value


def _job_id(write_id: str) -> str:
    """An RQ job id (letters, digits, _ and - only) that is unique per write id."""
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", write_id)[:80]
    return f"store-{readable}-{hashlib.sha1(write_id.encode()).hexdigest()[:10]}"


def _checked_table(table: str) -> str:
    if table not in TABLE_KEYS:
        raise ValueError(f"unknown table {table!r}; writable tables: {sorted(TABLE_KEYS)}")
    return table


class StoreWriter:
    """Queue writes for the single store worker. Each call returns the write id (= RQ job id)."""

    def __init__(self, conn: redis.Redis):
        self.conn = conn
        self._lifetimes = None

    def submit(self, ops: list[dict], write_id: str | None = None) -> str:
        """Queue one batch of operations, applied atomically and at most once per `write_id`."""
        from crowdtune.runtime.queues import JobKind, enqueue, job_lifetimes

        # Redis drops an applied batch (its rows) after store_result_ttl_seconds; exactly-once does not
        # depend on it (the store's applied_writes table does that).
        self._lifetimes = self._lifetimes or job_lifetimes(JobKind.STORE_WRITE)
        write_id = write_id or f"w-{uuid.uuid4().hex}"
        enqueue(
            self.conn,
            QUEUE_STORE,
            "jobs.store.apply_write",
            write_id,
            plain(ops),
            job_id=_job_id(write_id),
            timeout=-1,  # the file may be held by someone else for a long time: wait, never fail
            retries=_RETRIES,
            retry_intervals=[1, 5, 30],
            lifetimes=self._lifetimes,
            description=f"store write {write_id}: " + ", ".join(f"{o['op']} {o['table']}" for o in ops),
        )
        return write_id

    def upsert(self, table: str, rows: Iterable[dict], write_id: str | None = None) -> str:
        """Insert rows; on a key conflict update the columns the rows carry."""
        return self.submit([upsert_op(table, rows)], write_id)

    def insert(self, table: str, rows: Iterable[dict], write_id: str | None = None) -> str:
        """Insert rows; rows whose key already exists are left as they are."""
        return self.submit([insert_op(table, rows)], write_id)

    def update(self, table: str, where: dict, values: dict, write_id: str | None = None) -> str:
        return self.submit([update_op(table, where, values)], write_id)


def write_outcome(conn: redis.Redis, write_id: str) -> dict | None:
    """What the store worker did with a queued write, or None while it still waits or runs.

    Out: {"rows": touched, "refused": [{"table", "key", "reason"}], "already_applied": bool} (see
    crowdtune.store.writer.WriteOutcome). Raises CrowdtuneError when the write failed for good
    (its retries spent) or is no longer in Redis."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job, JobStatus
    from rq.serializers import JSONSerializer

    from crowdtune.errors import CrowdtuneError, traceback_message

    try:
        job = Job.fetch(_job_id(write_id), connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        raise CrowdtuneError(f"The store write {write_id} is no longer in Redis (expired or deleted).",
                             "Run the import again: writes already applied are not applied twice. Redis keeps "
                             "an applied write for store_result_ttl_seconds.") from None
    status = job.get_status(refresh=False)
    if status == JobStatus.FINISHED:
        value = job.return_value()
        return value if isinstance(value, dict) else {"rows": value or 0, "refused": [], "already_applied": False}
    if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        result = job.latest_result()
        error = traceback_message(result.exc_string if result else None, default=status.value)
        raise CrowdtuneError(f"The store worker could not apply the write {write_id}: {error}",
                             "See the failed job on the System page; fix its cause and run the import again.")
    return None
