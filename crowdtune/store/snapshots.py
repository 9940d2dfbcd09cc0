"""Reads of many rows travel as Parquet files under artifacts_url, not through Redis.

A job on any machine asks the store worker for a read whose answer is a face's posts
(SNAPSHOT_READS; crowdtune.store.remote.read_rows_via_store_worker). The store worker runs it and
writes the rows once, as

    <artifacts_url>/snapshots/<read>/<param>=<value>/<digest>.parquet

where the digest is of the rows themselves: a file never changes once written, an unchanged
answer is not written again, and any copy of a file is as good as the file. The store worker
answers with the URL alone. The job reads the file straight from a local artifacts folder, or from
a copy it keeps under <data_dir>/cache/snapshots when artifacts_url is remote. Only the KEEP newest
files of a read and its parameters stay, in both places.

If the file cannot be written (an artifacts folder that is full or read-only for a while), the rows
travel in the answer as before, so a publish never fails for a snapshot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from urllib.parse import quote

import fsspec

from crowdtune import artifacts
from crowdtune.store.writes import plain

log = logging.getLogger(__name__)

# Named reads (crowdtune.store.reads.NAMED_READS) whose answer is a face's posts: thousands of rows.
SNAPSHOT_READS = ("training_posts", "reward_model_inputs")
KEEP = 3  # newer files of one read: a job that was just told an older URL still finds its file


def snapshot_folder(artifacts_url: str, read: str, params: dict) -> str:
    """The URL of the folder that holds the snapshots of `read` with these parameters."""
    key = ",".join(f"{name}={quote(str(value), safe='')}" for name, value in sorted(params.items())) or "all"
    return artifacts.join(artifacts_url, "snapshots", read, key)


def digest_of(rows: list[dict]) -> str:
    """A digest of the rows' content (JSON with sorted keys): the snapshot's file name."""
    payload = json.dumps(rows, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:24]


def write_snapshot(artifacts_url: str, read: str, params: dict, rows: list[dict]) -> dict:
    """Write the rows of one read as Parquet (unless that content is already there). Runs on the store worker.

    In: the read's name and parameters and its rows (dicts). Out: the answer that travels through
    Redis: {"url": the file's URL, "rows": their count} (url None when there are no rows), or
    {"inline": rows, "rows": count} when the file could not be written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = plain(rows)  # the same values a JSON answer would carry: timestamps as ISO text, no NaN
    if not rows:
        return {"url": None, "rows": 0}
    folder = snapshot_folder(artifacts_url, read, params)
    url = artifacts.join(folder, f"{digest_of(rows)}.parquet")
    try:
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.exists(path):
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            partial = f"{path}.{uuid.uuid4().hex[:8]}.tmp"  # renamed when complete: nobody reads half a file
            with fs.open(partial, "wb") as out:
                pq.write_table(pa.Table.from_pylist(rows), out)
            fs.mv(partial, path)
            _prune(fs, path.rsplit("/", 1)[0])
    except (OSError, ValueError) as exc:
        log.warning("could not write the %s snapshot under %s (%s); its rows go through Redis this time",
                    read, folder, exc)
        return {"inline": rows, "rows": len(rows)}
    return {"url": url, "rows": len(rows)}


def read_snapshot(answer: dict, cache_dir: Path) -> list[dict]:
    """The rows of a store worker's answer (write_snapshot): from its file, through `cache_dir` when remote.

    Raises FileNotFoundError when the file is gone (pruned after newer ones): ask again."""
    import pyarrow.parquet as pq

    if "inline" in answer:
        return answer["inline"]
    url = answer.get("url")
    if url is None:
        return []
    if artifacts.is_local(url):
        return pq.read_table(artifacts.local_path(url)).to_pylist()
    fs, path = fsspec.core.url_to_fs(url)
    read, key, name = path.rsplit("/", 3)[-3:]
    copy = Path(cache_dir) / read / key / name
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        partial = copy.with_name(f"{name}.{uuid.uuid4().hex[:8]}.tmp")
        fs.get_file(path, str(partial))
        os.replace(partial, copy)
        _prune(fsspec.filesystem("file"), str(copy.parent))
    return pq.read_table(copy).to_pylist()


def _prune(fs, folder: str) -> None:
    """Delete all but the KEEP newest snapshots in `folder`."""
    try:
        files = sorted(fs.glob(f"{folder}/*.parquet"), key=fs.modified)
        for old in files[:-KEEP]:
            fs.rm(old)
    except (OSError, NotImplementedError) as exc:  # only space is at stake
        log.warning("could not prune the snapshots in %s: %s", folder, exc)
