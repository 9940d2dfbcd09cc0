"""The Review page's keys in a real browser: Chromium (Playwright) against the app with its real Redis and
store writer. Twenty waiting posts are cleared with single keys, as fast as the page answers."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time

import pytest

from crowdtune.store.writes import utc_now
from crowdtune.testing.processes import kill_tree, wait_for
from tests.conftest import ROOT
from tests.pages.conftest import rows, write
from tests.pages.test_browser import CHROMIUM, FLAGS, free_port, healthy
from tests.pages.test_review_page import waiting_post

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                                      "(apt-get install -y chromium)"),
]
POSTS = 20


@pytest.fixture
def app_url(settings, redis_conn, tmp_path):
    """The dashboard alone (`streamlit run app.py`), on this test's data folder and Redis."""
    port = free_port()
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.fileWatcherType", "none",
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=os.environ.copy())
    url = f"http://localhost:{port}"
    try:
        wait_for(lambda: healthy(url), timeout=60, interval=0.3, message="the app to answer")
        yield url
    finally:
        kill_tree(proc.pid)
        print((tmp_path / "app.log").read_text(errors="replace")[-2000:])


def test_twenty_posts_are_cleared_with_single_keys_within_a_minute(settings, redis_conn, workers, app_url):
    from playwright.sync_api import expect, sync_playwright

    from crowdtune.store.reads import StoreReader

    run, now = "online-keys", utc_now()
    write(settings,
          rows("faces", {"face_id": "sandbox", "kind": "sandbox", "config": {"review": "approve"}}),
          rows("posts", *(waiting_post(run, slot, f"Waiting post number {slot}", now - dt.timedelta(minutes=60 - slot))
                          for slot in range(POSTS))))
    workers.start("--store", conn=redis_conn)
    reader = StoreReader(settings.store_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        try:
            page.goto(f"{app_url}/review")
            page.get_by_text(f"{POSTS} post(s) wait").wait_for()
            page.get_by_text("Keys: A approve").wait_for()
            page.wait_for_function("document.crowdtuneReviewKeys === true")  # the script is in

            def post(slot: int):
                return page.locator('[data-testid="stMarkdownContainer"] p',
                                    has_text=re.compile(rf"^Waiting post number {slot}$"))

            def drawn(slot: int) -> None:
                """Wait until the post's card is drawn down to its buttons, as a person would see it. (While a
                rerun redraws the list, Streamlit can show a card's stale copy beside the new one: `first`.)"""
                post(slot).first.wait_for()
                page.locator(f".st-key-reject-{run}-p{slot} button").first.wait_for()

            def decide(key: str, slot: int) -> None:
                """Press `key` once the post is drawn, and wait until the page no longer shows it."""
                drawn(slot)
                page.keyboard.press(key)
                expect(post(slot)).to_have_count(0, timeout=30_000)  # gone, stale copies too

            started = time.monotonic()
            # J moves the outline to the second post and R rejects it (the outline stays in place, on the third);
            # K goes back up and A approves the first; E opens the edit box of the next, whose typing the keys
            # leave alone until Escape; then A clears the rest from the top.
            drawn(0)
            page.keyboard.press("j")
            decide("r", 1)
            page.keyboard.press("k")
            decide("a", 0)
            drawn(2)
            page.keyboard.press("e")
            box = page.get_by_role("textbox", name="Text to publish").first
            box.wait_for()
            page.wait_for_function("document.activeElement && document.activeElement.tagName === 'TEXTAREA'")
            page.keyboard.type(" and")  # 'a' and 'n' go into the box, not to the buttons
            page.keyboard.press("Escape")
            expect(post(2)).to_have_count(1, timeout=30_000)  # still there once (a stale copy goes with the rerun)
            assert box.input_value().endswith(" and")
            for slot in range(2, POSTS):
                decide("a", slot)
            page.get_by_text("Nothing waits for review").wait_for()
            seconds = time.monotonic() - started
        finally:
            browser.close()
    print(f"{POSTS} posts cleared by keys in {seconds:.1f} s")
    assert seconds < 60
    wait_for(lambda: reader.scalar("SELECT count(*) FROM review_decisions") == POSTS, timeout=30,
             message="every decision stored")
    assert reader.rows("SELECT action, count(*) FROM review_decisions GROUP BY action ORDER BY action") == \
        [("approve", POSTS - 1), ("reject", 1)]
    assert reader.scalar("SELECT post_id FROM review_decisions WHERE action = 'reject'") == f"{run}:p1"
