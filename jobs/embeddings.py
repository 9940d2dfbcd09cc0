"""Embedding job (queue `default`): a face's posts embedded ahead of their use, one chunk per job.

    embed_posts(face_id, chunk)   the face's imported and published texts (store read `post_texts`, newest
                                  first); up to `chunk` of those the shared embedding cache lacks, embedded
                                  into one new shard, with progress in the job's meta; then, while any are
                                  left, the next chunk queued at the back of `default`
                                  (crowdtune.actions.embed_face_posts)

Why: offline runs (copy guard, style probe), online updates, reward-model fits and publishing all read
post vectors from the shared cache (crowdtune.embeddings); embedded here as posts are imported (an
import queues the first chunk once its rows landed; a publish job keeps its own post), none of them
stalls embedding a history at its first use. Each chunk is its own shard, so a killed chain keeps
what it did, and the next chunk starts where it stopped.

Background work: a chunk runs with one thread at a lower CPU priority (nice EMBED_NICENESS), and not at
all while a run trains on this machine: it then queues itself again YIELD_SECONDS later. (Niceness alone
was not enough: on 2 cores a niced chunk beside training made each step ~10x slower, the trainer's
threads waiting on each other while the chunk held a core.)
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import redis
from rq import get_current_job
from rq.executions import Execution
from rq.registry import StartedJobRegistry

from crowdtune import actions
from crowdtune.embeddings import CHUNK_TEXTS, shared_cache
from crowdtune.runtime.progress import progress_reporter
from crowdtune.runtime.queues import connect, queue
from crowdtune.settings import QUEUE_TRAIN, load_settings
from crowdtune.store.remote import read_via_store_worker
from crowdtune.store.writes import utc_now

EMBED_NICENESS = 10  # CFS weight 110 against a 1024 of any other work
YIELD_SECONDS = 60  # a chunk that finds a run training on this machine tries again this much later


def training_on_this_machine(conn: redis.Redis) -> bool:
    """Whether a job of the `train` queue runs on a worker of this machine (or one whose worker is unknown)."""
    registry = StartedJobRegistry(queue=queue(QUEUE_TRAIN, conn))
    for member in conn.zrange(registry.key, 0, -1):
        job_id, _, execution_id = member.decode().rpartition(":")
        try:
            worker = Execution.fetch(execution_id, job_id, conn).worker_name
        except Exception:  # the execution's hash expired: count the job as running here, to be safe
            worker = ""
        if not worker or ".".join(worker.split(".")[1:-1]) == socket.gethostname():
            return True
    return False


def embed_posts(face_id: str, chunk: int = CHUNK_TEXTS) -> dict:
    """Embed the next `chunk` of the face's posts not in the shared cache yet; queue the chunk after it.

    Out: {"face_id", "posts": distinct texts of the face, "embedded": texts this chunk embedded,
    "left": texts still without a vector, "next_job": the next chunk's job id (None when none is left,
    or when one already waits)}; while a run trains on this machine only {"face_id", "deferred": True,
    "next_job"}, this chunk queued again YIELD_SECONDS later."""
    settings = load_settings()
    conn = connect(settings)
    if training_on_this_machine(conn):
        later = utc_now() + timedelta(seconds=YIELD_SECONDS)
        return {"face_id": face_id, "deferred": True,
                "next_job": actions.embed_face_posts(conn, face_id, chunk, at=later)}
    job = get_current_job()
    if job is not None:  # a worker's forked job process: only it runs at the lower priority
        import torch

        os.nice(EMBED_NICENESS)
        torch.set_num_threads(1)
    report = progress_reporter(job)

    # 1) the face's posts, and those no process has kept a vector of
    texts = read_via_store_worker(conn, "post_texts", face_id=face_id, timeout=120)
    cache = shared_cache(settings)
    todo = cache.missing(texts)
    had = len(texts) - len(todo)

    # 2) this chunk, newest posts first, in one new shard
    def on_progress(done: int, _total: int) -> None:
        report(had + done, len(texts), None, None, f"embedding posts: {had + done:,} of {len(texts):,}")

    on_progress(0, 0)
    if todo[:chunk]:
        cache.embed(todo[:chunk], keep=True, on_progress=on_progress)
    left = len(todo) - len(todo[:chunk])

    # 3) the next chunk, behind whatever waits on `default` now
    next_job = actions.embed_face_posts(conn, face_id, chunk, done=(len(texts) - left, len(texts))) if left else None
    return {"face_id": face_id, "posts": len(texts), "embedded": len(todo[:chunk]), "left": left,
            "next_job": next_job}
