"""A face's reward model on real workers: fitted when online training asks, validated on a time split,
saved where any worker loads it, recorded with its figures, and refitted once per change (an import
refits a model the face has, never fits the first)."""

from __future__ import annotations

import csv
import datetime as dt
import json

import numpy as np
import pytest

from crowdtune import actions
from crowdtune.online.controller import ControllerSnapshot, Decision
from crowdtune.online.dispatch import carry_out
from crowdtune.online.reward_fits import fit_job_id, refit_if_behind
from crowdtune.online.schedule import job_status
from crowdtune.runtime.queues import queue
from crowdtune.store.writes import StoreWriter
from crowdtune.testing.processes import wait_for
from crowdtune.training.rl.predictor import load_predictor

FACE = "history"
START = dt.datetime(2010, 1, 1)


def history_file(path, tweets, n: int = 150):
    """n real tweets over eight years whose likes grow 30x with the channel and triple with a '!'."""
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "text", "created_at", "likes"])
        for i, tweet in enumerate(tweets[:n]):
            era = 10 * 30 ** (i / n)
            likes = era * (3.0 if "!" in tweet["text"] else 1.0) * rng.lognormal(0, 0.3)
            writer.writerow([i, tweet["text"], (START + dt.timedelta(days=20 * i)).isoformat(), int(likes)])


def imported(conn, job) -> dict:
    """Wait for an import job; its result."""
    wait_for(lambda: job.get_status(refresh=True) in ("finished", "failed"), timeout=120, message="the import")
    assert job.get_status() == "finished", job.latest_result()
    return job.return_value()


def generated_posts(tweets, n: int = 12) -> list[dict]:
    """Published posts, newest of all, with the reward the model predicted at publishing: it ranked them right."""
    at = START + dt.timedelta(days=20 * 160)
    return [{"post_id": f"{FACE}-run:p{i}", "face_id": FACE, "origin": "generated", "status": "published",
             "text": tweet["text"], "published_at": at + dt.timedelta(hours=4 * i), "created_at": at,
             "score": 200.0 + 50 * i, "predicted_reward": -1.0 + 0.15 * i}
            for i, tweet in enumerate(tweets[:n])]


@pytest.mark.slow
def test_a_fit_after_the_import_is_validated_loadable_anywhere_and_refitted_once_per_change(
        settings, redis_conn, running, tweets, tmp_path):
    reader = running
    history_file(tmp_path / "history.csv", tweets[2300:])
    actions.save_face(redis_conn, FACE, "dataset", {
        "source": str(tmp_path / "history.csv"), "reaction_columns": {"likes": "likes"},
        "columns": {"text": "text", "id": "id", "created_at": "created_at"}})
    StoreWriter(redis_conn).upsert("posts", generated_posts(tweets[2450:]))
    imported(redis_conn, actions.start_import(redis_conn, FACE))
    # A first import fits nothing (a newcomer's first offline run follows it); online training asks.
    assert reader.scalar("SELECT count(*) FROM reward_models WHERE face_id = ?", [FACE]) == 0
    assert refit_if_behind(redis_conn, FACE) == fit_job_id(FACE, 162)  # as actions.start_online does

    row = wait_for(lambda: (reader.frame("SELECT * FROM reward_models WHERE face_id = ?", [FACE]).to_dict("records")
                            or [None])[0], timeout=120, message="the reward model fitted")
    assert row["model_id"].startswith(f"{FACE}-162-")
    assert (row["history_posts"], row["generated_posts"], row["validation_posts"]) == (150, 12, 32)
    # The '!' triples the likes in every era: the newest posts' ranks are foreseen from the older ones.
    assert row["validation_spearman"] > 0.2
    figures = json.loads(row["figures"])
    assert figures["scored_posts"] == 162 and 0 < figures["validation_coverage"] <= 1
    assert figures["online_agreement_posts"] == 12 and figures["online_agreement"] > 0.9
    metrics = dict(reader.rows("SELECT name, value FROM metrics WHERE run_id = ? AND step = 162",
                               [f"reward-model:{FACE}"]))
    assert metrics["validation_spearman"] == pytest.approx(row["validation_spearman"])
    assert metrics["posts_fitted"] == 162 and metrics["online_agreement"] > 0.9

    # Loadable from its URL: it prefers what the audience liked.
    model = load_predictor(row["artifact_url"])
    shouting = [t["text"] for t in tweets[2600:] if "!" in t["text"]][:40]
    calm = [t["text"] for t in tweets[2600:] if "!" not in t["text"]][:40]
    from crowdtune.embeddings import shared_cache

    mean, _ = model.predict(shared_cache(settings).embed(shouting + calm, keep=False), shouting + calm)
    assert mean[:40].mean() > mean[40:].mean()
    assert model.figures["validation_spearman"] == pytest.approx(row["validation_spearman"])

    # Nothing changed since: no refit. One more score matured: the next import queues one refit,
    # however often it is asked for.
    assert refit_if_behind(redis_conn, FACE) is None
    StoreWriter(redis_conn).upsert("posts", [{**generated_posts(tweets[2500:], 13)[12], "predicted_reward": None}])
    imported(redis_conn, actions.start_import(redis_conn, FACE))
    assert refit_if_behind(redis_conn, FACE) == fit_job_id(FACE, 163)
    # The job may already be queued, taken, running, done, or (on a loaded machine) failed and waiting for
    # its retry by now: wherever it is, it is one job.
    default = queue("default", redis_conn)
    fits = [j.decode() if isinstance(j, bytes) else j
            for j in default.job_ids + redis_conn.lrange(default.intermediate_queue_key, 0, -1)
            + default.started_job_registry.get_job_ids() + default.finished_job_registry.get_job_ids()
            + default.scheduled_job_registry.get_job_ids() + default.failed_job_registry.get_job_ids()
            if (j.decode() if isinstance(j, bytes) else j).startswith("fit-reward-model-")]
    assert fits.count(fit_job_id(FACE, 163)) >= 1 and set(fits) <= {fit_job_id(FACE, 162), fit_job_id(FACE, 163)}, \
        (fits, job_status(redis_conn, fit_job_id(FACE, 163)))


def test_a_tick_queues_the_fit_its_decision_asks_for_once(settings, redis_conn):
    raw = {"controller": {"face_id": FACE, "state": "ONLINE", "config": {}},
           "reward_model": {"scored_posts": 41, "fitted_scored_posts": 40}}
    snap = ControllerSnapshot.from_read(raw)
    decision = Decision(fit_reward_model=41)
    assert carry_out(redis_conn, raw, snap, decision)["fit_reward_model"] is True
    assert carry_out(redis_conn, raw, snap, decision)["fit_reward_model"] is False  # a re-run tick
    assert queue("default", redis_conn).job_ids == [fit_job_id(FACE, 41)]
