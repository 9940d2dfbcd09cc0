"""The store worker tells Redis what changed: the change counter moves once per applied batch (and
each table's once per batch that touched it), and a "held since" note stands while a batch waits on
a file that another program holds."""

from __future__ import annotations

import datetime as dt
import time

from crowdtune.store import changes
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import initialise
from crowdtune.store.writes import StoreWriter, write_outcome
from crowdtune.testing.faults import store_held_by_another_program
from crowdtune.testing.processes import wait_for


def test_each_applied_batch_bumps_the_change_counter_once_and_a_repeated_one_not_at_all(settings, redis_conn,
                                                                                          workers):
    initialise(settings.store_path)
    workers.start("--store", conn=redis_conn)
    writer = StoreWriter(redis_conn)
    assert changes.version(redis_conn) == 0

    ids = [writer.insert("metrics", [{"run_id": "r", "name": "loss", "step": s, "value": 1.0}
                                     for s in (2 * b, 2 * b + 1)]) for b in range(2)]
    ids.append(writer.insert("runs", [{"run_id": "r", "kind": "offline", "status": "running"}]))
    for write_id in ids:
        wait_for(lambda write_id=write_id: write_outcome(redis_conn, write_id), timeout=60, message=write_id)
    assert changes.version(redis_conn) == 3
    assert changes.version(redis_conn, ["metrics"]) == 2 and changes.version(redis_conn, ["runs"]) == 1
    assert changes.version(redis_conn, ["posts"]) == 0

    again = writer.insert("runs", [{"run_id": "r", "kind": "offline", "status": "running"}], write_id=ids[-1])
    wait_for(lambda: (write_outcome(redis_conn, again) or {}).get("already_applied"), timeout=60, message="repeat")
    assert changes.version(redis_conn) == 3  # nothing changed: pages need not read again
    assert StoreReader(settings.store_path).scalar("SELECT count(*) FROM metrics") == 4


def test_a_write_waiting_on_a_held_file_notes_since_when_and_clears_it_when_it_lands(settings, redis_conn, workers):
    initialise(settings.store_path)
    workers.start("--store", conn=redis_conn)
    with store_held_by_another_program(settings.store_path):
        before = time.time()
        write_id = StoreWriter(redis_conn).insert("runs", [{"run_id": "r", "kind": "offline", "status": "running"}])
        held = wait_for(lambda: changes.held(redis_conn), timeout=30, message="the held note")
        assert abs(held.since.replace(tzinfo=dt.UTC).timestamp() - before) < 5  # since the batch began to wait
        assert write_outcome(redis_conn, write_id) is None  # still waiting
        assert changes.version(redis_conn) == 0
    wait_for(lambda: write_outcome(redis_conn, write_id), timeout=60, message="the write to land")
    assert changes.held(redis_conn) is None
    assert changes.version(redis_conn) == 1
