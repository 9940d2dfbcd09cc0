"""Faults on real parts, each followed by the exact accounting: nothing lost, nothing doubled.

Real Redis, real workers, the real DuckDB store, the tiny model and the sandbox face in accelerated
time (crowdtune.testing.sandbox_run, as in tests/jobs/test_online_job.py). Faults covered here,
beyond those the job tests already prove (offline SIGKILL resume, killed RL update + Redis restart,
reader holding the file, 429/5xx at the HTTP boundary):

- SIGKILL of the store worker in the middle of a batch, then a restart: every batch applied once.
- SIGKILL of the publishing worker at three moments of publishing a post: no double post, the
  sandbox's posts are exactly the store's published rows.
- What a SIGKILLed worker leaves in Redis (the store writer's lease, RQ's scheduler lock, the
  controller's tick lock) must not keep its successor from working at once.
- The artifact folder made read-only during offline training and during an RL update: a clear
  error (an alert online), nothing lost, and training works again once the folder is writable.

After its fault every test runs the exact accounting, `account(settings)` of
crowdtune.testing.accounting (benchmarks/soak.py runs it too): nothing lost, nothing doubled.

As root, permission bits do not stop writes (CAP_DAC_OVERRIDE); workers of the read-only tests
start without that capability (crowdtune.testing.faults), so a read-only folder is read-only for
them as on a real disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from rq.registry import FailedJobRegistry, StartedJobRegistry

from crowdtune import actions
from crowdtune.online.schedule import job_status as _job_status
from crowdtune.runtime.queues import queue
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import initialise
from crowdtune.store.writes import StoreWriter, _job_id
from crowdtune.testing.accounting import account, count, store_settled
from crowdtune.testing.faults import drop_dac_override, permissions_bind, set_read_only
from crowdtune.testing.processes import kill_tree, wait_for
from crowdtune.testing.sandbox_run import FACE, add_face, online_config
from tests.conftest import registered
from tests.jobs.test_offline_job import SMALL, store_with_posts  # noqa: F401  (fixture)

# --------------------------------------------------------------------------------------------
# The exact accounting (crowdtune.testing.accounting)


def assert_accounts(settings, **options) -> dict:
    figures = account(settings, **options)
    assert figures["problems"] == [], figures
    return figures


# --------------------------------------------------------------------------------------------
# Helpers


def started_jobs(conn, queue_name: str, prefix: str) -> list[str]:
    started = StartedJobRegistry(queue=queue(queue_name, conn)).get_job_ids(cleanup=False)
    return [j for j in started if j.startswith(prefix)]


@pytest.fixture
def workers_without_dac_override(workers, monkeypatch, tmp_path):
    """The `workers` pool, but every process it starts is bound by permission bits, even as root."""
    if not permissions_bind(tmp_path):
        pytest.skip("cannot start processes that respect permission bits here (root without CAP_SETPCAP)")
    real = subprocess.Popen

    def popen(*args, **kwargs):
        kwargs.setdefault("preexec_fn", drop_dac_override)
        return real(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    return workers


# --------------------------------------------------------------------------------------------
# The store worker killed mid-write


@pytest.mark.slow
def test_a_store_worker_killed_mid_batch_applies_every_batch_exactly_once_after_a_restart(
        settings, redis_conn, workers):
    initialise(settings.store_path)
    store = workers.start("--store", conn=redis_conn)
    writer = StoreWriter(redis_conn)
    # Each batch inserts rows, then updates half of them one statement at a time: a long
    # transaction (~1 s), so that the kill lands inside it.
    batches, rows, updates = 5, 2000, 1000
    write_ids = [writer.submit(
        [{"op": "insert", "table": "metrics",
          "rows": [{"run_id": "load", "name": "x", "step": b * rows + i, "value": -1.0} for i in range(rows)]}]
        + [{"op": "update", "table": "metrics", "where": {"run_id": "load", "name": "x", "step": b * rows + i},
            "set": {"value": float(b * rows + i)}} for i in range(updates)],
        write_id=f"load-{b}") for b in range(batches)]
    reader = StoreReader(settings.store_path, wait_seconds=60)
    for _ in range(3):
        running = wait_for(lambda: started_jobs(redis_conn, "store", "store-load-"), timeout=60, interval=0.005,
                           message="a batch being applied")[0]
        time.sleep(0.3)
        kill_tree(store.pid)
        killed = next(w for w in write_ids if _job_id(w) == running)
        committed = count(reader, "SELECT count(*) FROM applied_writes WHERE write_id = ?", killed)
        # Started again as `crowdtune up` restarts it (a start refused while the dead writer's lease lasts is retried).
        store, _ = workers.restart("--store", conn=redis_conn)
        if not committed:
            break  # the kill landed inside the batch (else: try again on a later one)
    assert not committed, "three kills all landed between batches"

    wait_for(lambda: count(reader, "SELECT count(*) FROM applied_writes WHERE write_id LIKE 'load-%'") == batches,
             timeout=180, message="every batch to be applied")
    wait_for(lambda: store_settled(redis_conn), timeout=60, message="the store queue to drain")
    assert reader.rows("SELECT count(*), count(DISTINCT step), min(step), max(step), count(*) FILTER (value = step), "
                       "count(*) FILTER (value = -1) FROM metrics WHERE run_id = 'load'") == [
        (batches * rows, batches * rows, 0, batches * rows - 1, batches * updates, batches * (rows - updates))]
    applied = reader.rows("SELECT write_id FROM applied_writes WHERE write_id LIKE 'load-%'")
    assert sorted(r[0] for r in applied) == sorted(write_ids)
    assert reader.rows("SELECT write_id FROM applied_writes WHERE row_count <> ? AND write_id LIKE 'load-%'",
                       [rows + updates]) == []
    assert FailedJobRegistry(queue=queue("store", redis_conn)).count == 0
    assert_accounts(settings)


def test_a_store_worker_started_right_after_its_predecessor_was_killed_starts_at_once(settings, redis_conn, workers):
    initialise(settings.store_path)
    kill_tree(workers.start("--store", conn=redis_conn).pid)
    proc = workers.start("--store", wait=False)
    wait_for(lambda: registered(redis_conn, proc) or proc.poll() is not None, timeout=90,
             message="the new store worker")
    assert proc.poll() is None, f"the new store worker was refused: {workers.logs()[-300:]}"


# --------------------------------------------------------------------------------------------
# What a SIGKILLed worker leaves in Redis: locks that must not stall the loop


def _live_scheduler_holds(conn, queue_name: str) -> bool:
    from rq.scheduler import SCHEDULER_KEY_TEMPLATE, RQScheduler

    name = conn.get(RQScheduler.get_locking_key(queue_name))
    pid = conn.hget(SCHEDULER_KEY_TEMPLATE % name.decode(), "pid") if name else None
    return bool(pid) and psutil.pid_exists(int(pid))


def test_a_worker_started_after_a_killed_one_schedules_jobs_at_once(settings, redis_conn, workers):
    first = workers.start("--queues", "control,default", conn=redis_conn)
    wait_for(lambda: _live_scheduler_holds(redis_conn, "default"), timeout=30, message="the first scheduler")
    kill_tree(first.pid)
    workers.start("--queues", "control,default", conn=redis_conn)
    wait_for(lambda: _live_scheduler_holds(redis_conn, "default"), timeout=10,
             message="a live scheduler for the default queue after the restart")


def test_a_tick_killed_mid_way_does_not_stall_the_controller(settings, redis_conn, workers):
    from crowdtune.online.schedule import schedule_tick
    from crowdtune.runtime.defaults import TICK_LOCK_KEY as _TICK_LOCK

    initialise(settings.store_path)
    store = workers.start("--store", conn=redis_conn)
    ticker = workers.start("--queues", "control,default", conn=redis_conn)
    os.kill(store.pid, signal.SIGSTOP)  # the tick takes its lock, then waits for the store's answer
    try:
        tick_id = schedule_tick(redis_conn, FACE)
        wait_for(lambda: redis_conn.get(_TICK_LOCK.format(face_id=FACE)) == tick_id.encode(), timeout=30,
                 message="the tick to take its lock")
        kill_tree(ticker.pid)
    finally:
        os.kill(store.pid, signal.SIGCONT)
    workers.start("--queues", "control,default", conn=redis_conn)  # requeues the killed tick
    wait_for(lambda: _job_status(redis_conn, tick_id) == "finished", timeout=60, message="the requeued tick")
    from rq.job import Job
    from rq.serializers import JSONSerializer

    result = Job.fetch(tick_id, connection=redis_conn, serializer=JSONSerializer).latest_result().return_value
    assert result.get("skipped") != "another tick is running", result


# --------------------------------------------------------------------------------------------
# The publishing worker killed while publishing


def _publish_slot(job_id: str) -> int:
    return int(job_id.rsplit("-", 1)[1])


def _blocked_by_own_lock(conn, run_id: str, slot: int, job_id: str) -> bool:
    """The re-run of a killed publish job has failed (and waits to retry) while the intent lock its
    killed predecessor took is still there: the re-run is refused by that stale lock."""
    from crowdtune.runtime.defaults import INTENT_LOCK_KEY as _INTENT_LOCK

    stale = conn.get(_INTENT_LOCK.format(intent_id=f"{run_id}:{slot}")) == job_id.encode()
    return stale and _job_status(conn, job_id) in ("scheduled", "failed")


@pytest.mark.slow
def test_a_publishing_worker_killed_at_any_moment_never_posts_twice_and_loses_no_post(
        settings, redis_conn, workers, tmp_path, fresh_posts, tiny_model_dir):  # noqa: F811  (fixtures imported above)
    from crowdtune.online.schedule import safe_id as _safe
    from faces.sandbox import post_id_for_intent

    sandbox_dir = tmp_path / "sandbox"
    reader = add_face(settings, str(sandbox_dir), fresh_posts[:50])
    workers.start("--store", conn=redis_conn)
    publisher = workers.start("--queues", "control,default", conn=redis_conn)
    # No RL update in this test (posts_per_update is out of reach): only publishing and collecting.
    run_id = actions.start_online(redis_conn, FACE, online_config(tiny_model_dir, posts_per_update=1000))
    prefix = f"publish-{_safe(run_id)}-"

    def intent_queued(slot: int) -> bool:
        return bool(redis_conn.exists(f"rq:job:{_job_id(f'intent:{run_id}:{slot}')}"))

    def on_sandbox(slot: int) -> bool:
        return (sandbox_dir / f"{post_id_for_intent(f'{run_id}:{slot}')}.json").exists()

    def resolved(slot: int) -> bool:
        return count(reader, "SELECT resolved_slot FROM controllers WHERE face_id = ?", FACE) >= slot

    # Three moments: right after the intent is recorded (around the face call), once the post is out
    # on the sandbox (before or after the store has heard of it), and while generating.
    moments = {"intent recorded": intent_queued, "on the sandbox": on_sandbox, "generating": lambda slot: True}
    hits = {}
    for moment, ready in moments.items():
        job = wait_for(lambda: started_jobs(redis_conn, "default", prefix), timeout=180, interval=0.002,
                       message="a publish job to start")[0]
        slot = _publish_slot(job)
        wait_for(lambda ready=ready, slot=slot, job=job: ready(slot) or not started_jobs(redis_conn, "default", job),
                 timeout=60, interval=0.001, message=f"the moment '{moment}'")
        kill_tree(publisher.pid)
        hits[moment] = {"slot": slot, "on_sandbox": on_sandbox(slot), "published_record_queued": bool(
            redis_conn.exists(f"rq:job:{_job_id(f'published:{run_id}:{slot}')}"))}
        publisher, _ = workers.restart("--queues", "control,default", conn=redis_conn)
        wait_for(lambda slot=slot, job=job: resolved(slot) or _blocked_by_own_lock(redis_conn, run_id, slot, job),
                 timeout=120, message=f"slot {slot} to be resolved after the kill '{moment}'")
        assert resolved(slot), \
            f"killed '{moment}': the re-run of {job} is refused by the intent lock its killed run left"

    wait_for(lambda: count(reader, "SELECT count(*) FROM posts WHERE run_id = ? AND status = 'published'", run_id) >= 4,
             timeout=180, message="four published posts")
    assert actions.stop_online(redis_conn, FACE) == run_id
    wait_for(lambda: reader.scalar("SELECT state FROM controllers WHERE face_id = ?", [FACE]) == "IDLE", timeout=180,
             message="the controller to go IDLE")
    wait_for(lambda: count(reader, "SELECT count(*) FROM posts WHERE run_id = ? AND status = 'published' "
                                    "AND score IS NULL", run_id) == 0, timeout=120, message="every post to be scored")
    wait_for(lambda: store_settled(redis_conn), timeout=60, message="the store queue to drain")
    figures = assert_accounts(settings, scored=True)
    # Every killed slot ended published exactly once, or not published and not out on the sandbox.
    for moment, hit in hits.items():
        status = reader.scalar("SELECT status FROM posts WHERE run_id = ? AND publish_slot = ? "
                               "AND status NOT IN ('rejected', 'candidate')", [run_id, hit["slot"]])
        assert status in ("published", "failed", None), (moment, hit, status)
        assert (status == "published") == on_sandbox(hit["slot"]), (moment, hit, status)
    assert figures["sandbox_posts"] == figures["posts"]["published"] >= 4


# --------------------------------------------------------------------------------------------
# The artifact folder made read-only


@pytest.fixture
def offline_trainer(settings, redis_conn, workers_without_dac_override, store_with_posts):  # noqa: F811
    """A store writer and a train worker bound by permission bits; returns (reader, artifact folder)."""
    artifacts = Path(settings.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    workers_without_dac_override.start("--store", conn=redis_conn)
    workers_without_dac_override.start("--queues", "train", conn=redis_conn)
    return store_with_posts, artifacts


def _run_row(reader, run_id):
    return reader.rows("SELECT status, error FROM runs WHERE run_id = ?", [run_id])[0]


def _alert(reader, alert_id):
    rows = reader.rows("SELECT level, message, resolved_at FROM alerts WHERE alert_id = ?", [alert_id])
    return rows[0] if rows else None


@pytest.mark.slow
def test_a_read_only_artifact_folder_makes_offline_training_retry_and_it_resumes_by_itself_once_writable(
        settings, redis_conn, offline_trainer, tiny_model_dir, monkeypatch):  # noqa: F811
    reader, artifacts = offline_trainer
    monkeypatch.setenv("CROWDTUNE_TRAINING_RETRY_SECONDS", "[8, 8]")
    config = {**SMALL, "max_steps": 32, "eval_every": 8}
    run_id, job = actions.start_offline_training(redis_conn, "tweets", config, base_model=tiny_model_dir)
    wait_for(lambda: count(reader, "SELECT count(*) FROM metrics WHERE run_id = ? AND step = 8", run_id),
             timeout=300, message="the first evaluation")
    set_read_only(artifacts, True)  # the disk goes read-only mid-run: the next checkpoint cannot be written
    try:
        wait_for(lambda: _run_row(reader, run_id)[0] == "queued", timeout=300, message="the run to wait for a retry")
        status, error = _run_row(reader, run_id)
        # The run and an alert name the problem, the place and what happens next.
        assert "Permission denied" in error and str(artifacts) in error and "retrying in 8 s" in error, error
        level, message, _ = _alert(reader, f"offline-retry:{run_id}")
        assert level == "warning" and "Permission denied" in message
        assert count(reader, "SELECT count(*) FROM model_versions WHERE run_id = ?", run_id) == 0
    finally:
        set_read_only(artifacts, False)

    # Writable again within the retry wait: the same run resumes from its checkpoint and completes.
    wait_for(lambda: job.get_status(refresh=True).value in ("finished", "failed"), timeout=300,
             message="the retried job")
    assert job.get_status().value == "finished", job.latest_result().exc_string
    assert job.latest_result().return_value["resumed"] is True
    wait_for(lambda: _run_row(reader, run_id)[0] == "completed", timeout=60, message="the run to complete")
    wait_for(lambda: _alert(reader, f"offline-retry:{run_id}")[2] is not None, timeout=60,
             message="the alert to resolve")
    assert _run_row(reader, run_id)[1] is None
    assert reader.rows("SELECT name, step FROM metrics WHERE run_id = ? GROUP BY ALL HAVING count(*) > 1",
                       [run_id]) == []
    steps = reader.rows("SELECT DISTINCT step FROM metrics WHERE run_id = ? AND name = 'val_loss' ORDER BY step",
                        [run_id])
    assert [r[0] for r in steps] == [8, 16, 24, 32]
    wait_for(lambda: store_settled(redis_conn), timeout=60, message="the store queue to drain")
    assert assert_accounts(settings)["versions"] == 1


@pytest.mark.slow
def test_offline_training_that_keeps_failing_fails_after_its_retries_with_an_alert_and_one_command_trains_again(
        settings, redis_conn, offline_trainer, tiny_model_dir, monkeypatch):  # noqa: F811
    reader, artifacts = offline_trainer
    monkeypatch.setenv("CROWDTUNE_TRAINING_RETRY_SECONDS", "[1]")
    config = {**SMALL, "max_steps": 16, "eval_every": 8}
    set_read_only(artifacts, True)
    try:
        run_id, job = actions.start_offline_training(redis_conn, "tweets", config, base_model=tiny_model_dir)
        wait_for(lambda: job.get_status(refresh=True).value in ("finished", "failed"), timeout=300, message="the job")
        job.refresh()
        assert job.get_status().value == "failed" and job.retries_left == 0
        wait_for(lambda: _run_row(reader, run_id)[0] == "failed", timeout=60, message="the run's end")
        status, error = _run_row(reader, run_id)
        assert "Permission denied" in error and str(artifacts) in error and "retrying" not in error, error
        level, message, _ = _alert(reader, f"run-failed:{run_id}")
        assert level == "error" and "Permission denied" in message
        # It was retried once before; that warning is superseded by the failure.
        assert _alert(reader, f"offline-retry:{run_id}")[2] is not None
        assert count(reader, "SELECT count(*) FROM model_versions WHERE run_id = ?", run_id) == 0
    finally:
        set_read_only(artifacts, False)

    # Writable again: one command (the Training page or `crowdtune train offline`) trains again.
    run_id2, job2 = actions.start_offline_training(redis_conn, "tweets", config, base_model=tiny_model_dir)
    wait_for(lambda: job2.get_status(refresh=True).value in ("finished", "failed"), timeout=300, message="the new run")
    assert job2.get_status().value == "finished", job2.latest_result().exc_string
    wait_for(lambda: _run_row(reader, run_id2)[0] == "completed", timeout=60, message="the new run to complete")
    wait_for(lambda: store_settled(redis_conn), timeout=60, message="the store queue to drain")
    assert assert_accounts(settings)["versions"] == 1


@pytest.mark.slow
def test_a_read_only_artifact_folder_pauses_online_training_with_an_alert_and_a_restart_resumes_it(
        settings, redis_conn, workers_without_dac_override, tmp_path, fresh_posts, tiny_model_dir):  # noqa: F811  (fixtures imported above)
    workers = workers_without_dac_override
    artifacts = Path(settings.artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    reader = add_face(settings, str(tmp_path / "sandbox"), fresh_posts[:50])
    workers.start_together(("--store",), ("--queues", "control,default"), ("--queues", "train"), conn=redis_conn)
    set_read_only(artifacts, True)  # publishing only reads; the first RL update is the first to write there
    try:
        run_id = actions.start_online(redis_conn, FACE, online_config(tiny_model_dir, posts_per_update=1))
        update_id = f"{run_id}-u1"
        wait_for(lambda: reader.scalar("SELECT status FROM online_updates WHERE update_id = ?",
                                       [update_id]) == "failed",
                 timeout=240, message="the update to fail (after its retry)")
        alert = wait_for(lambda: reader.rows("SELECT level, message FROM alerts WHERE alert_id = ?",
                                             [f"update-failed:{update_id}"]), timeout=60, message="the alert")
        level, message = alert[0]
        assert level == "error" and "Permission denied" in message and str(artifacts) in message, message
        assert "stop and restart" in message
        paused = reader.scalar("SELECT paused_reason FROM controllers WHERE face_id = ?", [FACE])
        assert paused and "Permission denied" in paused
        assert count(reader, "SELECT count(*) FROM model_versions") == 0
    finally:
        set_read_only(artifacts, False)

    # Writable again: the documented recovery is to stop the paused run and start it again.
    assert actions.stop_online(redis_conn, FACE) == run_id
    wait_for(lambda: reader.scalar("SELECT state FROM controllers WHERE face_id = ?", [FACE]) == "IDLE", timeout=180,
             message="the paused run to stop")
    run_id2 = actions.start_online(redis_conn, FACE, online_config(tiny_model_dir, posts_per_update=1))
    wait_for(lambda: (reader.scalar("SELECT active_version_id FROM faces WHERE face_id = ?", [FACE]) or "").startswith(
        f"{run_id2}-u"), timeout=240, message="an update of the new run to make the active version")
    actions.stop_online(redis_conn, FACE)
    wait_for(lambda: reader.scalar("SELECT state FROM controllers WHERE face_id = ?", [FACE]) == "IDLE", timeout=180,
             message="the new run to stop")
    wait_for(lambda: count(reader, "SELECT count(*) FROM posts WHERE status = 'published' AND score IS NULL") == 0,
             timeout=120, message="every post to be scored")
    wait_for(lambda: store_settled(redis_conn), timeout=60, message="the store queue to drain")
    figures = assert_accounts(settings, scored=True)
    assert figures["versions"] >= 1 and figures["sandbox_posts"] == figures["posts"]["published"] >= 2
