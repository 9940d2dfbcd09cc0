"""The schedule survives a worker killed between taking a job and starting it (real Redis)."""

from crowdtune.online.schedule import ensure_job, job_status, lost_in_dequeue, schedule_tick
from crowdtune.runtime.queues import queue
from crowdtune.settings import QUEUE_CONTROL, QUEUE_DEFAULT


def pop_as_a_dying_worker(conn, queue_name: str) -> str:
    """What a worker serving several queues does before it records the job as started: LPOP."""
    return conn.lpop(queue(queue_name, conn).key).decode()


def test_a_tick_popped_by_a_worker_that_died_at_once_is_replaced_not_waited_for(redis_conn):
    first = schedule_tick(redis_conn, "face-a")
    assert schedule_tick(redis_conn, "face-a") == first  # still waiting in its queue: kept
    assert not lost_in_dequeue(redis_conn, first)

    assert pop_as_a_dying_worker(redis_conn, QUEUE_CONTROL) == first
    assert job_status(redis_conn, first) == "queued" and lost_in_dequeue(redis_conn, first)
    second = schedule_tick(redis_conn, "face-a")
    assert second != first
    assert queue(QUEUE_CONTROL, redis_conn).job_ids == [second]


def test_a_job_with_a_fixed_id_lost_the_same_way_is_queued_again_once(redis_conn):
    args = dict(job_id="publish-run-1-3", description="publish post 3")
    assert ensure_job(redis_conn, QUEUE_DEFAULT, "jobs.online.publish_post", "face", "run-1", 3, **args)
    assert not ensure_job(redis_conn, QUEUE_DEFAULT, "jobs.online.publish_post", "face", "run-1", 3, **args)
    pop_as_a_dying_worker(redis_conn, QUEUE_DEFAULT)
    assert ensure_job(redis_conn, QUEUE_DEFAULT, "jobs.online.publish_post", "face", "run-1", 3, **args)
    assert queue(QUEUE_DEFAULT, redis_conn).job_ids == ["publish-run-1-3"]
