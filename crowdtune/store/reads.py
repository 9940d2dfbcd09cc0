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


def training_posts(reader: StoreReader, face_id: str) -> list[dict]:
    """A face's imported posts (text, created_at as ISO text, score) for offline training, oldest first."""
    df = reader.frame(
        "SELECT post_id, text, strftime(created_at, '%Y-%m-%dT%H:%M:%S') AS created_at, score "
        "FROM posts WHERE face_id = ? AND origin = 'imported' ORDER BY created_at NULLS FIRST, post_id",
        [face_id],
    )
    return [] if df.empty else df.astype(object).where(df.notna(), None).to_dict("records")


def face_record(reader: StoreReader, face_id: str) -> dict | None:
    """A face's kind, config and scorer (dicts) and active version, or None if it does not exist."""
    import json

    rows = reader.rows("SELECT kind, config, scorer, active_version_id FROM faces WHERE face_id = ?", [face_id])
    if not rows:
        return None
    kind, config, scorer, active = rows[0]
    return {"face_id": face_id, "kind": kind, "config": json.loads(config) if config else {},
            "scorer": json.loads(scorer) if scorer else {}, "active_version_id": active}


def faces(reader: StoreReader) -> list[dict]:
    return [face_record(reader, row[0]) for row in reader.rows("SELECT face_id FROM faces ORDER BY face_id")]


def model_version(reader: StoreReader, version_id: str) -> dict | None:
    df = reader.frame("SELECT * FROM model_versions WHERE version_id = ?", [version_id])
    return None if df.empty else df.astype(object).where(df.notna(), None).iloc[0].to_dict()


# Reads that workers on other machines may ask the store worker for (see crowdtune.store.remote).
NAMED_READS = {
    "training_posts": training_posts,
    "face_record": face_record,
    "model_version": model_version,
}
