"""The embedding job on real workers: a face's posts embedded once, in the background, a chunk a job, as
they are imported (issue 17 #2), so that runs, fits and publishing find their vectors in the cache."""

import pytest
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from crowdtune import actions
from crowdtune.embeddings import shared_cache, texts_embedded
from crowdtune.runtime.queues import enqueue
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import apply_write, initialise
from crowdtune.testing.processes import wait_for
from crowdtune.training.guards import CopyIndex

pytestmark = pytest.mark.slow


def post(face_id: str, i: int, text: str, status: str = "imported", origin: str = "imported") -> dict:
    return {"post_id": f"{face_id}:{i}", "face_id": face_id, "origin": origin, "status": status,
            "platform_id": str(i), "text": text, "created_at": f"2017-01-01T00:{i // 60:02d}:{i % 60:02d}"}


def ended(conn, job_id: str) -> dict | None:
    """The job's return value once it finished (None before, or while its id is being reused); a failed
    job fails the test with its error."""
    try:
        job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        status = job.get_status(refresh=True)
    except (NoSuchJobError, InvalidJobOperation):
        return None
    assert status != "failed", job.latest_result().exc_string
    return job.latest_result().return_value if status == "finished" else None


def test_posts_are_embedded_in_chunks_behind_other_work_as_they_are_imported_and_found_cached_later(
        settings, redis_conn, workers, fresh_posts):
    initialise(settings.store_path)
    texts = [p["text"] for p in fresh_posts[:100]]
    channel_posts = len(set(texts)) + 1  # and the published one
    rows = [post("chunked", i, text) for i, text in enumerate(texts)]
    rows += [post("chunked", 100, "A post that went out.", "published", "generated"),
             post("chunked", 101, "A candidate that was never posted.", "candidate", "generated")]
    apply_write(settings.store_path, "fixture", [
        {"op": "upsert", "table": "faces", "rows": [{"face_id": "chunked", "kind": "dataset", "config": {}},
                                                    {"face_id": "tweets", "kind": "dataset", "config": {}}]},
        {"op": "upsert", "table": "posts", "rows": rows}], 10)
    workers.start("--store", conn=redis_conn)

    # 1) a chain of chunks of 40: one chunk waits at a time, and work queued meanwhile goes between chunks
    assert actions.embed_face_posts(redis_conn, "chunked", chunk=40) == "embed-posts-chunked-0"
    assert actions.embed_face_posts(redis_conn, "chunked", chunk=40) is None  # it reads the posts when it starts
    probe = enqueue(redis_conn, "default", "jobs.system.probe_worker")
    workers.start("--queues", "control,default", conn=redis_conn)
    last = wait_for(lambda: (r := ended(redis_conn, "embed-posts-chunked-0")) and r["left"] == 0 and r,
                    timeout=180, message="the last chunk")
    second = Job.fetch("embed-posts-chunked-1", connection=redis_conn, serializer=JSONSerializer)
    assert second.latest_result().return_value == {"face_id": "chunked", "posts": channel_posts, "embedded": 40,
                                                   "left": channel_posts - 80, "next_job": "embed-posts-chunked-0"}
    assert second.description == f"embed the posts of chunked (40 of {channel_posts} done)"
    probe.refresh()
    assert probe.get_status() == "finished" and second.started_at >= probe.ended_at
    # the channel's posts (imported and published), never a candidate that did not go out
    assert last == {"face_id": "chunked", "posts": channel_posts, "embedded": channel_posts - 80, "left": 0,
                    "next_job": None}
    assert Job.fetch("embed-posts-chunked-0", connection=redis_conn, serializer=JSONSerializer).meta["progress"][
        "phase"] == f"embedding posts: {channel_posts} of {channel_posts}"

    # 2) an import queues the embedding of what it imported once its rows landed
    imported = actions.start_import(redis_conn, "tweets", limit=12)
    job_id = wait_for(lambda: (r := ended(redis_conn, imported.id)) and r["embedding_job"], timeout=120,
                      message="the import")
    result = wait_for(lambda: ended(redis_conn, job_id), timeout=120, message="the import's embedding")
    assert result["posts"] >= 10 and result["embedded"] >= 1 and result["left"] == 0

    # 3) a run in another process needs every post's vector: all are in the cache, none is embedded again
    reader = StoreReader(settings.store_path)
    channel = [r[0] for r in reader.rows("SELECT text FROM posts WHERE status IN ('imported', 'published')")]
    before = texts_embedded()
    assert CopyIndex(channel, candidate_ngram=None).post_vectors().shape == (len(channel), 384)
    assert texts_embedded() == before
    assert shared_cache(settings).missing(["A candidate that was never posted."]) != []
    again = actions.embed_face_posts(redis_conn, "chunked")  # nothing left: one chunk that embeds none
    assert wait_for(lambda: ended(redis_conn, again), timeout=60, message="a chunk with nothing to do") == {
        "face_id": "chunked", "posts": channel_posts, "embedded": 0, "left": 0, "next_job": None}


def test_a_chunk_waits_while_a_run_trains_on_this_machine_and_queues_itself_later(settings, redis_conn):
    """On 2 cores a niced chunk beside training made each step ~10x slower: while a `train` job runs on a
    worker of this machine, a chunk embeds nothing and queues itself a minute later."""
    import os
    import socket

    from rq.executions import Execution
    from rq.registry import ScheduledJobRegistry

    from crowdtune.runtime.queues import queue
    from jobs.embeddings import YIELD_SECONDS, embed_posts, training_on_this_machine

    assert not training_on_this_machine(redis_conn)
    training = queue("train", redis_conn).enqueue("jobs.system.probe_worker")
    with redis_conn.pipeline() as pipe:  # what a worker on this machine records as it starts the job
        Execution.create(training, 60, pipeline=pipe, worker_name=f"worker.{socket.gethostname()}.{os.getpid()}")
        pipe.execute()
    assert training_on_this_machine(redis_conn)

    before = texts_embedded()
    outcome = embed_posts("tweets")  # no store worker runs: a chunk that read the store would wait for one
    assert outcome["deferred"] and texts_embedded() == before
    scheduled = ScheduledJobRegistry(queue=queue("default", redis_conn))
    assert scheduled.get_job_ids() == [outcome["next_job"]]
    due = scheduled.get_expiration_time(Job.fetch(outcome["next_job"], connection=redis_conn,
                                                  serializer=JSONSerializer))
    from crowdtune.store.writes import utc_now
    assert abs((due.replace(tzinfo=None) - utc_now()).total_seconds() - YIELD_SECONDS) < 10
