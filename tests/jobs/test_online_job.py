"""The online loop on real workers, a real Redis, the real store and the sandbox in accelerated time.

An audience hour passes in two wall seconds (crowdtune.testing.sandbox_run: time_acceleration 1800
for both the sandbox and the controller): posts go out every ~4 s, are read 2 s after publishing
and mature 6 s later.
"""

import csv
from pathlib import Path

import pytest
from rq import Worker

from crowdtune import actions
from crowdtune.embeddings import shared_cache
from crowdtune.errors import SettingsError
from crowdtune.store.reads import StoreReader
from crowdtune.testing.processes import kill_tree, wait_for
from crowdtune.testing.sandbox_run import FACE, add_face, online_config

pytestmark = pytest.mark.slow


@pytest.fixture
def sandbox_dir(tmp_path) -> Path:
    return tmp_path / "sandbox"


@pytest.fixture
def store(settings, sandbox_dir, fresh_posts) -> StoreReader:
    return add_face(settings, str(sandbox_dir), fresh_posts[:50])


def scalar(reader, sql, *params):
    return reader.scalar(sql, list(params))


def sandbox_posts(folder: Path) -> int:
    return len(list(folder.glob("sbx-*.json"))) if folder.exists() else 0


def assert_consistent_after_stop(reader, run_id, sandbox_dir):
    """Stopped: run stopped, controller IDLE, nothing stuck, each sandbox post recorded exactly once."""
    wait_for(lambda: scalar(reader, "SELECT state FROM controllers WHERE face_id = ?", FACE) == "IDLE",
             timeout=180, message="the controller to go IDLE")
    assert scalar(reader, "SELECT status FROM runs WHERE run_id = ?", run_id) == "stopped"
    assert scalar(reader, "SELECT count(*) FROM posts WHERE face_id = ? AND status = 'publishing'", FACE) == 0
    published = reader.rows("SELECT platform_id FROM posts WHERE face_id = ? AND status = 'published'", [FACE])
    assert len(published) == len({p[0] for p in published}) == sandbox_posts(sandbox_dir)
    # Posts still maturing when the run stopped are read until they are scored: no evaluation lost.
    wait_for(lambda: scalar(reader, "SELECT count(*) FROM posts WHERE face_id = ? AND status = 'published' "
                                    "AND score IS NULL", FACE) == 0, timeout=120, message="every post to be scored")


def test_posts_go_out_on_schedule_mature_and_an_update_makes_a_new_active_version(
        settings, redis_conn, workers, store, sandbox_dir, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_LOGGERS", '["csv"]')  # the workers also log to a tracker
    workers.start_together(("--store",), ("--queues", "control,default"), ("--queues", "train"), conn=redis_conn)
    run_id = actions.start_online(redis_conn, FACE, online_config(tiny_model_dir))
    reader = store

    version_id = wait_for(lambda: scalar(reader, "SELECT active_version_id FROM faces WHERE face_id = ?", FACE),
                          timeout=240, message="the first update's version to become active")
    assert version_id == f"{run_id}-u1"
    version = reader.frame("SELECT * FROM model_versions WHERE version_id = ?", [version_id]).iloc[0]
    assert version.run_id == run_id and version.parent_version_id is None and version.step == 1
    assert Path(version.artifact_url, "adapter_config.json").is_file()
    names = {r[0] for r in reader.rows("SELECT name FROM metrics WHERE run_id = ? AND step = 1", [run_id])}
    assert {"score_mean", "reward_mean", "reward_std", "mean_length", "copy_rate", "posts_per_day"} <= names
    assert scalar(reader, "SELECT count(*) FROM metrics WHERE run_id = ? AND name = 'post_score'", run_id) >= 3
    # the tracker got the update's figures at the update's step, as the store did
    with open(settings.tracking / "csv" / FACE / run_id / "metrics.csv", newline="") as file:
        logged = {int(r["step"]): r for r in csv.DictReader(file)}
    assert float(logged[1]["score_mean"]) == pytest.approx(
        scalar(reader, "SELECT value FROM metrics WHERE run_id = ? AND name = 'score_mean' AND step = 1", run_id))
    # and, as it trained, its optimizer step's figures, numbered over the run (reinforce: one step an update)
    wait_for(lambda: scalar(reader, "SELECT count(*) FROM metrics WHERE run_id = ? AND name LIKE 'train/%' "
                                    "AND step = 1", run_id) == 3, timeout=30, message="the update's step figures")
    with open(settings.tracking / "csv" / FACE / run_id / "metrics.csv", newline="") as file:
        step_rows = [r for r in csv.DictReader(file) if r.get("train/loss")]
    assert step_rows[0]["step"] == "1" and float(step_rows[0]["train/grad_norm"]) > 0

    # The update trained on three matured posts, each scored from a snapshot at least 3 audience hours old;
    # earlier windows were read too (how early depends on the machine's load).
    used = reader.frame("SELECT * FROM posts WHERE update_id = ?", [f"{run_id}-u1"])
    assert len(used) == 3 and used.score.notna().all()
    for post_id in used.post_id:
        assert scalar(reader, "SELECT max(age_seconds) FROM reaction_snapshots WHERE post_id = ?", post_id) >= 3 * 3600
    assert scalar(reader, "SELECT count(DISTINCT post_id) FROM reaction_snapshots JOIN posts USING (post_id) "
                          "WHERE run_id = ? AND age_seconds < 3 * 3600", run_id) >= 1
    # Logged for RL: the sampling policy, tokens and their log-probabilities.
    first = reader.frame("SELECT * FROM posts WHERE post_id = ?", [f"{run_id}:p0"]).iloc[0]
    assert first.status == "published" and first.intent_id == f"{run_id}:0" and first.model_version_id is None
    assert len(first.token_ids) == len(first.token_logprobs) > 0
    assert first.logprob == pytest.approx(sum(first.token_logprobs))
    assert '"temperature": 0.9' in first.sampling
    # Its vector is kept for the fits and guards to come (by its publish job, or the embedding job it queued).
    wait_for(lambda: not shared_cache(settings).missing([first.text]), timeout=60, message="the post's embedding")
    # On schedule: consecutive posts at least the minimum gap (1 audience hour = 2 s) apart.
    times = [r[0] for r in reader.rows("SELECT published_at FROM posts WHERE run_id = ? AND status = 'published' "
                                       "ORDER BY published_at", [run_id])]
    assert all((b - a).total_seconds() >= 1.99 for a, b in zip(times, times[1:], strict=False))

    # Posts after the update are written by the new version.
    wait_for(lambda: scalar(reader, "SELECT count(*) FROM posts WHERE run_id = ? AND model_version_id = ? "
                                    "AND status = 'published'", run_id, version_id), timeout=60,
             message="a post by the new version")

    assert actions.stop_online(redis_conn, FACE) == run_id
    assert_consistent_after_stop(reader, run_id, sandbox_dir)


def test_a_killed_update_and_a_restarted_redis_lose_nothing_and_post_nothing_twice(
        settings, redis_server, redis_conn, workers, store, sandbox_dir, tiny_model_dir):
    from crowdtune.runtime.queues import connect

    store_worker = workers.start("--store", conn=redis_conn)
    publisher = workers.start("--queues", "control,default", conn=redis_conn)
    trainer = workers.start("--queues", "train", conn=redis_conn)
    slow_update = {"algorithm": "policy_gradient", "algorithm_settings": {
        "eval_samples": 2, "max_new_tokens": 16, "copy_embedding_threshold": None, "epochs": 40, "minibatch_size": 1}}
    run_id = actions.start_online(redis_conn, FACE, online_config(tiny_model_dir, **slow_update))
    reader = store
    update_id = f"{run_id}-u1"
    wait_for(lambda: scalar(reader, "SELECT status FROM online_updates WHERE update_id = ?", update_id) == "running",
             timeout=240, message="the first update to run")
    kill_tree(trainer.pid)    # SIGKILL mid-update: no cleanup
    kill_tree(publisher.pid)  # and the worker that publishes and collects, whatever it was doing
    # and the store worker: an RQ worker quits when Redis vanishes under a job it is finishing, and
    # `crowdtune up` starts it again (waiting for work, it would ride the restart out)
    kill_tree(store_worker.pid)
    redis_server.stop()       # and Redis goes away while posts are due
    redis_server.start()
    conn = connect(settings)
    # What `crowdtune up` does: start workers again. They requeue the killed jobs and reconcile the
    # controllers from the store.
    workers.restart("--store", conn=conn)  # refused while the killed one's lease lasts, then it starts
    workers.start("--queues", "control,default", conn=conn)
    workers.start("--queues", "train", conn=conn)

    wait_for(lambda: scalar(reader, "SELECT count(*) FROM online_updates WHERE run_id = ? AND status = 'completed'",
                            run_id) >= 2, timeout=300, message="two completed updates")
    assert scalar(reader, "SELECT count(*) FROM online_updates WHERE run_id = ? AND status = 'failed'", run_id) == 0
    assert scalar(reader, "SELECT active_version_id FROM faces WHERE face_id = ?", FACE) is not None
    # Each update used its own posts, and its metrics were written once per step.
    assert scalar(reader, "SELECT count(*) FROM posts WHERE run_id = ? AND update_id IS NOT NULL", run_id) >= 6
    assert reader.rows("SELECT name, step FROM metrics WHERE run_id = ? GROUP BY ALL HAVING count(*) > 1",
                       [run_id]) == []

    actions.stop_online(conn, FACE)
    assert_consistent_after_stop(reader, run_id, sandbox_dir)


def test_a_face_that_cannot_publish_is_retried_with_backoff_and_alerted_on(
        settings, redis_conn, workers, tmp_path, fresh_posts, tiny_model_dir):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the sandbox wants its folder")
    reader = add_face(settings, str(blocker / "sandbox"), fresh_posts[:50])
    workers.start_together(("--store",), ("--queues", "control,default"), conn=redis_conn)
    run_id = actions.start_online(redis_conn, FACE, online_config(tiny_model_dir, publish_retry_minutes=[120]))

    failed = wait_for(lambda: reader.rows("SELECT post_id, reject_reason, inserted_at, updated_at FROM posts "
                                          "WHERE run_id = ? AND status = 'failed'", [run_id]),
                      timeout=120, message="the post to fail")
    post_id, reason, inserted, ended = failed[0]
    assert post_id == f"{run_id}:p0" and "NotADirectoryError" in reason
    # Two retries, 4 s apart (2 audience hours): 8 s between the intent and the failure, less the
    # writer's lag in applying the intent (both times are the writer's clock): one retry would be 4 s.
    assert (ended - inserted).total_seconds() >= 7.5
    alerts = dict(reader.rows("SELECT alert_id, message FROM alerts WHERE source = ?", [f"online {FACE}"]))
    assert "failed after 3 attempt(s)" in alerts[f"publish-failed:{run_id}:0"]
    assert "retrying with backoff" in alerts[f"publish-retry:{run_id}:0"]
    # Nothing stays in `publishing`; the controller backs off before trying the next post.
    assert scalar(reader, "SELECT count(*) FROM posts WHERE run_id = ? AND status = 'publishing'", run_id) == 0
    assert scalar(reader, "SELECT resolved_slot FROM controllers WHERE face_id = ?", FACE) == 0

    actions.stop_online(redis_conn, FACE)
    wait_for(lambda: scalar(reader, "SELECT state FROM controllers WHERE face_id = ?", FACE) == "IDLE",
             timeout=120, message="the controller to go IDLE")
    assert scalar(reader, "SELECT status FROM runs WHERE run_id = ?", run_id) == "stopped"


def test_bad_settings_are_refused_with_a_clear_error_before_anything_starts(redis_conn):
    with pytest.raises(SettingsError, match="interval 5 min is below the minimum gap 30 min"):
        actions.start_online(redis_conn, FACE, {"interval_minutes": 5, "min_gap_minutes": 30})
    with pytest.raises(SettingsError,
                       match="unknown algorithm 'ppo'; choose guided, reinforce, policy_gradient or reward_model"):
        actions.start_online(redis_conn, FACE, {"algorithm": "ppo"})
    assert not Worker.all(connection=redis_conn) and redis_conn.keys("rq:job:*") == []
