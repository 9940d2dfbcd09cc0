"""Read queries for pages, jobs and the CLI. Each opens the file read-only, briefly.

Pages and jobs never write SQL of their own: they call a named query here (the Query page's
sandboxed ad-hoc SQL is the one exception, see crowdtune.store.sandbox).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from crowdtune.settings import Settings
from crowdtune.store.connection import open_for_read, schema_version_of
from crowdtune.store.schema import TABLE_KEYS


class StoreReader:
    """Short read-only queries against the store file; an absent file reads as empty."""

    def __init__(self, path: Path, wait_seconds: float = 5.0):
        self.path = Path(path)
        self.wait_seconds = wait_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> "StoreReader":
        return cls(settings.store_path, settings.read_retry_seconds)

    @property
    def exists(self) -> bool:
        return self.path.exists()

    def frame(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """Run a query and return its rows as a DataFrame (empty if there is no store yet)."""
        with open_for_read(self.path, self.wait_seconds) as con:
            if con is None:
                return pd.DataFrame()
            return con.execute(sql, params or []).df()

    def rows(self, sql: str, params: list | None = None) -> list[tuple]:
        with open_for_read(self.path, self.wait_seconds) as con:
            if con is None:
                return []
            return con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list | None = None, default=None):
        rows = self.rows(sql, params)
        return rows[0][0] if rows and rows[0] else default


@dataclass
class StoreSummary:
    path: Path
    exists: bool
    size_bytes: int
    schema_version: int
    row_counts: dict[str, int]


def summary(reader: StoreReader) -> StoreSummary:
    """Path, size, schema version and row count of every table."""
    if not reader.exists:
        return StoreSummary(reader.path, False, 0, 0, {})
    with open_for_read(reader.path, reader.wait_seconds) as con:
        version = schema_version_of(con)
        present = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        counts = {
            table: con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            for table in list(TABLE_KEYS) + ["applied_writes"]
            if table in present
        }
    size = reader.path.stat().st_size + (reader.path.with_suffix(reader.path.suffix + ".wal").stat().st_size
                                         if reader.path.with_suffix(reader.path.suffix + ".wal").exists() else 0)
    return StoreSummary(reader.path, True, size, version, counts)


def recent_jobs(reader: StoreReader, limit: int = 50) -> pd.DataFrame:
    """The job audit, newest first."""
    return reader.frame(
        "SELECT job_id, func, queue, status, worker, enqueued_at, started_at, ended_at, error "
        "FROM jobs ORDER BY coalesce(ended_at, started_at, enqueued_at) DESC NULLS LAST LIMIT ?",
        [limit],
    )


def job_record(reader: StoreReader, job_id: str) -> dict | None:
    df = reader.frame("SELECT * FROM jobs WHERE job_id = ?", [job_id])
    return None if df.empty else df.iloc[0].to_dict()
