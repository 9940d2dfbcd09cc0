"""Control flags: how the app and the CLI ask a running job to stop, without killing it.

Each flag lives in its own Redis key (not in the job's meta, which RQ rewrites whole), and a
Lightning callback in the job reads it between steps. SIGKILL stays the fallback.
"""

from __future__ import annotations

import redis

from crowdtune.runtime.defaults import STOP_KEY as _STOP
from crowdtune.runtime.defaults import STOP_TTL as _STOP_TTL


def request_stop(conn: redis.Redis, run_id: str) -> None:
    """Ask the run to stop at its next step; it saves a checkpoint and ends in state `stopped`."""
    conn.set(_STOP.format(run_id=run_id), "1", ex=_STOP_TTL)


def stop_requested(conn: redis.Redis, run_id: str) -> bool:
    return bool(conn.exists(_STOP.format(run_id=run_id)))


def clear_stop(conn: redis.Redis, run_id: str) -> None:
    conn.delete(_STOP.format(run_id=run_id))


def seconds_since_stop_request(conn: redis.Redis, run_id: str) -> float | None:
    """How long ago the run was asked to stop (from its flag's remaining TTL, to the second), or None
    when it was not asked."""
    remaining = conn.ttl(_STOP.format(run_id=run_id))
    return None if remaining is None or remaining < 0 else float(_STOP_TTL - remaining)
