"""Issue 13's acceptance, property-based: CSV, JSONL and Parquet files mixing valid rows, duplicate ids
and every kind of bad cell, imported through the CLI, the real import worker and the real store.

Each example asserts: every valid row's post is in the store exactly once, holding its id's last
valid row; every bad row is reported once, with its line; the CLI's final counts equal the store's;
no store write is in the store queue's failed registry.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq.registry import FailedJobRegistry
from typer.testing import CliRunner

from crowdtune import actions
from crowdtune.cli import app
from crowdtune.runtime.queues import queue
from crowdtune.testing.processes import wait_for

MAX_ID_CHARS = 64  # the faces below set it, so a too-long id needs 65 characters, not 20 MB
TIME = "2024-01-01T00:00:00"

# Bad cells as (column, value); which formats can carry each one.
BAD_CELLS = {
    "count beyond BIGINT": ("likes", "1e30"),
    "negative count": ("likes", "-5"),
    "count that is a word": ("likes", "lots"),
    "NUL in the text": ("text", "nul \x00 byte"),
    "empty text": ("text", " "),
    "id too long": ("id", "i" * (MAX_ID_CHARS + 1)),
    "not a time": ("created_at", "yesterday-ish"),
}
ONLY = {"jsonl": {"lone surrogate": ("text", "a \ud800 b")},
        "csv": {"bytes not UTF-8": ("text", "BADBYTES"), "unclosed quote": ("text", "UNCLOSED")},
        "parquet": {}}

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                max_size=30).filter(str.strip)
valid_rows = st.fixed_dictionaries({
    "id": st.integers(0, 12).map(str),  # few ids: duplicates are common
    "text": texts,
    "likes": st.integers(0, 10**12),
    "spreadsheet_format": st.booleans(),  # "1,234" instead of 1234
})


@st.composite
def files(draw, file_format: str):
    """(format, rows as dicts, bad kinds per row (None = valid), CSV line end, BOM)."""
    kinds = sorted({**BAD_CELLS, **ONLY[file_format]})
    entries = draw(st.lists(st.one_of(valid_rows, st.sampled_from(kinds)), min_size=1, max_size=25))
    rows, bad = [], []
    for entry in entries:
        if isinstance(entry, dict):
            likes = f"{entry['likes']:,}" if entry["spreadsheet_format"] else str(entry["likes"])
            rows.append({"id": entry["id"], "text": entry["text"], "created_at": TIME, "likes": likes})
            bad.append(None)
        else:
            column, value = {**BAD_CELLS, **ONLY[file_format]}[entry]
            rows.append({"id": "1", "text": "a bad row", "created_at": TIME, "likes": "1", column: value})
            bad.append(entry)
    return file_format, rows, bad, draw(st.sampled_from(["\n", "\r\n", "\r"])), draw(st.booleans())


def write_file(folder, file_format, rows, bad, line_end, bom) -> tuple[str, list[int]]:
    """Write the rows; return the path and each row's line (the first physical line of its record)."""
    path = folder / f"posts.{file_format}"
    if file_format == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return str(path), [number + 2 for number in range(len(rows))]
    if file_format == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(path), [number + 1 for number in range(len(rows))]
    out = bytearray(b"\xef\xbb\xbf" if bom else b"")
    out += f"id,text,created_at,likes{line_end}".encode()
    lines = []
    for row, kind in zip(rows, bad, strict=True):
        lines.append(len(bytes(out).removeprefix(b"\xef\xbb\xbf").splitlines()) + 1)
        if kind == "unclosed quote":
            out += f'{row["id"]},"this quote never closes,{TIME},1{line_end}'.encode()
            continue
        buffer = io.StringIO()
        csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator=line_end).writerow(row.values())
        out += buffer.getvalue().encode().replace(b"BADBYTES", b"caf\xe9 \xff")
    path.write_bytes(bytes(out))
    return str(path), lines


face_numbers = itertools.count()


@pytest.mark.slow
@pytest.mark.parametrize("file_format", ["csv", "jsonl", "parquet"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_every_valid_row_lands_once_every_bad_row_is_reported_and_the_cli_counts_the_store(
        file_format, data, running, redis_conn, tmp_path_factory):
    file_format, rows, bad, line_end, bom = data.draw(files(file_format))
    reader = running
    face_id = f"p{next(face_numbers)}"
    path, lines = write_file(tmp_path_factory.mktemp(face_id), file_format, rows, bad, line_end, bom)
    actions.save_face(redis_conn, face_id, "dataset", {
        "source": path, "reaction_columns": {"likes": "likes"}, "max_id_chars": MAX_ID_CHARS})
    wait_for(lambda: reader.scalar("SELECT count(*) FROM faces WHERE face_id = ?", [face_id]), message="the face")

    done = CliRunner().invoke(app, ["import", "--face", face_id])
    assert done.exit_code == 0, done.output
    result = json.loads(json.dumps(queue("control", redis_conn).fetch_job(
        re.search(r"Import job (\S+) queued", done.stdout).group(1)).return_value()))

    # 1) every valid row's id is in the store once, holding the id's last valid row (text and likes)
    last = {}
    for row, kind in zip(rows, bad, strict=True):
        if kind is None:
            last[row["id"]] = row
    stored = {pid: (text, likes) for pid, text, likes in reader.rows(
        "SELECT p.platform_id, p.text, s.count FROM posts p LEFT JOIN reaction_snapshots s USING (post_id) "
        "WHERE p.face_id = ?", [face_id])}
    assert reader.scalar("SELECT count(*) FROM posts WHERE face_id = ?", [face_id]) == len(stored) == len(last)
    assert stored == {pid: (row["text"], int(row["likes"].replace(",", ""))) for pid, row in last.items()}
    # 2) every bad row reported once, on its line; nothing else reported
    bad_lines = sorted(line for line, kind in zip(lines, bad, strict=True) if kind is not None)
    assert sorted(p["line"] for p in result["problems"]) == bad_lines, (result["problems"], bad)
    # 3) the CLI's final line counts what the store holds
    counts = re.search(r"Imported ([\d,]+) posts into the store; ([\d,]+) row\(s\) refused; ([\d,]+) duplicate",
                       done.stdout)
    landed, refused, duplicates = (int(group.replace(",", "")) for group in counts.groups())
    assert (landed, refused) == (len(last), len(bad_lines))
    assert duplicates == sum(kind is None for kind in bad) - len(last)
    # 4) no store write failed
    assert FailedJobRegistry(queue=queue("store", redis_conn)).count == 0
