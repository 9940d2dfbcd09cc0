"""Reads share one handle on the store file per process (connection._FileInProcess): a read that
ends never lets a writer in under another read still running, the Query page's own handle and
reads take turns, and a forked child reads with a handle of its own."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap
import threading

import pytest

from crowdtune.store import connection
from crowdtune.store.connection import open_for_read, open_for_write
from crowdtune.store.reads import StoreReader
from crowdtune.store.sandbox import run_query
from crowdtune.store.writer import apply_write, initialise

# Another process trying to open the file read-write once, without waiting: prints "got" or "locked".
TRY_WRITE = textwrap.dedent("""
    import sys, duckdb
    try:
        duckdb.connect(sys.argv[1]).close()
        print("got")
    except duckdb.IOException as exc:
        print("locked" if "lock" in str(exc).lower() else exc)
""")


def outside_writer_gets_in(path) -> bool:
    out = subprocess.run([sys.executable, "-c", TRY_WRITE, str(path)], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() in ("got", "locked"), out.stdout + out.stderr
    return out.stdout.strip() == "got"


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "crowdtune.duckdb"
    initialise(path)
    apply_write(path, "w1", [{"op": "insert", "table": "faces", "rows": [
        {"face_id": "f1", "kind": "sandbox", "config": "{}"}]}], 10)
    return path


def test_a_read_ending_keeps_the_file_locked_for_a_read_still_running(store):
    first_open, second_done, release = threading.Event(), threading.Event(), threading.Event()

    def long_read():
        with open_for_read(store, 5) as con:
            first_open.set()
            release.wait(60)
            assert con.execute("SELECT count(*) FROM faces").fetchone()[0] == 1

    reader = threading.Thread(target=long_read)
    reader.start()
    assert first_open.wait(30)
    with open_for_read(store, 5) as con:  # a second read of this process, opened and closed meanwhile
        assert con.execute("SELECT face_id FROM faces").fetchone()[0] == "f1"
    second_done.set()
    try:
        assert not outside_writer_gets_in(store), "a writer got the file while a read of this process ran"
    finally:
        release.set()
        reader.join(30)
    assert outside_writer_gets_in(store), "the file stayed held after every read ended"


def test_a_query_runs_beside_this_processs_reads_without_dropping_their_lock(store):
    """The Query page runs each query in a process of its own: its handle's lock is that process's, so
    it need not wait for this process's reads, and its ending cannot let a writer in under them."""
    holding, release = threading.Event(), threading.Event()

    def long_read():
        with open_for_read(store, 5):
            holding.set()
            release.wait(60)

    reader = threading.Thread(target=long_read)
    reader.start()
    try:
        assert holding.wait(30)
        result = run_query(store, "SELECT count(*) AS n FROM faces")  # while the read holds the file
        assert int(result.frame["n"][0]) == 1
        assert not outside_writer_gets_in(store), "the query's end let a writer in under a running read"
    finally:
        release.set()
        reader.join(30)
    assert outside_writer_gets_in(store), "the file stayed held after the read and the query ended"


def test_a_read_inside_this_threads_own_write_is_refused_not_deadlocked(store):
    with open_for_write(store, 5):
        with pytest.raises(RuntimeError, match="inside this thread's own write"):
            with open_for_read(store, 5):
                pass
    assert StoreReader(store).scalar("SELECT count(*) FROM faces") == 1


def _read_in_child(path, answers):
    answers.put(StoreReader(path).scalar("SELECT face_id FROM faces"))


def test_a_forked_child_reads_with_its_own_handle(store):
    reader = StoreReader(store)
    assert reader.scalar("SELECT face_id FROM faces") == "f1"  # the parent has its read instance
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(target=_read_in_child, args=(store, answers))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and answers.get(timeout=5) == "f1"
    assert reader.scalar("SELECT count(*) FROM faces") == 1


WRITE_LOOP = textwrap.dedent("""
    import sys
    from crowdtune.store.writer import apply_write
    for i in range(int(sys.argv[2])):
        apply_write(sys.argv[1], f"loop-{i}", [{"op": "insert", "table": "faces", "rows": [
            {"face_id": f"loop-{i}", "kind": "sandbox", "config": "{}"}]}], 60)
""")


def test_threads_reading_while_another_process_writes_see_every_write_in_order(store):
    writes = 40
    writer = subprocess.Popen([sys.executable, "-c", WRITE_LOOP, str(store), str(writes)])
    seen: dict[int, list[int]] = {}
    failures = []

    def read_many(index):
        reader = StoreReader(store, wait_seconds=30)
        counts = seen.setdefault(index, [])
        while writer.poll() is None or len(counts) < 5:
            try:
                with reader.session() as session:  # two queries on one hold of the file agree
                    count = session.scalar("SELECT count(*) FROM faces")
                    assert session.scalar("SELECT count(*) FROM faces WHERE face_id LIKE 'loop-%'") == count - 1
                counts.append(count)
            except Exception as exc:  # noqa: BLE001 - collected and shown below
                failures.append(repr(exc))
                return

    threads = [threading.Thread(target=read_many, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert writer.wait(120) == 0
    assert not failures, failures[:3]
    for counts in seen.values():
        assert counts == sorted(counts) and counts[-1] == writes + 1
    from crowdtune.store.connection import write_wanted_note

    assert not write_wanted_note(store).exists()  # the writer took its note away


def test_reads_step_aside_briefly_for_a_waiting_writer_and_ignore_a_stale_note(store):
    import os
    import time

    from crowdtune.store.connection import STEP_ASIDE_SECONDS, write_wanted_note

    reader = StoreReader(store)
    note = write_wanted_note(store)
    note.touch()  # a writer is waiting (for something else, which still holds the file)
    started = time.monotonic()
    assert reader.scalar("SELECT count(*) FROM faces") == 1
    waited = time.monotonic() - started
    assert STEP_ASIDE_SECONDS * 0.9 <= waited < STEP_ASIDE_SECONDS + 1.0
    note.touch()  # the writer is still waiting: what holds the file is not us, so the next read goes ahead
    started = time.monotonic()
    assert reader.scalar("SELECT count(*) FROM faces") == 1
    assert time.monotonic() - started < STEP_ASIDE_SECONDS * 0.5
    connection._here().file(store).no_step_aside_until = 0.0  # some seconds later
    os.utime(note, (time.time() - 60, time.time() - 60))  # left by a killed writer
    started = time.monotonic()
    assert reader.scalar("SELECT count(*) FROM faces") == 1
    assert time.monotonic() - started < STEP_ASIDE_SECONDS * 0.5
    apply_write(store, "w2", [{"op": "insert", "table": "faces", "rows": [
        {"face_id": "f2", "kind": "sandbox", "config": "{}"}]}], 10)
    assert note.exists()  # the writer got the file at once: it never announced, and leaves others' notes


# Another process applying long writes back to back (each holds the file ~0.3 s, with no pause in
# between), until the file named by argv[2] exists.
BACKLOG_LOOP = textwrap.dedent("""
    import pathlib, sys, time
    from crowdtune.store.connection import open_for_write
    stop, i = pathlib.Path(sys.argv[2]), 0
    while not stop.exists():
        with open_for_write(sys.argv[1], 60) as con:
            con.execute("INSERT INTO faces (face_id, kind, config) VALUES (?, 'sandbox', '{}')", [f"b-{i}"])
            time.sleep(0.3)
        i += 1
""")


def test_a_read_gets_in_between_writes_applied_back_to_back(store, tmp_path):
    """A backlog of writes leaves gaps of milliseconds: without the read-wanted note, a read
    retrying every 0.25 s missed them for a minute (the store worker catching up after a restart)."""
    import time

    from crowdtune.store.connection import read_wanted_note

    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", BACKLOG_LOOP, str(store), str(stop)])
    try:
        time.sleep(2.0)  # the backlog is running
        reader = StoreReader(store, wait_seconds=20)
        waits = []
        for _ in range(5):
            started = time.monotonic()
            assert reader.scalar("SELECT count(*) FROM faces WHERE face_id LIKE 'b-%'") >= 1
            waits.append(time.monotonic() - started)
        assert writer.poll() is None, "the backlog stopped early"
        assert max(waits) < 3.0, waits  # a write or two, then the read's turn
    finally:
        stop.touch()
        assert writer.wait(60) == 0
    assert not read_wanted_note(store).exists()  # the reader took its note away
