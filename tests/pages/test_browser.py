"""The dashboard in a real browser: Chromium (Playwright) against `crowdtune up` with its real
Redis, store writer and workers. Walks import -> offline training -> progress -> metrics link -> stop.
Screenshots go to test-output/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from crowdtune.testing.processes import free_port, kill_tree, wait_for
from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "test-output"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                                      "(apt-get install -y chromium)"),
]


def healthy(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok"
    except OSError:
        return False


@pytest.fixture
def crowdtune_up(data_dir, tmp_path):
    port = free_port()
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "crowdtune.cli", "up", "--port", str(port)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
    url = f"http://localhost:{port}"
    try:
        wait_for(lambda: healthy(url), timeout=120, interval=0.5, message="the app to answer")
        yield url
    finally:
        kill_tree(proc.pid, sig=__import__("signal").SIGTERM)
        print((tmp_path / "up.log").read_text(errors="replace")[-3000:])


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            yield page
        finally:
            page.screenshot(path=SHOTS / "browser-last.png", full_page=True)  # what the page showed at the end
            browser.close()


def reload_until(page, text: str, timeout: float = 120) -> None:
    """Reload until `text` shows (pages outside fragments only refresh on reload)."""
    deadline = time.monotonic() + timeout
    while True:
        page.reload()
        try:
            page.get_by_text(text).first.wait_for(timeout=8_000)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise


def test_import_train_watch_progress_follow_a_metrics_link_and_stop(crowdtune_up, browser_page, settings, tmp_path):
    from crowdtune.store.reads import StoreReader
    from crowdtune.training.models import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny", [f"post number {i} about the news of the day" for i in range(300)])
    page, url = browser_page, crowdtune_up
    reader = StoreReader(settings.store_path)

    page.goto(url)
    page.get_by_role("heading", name="Overview").wait_for()
    page.get_by_text("No posts yet: import a dataset").wait_for()
    page.screenshot(path=SHOTS / "browser-1-overview-empty.png", full_page=True)

    # A dataset face over the bundled tweets, then an import of 300 of them.
    page.goto(f"{url}/training")
    page.get_by_label("Face name").fill("tweets")
    page.get_by_role("button", name="Save face").click()
    page.get_by_text("saved (it appears here once").wait_for()
    page.goto(f"{url}/training?face=tweets")  # a link chooses the face in the forms below
    reload_until(page, "Start offline training")
    page.get_by_label("At most this many posts (0 = all)").fill("300")
    page.get_by_role("button", name="Import").click()
    # The page follows the import to the rows written, then says what landed.
    page.get_by_text("Imported 300 posts into the store").wait_for(timeout=120_000)
    assert reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'tweets'", default=0) == 300

    # Offline training on a tiny GPT-2: long enough to watch, cheap enough for two shared cores.
    page.reload()
    # The offline form comes first; the online form below has fields of the same names.
    page.get_by_role("textbox", name="Base model", exact=True).first.fill(str(tiny))
    page.get_by_text("LoRA, optimiser and evaluation settings").first.click()
    # max steps and eval samples are text boxes: blank means auto (CPU and GPU defaults differ)
    for role, label, value in (("textbox", "max steps", "100000"), ("spinbutton", "eval every", "10"),
                               ("textbox", "eval samples", "0"),  # no samples: no embedding model
                               ("spinbutton", "batch size", "4"), ("spinbutton", "block size", "32"),
                               ("textbox", "copy embedding threshold", ""),
                               ("textbox", "early stopping patience", "")):  # blank = never stop early
        page.get_by_role(role, name=label, exact=True).first.fill(value)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text(re.compile(r"Run offline-\S+ queued")).wait_for()
    page.get_by_text(re.compile(r"step \d+/100000")).first.wait_for(timeout=180_000)
    page.screenshot(path=SHOTS / "browser-2-training-progress.png", full_page=True)

    # The Metrics page's link reproduces the view in a fresh tab.
    wait_for(lambda: reader.scalar("SELECT count(*) FROM metrics WHERE name = 'val_loss'", default=0) >= 2,
             timeout=180, interval=1, message="val_loss metrics")
    page.goto(f"{url}/metrics")
    page.get_by_label("Smoothing (EMA)")  # the controls are there
    page.get_by_text("time", exact=True).first.click()  # x axis: time, so the link carries a choice
    page.get_by_text("Link to this view").click()
    link = page.locator("code").filter(has_text="x=time").first.inner_text().strip()  # waits for the rerun
    assert "runs=offline-" in link and "x=time" in link and "metrics=" in link
    shared = page.context.browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()  # someone else
    shared.goto(link)
    shared.get_by_text("val_loss").first.wait_for()
    shared.locator(".js-plotly-plot").first.wait_for()
    shared.screenshot(path=SHOTS / "browser-3-metrics-from-link.png", full_page=True)
    shared.context.close()

    # Stop, with the confirmation step.
    page.goto(f"{url}/training?face=tweets")
    page.get_by_text(re.compile(r"step \d+/100000")).first.wait_for()
    # In the page, not Streamlit's own "Stop" (script) button in the header.
    page.get_by_test_id("stMain").get_by_role("button", name="Stop", exact=True).first.click()
    page.get_by_role("button", name="Yes, stop it").click()
    page.get_by_text("Stop requested").wait_for()
    wait_for(lambda: reader.scalar("SELECT status FROM runs WHERE face_id = 'tweets'") in ("stopped", "completed"),
             timeout=180, interval=1, message="the run to stop")
    page.goto(url)
    page.get_by_role("heading", name="Overview").wait_for()
    page.screenshot(path=SHOTS / "browser-4-overview-after.png", full_page=True)
