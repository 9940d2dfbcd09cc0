"""Review before posting and shadow mode, on real workers, Redis, the store and the tiny model, with a
Mastodon face faked at the HTTP boundary (tests/faces/conftest.py's FakeApi behind Mastodon.py).

Time runs at wall speed; the loop drafts a slot every ~3 s. With `review = approve` (the default of a
network face) every slot's post waits; the decisions go through crowdtune.actions.review_post exactly as
the Review page and `crowdtune review` send them.
"""

from __future__ import annotations

import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from crowdtune import actions
from crowdtune.errors import CrowdtuneError
from crowdtune.online.controller import OnlineConfig
from crowdtune.online.dispatch import publish_job
from crowdtune.online.schedule import safe_id
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import initialise
from crowdtune.testing.processes import kill_tree, wait_for
from crowdtune.testing.sandbox_run import online_config
from tests.faces.test_mastodon import TOKEN, FakeMastodon

pytestmark = pytest.mark.slow

FACE = "masto"
FAST = {"time_acceleration": 1.0, "interval_minutes": 0.05, "jitter_minutes": 0.0, "min_gap_minutes": 0.01,
        "daily_cap": 100, "maturity_windows_hours": [0.001], "posts_per_update": 1000, "candidates": 4,
        "publish_retries": 1, "publish_retry_minutes": [1 / 60]}


@pytest.fixture
def mastodon(fake_api):
    return FakeMastodon(fake_api, statuses=0)


@pytest.fixture
def reader(settings, redis_conn, workers, monkeypatch):
    """A new store with its writer and a worker for light work and generation, whose environment holds
    the Mastodon token (as in production); a reader of the store."""
    monkeypatch.setenv("CROWDTUNE_MASTODON_TOKEN", TOKEN)
    initialise(settings.store_path)
    workers.start_together(("--store",), ("--queues", "control,default"), conn=redis_conn)
    return StoreReader(settings.store_path)


def start(redis_conn, reader, mastodon, tiny_model_dir, **face_config) -> str:
    actions.save_face(redis_conn, FACE, "mastodon", {"api_base_url": mastodon.api.url, **face_config})
    wait_for(lambda: reader.scalar("SELECT count(*) FROM faces WHERE face_id = ?", [FACE]), message="the face")
    return actions.start_online(redis_conn, FACE, online_config(tiny_model_dir, **FAST))


def posts_of(reader, run_id, status) -> list[tuple]:
    return reader.rows("SELECT post_id, text, publish_slot FROM posts WHERE run_id = ? AND status = ? "
                       "ORDER BY publish_slot", [run_id, status])


def created(mastodon) -> list[str]:
    """The texts the fake server was asked to publish, in order."""
    return [(r.json() if r.body.startswith(b"{") else {k: v[0] for k, v in r.form().items()})["status"]
            for r in mastodon.api.seen("POST", "/api/v1/statuses")]


def test_nothing_reaches_the_server_before_approval_and_each_decision_does_what_it_says_once(
        redis_conn, reader, workers, mastodon, tiny_model_dir):
    run_id = start(redis_conn, reader, mastodon, tiny_model_dir)

    # 1) approve is the network face's default: slots are drafted on schedule and wait; nothing is sent.
    queue = wait_for(lambda: (q := posts_of(reader, run_id, "awaiting_review")) and len(q) >= 5 and q,
                     timeout=120, message="five posts waiting for review")
    assert created(mastodon) == []
    assert reader.scalar("SELECT resolved_slot FROM controllers WHERE face_id = ?", [FACE]) >= 4
    (approve_id, approve_text, _), (edit_id, edit_text, _), (reject_id, _, _), (pick_id, _, _) = queue[:4]
    late_id, late_text, _ = queue[4]

    # 2) approve, edit, reject: each once (a second decision on the same post is refused).
    actions.review_post(redis_conn, approve_id, "approve", "alice")
    actions.review_post(redis_conn, edit_id, "edit", "alice", text="Edited by a person, published as such.")
    actions.review_post(redis_conn, reject_id, "reject", "bob")
    with pytest.raises(CrowdtuneError, match="does not wait for review"):
        actions.review_post(redis_conn, approve_id, "reject", "bob")
    wait_for(lambda: len(posts_of(reader, run_id, "published")) == 2, timeout=120, message="two posts out")
    assert sorted(created(mastodon)) == sorted([approve_text, "Edited by a person, published as such."])
    status = dict(reader.rows("SELECT post_id, status FROM posts WHERE post_id IN (?, ?, ?)",
                              [approve_id, edit_id, reject_id]))
    assert status == {approve_id: "published", edit_id: "published", reject_id: "rejected"}
    decisions = {r[0]: r[1:] for r in reader.rows(
        "SELECT post_id, action, decided_by, original_text, text FROM review_decisions WHERE run_id = ?", [run_id])}
    assert decisions[edit_id] == ("edit", "alice", edit_text, "Edited by a person, published as such.")
    assert decisions[approve_id][:2] == ("approve", "alice") and decisions[reject_id][:2] == ("reject", "bob")
    assert reader.scalar("SELECT review FROM posts WHERE post_id = ?", [edit_id]) == "edit"

    # 3) pick: a candidate of the slot goes out in place of the rule's choice, and becomes the slot's post.
    candidates = reader.rows("SELECT post_id, text FROM posts WHERE candidate_of = ? AND status = 'candidate'",
                             [pick_id])
    assert candidates, "the slot kept only its chosen sample"
    picked_id, picked_text = candidates[0]
    actions.review_post(redis_conn, pick_id, "pick", "carol", candidate_id=picked_id)
    wait_for(lambda: reader.scalar("SELECT status FROM posts WHERE post_id = ?", [picked_id]) == "published",
             timeout=120, message="the picked candidate out")
    assert created(mastodon)[-1] == picked_text
    assert reader.rows("SELECT status, candidate_of FROM posts WHERE post_id = ?", [pick_id]) == \
        [("candidate", picked_id)]

    # 4) a worker killed between the decision and the publish: the next one publishes it, exactly once.
    sent = len(created(mastodon))
    publisher = next(p for p in workers.procs if "control,default" in " ".join(p.args))
    kill_tree(publisher.pid)
    actions.review_post(redis_conn, late_id, "approve", "cli")
    workers.start("--queues", "control,default", conn=redis_conn)
    wait_for(lambda: reader.scalar("SELECT status FROM posts WHERE post_id = ?", [late_id]) == "published",
             timeout=90, message="the approved post out after the restart")
    assert created(mastodon)[sent:] == [late_text]
    # A re-run of that slot's publish job finds the state and sends nothing.
    slot = reader.scalar("SELECT publish_slot FROM posts WHERE post_id = ?", [late_id])
    publish_job(redis_conn, OnlineConfig(**online_config(tiny_model_dir, **FAST)), FACE, run_id, slot)
    job = Job.fetch(f"publish-{safe_id(run_id)}-{slot}", connection=redis_conn, serializer=JSONSerializer)
    wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=60, message="the re-run to end")
    assert job.return_value()["outcome"] == "already resolved"  # the slot and its post are done: nothing sent
    actions.stop_online(redis_conn, FACE)
    wait_for(lambda: reader.scalar("SELECT state FROM controllers WHERE face_id = ?", [FACE]) == "IDLE",
             timeout=90, message="the controller to go IDLE")
    assert created(mastodon)[sent:] == [late_text]
    # Every post that was waiting when the run stopped is skipped, never sent; the server saw one POST per approval.
    assert posts_of(reader, run_id, "awaiting_review") == [] and posts_of(reader, run_id, "approved") == []
    out = reader.rows("SELECT text FROM posts WHERE run_id = ? AND status = 'published'", [run_id])
    assert sorted(t for (t,) in out) == sorted(created(mastodon))


def test_a_shadow_face_never_calls_the_network_and_shows_what_it_would_have_posted(
        redis_conn, reader, mastodon, tiny_model_dir):
    run_id = start(redis_conn, reader, mastodon, tiny_model_dir, review="off", shadow=True)
    shadow = wait_for(lambda: (s := posts_of(reader, run_id, "shadow")) and len(s) >= 3 and s, timeout=120,
                      message="three would-have-posted posts")
    actions.stop_online(redis_conn, FACE)
    wait_for(lambda: reader.scalar("SELECT state FROM controllers WHERE face_id = ?", [FACE]) == "IDLE",
             timeout=90, message="the controller to go IDLE")
    assert mastodon.api.requests == []  # not a publish, not a reaction read, not a health check
    assert reader.scalar("SELECT count(*) FROM reaction_snapshots s JOIN posts p USING (post_id) WHERE p.run_id = ?",
                         [run_id]) == 0
    assert all(text for _, text, _ in shadow)
    assert reader.scalar("SELECT count(*) FROM posts WHERE run_id = ? AND published_at IS NOT NULL "
                         "AND status = 'shadow'", [run_id]) >= 3
