"""The store queue's job: apply one batch of writes to DuckDB. Runs on the single store worker."""

from __future__ import annotations

import logging
import time

import redis
from rq import get_current_job

from crowdtune.settings import load_settings
from crowdtune.store import changes
from crowdtune.store.writer import apply_batch

log = logging.getLogger(__name__)


def apply_write(write_id: str, ops: list[dict]) -> dict:
    """Apply `ops` exactly once; waits (logging every 30 s) while another process holds the file.

    Out: the WriteOutcome as a dict, {"rows", "refused", "already_applied"}: rows the store cannot
    hold are left out and reported (crowdtune.store.writer), so a batch never fails on its data.
    Pages learn of it from Redis (crowdtune.store.changes): the change counter moves once per applied
    batch, and a "held since" note stands while the batch waits on a file another program holds."""
    settings = load_settings()
    job = get_current_job()
    conn = job.connection if job is not None else None  # called outside a worker (a test): no one to tell

    def report_wait(holder: str, waited: float) -> None:
        log.warning("store write %s waiting %.0f s: the file is held by %s", write_id, waited, holder)
        if conn is not None:
            try:
                changes.mark_held(conn, time.time() - waited, holder)
            except redis.RedisError:  # the note is for pages; the write goes on waiting regardless
                log.warning("could not note the held store file in Redis")

    if conn is None:
        return apply_batch(settings.store_path, write_id, ops, settings.store_lock_wait_seconds,
                           on_wait=report_wait).as_dict()
    with changes.noting_a_held_file(conn, settings.store_path):
        outcome = apply_batch(settings.store_path, write_id, ops, settings.store_lock_wait_seconds, on_wait=report_wait)
    if not outcome.already_applied:
        try:
            changes.record_batch(conn, changes.tables_of(ops))
        except redis.RedisError:  # the batch landed; pages catch up at their next full read
            log.warning("store write %s: could not bump the change counter", write_id)
    return outcome.as_dict()


def read_named(name: str, params: dict):
    """Run one of the store's named reads for a job on another machine (see crowdtune.store.remote)."""
    from crowdtune.store.reads import NAMED_READS, StoreReader

    settings = load_settings()
    reader = StoreReader(settings.store_path, wait_seconds=settings.store_lock_wait_seconds)
    from crowdtune.store.writes import plain

    return plain(NAMED_READS[name](reader, **params))  # timestamps as ISO text: results travel as JSON


def snapshot_named(name: str, params: dict) -> dict:
    """Run a named read of many rows and write them as a Parquet snapshot under artifacts_url
    (crowdtune.store.snapshots); the answer is the snapshot's URL, not the rows."""
    from crowdtune.store.reads import NAMED_READS, StoreReader
    from crowdtune.store.snapshots import SNAPSHOT_READS, write_snapshot

    if name not in SNAPSHOT_READS:
        raise ValueError(f"{name!r} is not a snapshot read; those are {list(SNAPSHOT_READS)}")
    settings = load_settings()
    reader = StoreReader(settings.store_path, wait_seconds=settings.store_lock_wait_seconds)
    return write_snapshot(settings.artifacts, name, params, NAMED_READS[name](reader, **params))
