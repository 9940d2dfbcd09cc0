"""Best-of-N publishing through the real publish job: real Redis, the real store and its single writer,
the tiny model, the sandbox face and a reward model fitted on real MiniLM vectors.

The publish job runs in the test process (as a worker's child would run it) except where a worker
is killed: there it runs in a real worker process.
"""

import json
import os
import shutil
from datetime import datetime

import numpy as np
import pytest

from crowdtune import actions
from crowdtune.embeddings import cached_embed
from crowdtune.online.controller import OnlineConfig
from crowdtune.online.dispatch import publish_job
from crowdtune.store.writes import StoreWriter, upsert_op
from crowdtune.testing.accounting import store_settled
from crowdtune.testing.processes import kill_tree, wait_for
from crowdtune.testing.sandbox_run import FACE, add_face, online_config
from crowdtune.training.rl.predictor import PredictorConfig, fit_predictor
from faces.sandbox import post_id_for_intent
from jobs.online import publish_post


@pytest.fixture
def sandbox_dir(tmp_path):
    return tmp_path / "sandbox"


@pytest.fixture
def store(settings, redis_conn, workers, sandbox_dir, fresh_posts):
    """The sandbox face with 50 imported posts, and the store's single writer."""
    reader = add_face(settings, str(sandbox_dir), fresh_posts[:50])
    workers.start("--store", conn=redis_conn)
    return reader


def settle(redis_conn):
    wait_for(lambda: store_settled(redis_conn), timeout=60, message="the store queue to drain")


def slot_rows(reader, run_id, slot) -> list[dict]:
    columns = ["post_id", "status", "text", "predicted_reward", "selection_probability", "candidate_of",
               "reward_model_id", "reject_reason", "intent_id"]
    return [dict(zip(columns, r, strict=True)) for r in reader.rows(
        f"SELECT {', '.join(columns)} FROM posts WHERE run_id = ? AND publish_slot = ? ORDER BY post_id",
        [run_id, slot])]


def sandbox_texts(folder) -> list[str]:
    return [json.loads(p.read_text())["text"] for p in sorted(folder.glob("sbx-*.json"))]


def record_reward_model(settings, redis_conn, posts) -> str:
    """Fit the face's reward model on `posts` (MiniLM vectors; a reward that favours longer posts, plus
    noise), save it under artifacts_url and record its reward_models row through the store writer."""
    rng = np.random.default_rng(0)
    scored = [{"text": p["text"], "origin": "imported", "posted_at": str(p["created_at"]),
               "reward": len(p["text"]) / 100 + float(rng.normal(scale=0.5))} for p in posts]
    predictor = fit_predictor(scored, cached_embed([p["text"] for p in scored]), PredictorConfig(members=16))
    url = f"{settings.artifacts}/reward_models/rm-1"
    predictor.save(url)
    StoreWriter(redis_conn).submit([upsert_op("reward_models", [{
        "model_id": "rm-1", "face_id": FACE, "fitted_at": datetime(2026, 12, 1), "artifact_url": url,
        "history_posts": len(scored), "generated_posts": 0}])], write_id="fit:rm-1")
    return "rm-1"


def test_best_of_n_stores_every_candidate_publishes_one_and_explores(
        settings, redis_conn, store, sandbox_dir, tiny_model_dir, fresh_posts):
    model_id = record_reward_model(settings, redis_conn, fresh_posts[50:90])
    run_id = actions.start_online(redis_conn, FACE, online_config(tiny_model_dir, candidates=6))
    settle(redis_conn)
    slots = 8
    for slot in range(slots):
        outcome = publish_post(FACE, run_id, slot)
        assert outcome["outcome"] == "published", outcome
        settle(redis_conn)

    explores = 0
    for slot in range(slots):
        rows = slot_rows(store, run_id, slot)
        kept = [r for r in rows if r["status"] != "rejected"]
        chosen = [r for r in kept if r["status"] == "published"]
        # Exactly one published post per slot, the others stored as its candidates.
        assert [r["post_id"] for r in chosen] == [f"{run_id}:p{slot}"] and chosen[0]["intent_id"] == f"{run_id}:{slot}"
        assert all(r["status"] == "candidate" and r["candidate_of"] == chosen[0]["post_id"] and r["intent_id"] is None
                   for r in kept if r is not chosen[0])
        assert len(rows) == 6 and len(kept) >= 2, rows
        assert all(r["reject_reason"] for r in rows if r["status"] == "rejected")
        # Every kept candidate carries the reward model's prediction; the probabilities are a distribution.
        assert all(r["reward_model_id"] == model_id and r["predicted_reward"] is not None for r in kept)
        assert sum(r["selection_probability"] for r in kept) == pytest.approx(1.0)
        assert chosen[0]["selection_probability"] > 0
        # Thompson sampling explores: a candidate below the top prediction has a chance to be published.
        # (Whether the slot's draw landed on it is luck of the run id's seed, so that is not asserted.)
        top = max(r["predicted_reward"] for r in kept)
        explores += any(r["selection_probability"] > 0 and r["predicted_reward"] < top for r in kept)
    assert explores >= 1
    published = [r[0] for r in store.rows("SELECT text FROM posts WHERE run_id = ? AND status = 'published' "
                                          "ORDER BY publish_slot", [run_id])]
    assert sorted(sandbox_texts(sandbox_dir)) == sorted(published) and len(published) == slots
    # Candidates never count as published: the controller's view and the Training page's count.
    from crowdtune.store.views import online_controllers

    assert online_controllers(store).set_index("face_id").loc[FACE, "published"] == slots


def test_a_copy_of_the_faces_own_published_post_is_rejected(settings, redis_conn, store, tiny_model_dir):
    # top_k 1: every sample is the model's greedy post, so the second slot can only repeat the first.
    values = online_config(tiny_model_dir, candidates=3, max_generation_attempts=1)
    values["algorithm_settings"]["top_k"] = 1
    run_id = actions.start_online(redis_conn, FACE, values)
    settle(redis_conn)
    assert publish_post(FACE, run_id, 0)["outcome"] == "published"
    settle(redis_conn)
    first = slot_rows(store, run_id, 0)
    text = next(r["text"] for r in first if r["status"] == "published")
    assert [r["reject_reason"] for r in first if r["status"] == "rejected"] == ["duplicate", "duplicate"]

    assert publish_post(FACE, run_id, 1)["outcome"] == "every sample was rejected"
    settle(redis_conn)
    second = slot_rows(store, run_id, 1)
    assert [(r["status"], r["reject_reason"], r["text"]) for r in second] == [("rejected", "repeat", text)] * 3


@pytest.mark.slow
def test_a_worker_killed_between_choosing_and_publishing_publishes_exactly_the_chosen_one(
        settings, redis_conn, workers, store, sandbox_dir, tiny_model_dir, tmp_path):
    # A policy of the test's own, deleted once the intent is recorded: a re-run that sampled again would fail.
    policy = shutil.copytree(tiny_model_dir, tmp_path / "policy")
    values = online_config(str(policy), candidates=4)
    run_id = actions.start_online(redis_conn, FACE, values)
    # The face hangs when asked to publish: where the sandbox reads the slot's post sits a FIFO, and
    # opening it blocks. So the kill lands after the choice is recorded and before anything is out.
    sandbox_dir.mkdir()
    hang = sandbox_dir / f"{post_id_for_intent(f'{run_id}:0')}.json"
    os.mkfifo(hang)
    publisher = workers.start("--queues", "default", conn=redis_conn)  # no ticks: only this publish job
    publish_job(redis_conn, OnlineConfig(**values), FACE, run_id, 0)
    wait_for(lambda: any(r["status"] == "publishing" for r in slot_rows(store, run_id, 0)), timeout=120,
             message="the intent to be recorded")
    settle(redis_conn)
    before = slot_rows(store, run_id, 0)
    chosen = next(r for r in before if r["status"] == "publishing")
    # The intent and every candidate landed together.
    assert sum(r["status"] == "candidate" for r in before) == sum(r["status"] != "rejected" for r in before) - 1 >= 1

    kill_tree(publisher.pid)
    shutil.rmtree(policy)
    hang.unlink()
    workers.start("--queues", "default", conn=redis_conn)  # requeues the dead worker's job at start
    wait_for(lambda: any(r["status"] == "published" for r in slot_rows(store, run_id, 0)), timeout=120,
             message="the slot to be published after the kill")
    settle(redis_conn)

    after = slot_rows(store, run_id, 0)
    assert sandbox_texts(sandbox_dir) == [chosen["text"]]
    assert [(r["post_id"], r["text"]) for r in after] == [(r["post_id"], r["text"]) for r in before]
    assert [r["status"] for r in after] == [{"publishing": "published"}.get(r["status"], r["status"]) for r in before]
    assert store.scalar("SELECT resolved_slot FROM controllers WHERE face_id = ?", [FACE]) == 0
