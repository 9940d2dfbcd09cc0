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


def test_the_query_page_waits_for_reads_and_reads_wait_for_it(store):
    holding, release = threading.Event(), threading.Event()
    order = []

    def long_read():
        with open_for_read(store, 5):
            holding.set()
            release.wait(60)
            order.append("read ended")

    reader = threading.Thread(target=long_read)
    reader.start()
    assert holding.wait(30)
    query = threading.Thread(target=lambda: order.append(run_query(store, "SELECT count(*) AS n FROM faces")))
    query.start()
    query.join(1.0)
    assert query.is_alive(), "the Query page opened its own handle while a read held the file"
    release.set()
    reader.join(30), query.join(30)
    assert order[0] == "read ended" and int(order[1].frame["n"][0]) == 1
    assert StoreReader(store).scalar("SELECT count(*) FROM faces") == 1  # reads go on afterwards


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
