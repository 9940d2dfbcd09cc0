"""The Review page: the queue oldest first, and buttons that decide a post with one click each."""

from __future__ import annotations

import datetime as dt

import pytest

from crowdtune.store.writes import utc_now
from crowdtune.testing.processes import wait_for
from tests.pages.conftest import open_page, page_text, rows, write

PAGE = "pages/review.py"


def waiting_post(run_id: str, slot: int, text: str, drafted: dt.datetime, **values) -> dict:
    return {"post_id": f"{run_id}:p{slot}", "face_id": "sandbox", "origin": "generated", "status": "awaiting_review",
            "run_id": run_id, "publish_slot": slot, "intent_id": f"{run_id}:{slot}", "text": text,
            "inserted_at": drafted, "predicted_reward": 0.5 + slot / 10, "selection_probability": 0.75, **values}


@pytest.fixture
def review_store(online_store):
    """online_store's sandbox face with `review` set to `mode`, and three posts waiting (slots 3, 4, 5)."""
    def with_mode(mode: str):
        now, run_id = utc_now(), online_store.run_id
        posts = [waiting_post(run_id, slot, f"Waiting post {slot}", now - dt.timedelta(minutes=30 - slot))
                 for slot in (3, 4, 5)]
        candidates = [{**waiting_post(run_id, 5, "A candidate of slot 5", now), "post_id": f"{run_id}:p5c1",
                       "status": "candidate", "intent_id": None, "candidate_of": f"{run_id}:p5",
                       "predicted_reward": 0.9, "selection_probability": 0.25}]
        write(online_store.settings,
              rows("faces", {"face_id": "sandbox", "kind": "sandbox", "config": {"review": mode}}),
              rows("posts", *posts, *candidates))
        return online_store
    return with_mode


def status(reader, post_id):
    return reader.scalar("SELECT status FROM posts WHERE post_id = ?", [post_id])


def test_the_queue_shows_oldest_first_and_each_button_decides_its_post_once(review_store, redis_conn, workers):
    from crowdtune.store.reads import StoreReader

    store = review_store("approve")
    workers.start("--store", conn=redis_conn)
    reader, run = StoreReader(store.settings.store_path), store.run_id
    at = open_page(PAGE)
    text = page_text(at)
    assert "3 post(s) wait" in text
    assert text.index("Waiting post 3") < text.index("Waiting post 4") < text.index("Waiting post 5")

    at.button(key=f"approve-{run}:p3").click().run()
    assert not at.exception
    assert f"approve-{run}:p3" not in {b.key for b in at.button}  # gone from the queue at once
    assert f"approve-{run}:p4" in {b.key for b in at.button}
    at.button(key=f"reject-{run}:p4").click().run()
    at.text_area(key=f"text-{run}:p5").set_value("Waiting post 5, edited")
    at.button(key=f"edit-{run}:p5").click().run()
    assert "Nothing waits for review" in page_text(at)

    wait_for(lambda: status(reader, f"{run}:p5") == "approved", timeout=30, message="the decisions applied")
    assert status(reader, f"{run}:p3") == "approved" and status(reader, f"{run}:p4") == "rejected"
    assert reader.scalar("SELECT text FROM posts WHERE post_id = ?", [f"{run}:p5"]) == "Waiting post 5, edited"
    decided = reader.rows("SELECT post_id, action, decided_by, original_text FROM review_decisions ORDER BY post_id")
    assert decided == [(f"{run}:p3", "approve", "dashboard", "Waiting post 3"),
                       (f"{run}:p4", "reject", "dashboard", "Waiting post 4"),
                       (f"{run}:p5", "edit", "dashboard", "Waiting post 5")]
    assert "edit" in page_text(open_page(PAGE))  # the latest decisions table


def test_in_pick_mode_the_candidates_stand_side_by_side_and_a_pick_publishes_that_one(
        review_store, redis_conn, workers):
    from crowdtune.store.reads import StoreReader

    store = review_store("pick")
    workers.start("--store", conn=redis_conn)
    reader, run = StoreReader(store.settings.store_path), store.run_id
    at = open_page(PAGE)
    assert "A candidate of slot 5" in page_text(at) and "predicted 0.900" in page_text(at)
    at.button(key=f"pick-{run}:p5c1").click().run()
    wait_for(lambda: status(reader, f"{run}:p5c1") == "approved", timeout=30, message="the pick applied")
    assert reader.rows("SELECT status, candidate_of FROM posts WHERE post_id = ?", [f"{run}:p5"]) == \
        [("candidate", f"{run}:p5c1")]
    assert reader.scalar("SELECT intent_id FROM posts WHERE post_id = ?", [f"{run}:p5c1"]) == f"{run}:5"


def test_a_read_only_session_cannot_decide(review_store, redis_conn, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_LOGIN_PASSWORD", "secret")
    review_store("approve")
    at = open_page(PAGE)
    assert "Read-only" in page_text(at)
    assert at.button(key="approve-online-1:p3").disabled


def test_the_overview_counts_the_waiting_posts_and_the_posts_page_shows_shadow_posts_as_would_have_posted(
        review_store):
    store = review_store("approve")
    write(store.settings, rows("posts", {"post_id": "shadow-1", "face_id": "sandbox", "origin": "generated",
                                         "status": "shadow", "text": "A post nobody saw", "created_at": utc_now(),
                                         "published_at": utc_now()}))
    assert "3 post(s) wait for review" in page_text(open_page("pages/overview.py"))
    assert "would have posted" in page_text(open_page("pages/posts.py", query={"origin": "generated"}))


def test_the_page_lists_its_keys_and_installs_the_script_that_presses_the_outlined_posts_buttons(review_store,
                                                                                                 redis_conn):
    from crowdtune.dashboard.review_keys import CARD_KEY

    review_store("approve")
    at = open_page(PAGE)
    assert "Keys: **A** approve · **R** reject" in page_text(at) and "**J / ↓** next post" in page_text(at)
    (script,) = [html.proto.body for html in at.get("html") if "crowdtuneReviewKeys" in html.proto.body]
    assert f'[class*="st-key-{CARD_KEY}"]' in script
    assert all(f'press(card, "{prefix}' in script for prefix in ("approve-", "reject-", "pick-"))
    assert at.button(key="approve-online-1:p3").help == "Key A"  # tests/pages/test_review_keys.py presses them
