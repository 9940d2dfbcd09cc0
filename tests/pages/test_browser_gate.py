"""The login gate in a real browser, against a fresh `streamlit run app.py`: a server whose very first
request is a page's URL still asks for the login (Streamlit would otherwise run pages/*.py without
app.py until some run called st.navigation), and the login then opens that page."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from urllib.parse import urlparse

import pytest

from crowdtune.testing.processes import kill_tree, wait_for
from tests.conftest import ROOT
from tests.pages.test_browser import CHROMIUM, FLAGS, free_port, healthy

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                                      "(apt-get install -y chromium)"),
]


@pytest.fixture
def fresh_app(tmp_path):
    """A new Streamlit server over app.py behind a password, without read-only links; no request yet."""
    port = free_port()
    env = dict(os.environ, CROWDTUNE_DATA_DIR=str(tmp_path / "data"), CROWDTUNE_LOGIN_PASSWORD="correct horse",
               CROWDTUNE_ALLOW_READONLY_LINKS="false")
    log = open(tmp_path / "app.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.fileWatcherType", "none",
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        wait_for(lambda: healthy(url), timeout=60, interval=0.5, message="the app to answer")
        yield url
    finally:
        kill_tree(proc.pid, sig=signal.SIGTERM)


@pytest.mark.parametrize("first_page", ["query", "settings"])
def test_a_servers_first_request_for_a_page_meets_the_login_and_the_login_opens_that_page(fresh_app, first_page):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{fresh_app}/{first_page}")
            page.get_by_text("Log in to open the dashboard.").wait_for()
            body = page.inner_text("body")
            assert "Read-only SQL" not in body and "Secrets" not in body  # neither page's content
            page.get_by_label("Password", exact=True).fill("correct horse")
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("heading", name=first_page.title(), exact=True).wait_for()
            assert urlparse(page.url).path == f"/{first_page}"
            login_text = page.get_by_text("Log in to open the dashboard.")
            expect(login_text).to_have_count(0, timeout=30_000)  # its stale copy goes with the rerun
        finally:
            browser.close()
