"""Opening the DuckDB file: briefly, with a bounded retry while another process holds it.

DuckDB lets one process hold a file read-write, and any holder (read-only too) blocks the others'
writes. So nobody keeps the file open: the single writer opens it per batch, readers per query.
"""

from __future__ import annotations

import logging
import random
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

from crowdtune.errors import StoreUnavailable
from crowdtune.store.schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger(__name__)


class StoreBusy(StoreUnavailable):
    """The file stayed held by another process for longer than we were willing to wait."""


def _is_lock_error(exc: Exception) -> bool:
    return "lock" in str(exc).lower()


def _holder(exc: Exception) -> str:
    match = re.search(r"PID (\d+)", str(exc))
    return f"process {match.group(1)}" if match else "another process"


def _unusable(path: Path, exc: Exception) -> StoreUnavailable:
    text = str(exc)
    if "not a valid DuckDB database" in text or "Corrupt" in text or "checksum" in text.lower():
        return StoreUnavailable(
            f"The store {path} is not a readable DuckDB database (corrupt or another kind of file).",
            f"Move {path} aside (Crowdtune deletes nothing) and restart to create a new store, "
            "or set CROWDTUNE_DB_PATH to another file.",
        )
    if "version" in text.lower() and "storage" in text.lower():
        return StoreUnavailable(
            f"The store {path} was written by a newer DuckDB than this one ({duckdb.__version__}).",
            "Upgrade Crowdtune's packages (`make setup`), or set CROWDTUNE_DB_PATH to another file.",
        )
    if isinstance(exc, (PermissionError, OSError)) or "Permission denied" in text or "Read-only" in text:
        return StoreUnavailable(
            f"Cannot open the store {path}: {text.splitlines()[0]}",
            "Make the data folder writable, or set CROWDTUNE_DATA_DIR / CROWDTUNE_DB_PATH to a writable place.",
        )
    return StoreUnavailable(
        f"Cannot open the store {path}: {text.splitlines()[0] if text else type(exc).__name__}",
        "Check the file and its folder; set CROWDTUNE_DB_PATH to use another file.",
    )


def _connect_with_retry(path: Path, read_only: bool, wait_seconds: float, on_wait=None) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait_seconds
    delay = 0.001
    last_report = time.monotonic()
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            if not _is_lock_error(exc):
                raise _unusable(path, exc) from None
            now = time.monotonic()
            if now >= deadline:
                raise StoreBusy(
                    f"The store {path} is held by {_holder(exc)} and stayed busy for {wait_seconds:.0f} s.",
                    "Close other programs that hold the file (e.g. a `duckdb` shell) and try again; "
                    "queued writes are kept in Redis and catch up by themselves.",
                ) from None
            if on_wait is not None and now - last_report > 30:
                on_wait(_holder(exc), now - (deadline - wait_seconds))
                last_report = now
            # Jittered exponential backoff: two writers in lockstep would collide forever.
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.25)
        except OSError as exc:
            raise _unusable(path, exc) from None


def schema_version_of(con: duckdb.DuckDBPyConnection) -> int:
    """The store's schema version, 0 for a new file. Asked directly, not through
    information_schema, whose query costs ~5 ms on every read-only open."""
    try:
        return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    except duckdb.CatalogException:
        return 0


def check_schema(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"The store {path} has schema version {version}, newer than this Crowdtune understands ({SCHEMA_VERSION}).",
            "Upgrade Crowdtune (git pull && make setup), or set CROWDTUNE_DB_PATH to another file. Nothing was changed.",
        )


def migrate(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Apply missing migrations in one transaction each; return the resulting version."""
    version = schema_version_of(con)
    check_schema(path, version)
    for number in range(version + 1, SCHEMA_VERSION + 1):
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(MIGRATIONS[number - 1])
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [number])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        log.info("store %s migrated to schema version %d", path, number)
    return SCHEMA_VERSION


@contextmanager
def open_for_write(path: Path, wait_seconds: float, on_wait=None) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the store read-write (creating and migrating it), waiting while another process holds it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unusable(path, exc) from None
    con = _connect_with_retry(path, read_only=False, wait_seconds=wait_seconds, on_wait=on_wait)
    try:
        migrate(con, path)
        yield con
    finally:
        con.close()


@contextmanager
def open_for_read(path: Path, wait_seconds: float) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """Open the store read-only for one short read; yields None when no store exists yet."""
    path = Path(path)
    if not path.exists():
        yield None
        return
    con = _connect_with_retry(path, read_only=True, wait_seconds=wait_seconds)
    try:
        check_schema(path, schema_version_of(con))
        yield con
    finally:
        con.close()
