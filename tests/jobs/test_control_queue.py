"""Light work never waits behind heavy work: the `control` queue and its own worker.

Controller ticks, reaction reads and imports go to `control`; training to `train`, generation to
`default`. With `make run`'s default workers a tick keeps its time while a model trains.
"""

from datetime import timedelta

import pytest
from rq import Worker

from crowdtune import actions
from crowdtune.online.schedule import schedule_tick
from crowdtune.runtime.queues import queue
from crowdtune.settings import Settings
from crowdtune.store.writes import utc_now
from crowdtune.testing.processes import wait_for
from crowdtune.testing.sandbox_run import FACE, add_face, online_config

pytestmark = pytest.mark.slow


def test_make_runs_default_workers_give_light_work_a_worker_of_its_own(settings):
    default = settings.worker_queues
    assert default[0] == "control" and all("control" not in e for e in default[1:])
    assert Settings(worker_queues=["train,default"]).worker_queues == ["train,default", "control"]


def test_a_controller_tick_runs_on_time_while_a_training_job_occupies_the_train_worker(
        settings, redis_conn, workers, tmp_path, fresh_posts, tiny_model_dir):
    add_face(settings, str(tmp_path / "sandbox"), fresh_posts[:200])
    workers.start("--store", conn=redis_conn)
    control = workers.start("--queues", "control", conn=redis_conn)
    workers.start("--queues", "train,default", conn=redis_conn)
    run_id, training = actions.start_offline_training(
        redis_conn, FACE, {"max_steps": 5000, "eval_every": 1000, "batch_size": 4, "block_size": 64,
                           "eval_samples": 0, "style_metrics": False, "warmup_steps": 1},
        base_model=tiny_model_dir)
    wait_for(lambda: (training.get_meta(refresh=True).get("progress") or {}).get("step", 0) >= 2, timeout=300,
             message="the training run to be under way")

    # The online loop starts: its first tick is due now, the one after at a set time.
    actions.start_online(redis_conn, FACE, online_config(tiny_model_dir))
    due = utc_now() + timedelta(seconds=3)
    tick_id = schedule_tick(redis_conn, "another-face", due)
    tick = wait_for(lambda: (job := queue("control", redis_conn).fetch_job(tick_id)) and job.ended_at and job,
                    timeout=30, message="the scheduled tick")
    # On time: within the scheduler's poll of its due time, and on the control worker.
    started = tick.started_at.replace(tzinfo=None)  # RQ's times are aware UTC, the store's naive UTC
    assert tick.get_status() == "finished" and started <= due + timedelta(seconds=4)
    assert tick.worker_name == next(w.name for w in Worker.all(connection=redis_conn)
                                    if w.name.endswith(f".{control.pid}"))
    # The first tick of the loop ran too and handed its post to generation, which waits for the
    # busy train,default worker: heavy work queues behind heavy work, never light work.
    wait_for(lambda: queue("default", redis_conn).count == 1, timeout=30, message="the publish job")
    assert training.get_status(refresh=True) == "started"
    actions.stop_run(redis_conn, run_id)


def test_a_saved_sandbox_face_is_set_up_by_a_job_not_by_its_first_publish(settings, redis_conn, workers, tmp_path):
    from crowdtune.store.writer import initialise

    initialise(settings.store_path)
    workers.start("--store", conn=redis_conn)
    from faces.audience import AudienceConfig, cache_path

    # an audience fitted on 20 rated tweets (the default likes audience fits on ~5,700: minutes of embedding)
    audience = {"kind": "human", "fit_max_posts": 20, "cache_dir": str(tmp_path / "audiences")}
    actions.save_face(redis_conn, "sbx2", "sandbox", {"state_url": str(tmp_path / "s"), "audience": audience})
    # Heavy (a likes audience embeds thousands of posts): with generation, never on the control queue.
    [job] = queue("default", redis_conn).jobs
    assert job.func_name == "jobs.system.prepare_face" and queue("control", redis_conn).count == 0
    workers.start("--queues", "default", conn=redis_conn)
    wait_for(lambda: job.get_status(refresh=True) in ("finished", "failed"), timeout=120, message="the set-up")
    assert job.get_status() == "finished", job.latest_result().exc_string
    assert job.latest_result().return_value["face_id"] == "sbx2"
    # with its progress, and fitted for good: a publish job loads the fit (milliseconds), never fits it
    assert job.get_meta(refresh=True)["progress"]["phase"] == "setting up: embedding 20 of 20 posts"
    assert cache_path(AudienceConfig(**audience)).is_file()
