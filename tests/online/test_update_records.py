"""What an RL update reads and writes in the store: best-of-N groups and the reward model in, guard alerts
and a failed warm start out (real DuckDB, the records' own ops)."""

from datetime import datetime, timedelta

from crowdtune.online import records
from crowdtune.online.controller import ControllerSnapshot, UpdatePlan, decide
from crowdtune.store.reads import (
    StoreReader,
    online_controller,
    online_snapshot,
    pending_feedback,
    training_posts,
    update_inputs,
)
from crowdtune.store.writer import apply_write, initialise
from crowdtune.store.writes import plain

T0 = datetime(2026, 11, 2, 9, 0)


def store_with_a_run(tmp_path):
    path = tmp_path / "store.duckdb"
    initialise(path)
    apply_write(path, "fixture", plain([
        {"op": "upsert", "table": "faces", "rows": [{"face_id": "f", "kind": "sandbox", "config": {}}]},
        {"op": "upsert", "table": "runs", "rows": [{"run_id": "run", "kind": "online", "face_id": "f",
                                                    "status": "running", "config": {}}]},
        {"op": "upsert", "table": "controllers", "rows": [{"face_id": "f", "state": "ONLINE", "run_id": "run"}]},
    ]), 10)
    return path, StoreReader(path)


def test_an_update_reads_each_published_post_with_its_candidates_and_the_faces_reward_model(tmp_path):
    path, reader = store_with_a_run(tmp_path)
    common = {"face_id": "f", "origin": "generated", "run_id": "run", "prompt": "", "token_ids": [5, 6],
              "logprob": -3.0}
    posts = [{**common, "post_id": f"run:p{i}", "status": "published", "text": f"post {i}", "score": 4.0 + i,
              "published_at": T0 + timedelta(hours=i), "predicted_reward": 0.5, "selection_probability": 0.75}
             for i in range(2)]
    candidates = [{**common, "post_id": f"run:p0c{i}", "status": "candidate", "text": f"candidate {i}",
                   "candidate_of": "run:p0", "predicted_reward": 0.1 * i, "selection_probability": 0.125}
                  for i in range(1, 3)]
    model = {"model_id": "m1", "face_id": "f", "fitted_at": T0, "artifact_url": str(tmp_path / "rm"),
             "figures": {"online_agreement": 0.4}}
    apply_write(path, "rows", plain([
        {"op": "upsert", "table": "posts", "rows": posts + candidates},
        {"op": "upsert", "table": "reward_models", "rows": [model]},
        *records.update_planned(UpdatePlan("run-u1", 1, ["run:p0", "run:p1"]), "run", "f", None),
    ]), 10)
    read = update_inputs(reader, "run-u1")
    first, second = read["batch"]
    assert [c["post_id"] for c in first["candidates"]] == ["run:p0c1", "run:p0c2"]
    assert first["candidates"][0]["token_ids"] == [5, 6] and first["candidates"][1]["predicted_reward"] == 0.2
    assert (first["selection_probability"], second["candidates"]) == (0.75, [])
    assert read["reward_model"]["artifact_url"] == str(tmp_path / "rm")


def test_tripped_guards_become_alerts_and_a_failed_warm_start_does_not_pause(tmp_path):
    path, reader = store_with_a_run(tmp_path)
    update = {"update_id": "run-u1", "run_id": "run", "face_id": "f", "step": 1}
    version = {"version_id": "run-u1", "parent_version_id": None, "base_model": "tiny", "artifact_url": "x"}
    alerts = [{"guard": "kl", "message": "KL leash: 0.9 per token"}, {"guard": "copy", "message": "Copy guard: 3%"}]
    apply_write(path, "finished", plain(records.update_finished(update, version, {"kl": 0.9}, "note", None,
                                                                alerts)), 10)
    rows = dict(reader.rows("SELECT alert_id, message FROM alerts ORDER BY alert_id"))
    assert rows == {"guard-copy:run-u1": "Update 1 of f: Copy guard: 3%",
                    "guard-kl:run-u1": "Update 1 of f: KL leash: 0.9 per token"}

    warm = {"update_id": "run-u0", "run_id": "run", "face_id": "f", "step": 0}
    apply_write(path, "plan", plain(records.update_planned(UpdatePlan("run-u0", 0, []), "run", "f", None)), 10)
    apply_write(path, "failed", plain(records.update_failed(warm, "out of memory")), 10)
    assert online_controller(reader, "f")["paused_reason"] is None  # publishing starts with the start model
    level, message = reader.rows("SELECT level, message FROM alerts WHERE alert_id = 'update-failed:run-u0'")[0]
    assert level == "warning" and "warm start" in message and "out of memory" in message
    assert reader.scalar("SELECT status FROM online_updates WHERE update_id = 'run-u0'") == "failed"


def test_the_next_update_learns_from_the_review_decisions_since_the_last_and_edits_become_training_posts(tmp_path):
    path, reader = store_with_a_run(tmp_path)
    cfg = {"posts_per_update": 2}
    common = {"face_id": "f", "origin": "generated", "run_id": "run", "prompt": "", "token_ids": [5, 6],
              "logprob": -3.0}
    published = [{**common, "post_id": f"run:p{i}", "status": "published", "text": f"post {i}", "score": 4.0,
                  "published_at": T0 + timedelta(hours=i), "publish_slot": i} for i in range(2)]
    edited = {**common, "post_id": "run:e", "status": "published", "review": "edit", "score": 9.0, "publish_slot": 2,
              "text": "Written by the operator.", "published_at": T0 - timedelta(hours=1), "created_at": T0}
    rejected = {**common, "post_id": "run:r", "status": "rejected", "review": "reject", "text": "rejected"}
    picked = {**common, "post_id": "run:w", "status": "published", "review": "pick", "text": "picked",
              "published_at": T0 + timedelta(hours=3), "publish_slot": 3}
    candidates = [{**common, "post_id": f"run:{c}", "status": "candidate", "text": c, "candidate_of": of}
                  for c, of in (("rc", "run:r"), ("l1", "run:w"), ("l2", "run:w"), ("pc", "run:p0"))]
    guarded = {**common, "post_id": "run:g", "status": "rejected", "text": "a copy", "reject_reason": "copy"}
    imported = {"post_id": "f:1", "face_id": "f", "origin": "imported", "status": "imported", "text": "old",
                "created_at": T0 - timedelta(days=9)}
    apply_write(path, "rows", plain([
        {"op": "update", "table": "runs", "where": {"run_id": "run"}, "set": {"config": cfg}},
        {"op": "update", "table": "controllers", "where": {"face_id": "f"},
         "set": {"config": cfg, "publish_slot": 4, "resolved_slot": 3, "started_at": T0 - timedelta(days=1)}},
        {"op": "upsert", "table": "posts", "rows": [*published, edited, rejected, picked, *candidates, guarded,
                                                    imported]},
    ]), 10)
    # 1) pending: the rejection on review and the pick's unpicked candidates (not a guard's rejection)
    assert pending_feedback(reader, "f") == ["run:l1", "run:l2", "run:r"]
    plan = decide(ControllerSnapshot.from_read(online_snapshot(reader, "f")), T0 + timedelta(hours=4)).update
    assert plan.post_ids == ["run:p0", "run:p1"]  # the edited post (scored, older) never makes an update
    assert plan.feedback_ids == ["run:l1", "run:l2", "run:r"]

    # 2) the plan marks them: the update reads them, and the next one will not again
    apply_write(path, "plan", plain(records.update_planned(plan, "run", "f", None)), 10)
    feedback = update_inputs(reader, plan.update_id)["feedback"]
    assert [(p["post_id"], [c["post_id"] for c in p["candidates"]]) for p in feedback["rejected"]] == \
        [("run:r", ["run:rc"])]
    assert feedback["rejected"][0]["token_ids"] == [5, 6] and feedback["rejected"][0]["logprob"] == -3.0
    assert [(p["chosen"]["post_id"], [c["post_id"] for c in p["unpicked"]]) for p in feedback["picks"]] == \
        [("run:w", ["run:l1", "run:l2"])]
    assert pending_feedback(reader, "f") == []

    # 3) the operator's edit is offline training data, with the operator's text, after the imported posts
    assert [(p["post_id"], p["text"]) for p in training_posts(reader, "f")] == \
        [("f:1", "old"), ("run:e", "Written by the operator.")]


def test_an_updates_step_figures_go_on_from_the_last_one_its_run_logged(tmp_path):
    path, reader = store_with_a_run(tmp_path)
    apply_write(path, "plan", plain(records.update_planned(UpdatePlan("run-u1", 1, []), "run", "f", None)), 10)
    assert update_inputs(reader, "run-u1")["last_step_figure"] == 0
    rows = [{"run_id": run, "name": name, "step": step, "value": 1.0}
            for run, name, step in (("run", "train/loss", 12), ("run", "train/loss", 17), ("run", "score_mean", 40),
                                    ("other-run", "train/loss", 90))]
    apply_write(path, "metrics", plain([{"op": "upsert", "table": "metrics", "rows": rows}]), 10)
    assert update_inputs(reader, "run-u1")["last_step_figure"] == 17
