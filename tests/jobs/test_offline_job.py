"""The offline-training job on real workers: versions, metrics, graceful stop, resume after SIGKILL."""

import csv
import json

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from crowdtune import actions
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import apply_write, initialise
from crowdtune.testing.processes import kill_tree, wait_for

pytestmark = pytest.mark.slow

SMALL = {"max_steps": 24, "eval_every": 8, "batch_size": 4, "block_size": 64, "eval_samples": 4,
         "eval_max_new_tokens": 16, "style_metrics": False, "early_stopping_patience": None, "warmup_steps": 2}


@pytest.fixture
def store_with_posts(settings, fresh_posts):
    initialise(settings.store_path)
    rows = [{"post_id": f"tweets:{i}", "face_id": "tweets", "origin": "imported", "status": "imported",
             "platform_id": str(i), "text": p["text"], "created_at": str(p["created_at"])}
            for i, p in enumerate(fresh_posts)]
    apply_write(settings.store_path, "fixture-posts", [
        {"op": "upsert", "table": "faces", "rows": [{"face_id": "tweets", "kind": "dataset", "config": {}}]},
        {"op": "upsert", "table": "posts", "rows": rows}], 10)
    return StoreReader(settings.store_path)


def job_done(job):
    return job.get_status(refresh=True).value in ("finished", "failed", "stopped")


def run_status(reader, run_id):
    return reader.scalar("SELECT status FROM runs WHERE run_id = ?", [run_id])


def test_a_run_registers_a_loadable_version_and_its_metrics(settings, redis_conn, workers, store_with_posts,
                                                            tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_LOGGERS", '["csv"]')  # the worker also logs to a tracker
    workers.start_together(("--store",), ("--queues", "train"), conn=redis_conn)
    run_id, job = actions.start_offline_training(redis_conn, "tweets", SMALL, base_model=tiny_model_dir)
    wait_for(lambda: job_done(job), timeout=300, message="the training job")
    assert job.get_status().value == "finished", job.latest_result().exc_string
    result = job.latest_result().return_value
    reader = store_with_posts
    wait_for(lambda: run_status(reader, run_id) == "completed", timeout=60, message="the run's status")
    names = {r[0] for r in reader.rows("SELECT DISTINCT name FROM metrics WHERE run_id = ?", [run_id])}
    assert {"val_loss", "val_ppl", "train_loss", "gap", "copy_rate", "distinct_2"} <= names
    steps = reader.rows("SELECT DISTINCT step FROM metrics WHERE run_id = ? AND name = 'val_loss' ORDER BY step",
                        [run_id])
    assert steps == [(8,), (16,), (24,)]
    # and the step figures every log_every_n_steps (5) steps
    steps = reader.rows("SELECT step FROM metrics WHERE run_id = ? AND name = 'train/loss' ORDER BY step", [run_id])
    assert steps == [(5,), (10,), (15,), (20,)]
    # the tracker got the store's figures, step for step
    with open(settings.tracking / "csv" / "tweets" / run_id / "metrics.csv", newline="") as file:
        rows = {int(r["step"]): r for r in csv.DictReader(file) if r.get("val_loss")}
    stored = dict(((s, n), v) for s, n, v in reader.rows("SELECT step, name, value FROM metrics WHERE run_id = ?",
                                                         [run_id]))
    assert sorted(rows) == [8, 16, 24]
    assert all(float(rows[s]["val_loss"]) == pytest.approx(stored[(s, "val_loss")]) for s in rows)
    version = reader.frame("SELECT * FROM model_versions WHERE run_id = ?", [run_id]).iloc[0]
    assert version.version_id == result["version_id"] and version.base_model == tiny_model_dir
    assert json.loads(version.metrics)["val_loss"] == pytest.approx(result["best_val_loss"])
    # A version is a plain PEFT adapter: it loads outside Crowdtune.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), version.artifact_url)
    assert any("lora" in name for name, _ in model.named_parameters())


def test_a_stop_during_evaluation_ends_the_run_within_10_s_with_a_loadable_version(
        settings, redis_conn, workers, store_with_posts, tiny_model_dir):
    import time

    workers.start_together(("--store",), ("--queues", "train"), conn=redis_conn)
    # evaluations long enough to stop in: 32 samples of up to 400 tokens at a temperature that rarely ends a post
    config = {**SMALL, "max_steps": 5000, "eval_samples": 32, "eval_max_new_tokens": 400, "eval_temperature": 3.0}
    run_id, job = actions.start_offline_training(redis_conn, "tweets", config, base_model=tiny_model_dir)

    def progress():
        return job.get_meta(refresh=True).get("progress") or {}

    wait_for(lambda: progress().get("step", 0) >= 16 and progress().get("phase", "").startswith("evaluating: sampling"),
             timeout=300, interval=0.02, message="sampling in the second evaluation")
    seen = progress()
    assert seen["total"] == 5000 and seen["eta_seconds"] > 0 and seen["phase"] == "evaluating: sampling 32 posts"
    asked = time.monotonic()
    actions.stop_run(redis_conn, run_id)
    wait_for(lambda: run_status(store_with_posts, run_id) in ("stopping", "stopped"), timeout=10,
             message="state stopping")
    wait_for(lambda: job_done(job), timeout=30, message="the stopped job")
    assert time.monotonic() - asked <= 10.0
    result = job.latest_result().return_value
    assert result["stopped_reason"] == "stopped" and result["steps"] == seen["step"]
    wait_for(lambda: run_status(store_with_posts, run_id) == "stopped", timeout=60, message="state stopped")
    version = store_with_posts.frame("SELECT * FROM model_versions WHERE run_id = ?", [run_id]).iloc[0]
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), version.artifact_url)
    assert json.loads(version.metrics)["tokens_per_second"] > 0  # what the form's cost estimate reads


def test_a_stop_shows_stopping_until_the_run_has_stopped(settings, redis_conn, workers, store_with_posts,
                                                         tiny_model_dir):
    workers.start("--store", conn=redis_conn)
    run_id, job = actions.start_offline_training(redis_conn, "tweets", SMALL, base_model=tiny_model_dir)
    wait_for(lambda: run_status(store_with_posts, run_id) == "queued", timeout=60, message="state queued")
    actions.stop_run(redis_conn, run_id)  # no train worker yet: the run waits in the queue
    wait_for(lambda: run_status(store_with_posts, run_id) == "stopping", timeout=60, message="state stopping")
    workers.start("--queues", "train", conn=redis_conn)
    wait_for(lambda: job_done(job), timeout=300, message="the stopped job")
    assert job.latest_result().return_value["stopped_reason"] == "stopped"
    wait_for(lambda: run_status(store_with_posts, run_id) == "stopped", timeout=60, message="state stopped")
    actions.stop_run(redis_conn, run_id)  # a stop after the end changes nothing
    finished = run_id
    other, other_job = actions.start_offline_training(redis_conn, "tweets", {**SMALL, "max_steps": 2},
                                                      base_model=tiny_model_dir)
    wait_for(lambda: job_done(other_job), timeout=300, message="a later run")  # the store queue is FIFO
    wait_for(lambda: run_status(store_with_posts, other) == "completed", timeout=60, message="the later run")
    assert run_status(store_with_posts, finished) == "stopped"


def test_a_job_whose_worker_is_killed_resumes_from_its_checkpoint(settings, redis_conn, workers, store_with_posts,
                                                                   tiny_model_dir):
    workers.start("--store", conn=redis_conn)
    first = workers.start("--queues", "train", conn=redis_conn)
    config = {**SMALL, "max_steps": 40, "eval_every": 10}
    run_id, job = actions.start_offline_training(redis_conn, "tweets", config, base_model=tiny_model_dir)
    reader = store_with_posts
    wait_for(lambda: reader.scalar("SELECT count(*) FROM metrics WHERE run_id = ? AND step = 10 AND name = 'val_loss'",
                                   [run_id]),
             timeout=300, message="the first evaluation")
    first_loss = reader.scalar("SELECT value FROM metrics WHERE run_id = ? AND step = 10 AND name = 'val_loss'",
                               [run_id])
    kill_tree(first.pid)  # SIGKILL: worker and its job process, no cleanup
    workers.start("--queues", "train", conn=redis_conn)  # a new worker requeues the orphaned job at start
    wait_for(lambda: job_done(job), timeout=300, message="the resumed job")
    result = job.latest_result().return_value
    assert result["resumed"] is True and result["steps"] == 40
    # The run's writes reach the store through its queue, in order: its last evaluation lands last.
    wait_for(lambda: reader.scalar("SELECT count(*) FROM metrics WHERE run_id = ? AND step = 40 AND name = "
                                   "'val_loss'", [run_id]), timeout=60, message="the last evaluation's rows")
    rows = reader.rows("SELECT name, step, count(*) FROM metrics WHERE run_id = ? GROUP BY ALL HAVING count(*) > 1",
                       [run_id])
    assert rows == []
    steps = reader.rows("SELECT DISTINCT step FROM metrics WHERE run_id = ? AND name = 'val_loss' ORDER BY step",
                        [run_id])
    assert steps == [(10,), (20,), (30,), (40,)]
    assert reader.scalar("SELECT value FROM metrics WHERE run_id = ? AND step = 10 AND name = 'val_loss'",
                         [run_id]) == first_loss


def test_training_a_face_without_posts_fails_with_a_clear_error(settings, redis_conn, workers, tiny_model_dir):
    initialise(settings.store_path)
    workers.start_together(("--store",), ("--queues", "train"), conn=redis_conn)
    run_id, job = actions.start_offline_training(redis_conn, "nobody", SMALL, base_model=tiny_model_dir)
    wait_for(lambda: job_done(job), timeout=300, message="the failing job")
    assert "has no imported posts" in job.latest_result().exc_string
    reader = StoreReader(settings.store_path)
    wait_for(lambda: run_status(reader, run_id) == "failed", timeout=60, message="state failed")
    assert "crowdtune import --face nobody" in reader.scalar("SELECT error FROM runs WHERE run_id = ?", [run_id])
    # Missing data is no transient fault: no retry waits for it, and the dashboard alerts at once.
    job.refresh()
    assert job.get_status().value == "failed" and job.retries_left == 0
    alerts = dict(reader.rows("SELECT alert_id, message FROM alerts"))
    assert "has no imported posts" in alerts[f"run-failed:{run_id}"] and f"offline-retry:{run_id}" not in alerts
