"""Learning from the operator, end to end on real parts: the review decisions in the store (real DuckDB, its
single writer on a real Redis) ride along with the next update the controller plans, and that update (the
job's own steps, crowdtune.online.updates through jobs.online.rl_update, on the tiny model) makes the rejected
post less likely and the pick more likely than its rivals; the edited post trains nothing online and is kept
as offline training data."""

from __future__ import annotations

import math
from datetime import timedelta

from crowdtune import artifacts
from crowdtune.online.controller import ControllerSnapshot, decide
from crowdtune.online.records import update_planned
from crowdtune.store.remote import read_via_store_worker
from crowdtune.store.writes import StoreWriter, upsert_op, utc_now
from crowdtune.testing.accounting import store_settled
from crowdtune.testing.processes import wait_for
from crowdtune.testing.sandbox_run import FACE, add_face, online_config
from crowdtune.training.generation import GenerationConfig, sample
from crowdtune.training.models import load_base_model, load_version
from tests.training.rl.test_feedback import logprob_of, pick_margin  # the same measures as the unit tests

RUN = "run"
GUIDED = {"max_new_tokens": 16, "guard_samples": 4, "copy_embedding_threshold": None, "learning_rate": 3e-3,
          "real_epochs": 2, "groups_per_step": 8}


def settle(redis_conn):
    wait_for(lambda: store_settled(redis_conn), timeout=60, message="the store queue to drain")


def test_rejections_and_picks_change_the_next_update_and_the_rejected_post_becomes_less_likely(
        settings, redis_conn, workers, tiny_model_dir, fresh_posts, tmp_path):
    add_face(settings, str(tmp_path / "sandbox"), fresh_posts[:8])
    workers.start("--store", conn=redis_conn)
    writer = StoreWriter(redis_conn)
    model, tokenizer = load_base_model(tiny_model_dir)
    drawn = sample(model, tokenizer, GenerationConfig(num_samples=12, batch_size=12, max_new_tokens=16, seed=5,
                                                      trim_unfinished=False))
    now = utc_now()
    drafted = [{"face_id": FACE, "origin": "generated", "run_id": RUN, "prompt": "", "text": s.text or "(empty)",
                "token_ids": s.token_ids, "logprob": float(sum(s.logprobs)), "selection_probability": 1 / 3}
               for s in drawn]
    # 1) what the audience and the operator said: four matured posts, an edited one (scored too), a rejection
    #    with its slot's two candidates, a pick with the two candidates the operator passed over
    posts = [{**drafted[i], "post_id": f"{RUN}:p{i}", "status": "published", "score": float(3 + i),
              "published_at": now - timedelta(hours=10 - i), "publish_slot": i} for i in range(4)]
    edited = {**drafted[4], "post_id": f"{RUN}:e", "status": "published", "review": "edit", "score": 20.0,
              "text": "Written by the operator, not the policy.", "published_at": now - timedelta(hours=5),
              "publish_slot": 4}
    rejected = {**drafted[5], "post_id": f"{RUN}:r", "status": "rejected", "review": "reject", "publish_slot": 5}
    picked = {**drafted[8], "post_id": f"{RUN}:w", "status": "published", "review": "pick",
              "published_at": now - timedelta(hours=1), "publish_slot": 6}
    rivals = [{**drafted[6 + i], "post_id": f"{RUN}:r{i}", "status": "candidate", "candidate_of": rejected["post_id"]}
              for i in range(2)]
    unpicked = [{**drafted[9 + i], "post_id": f"{RUN}:l{i}", "status": "candidate", "candidate_of": picked["post_id"]}
                for i in range(2)]
    config = online_config(tiny_model_dir, algorithm="guided", algorithm_settings=GUIDED, posts_per_update=4)
    writer.submit([
        upsert_op("runs", [{"run_id": RUN, "kind": "online", "face_id": FACE, "status": "running", "config": config,
                            "base_model": tiny_model_dir, "started_at": now - timedelta(hours=12)}]),
        upsert_op("controllers", [{"face_id": FACE, "state": "ONLINE", "run_id": RUN, "config": config,
                                   "started_at": now - timedelta(hours=12), "publish_slot": 7, "resolved_slot": 6}]),
        upsert_op("posts", [*posts, edited, rejected, picked, *rivals, *unpicked]),
    ], write_id="decided")
    settle(redis_conn)

    # 2) the controller's next update takes the matured posts (not the edited one) and the decisions
    snapshot = ControllerSnapshot.from_read(read_via_store_worker(redis_conn, "online_snapshot", face_id=FACE))
    plan = decide(snapshot, utc_now()).update
    assert plan.post_ids == [p["post_id"] for p in posts]
    assert plan.feedback_ids == sorted([rejected["post_id"], *(p["post_id"] for p in unpicked)])
    writer.submit(update_planned(plan, RUN, FACE, None), write_id="plan")
    settle(redis_conn)

    # 3) the update job's own steps, on the tiny model
    from jobs.online import rl_update

    before = float(logprob_of(model, tokenizer, [rejected])[0])
    outcome = rl_update(plan.update_id)
    settle(redis_conn)
    metrics = outcome["metrics"]
    assert (metrics["rejected_posts"], metrics["preference_pairs"]) == (1.0, 2.0)
    assert metrics["dr_members"] == 4 + 3  # the four posts as one group, the rejection with its two rivals
    assert math.isfinite(metrics["preference_loss"])
    policy, _ = load_version(artifacts.version_url(settings.artifacts, outcome["version_id"]),
                             base_model=tiny_model_dir)
    after = float(logprob_of(policy, tokenizer, [rejected])[0])
    assert after < before - 1.0, (before, after)
    # the update started from the base (a fresh adapter): every log-ratio to the reference was 0
    assert pick_margin(policy, tokenizer, picked, unpicked) > 0.05
    assert read_via_store_worker(redis_conn, "pending_feedback", face_id=FACE) == []  # learnt from once

    # 4) the edit: kept as offline training data, with the operator's text
    texts = [p["text"] for p in read_via_store_worker(redis_conn, "training_posts", face_id=FACE)]
    assert texts[-1] == "Written by the operator, not the policy." and len(texts) == 9
