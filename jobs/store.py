"""The store queue's job: apply one batch of writes to DuckDB. Runs on the single store worker."""

from __future__ import annotations

import logging

from crowdtune.settings import load_settings
from crowdtune.store.writer import apply_batch

log = logging.getLogger(__name__)


def apply_write(write_id: str, ops: list[dict]) -> dict:
    """Apply `ops` exactly once; waits (logging every 30 s) while another process holds the file.

    Out: the WriteOutcome as a dict, {"rows", "refused", "already_applied"}: rows the store cannot
    hold are left out and reported (crowdtune.store.writer), so a batch never fails on its data."""
    settings = load_settings()

    def report_wait(holder: str, waited: float) -> None:
        log.warning("store write %s waiting %.0f s: the file is held by %s", write_id, waited, holder)

    outcome = apply_batch(settings.store_path, write_id, ops, settings.store_lock_wait_seconds, on_wait=report_wait)
    return outcome.as_dict()


def read_named(name: str, params: dict):
    """Run one of the store's named reads for a job on another machine (see crowdtune.store.remote)."""
    from crowdtune.store.reads import NAMED_READS, StoreReader

    settings = load_settings()
    reader = StoreReader(settings.store_path, wait_seconds=settings.store_lock_wait_seconds)
    from crowdtune.store.writes import plain

    return plain(NAMED_READS[name](reader, **params))  # timestamps as ISO text: results travel as JSON
