"""Several producers, the single writer and an outside reader holding the file: nothing lost, nothing doubled."""

import subprocess
import sys
import textwrap
import time

from rq.registry import FailedJobRegistry

from crowdtune.runtime.queues import queue
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import initialise
from crowdtune.testing.processes import wait_for

PRODUCER = textwrap.dedent("""
    import sys
    from crowdtune.runtime.queues import connect
    from crowdtune.settings import load_settings
    from crowdtune.store.writes import StoreWriter
    producer, batches, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    writer = StoreWriter(connect(load_settings()))
    for b in range(batches):
        writer.insert("metrics", [{"run_id": producer, "name": "loss", "step": b * rows + i, "value": float(i)}
                                  for i in range(rows)])
    print("done", producer)
""")

HOLDER = textwrap.dedent("""
    import sys, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)   # like a user's `duckdb -readonly` session
    print("holding", flush=True)
    sys.stdin.readline()   # held until the test says so: a timed hold raced slow producer start-ups
    con.close()
""")


def test_three_producers_and_a_reader_holding_the_file_end_with_exact_counts(settings, redis_conn, workers):
    initialise(settings.store_path)
    workers.start("--store", conn=redis_conn)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(settings.store_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"holding"

    batches, rows = 40, 25
    producers = [subprocess.Popen([sys.executable, "-c", PRODUCER, f"p{i}", str(batches), str(rows)])
                 for i in range(3)]
    for p in producers:
        assert p.wait(timeout=120) == 0

    # While the outside reader holds the file, the writes wait in Redis instead of failing.
    store_queue = queue("store", redis_conn)
    assert holder.poll() is None, "the reader should still hold the file"
    assert store_queue.count > 0
    holder.stdin.write(b"release\n")
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0

    reader = StoreReader(settings.store_path)
    wait_for(lambda: reader.scalar("SELECT count(*) FROM applied_writes") == 3 * batches, timeout=180,
             message="every batch to be applied")
    counts = reader.rows("SELECT run_id, count(*), count(DISTINCT step) FROM metrics GROUP BY run_id ORDER BY run_id")
    assert counts == [(f"p{i}", batches * rows, batches * rows) for i in range(3)], workers.logs()[-5000:]
    assert reader.scalar("SELECT count(*) FROM applied_writes") == 3 * batches
    assert FailedJobRegistry(queue=store_queue).count == 0
    assert "Traceback" not in workers.logs(), workers.logs()[-5000:]


def test_readers_wait_briefly_for_the_writer_instead_of_failing(settings, redis_conn, workers):
    initialise(settings.store_path)
    workers.start("--store", conn=redis_conn)
    from crowdtune.store.writes import StoreWriter

    writer = StoreWriter(redis_conn)
    reader = StoreReader(settings.store_path, wait_seconds=5)
    seen = []
    for step in range(60):
        writer.insert("metrics", [{"run_id": "r", "name": "x", "step": step, "value": 1.0}])
        seen.append(reader.scalar("SELECT count(*) FROM metrics"))  # raises if a lock error escaped
        time.sleep(0.01)
    wait_for(lambda: reader.scalar("SELECT count(*) FROM metrics") == 60, timeout=60, message="all writes")
    assert seen == sorted(seen)
