"""The online benchmark measures the product, not a copy of it: one slot, one reward-model fit and
one update through the real jobs (real Redis, the store and its single writer, the sandbox face, the
tiny model) call the very functions the benchmark's loop calls.

A recorder wraps each named function (the real one still runs) and notes who called it.
"""

from __future__ import annotations

import functools

import pytest

from crowdtune import actions
from crowdtune.online import candidates, reward_fits, updates
from crowdtune.online.controller import UpdatePlan
from crowdtune.online.records import update_planned
from crowdtune.store.writes import StoreWriter, update_op, utc_now
from crowdtune.testing.accounting import store_settled
from crowdtune.testing.processes import wait_for
from crowdtune.testing.sandbox_run import FACE, add_face, online_config

# What jobs.online.publish_post, fit_reward_model and rl_update run: (module, function name)
NAMED_STEPS = [
    (candidates, "draft_slot"), (candidates, "choose"), (candidates, "guard_indexes"),
    (reward_fits, "fit_model"), (updates, "train_update"), (updates, "update_metrics"),
]


@pytest.fixture
def recorder(monkeypatch):
    """The names of the NAMED_STEPS (and crowdtune.training.rl.run_update) called, in order."""
    import crowdtune.training.rl as rl

    calls: list[str] = []

    def wrap(module, name):
        real = getattr(module, name)

        @functools.wraps(real)
        def recorded(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, recorded)

    for module, name in [*NAMED_STEPS, (rl, "run_update")]:
        wrap(module, name)
    return calls


@pytest.fixture
def update_batches(monkeypatch, recorder):
    """The `batch` of every crowdtune.training.rl.run_update call, in order (the real one still runs)."""
    import crowdtune.training.rl as rl

    batches: list[list[dict]] = []
    real = rl.run_update

    def noted(*args, **kwargs):
        batches.append(kwargs["batch"])
        return real(*args, **kwargs)

    monkeypatch.setattr(rl, "run_update", noted)
    return batches


def shape(batch: list[dict]) -> tuple[set, set]:
    """(the keys of a batch's posts, the keys of their candidates); asserts that candidates came with them."""
    assert batch and any(post["candidates"] for post in batch), "no post came with its slot's candidates"
    return ({key for post in batch for key in post},
            {key for post in batch for candidate in post["candidates"] for key in candidate})


def settle(redis_conn):
    wait_for(lambda: store_settled(redis_conn), timeout=60, message="the store queue to drain")


def test_one_slot_fit_and_update_through_the_jobs_call_what_the_benchmark_calls(
        settings, redis_conn, workers, recorder, update_batches, tiny_model_dir, fresh_posts, tmp_path):
    from benchmarks import online_sandbox
    from faces.audience import AudienceConfig, load_audience
    from jobs.online import fit_reward_model, publish_post, rl_update

    # 1) the benchmark: its loop on the sandbox until its first update (4 matured posts)
    args = online_sandbox.parse_args(["--posts", "11", "--posts-per-update", "4", "--max-new-tokens", "12",
                                      "--history", "40", "--results", str(tmp_path / "bench")])
    args.model = tiny_model_dir
    audience = load_audience(AudienceConfig(kind="sentiment"))
    channel = online_sandbox.Channel(tmp_path / "bench-sandbox", audience, seed=0, history_posts=40)
    history = channel.history()
    run = online_sandbox.algorithm_arm(args, settings, "reinforce", "sentiment", channel, history, None, seed=0)
    assert len(run["scores"]) == 11 and len(run["updates"]) == 1
    benchmark_calls, recorder[:] = set(recorder), []
    [benchmark_batch] = update_batches

    # 2) the jobs: a fit on the face's scored history, one publishing slot, one update on scored posts
    reader = add_face(settings, str(tmp_path / "sandbox"), fresh_posts[:40])
    workers.start("--store", conn=redis_conn)
    writer = StoreWriter(redis_conn)
    writer.submit([update_op("posts", {"post_id": f"{FACE}:imp{i}"}, {"score": float(10 + i % 7)}) for i in range(40)],
                  write_id="history-scores")
    settle(redis_conn)
    assert "model_id" in fit_reward_model(FACE)
    values = online_config(tiny_model_dir, algorithm="reinforce", candidates=4, posts_per_update=1)
    values["algorithm_settings"]["max_new_tokens"] = 12
    run_id = actions.start_online(redis_conn, FACE, values)
    settle(redis_conn)
    assert publish_post(FACE, run_id, 0)["outcome"] == "published"
    settle(redis_conn)
    post_id = f"{run_id}:p0"
    writer.submit([update_op("posts", {"post_id": post_id}, {"score": 12.0, "scored_at": utc_now()})],
                  write_id="slot-score")
    writer.submit(update_planned(UpdatePlan(f"{run_id}-u1", 1, [post_id]), run_id, FACE, None), write_id="plan-u1")
    settle(redis_conn)
    outcome = rl_update(f"{run_id}-u1")
    assert outcome.get("version_id") == f"{run_id}-u1", outcome
    settle(redis_conn)  # the update's own writes go through the store queue
    assert reader.scalar("SELECT status FROM online_updates WHERE update_id = ?", [f"{run_id}-u1"]) == "completed"
    job_calls = set(recorder)

    # 3) the same named steps on both sides
    expected = {name for _, name in NAMED_STEPS} | {"run_update"}
    assert job_calls >= expected, expected - job_calls
    assert benchmark_calls >= expected, expected - benchmark_calls
    # 4) and the update reads the same inputs: each post with its slot's other candidates (guided's
    # doubly-robust groups), in the columns the job reads from the store
    job_batch = update_batches[-1]
    assert shape(benchmark_batch) == shape(job_batch)
