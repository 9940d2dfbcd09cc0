"""The import job on real workers: exact counts for the bundled data, re-import without duplicates,
bad files reported row by row, and a killed import that leaves the store consistent."""

import json

import pytest

from crowdtune import actions
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import initialise
from crowdtune.testing.accounting import store_settled
from crowdtune.testing.processes import kill_tree, wait_for
from jobs.imports import BATCH_SIZE


def finished(job):
    return job.get_status(refresh=True).value in ("finished", "failed")


def run_import(conn, face_id, limit=None):
    job = actions.start_import(conn, face_id, limit)
    wait_for(lambda: finished(job), timeout=300, message=f"import of {face_id}")
    assert job.get_status().value == "finished", job.latest_result().exc_string
    return job.latest_result().return_value


@pytest.mark.slow
def test_bundled_datasets_import_with_exact_counts_and_twice_adds_no_duplicates(settings, redis_conn, running):
    reader = running
    actions.save_face(redis_conn, "trump", "dataset", {"source": "trump_tweets"})
    actions.save_face(redis_conn, "hutto", "dataset", {"source": "hutto_tweets"})
    assert run_import(redis_conn, "trump")["imported"] == 20761
    assert run_import(redis_conn, "hutto")["imported"] == 4200
    wait_for(lambda: store_settled(redis_conn), timeout=120, message="the store queue")
    counts = dict(reader.rows("SELECT face_id, count(*) FROM posts GROUP BY face_id"))
    assert counts == {"trump": 20761, "hutto": 4200}
    snapshots = reader.scalar("SELECT count(*) FROM reaction_snapshots WHERE post_id LIKE 'trump:%'")
    assert snapshots == 2 * 20761  # likes and reposts
    assert reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'trump' AND score IS NULL") == 0

    second = run_import(redis_conn, "trump")
    wait_for(lambda: store_settled(redis_conn), timeout=120, message="the store queue")
    assert second["imported"] == 20761
    assert reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'trump'") == 20761
    assert reader.scalar("SELECT count(DISTINCT post_id) FROM posts") == 20761 + 4200
    # A re-import adds a new observation of every post's reactions, never overwriting the old one.
    assert reader.scalar("SELECT count(*) FROM reaction_snapshots WHERE post_id LIKE 'trump:%'") == 4 * 20761
    assert reader.scalar("SELECT count(DISTINCT observed_at) FROM reaction_snapshots WHERE post_id LIKE 'trump:%'") == 2


def test_a_malformed_file_imports_every_valid_row_and_reports_each_bad_one(settings, redis_conn, running, tmp_path):
    reader = running
    path = tmp_path / "posts.csv"
    good = [f'{i},"post number {i}",2024-01-0{1 + i % 9}T10:00:00,{i * 3}' for i in range(1, 8)]
    rows = [
        "id,text,created_at,likes",
        *good[:3],
        '99,"broken row with no end',                     # an unterminated quote in the middle
        *good[3:5],
        "100,,2024-01-01T00:00:00,5",                      # empty text
        "101," + "x" * (10 * 1024 * 1024) + ",2024-01-01T00:00:00,1",  # a 10 MB single post
        *good[5:],
    ]
    data = "\n".join(rows).encode()
    data = data.replace(b"post number 5", b"post number \xff\xfe 5")  # bad encoding in one row
    path.write_bytes(data)
    actions.save_face(redis_conn, "csv", "dataset", {
        "source": str(path), "columns": {"text": "text", "id": "id", "created_at": "created_at"},
        "reaction_columns": {"likes": "likes"}})
    result = run_import(redis_conn, "csv")
    wait_for(lambda: store_settled(redis_conn), timeout=60, message="the store queue")
    imported = {r[0] for r in reader.rows("SELECT platform_id FROM posts WHERE face_id = 'csv'")}
    assert result["problem_count"] >= 3
    reasons = " ".join(f"line {p['line']}: {p['reason']}" for p in result["problems"])
    assert result["imported"] == len(imported)
    assert {"1", "2", "3", "7"} <= imported and "100" not in imported and "101" not in imported
    for problem in result["problems"]:
        assert problem["line"] >= 2 and problem["reason"]
    assert "text" in reasons.lower()
    alert = wait_for(lambda: reader.scalar("SELECT message FROM alerts WHERE source = 'import csv'"),
                     timeout=30, message="the import's alert")
    assert "not imported" in alert


@pytest.mark.parametrize("content, phrase", [
    (b"", "empty"),
    (b"identifier,body\n1,hello\n", "text"),
])
def test_an_empty_file_or_a_missing_column_is_reported_clearly(
        settings, redis_conn, running, tmp_path, content, phrase):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    actions.save_face(redis_conn, "bad", "dataset", {"source": str(path)})
    job = actions.start_import(redis_conn, "bad")
    wait_for(lambda: finished(job), timeout=120, message="the import")
    result = job.latest_result()
    text = json.dumps(result.return_value) if result.return_value else (result.exc_string or "")
    assert phrase in text.lower()
    assert running.scalar("SELECT count(*) FROM posts WHERE face_id = 'bad'") == 0


@pytest.mark.slow
def test_an_import_killed_midway_leaves_whole_batches_and_completes_when_rerun(settings, redis_conn, workers, tmp_path):
    initialise(settings.store_path)
    workers.start("--store", conn=redis_conn)
    first = workers.start("--queues", "control,default", conn=redis_conn)
    path = tmp_path / "many.jsonl"
    with path.open("w") as f:
        for i in range(60000):
            f.write(json.dumps({"id": i, "text": f"post {i} " + "word " * 20, "created_at": "2024-02-01T00:00:00",
                                "likes": i % 50}) + "\n")
    actions.save_face(redis_conn, "big", "dataset", {"source": str(path), "reaction_columns": {"likes": "likes"}})
    job = actions.start_import(redis_conn, "big")
    reader = StoreReader(settings.store_path)
    wait_for(lambda: reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'big'") or 0, timeout=120,
             message="the first batches")
    kill_tree(first.pid)
    partial = reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'big'")
    assert 0 < partial < 60000
    # Consistent at any moment: whole batches only, each post with its snapshot.
    assert partial % BATCH_SIZE == 0
    assert reader.scalar("SELECT count(*) FROM posts p WHERE face_id = 'big' AND NOT EXISTS "
                         "(SELECT 1 FROM reaction_snapshots s WHERE s.post_id = p.post_id)") == 0
    workers.start("--queues", "control,default", conn=redis_conn)
    wait_for(lambda: finished(job), timeout=300, message="the rerun import")
    wait_for(lambda: store_settled(redis_conn), timeout=120, message="the store queue")
    assert reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'big'") == 60000
    assert reader.scalar("SELECT count(*) FROM reaction_snapshots WHERE post_id LIKE 'big:%'") == 60000


def test_the_cli_adds_a_face_and_imports_it_headless(settings, redis_conn, running, tmp_path):
    import subprocess
    import sys

    path = tmp_path / "few.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "text": f"hello {i}", "created_at": "2024-03-01T00:00:00"})
                              for i in range(12)) + "\n{not json}\n")
    cli = [sys.executable, "-m", "crowdtune.cli"]
    added = subprocess.run([*cli, "face", "add", "few", "--kind", "dataset", "--set", f"source={path}"],
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    done = subprocess.run([*cli, "import", "--face", "few"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Imported 12 posts into the store; 1 row(s) refused; 0 duplicate(s) merged" in done.stdout
    assert "line 13: not valid JSON" in done.stdout
    assert "12 rows written to the store" in done.stderr
    bad = subprocess.run([*cli, "face", "add", "oops", "--kind", "dataset", "--set", "colour=red"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "colour" in bad.stderr and "Traceback" not in bad.stderr
    unknown = subprocess.run([*cli, "face", "add", "oops", "--kind", "myspace"],
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "Unknown face kind 'myspace'" in unknown.stderr


def test_an_import_returns_when_its_rows_are_queryable_and_counts_what_landed(settings, redis_conn, running, tmp_path):
    # Issue 13 finding 2: the import said "done" 84 s before its 200,000 rows were queryable.
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"post {i}", "created_at": "2024-02-01T00:00:00",
                                        "likes": i}) + "\n" for i in range(3 * BATCH_SIZE + 7)))
    actions.save_face(redis_conn, "many", "dataset", {"source": str(path), "reaction_columns": {"likes": "likes"}})
    result = run_import(redis_conn, "many")
    # No waiting for the store queue here: the job itself waited.
    assert running.scalar("SELECT count(*) FROM posts WHERE face_id = 'many'") == result["landed"] == 3 * BATCH_SIZE + 7
    assert result["read"] == 3 * BATCH_SIZE + 7 and result["refused"] == 0 and result["duplicates"] == 0


def test_a_duplicate_id_across_batches_takes_all_of_the_last_row(settings, redis_conn, running, tmp_path):
    # Issue 13 finding 5: text and score came from the later row, snapshots from the earlier one.
    path = tmp_path / "dups.csv"
    rows = ["id,text,created_at,likes,reposts", "dup,first version,2020-01-01T00:00:00,100,50"]
    rows += [f"{i},post {i},2024-01-01T00:00:00,{i}," for i in range(BATCH_SIZE + 10)]
    rows += ["dup,last version,2021-06-01T00:00:00,7,",
             "twice,a,2024-01-01T00:00:00,1,", "twice,b,2024-01-01T00:00:00,2,"]
    path.write_text("\n".join(rows) + "\n")
    actions.save_face(redis_conn, "dups", "dataset", {
        "source": str(path), "reaction_columns": {"likes": "likes", "reposts": "reposts"}})
    result = run_import(redis_conn, "dups")
    assert result["duplicates"] == 2 and result["duplicate_rule"] == "the last row of an id wins, all of it"
    assert result["read"] == BATCH_SIZE + 14 and result["landed"] == BATCH_SIZE + 12 and result["refused"] == 0
    reader = running
    assert reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'dups'") == result["landed"]
    text, created, score, latest = reader.rows("SELECT text, created_at::VARCHAR, score, latest_reactions::VARCHAR "
                                               "FROM posts WHERE post_id = 'dups:dup'")[0]
    assert (text, created, score) == ("last version", "2021-06-01 00:00:00", 7.0)
    assert json.loads(latest) == {"likes": 7}
    assert reader.rows("SELECT kind, count FROM reaction_snapshots WHERE post_id = 'dups:dup'") == [("likes", 7)]
    assert reader.rows("SELECT text FROM posts WHERE post_id = 'dups:twice'") == [("b",)]


@pytest.mark.parametrize("source, problem", [
    ("missing.csv", "does not exist"),
    ("folder.csv", "is a folder, not a file"),
])
def test_the_cli_names_the_problem_and_the_fix_of_an_unreadable_source(settings, redis_conn, running, tmp_path,
                                                                      source, problem):
    # Issue 13 finding 7: only "Fix: Fix `source` ..." was printed, or a raw IsADirectoryError.
    import subprocess
    import sys

    (tmp_path / "folder.csv").mkdir()
    actions.save_face(redis_conn, "unreadable", "dataset", {"source": str(tmp_path / source)})
    done = subprocess.run([sys.executable, "-m", "crowdtune.cli", "import", "--face", "unreadable"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Error: The dataset " in done.stderr and problem in done.stderr and str(tmp_path / source) in done.stderr
    assert "Fix: Set `source` in the dataset config" in done.stderr and "Traceback" not in done.stderr
