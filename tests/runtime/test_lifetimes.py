"""How long Redis keeps each kind of job: store writes and reads (their payload is rows) briefly, the
rest as the settings say; a queued write never expires, a read nobody waits for does."""

import threading

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from crowdtune.errors import CrowdtuneError
from crowdtune.runtime import defaults
from crowdtune.runtime.queues import enqueue, queue
from crowdtune.settings import QUEUE_DEFAULT, QUEUE_STORE
from crowdtune.store.remote import read_via_store_worker
from crowdtune.store.writer import initialise
from crowdtune.store.writes import StoreWriter, _job_id, utc_now, write_outcome
from crowdtune.testing.processes import wait_for


def serve_store_queue_once(conn) -> None:
    """The real store worker, in this process, until its queue is empty."""
    from crowdtune.runtime.workers import StoreWorker

    StoreWorker([queue(QUEUE_STORE, conn)], connection=conn).work(burst=True)


def fetch(conn, job_id: str) -> Job:
    return Job.fetch(job_id, connection=conn, serializer=JSONSerializer)


def test_an_applied_store_write_leaves_redis_after_store_result_ttl_but_waits_unapplied_for_ever(
        settings, redis_conn, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_STORE_RESULT_TTL_SECONDS", "90")
    initialise(settings.store_path)
    write_id = StoreWriter(redis_conn).upsert("alerts", [{"alert_id": "a1", "level": "info", "source": "test",
                                                         "message": "hello", "created_at": utc_now()}])
    key = f"rq:job:{_job_id(write_id)}"
    assert redis_conn.ttl(key) == -1  # queued: it waits for as long as the store file is held
    assert fetch(redis_conn, _job_id(write_id)).failure_ttl == settings.failure_ttl_seconds  # its rows, if it fails

    serve_store_queue_once(redis_conn)

    assert write_outcome(redis_conn, write_id)["rows"] == 1
    assert 0 < redis_conn.ttl(key) <= 90
    assert 0 < redis_conn.ttl(f"rq:results:{_job_id(write_id)}") <= 90


def test_work_and_control_jobs_keep_their_results_as_long_as_settings_and_defaults_say(redis_conn, monkeypatch):
    from crowdtune.online.schedule import schedule_tick

    monkeypatch.setenv("CROWDTUNE_RESULT_TTL_SECONDS", "7200")
    monkeypatch.setenv("CROWDTUNE_FAILURE_TTL_SECONDS", "86400")
    work = fetch(redis_conn, enqueue(redis_conn, QUEUE_DEFAULT, "jobs.system.probe_worker").id)
    assert (work.result_ttl, work.failure_ttl, work.ttl) == (7200, 86400, None)
    tick = fetch(redis_conn, schedule_tick(redis_conn, "some-face"))
    assert (tick.result_ttl, tick.failure_ttl) == (defaults.CONTROL_RESULT_TTL, 86400)


def test_a_store_read_is_deleted_once_its_asker_has_the_answer(settings, redis_conn):
    initialise(settings.store_path)
    answers = []
    asker = threading.Thread(target=lambda: answers.append(
        read_via_store_worker(redis_conn, "online_faces", timeout=60)))
    asker.start()
    wait_for(lambda: queue(QUEUE_STORE, redis_conn).count == 1, timeout=10, message="the read to be queued")
    read_id = queue(QUEUE_STORE, redis_conn).job_ids[0]

    serve_store_queue_once(redis_conn)
    asker.join(timeout=30)

    assert answers == [[]]
    assert not redis_conn.exists(f"rq:job:{read_id}", f"rq:results:{read_id}")


def test_a_store_read_nobody_waits_for_any_more_expires_unasked(settings, redis_conn):
    with pytest.raises(CrowdtuneError, match="did not answer the read 'online_faces' within 1 s"):
        read_via_store_worker(redis_conn, "online_faces", timeout=1)
    read_id = queue(QUEUE_STORE, redis_conn).job_ids[0]
    wait_for(lambda: not redis_conn.exists(f"rq:job:{read_id}"), timeout=5, message="the read to expire")
