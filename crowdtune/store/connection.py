"""Opening the DuckDB file: briefly, with a bounded retry while another process holds it.

DuckDB lets one process hold a file read-write, and any holder (read-only too) blocks the others'
writes. So nobody keeps the file open: the single writer opens it per batch, readers attach it
for the length of one read (to one in-memory instance per process, see _FileInProcess).
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


# A writer that meets a held file says so in a file beside it, and readers about to take the file
# wait while that note is fresh (touched at every retry of the writer). Why: reads overlapping each
# other (many dashboard sessions, busy workers) would otherwise keep the file held without a gap,
# and a waiting writer would starve. A note left by a killed writer goes stale and is ignored.
WRITE_WANTED_FRESH_SECONDS = 2.0
STEP_ASIDE_SECONDS = 0.4
STEP_ASIDE_PAUSE_SECONDS = 5.0  # after stepping aside in vain: while someone else holds the file
# The other way round, a reader that meets a held file leaves a read-wanted note, and a writer about
# to open the file lets it in first (for at most READ_TURN_SECONDS). Why: a backlog of writes
# applied back to back leaves gaps of milliseconds, which a reader retrying every 0.25 s misses:
# a query during a large catch-up starved for a minute.
READ_TURN_SECONDS = 0.5


def write_wanted_note(path: Path) -> Path:
    return path.with_name(path.name + ".write-wanted")


def read_wanted_note(path: Path) -> Path:
    return path.with_name(path.name + ".read-wanted")


def _note_is_fresh(note: Path) -> bool:
    try:
        return time.time() - note.stat().st_mtime < WRITE_WANTED_FRESH_SECONDS
    except OSError:
        return False


def write_is_waiting(path: Path) -> bool:
    return _note_is_fresh(write_wanted_note(path))


def read_is_waiting(path: Path) -> bool:
    return _note_is_fresh(read_wanted_note(path))


def _announce(note: Path) -> bool:
    try:
        note.touch()
        return True
    except OSError:  # a read-only folder: the other side just won't step aside
        return False


def _let_waiting_readers_in(path: Path) -> None:
    """Before a write opens the file: wait (at most READ_TURN_SECONDS) while a reader says it waits."""
    deadline = time.monotonic() + READ_TURN_SECONDS
    while read_is_waiting(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def with_lock_retry(path: Path, wait_seconds: float, attempt, on_wait=None, writing: bool = False):
    """attempt() until it stops failing on another process's lock on the file, for at most
    `wait_seconds`; any other failure is named at once (see _unusable). A `writing` attempt asks
    readers to step aside meanwhile (write_wanted_note), a read asks the next writer to let it in
    first (read_wanted_note)."""
    deadline = time.monotonic() + wait_seconds
    note = write_wanted_note(path) if writing else read_wanted_note(path)
    delay = 0.001
    last_report = time.monotonic()
    announced = False
    try:
        while True:
            try:
                return attempt()
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
                announced = _announce(note) or announced
                if on_wait is not None and now - last_report > 30:
                    on_wait(_holder(exc), now - (deadline - wait_seconds))
                    last_report = now
                # Jittered exponential backoff: two writers in lockstep would collide forever.
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.25)
            except OSError as exc:
                raise _unusable(path, exc) from None
    finally:
        if announced:
            note.unlink(missing_ok=True)


def _connect_with_retry(path: Path, read_only: bool, wait_seconds: float, on_wait=None) -> duckdb.DuckDBPyConnection:
    return with_lock_retry(path, wait_seconds, lambda: duckdb.connect(str(path), read_only=read_only), on_wait,
                            writing=not read_only)


# How long a read waits for this process's own exclusive user of the file (a write, or a Query
# page query, which stops itself at its time limit) before giving up.
IN_PROCESS_WAIT_SECONDS = 60.0


class _FileInProcess:
    """This process's use of one store file: shared by reads, or exclusive (a write, the Query page).

    Reads attach the file READ_ONLY to one in-memory DuckDB instance per process while at least one
    read is open, and detach it after the last. Why not `duckdb.connect(file, read_only=True)` per
    read: a new instance rebuilds DuckDB's function catalogue, ~16 ms every time, while attaching to
    a live instance takes under 1 ms. And why one handle: DuckDB locks the file with fcntl, whose
    locks belong to the process, so a second handle on the file closing would silently drop the
    first one's lock and let a writer in under a read still running. Exclusive users therefore wait
    until no read holds the file, and reads wait for them.
    """

    def __init__(self, path: Path, alias: str):
        self.path, self.alias = path, alias
        self.changed = threading.Condition()
        self.readers = 0
        self.exclusive_owner: int | None = None  # thread id
        self.exclusive_waiting = 0
        self.no_step_aside_until = 0.0

    def _wait(self, ready, what: str) -> None:
        if not self.changed.wait_for(ready, timeout=IN_PROCESS_WAIT_SECONDS):
            raise StoreBusy(f"The store {self.path} stayed in use by this process ({what}) for "
                            f"{IN_PROCESS_WAIT_SECONDS:.0f} s.", "Try again in a moment.")

    def _no_exclusive(self) -> bool:
        return self.exclusive_owner is None and not self.exclusive_waiting

    @contextmanager
    def shared(self, files: _ProcessFiles, wait_seconds: float) -> Iterator[str]:
        me = threading.get_ident()
        with self.changed:
            if self.exclusive_owner == me:
                raise RuntimeError(f"a read of {self.path} inside this thread's own write or query")
            # Exclusive users that wait go first: a stream of reads must not starve a write.
            self._wait(self._no_exclusive, "a write or a query")
            # So does a writer in another process (write_wanted_note): long enough for its next try
            # (it retries at least every 0.375 s), not longer, for something else may be what holds
            # the file (a `duckdb` shell), and then this read need not wait for the writer.
            if write_is_waiting(self.path) and time.monotonic() >= self.no_step_aside_until:
                deadline = time.monotonic() + min(wait_seconds, STEP_ASIDE_SECONDS)
                while write_is_waiting(self.path) and time.monotonic() < deadline:
                    self.changed.wait(0.005)
                    self._wait(self._no_exclusive, "a write or a query")
                if write_is_waiting(self.path):  # it had its chance: another process holds the file
                    self.no_step_aside_until = time.monotonic() + STEP_ASIDE_PAUSE_SECONDS
            if self.readers == 0:
                quoted = str(self.path).replace("'", "''")
                # IF NOT EXISTS: should a DETACH ever have failed, the file is still attached, and in use.
                with_lock_retry(self.path, wait_seconds, lambda: files.run(
                    f"ATTACH IF NOT EXISTS '{quoted}' AS \"{self.alias}\" (READ_ONLY)"))
            self.readers += 1
        try:
            yield self.alias
        finally:
            with self.changed:
                self.readers -= 1
                if self.readers == 0:
                    files.run(f'DETACH "{self.alias}"')
                self.changed.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        with self.changed:
            if self.exclusive_owner == me:
                raise RuntimeError(f"{self.path} is already held by this thread")
            self.exclusive_waiting += 1
            try:
                self._wait(lambda: self.readers == 0 and self.exclusive_owner is None, "reads")
            finally:
                self.exclusive_waiting -= 1
            self.exclusive_owner = me
        try:
            yield
        finally:
            with self.changed:
                self.exclusive_owner = None
                self.changed.notify_all()


class _ProcessFiles:
    """The in-memory instance that reads attach store files to, and each file's _FileInProcess.
    Made again in a forked child (a worker's job): locks and DuckDB's threads do not survive fork."""

    def __init__(self):
        self.pid = os.getpid()
        self.guard = threading.Lock()
        self.files: dict[Path, _FileInProcess] = {}
        self._instance: duckdb.DuckDBPyConnection | None = None

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the process's read instance: threads never share one."""
        with self.guard:
            if self._instance is None:
                self._instance = duckdb.connect(":memory:")
            return self._instance.cursor()

    def run(self, sql: str) -> None:
        with self.cursor() as cursor:
            cursor.execute(sql)

    def file(self, path: Path) -> _FileInProcess:
        key = path.resolve()
        with self.guard:
            if key not in self.files:
                self.files[key] = _FileInProcess(key, f"store_{len(self.files)}")
            return self.files[key]


_process_files = _ProcessFiles()
_forked_away: list[_ProcessFiles] = []  # the parent's, kept referenced: never torn down in a child


def _here() -> _ProcessFiles:
    global _process_files
    if _process_files.pid != os.getpid():
        _forked_away.append(_process_files)
        _process_files = _ProcessFiles()
    return _process_files


@contextmanager
def holding_alone(path: Path) -> Iterator[None]:
    """Use the store file with no read of this process holding it (and none starting) meanwhile:
    for a handle of its own, such as a write. (The Query page runs its queries in a process of
    its own, whose lock is separate, so it needs none.)"""
    with _here().file(Path(path)).exclusive():
        yield


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
            "Upgrade Crowdtune (git pull && make setup), or set CROWDTUNE_DB_PATH to another file. "
            "Nothing was changed.",
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
    with holding_alone(path):
        _let_waiting_readers_in(path)
        con = _connect_with_retry(path, read_only=False, wait_seconds=wait_seconds, on_wait=on_wait)
        try:
            migrate(con, path)
            yield con
        finally:
            con.close()


@contextmanager
def open_for_read(path: Path, wait_seconds: float) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """Open the store read-only for one short read; yields None when no store exists yet.

    The connection is a cursor of this process's read instance with the file attached and in use
    (see _FileInProcess), so unqualified table names are the store's."""
    path = Path(path)
    if not path.exists():
        yield None
        return
    files = _here()
    with files.file(path).shared(files, wait_seconds) as alias:
        con = files.cursor()
        try:
            con.execute(f'USE "{alias}"')
            check_schema(path, schema_version_of(con))
            yield con
        finally:
            con.close()
