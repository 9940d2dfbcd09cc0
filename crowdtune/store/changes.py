"""The store's change counter and its "held since" note, in Redis: what pages read before any query.

The store worker bumps the counter once per applied batch (and one per table the batch touched),
so a live page asks Redis one cheap question ("did the store change since I last read it?")
instead of reading DuckDB every few seconds. While a batch waits for a file that another program
holds (a `duckdb` shell left open), the worker keeps a "held since" note with a short lifetime,
cleared when the write lands, so every page can say that writes are waiting.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from crowdtune.runtime.defaults import (
    STORE_CHANGES_KEY,
    STORE_HELD_AFTER_SECONDS,
    STORE_HELD_KEY,
    STORE_HELD_TTL,
    STORE_TABLE_CHANGES_KEY,
)
from crowdtune.store.connection import write_is_waiting

log = logging.getLogger(__name__)

HELD_CHECK_SECONDS = 1.0  # how often a waiting write looks at its own write-wanted note


def tables_of(ops: list[dict]) -> set[str]:
    """The tables a batch's operations name."""
    return {op["table"] for op in ops if isinstance(op.get("table"), str)}


def record_batch(conn: redis.Redis, tables: Iterable[str]) -> None:
    """Bump the store's counter, and each table's, for one applied batch (one round trip)."""
    pipe = conn.pipeline(transaction=True)
    pipe.incr(STORE_CHANGES_KEY)
    for table in sorted(set(tables)):
        pipe.hincrby(STORE_TABLE_CHANGES_KEY, table, 1)
    pipe.execute()


def version(conn: redis.Redis, tables: Iterable[str] | None = None) -> int:
    """The store's change counter (with `tables`, the sum of theirs): it moves whenever they change."""
    if tables is None:
        return int(conn.get(STORE_CHANGES_KEY) or 0)
    return sum(int(count or 0) for count in conn.hmget(STORE_TABLE_CHANGES_KEY, sorted(set(tables))))


@dataclass
class Held:
    """Writes are waiting since `since` (UTC) on a file another program holds (`holder`, if known)."""

    since: dt.datetime
    holder: str | None = None


def mark_held(conn: redis.Redis, since: float, holder: str | None = None) -> None:
    """Note (or renew) that writes wait on a held file since the epoch time `since`; the first
    `since` of an ongoing wait is kept (a batch that gave up and retried still waits on the same hold)."""
    raw = conn.get(STORE_HELD_KEY)
    current = json.loads(raw) if raw else {"since": since, "holder": None}
    note = {"since": min(since, current["since"]), "holder": holder or current["holder"]}
    conn.set(STORE_HELD_KEY, json.dumps(note), ex=STORE_HELD_TTL)


def clear_held(conn: redis.Redis) -> None:
    conn.delete(STORE_HELD_KEY)


def held(conn: redis.Redis) -> Held | None:
    """The "held since" note, or None when no write waits on a held file."""
    raw = conn.get(STORE_HELD_KEY)
    if not raw:
        return None
    note = json.loads(raw)
    since = dt.datetime.fromtimestamp(note["since"], dt.UTC).replace(tzinfo=None)  # naive UTC, as the store
    return Held(since, note.get("holder"))


@contextmanager
def noting_a_held_file(conn: redis.Redis, path: Path) -> Iterator[None]:
    """Around one batch: while it waits on a lock for over STORE_HELD_AFTER_SECONDS (the writer touches
    its write-wanted note at every retry), keep the "held since" note in Redis; clear it when the block ends
    well. A block that fails (the wait gave up) leaves the note to its lifetime, for the retry to renew."""
    started, done = time.time(), threading.Event()

    def watch() -> None:
        while not done.wait(HELD_CHECK_SECONDS):
            if time.time() - started >= STORE_HELD_AFTER_SECONDS and write_is_waiting(path):
                try:
                    mark_held(conn, started)
                except redis.RedisError:
                    log.warning("could not note the held store file in Redis")

    watcher = threading.Thread(target=watch, daemon=True, name="store-held-watch")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
    try:
        clear_held(conn)
    except redis.RedisError:
        log.warning("could not clear the held-store note in Redis")
