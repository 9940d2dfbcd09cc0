"""Crowdtune's workers: real processes on a real Redis, jobs audited in the real store."""

import subprocess
import sys

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from crowdtune.runtime.queues import enqueue, queue
from crowdtune.store.reads import StoreReader, job_record
from crowdtune.store.writer import initialise
from crowdtune.testing.processes import wait_for


def finished(job: Job) -> bool:
    return job.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED)


def test_a_job_runs_on_a_preloaded_worker_and_its_result_lands_in_the_store(settings, redis_conn, workers):
    initialise(settings.store_path)
    workers.start_together(("--store",), ("--queues", "control,default"), conn=redis_conn)
    job = enqueue(redis_conn, "default", "jobs.system.probe_worker")
    wait_for(lambda: finished(job), timeout=60, message="the probe job")
    assert job.get_status() == JobStatus.FINISHED
    assert job.latest_result().return_value["torch"].startswith("2.")
    reader = StoreReader(settings.store_path)
    record = wait_for(lambda: (r := job_record(reader, job.id)) and r["status"] == "finished" and r,
                      timeout=30, message="the job's audit row")
    assert record["func"] == "jobs.system.probe_worker"
    assert '"torch"' in record["result"]


def test_workers_refuse_functions_outside_the_jobs_package(settings, redis_conn, workers):
    workers.start("--queues", "control,default", conn=redis_conn)
    with pytest.raises(ValueError):
        enqueue(redis_conn, "default", "os.system", "echo pwned")
    # Someone with Redis access bypasses our enqueue: the worker still refuses.
    job = Queue("default", connection=redis_conn, serializer=JSONSerializer).enqueue("os.getcwd")
    wait_for(lambda: finished(job), timeout=60, message="the foreign job")
    assert job.get_status() == JobStatus.FAILED
    assert "Crowdtune workers run only functions of the jobs package" in job.latest_result().exc_string


def test_each_job_is_seeded_from_its_id_so_forked_children_do_not_share_randomness(settings, redis_conn, workers):
    workers.start("--queues", "control,default", conn=redis_conn)
    jobs = [enqueue(redis_conn, "default", "jobs.system.random_draws", job_id=f"seeded-{i % 2}-{i}") for i in range(3)]
    same = enqueue(redis_conn, "default", "jobs.system.random_draws", meta={"seed": 7})
    again = enqueue(redis_conn, "default", "jobs.system.random_draws", meta={"seed": 7})
    for job in [*jobs, same, again]:
        wait_for(lambda job=job: finished(job), timeout=60, message="random draws")
    draws = [tuple(j.latest_result().return_value) for j in jobs]
    assert len(set(draws)) == 3
    assert same.latest_result().return_value == again.latest_result().return_value


def test_queued_jobs_survive_a_redis_restart_even_a_kill(settings, redis_server, redis_conn, workers):
    jobs = [enqueue(redis_conn, "default", "jobs.system.probe_worker") for _ in range(5)]
    redis_server.stop()           # clean shutdown
    redis_server.start()
    redis_server.process.kill()   # and a crash: the append-only file is fsynced per write
    redis_server.process.wait()
    redis_server.process = None
    redis_server.start()
    from crowdtune.runtime.queues import connect

    conn = connect(settings)
    assert queue("default", conn).count == 5
    workers.start("--queues", "control,default", conn=conn)
    for job in jobs:
        wait_for(lambda job=job: (Job.fetch(job.id, connection=conn, serializer=JSONSerializer).get_status()
                                  == JobStatus.FINISHED), timeout=60, message="a job from before the restart")


def test_a_second_store_writer_refuses_to_start(settings, redis_conn, workers):
    workers.start("--store", conn=redis_conn)
    second = subprocess.run([sys.executable, "-m", "crowdtune.cli", "worker", "--store"],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert "Another store worker" in second.stderr and "exactly one store worker" in second.stderr
    assert "Traceback" not in second.stderr


def test_the_store_queue_cannot_be_served_by_an_ordinary_worker(settings, redis_conn):
    result = subprocess.run([sys.executable, "-m", "crowdtune.cli", "worker", "--queues", "default,store"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "only by the store worker" in result.stderr
