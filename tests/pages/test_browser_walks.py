"""Two walks a user takes, in Chromium (Playwright) against one `crowdtune up` with its real Redis, store
writer and workers, on the tiny GPT-2 (the `base_model` setting the app and its workers read):

- the Overview's first steps (issue 17), from an empty store to a published sandbox post with a score;
- review before posting (issue 15): online training on the sandbox with `review = pick`, a candidate
  picked and then seen published on the Posts page, one slot rejected and counted on the Models page.

The two share the app, its workers and the browser (module-scoped): `crowdtune up` and the workers'
preload are paid once. Each walk also passes alone. The store starts with the two faces `crowdtune up`
seeds, made quick: the history face reads 400 real tweets from a file (not the 20,761 bundled ones),
the sandbox's audience judges by sentiment (no embedding fit) and its day passes in 6 s.
Screenshots go to test-output/.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import apply_write, initialise
from crowdtune.testing.processes import kill_tree, wait_for
from tests.conftest import ROOT
from tests.pages.test_browser import CHROMIUM, FLAGS, SHOTS, free_port, healthy

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                                      "(apt-get install -y chromium)"),
]

ACC = 14400.0  # audience seconds per wall second: the sandbox's day (and a post's maturity) passes in 6 s
FIRST_STEPS = ("Import the bundled posts", "Train a first version (quick)", "Generate samples in the Playground",
               "Make it the publishing version", "Start the sandbox online loop")
WAIT = 120_000  # ms: the longest any one step may take on two loaded cores (a training run, a first publish)


@dataclass
class App:
    url: str
    reader: StoreReader
    base_model: str  # the tiny GPT-2's folder, the app's `base_model` setting
    data: Path       # the app's data folder


def sandbox_config(data: Path, name: str = "sandbox") -> dict:
    """A sandbox as `crowdtune up` seeds it (crowdtune.runtime.supervisor.default_faces), quick: its audience
    judges by sentiment (nothing to fit) and its day passes in 6 s."""
    return {"state_url": str((data / name).absolute()), "time_acceleration": ACC, "audience": {"kind": "sentiment"}}


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_model_dir, tweets):
    root = tmp_path_factory.mktemp("walks")
    data, history = root / "data", root / "history.jsonl"
    # Real tweets the tiny model never saw, as a dataset face reads them from a file.
    history.write_text("".join(json.dumps({"id": f"t{i}", "text": t["text"], "created_at": str(t["created_at"])}) + "\n"
                               for i, t in enumerate(tweets[2000:2400])))
    store = data / "crowdtune.duckdb"
    initialise(store)
    apply_write(store, "walk-faces", [{"op": "upsert", "table": "faces", "rows": [
        {"face_id": "tweets", "kind": "dataset", "config": {"source": str(history)}},
        {"face_id": "sandbox", "kind": "sandbox", "config": sandbox_config(data)}]}], 30)

    env = {**os.environ, "CROWDTUNE_DATA_DIR": str(data), "CROWDTUNE_CONFIG": str(root / "crowdtune.toml"),
           "CROWDTUNE_BASE_MODEL": tiny_model_dir, "CROWDTUNE_WORKER_MAINTENANCE_SECONDS": "2"}
    for name in ("REDIS_URL", "CROWDTUNE_REDIS_URL", "CROWDTUNE_DB_PATH", "CROWDTUNE_ARTIFACTS_URL"):
        env.pop(name, None)
    port, log_path = free_port(), root / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "crowdtune.cli", "up", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        wait_for(lambda: healthy(url) or proc.poll() is not None, timeout=120, interval=0.2,
                 message="the app to answer")
        assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
        yield App(url, StoreReader(store), tiny_model_dir, data)
    finally:
        for log_file in [log_path, *sorted((data / "logs").glob("*.log"))]:  # before the stop adds its noise
            print(f"---- {log_file.name}\n" + log_file.read_text(errors="replace")[-2000:])
        kill_tree(proc.pid, sig=signal.SIGTERM)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    try:
        yield tab
    finally:
        tab.screenshot(path=SHOTS / f"{request.node.name[:60]}-last.png", full_page=True)
        context.close()


def shot(page, name: str) -> None:
    page.screenshot(path=SHOTS / f"walk-{name}.png", full_page=True)


def main(page):
    """The page's own content (not Streamlit's header, which has a "Stop" button of its own)."""
    return page.get_by_test_id("stMain")


def step_row(page, number: int):
    """The checklist's line of step `number` (1-based): its mark is an icon named check_circle when done."""
    return main(page).get_by_test_id("stMarkdown").filter(has_text=f"{number}. {FIRST_STEPS[number - 1]}")


def grid_rows(page, has_text: str | re.Pattern):
    """Rows of the page's tables that contain `has_text` (the data grid mirrors the cells on screen in a DOM
    table for screen readers: attached, never visible)."""
    return main(page).locator("[data-testid='stDataFrame'] table[role='grid'] tr").filter(has_text=has_text)


def grid_cells(page, text: str):
    """Cells of the page's tables that read exactly `text`."""
    return main(page).locator("[data-testid='stDataFrame'] table[role='grid'] td").filter(
        has_text=re.compile(rf"^{re.escape(text)}$"))


def key_class(key: str) -> str:
    """The CSS class part Streamlit gives a widget's key (`st-key-<this>`): other characters become '-'."""
    return re.sub(r"[^a-zA-Z0-9_-]", "-", key)


def post_id_of(element) -> tuple[str, str]:
    """(action, post_id) of a Review page button keyed `pick-<post_id>` or `reject-<post_id>`. Streamlit's
    class `st-key-...` spells the key's ':' as '-': post ids are `<run_id>:p<slot>` (`c<i>` for a candidate)."""
    action, key = re.search(r"st-key-(pick|reject)-(\S+)", element.get_attribute("class")).groups()
    return action, re.sub(r"-(p\d+(c\d+)?)$", r":\1", key)


def choose(page, label: str, option: str, timeout: float = 30) -> None:
    """Choose `option` in the select box `label` (again if a rerun of the page closed its list first)."""
    from playwright.sync_api import expect

    box = main(page).get_by_role("combobox", name=label)
    deadline = time.monotonic() + timeout
    while True:
        box.click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=3_000)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            page.keyboard.press("Escape")
    expect(box).to_have_value(option)


def reload_until(page, locator, timeout: float = 120, first_reload: bool = True) -> None:
    """Reload until `locator` shows (pages outside fragments only read the store again on a rerun)."""
    deadline = time.monotonic() + timeout
    while True:
        if first_reload:
            page.reload()
        first_reload = True
        try:
            locator.first.wait_for(state="attached", timeout=5_000)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise


def laps():
    """A printer of the seconds since the walk began, at each of its steps (the figures to budget by)."""
    start = time.monotonic()
    return lambda step: print(f"{time.monotonic() - start:6.1f} s  {step}")


def test_the_first_steps_lead_from_an_empty_store_to_a_scored_sandbox_post(app, page):
    from playwright.sync_api import expect

    lap = laps()

    page.goto(app.url)
    expect(main(page).get_by_role("heading", name="First steps")).to_be_visible(timeout=60_000)
    for number in range(1, 6):
        expect(step_row(page, number)).to_contain_text("radio_button_unchecked")
    expect(main(page).get_by_text("No posts yet: import a dataset")).to_be_visible()
    shot(page, "1-first-steps")
    lap("checklist shown")

    # 1) Import: the face's posts land in the store, and the step is ticked off.
    main(page).get_by_role("button", name=FIRST_STEPS[0]).click()
    expect(main(page).get_by_text(re.compile(r"Importing tweets \(job"))).to_be_visible()
    expect(step_row(page, 1)).to_contain_text("check_circle", timeout=WAIT)
    expect(main(page).get_by_text("No posts yet: import a dataset")).to_have_count(0)
    wait_for(lambda: app.reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'tweets'") == 400,
             message="the 400 posts in the store")
    lap("imported")

    # 2) A first version with the quick preset, on the base model the settings name (the tiny GPT-2).
    main(page).get_by_role("button", name=FIRST_STEPS[1]).click()
    queued = main(page).get_by_text(re.compile(r"Training run offline-\S+ queued"))
    run_id = re.search(r"offline-\S+", queued.inner_text()).group(0)
    expect(main(page).get_by_text(re.compile(rf"{run_id} \(tweets\): (started|step \d+/60)"))).to_be_visible(
        timeout=WAIT)
    shot(page, "2-training")
    lap("training progress shown")
    expect(step_row(page, 2)).to_contain_text("check_circle", timeout=WAIT)
    expect(main(page).locator(".js-plotly-plot").filter(has_text="val_loss").last).to_be_visible(timeout=30_000)
    version_id = app.reader.scalar("SELECT version_id FROM model_versions WHERE run_id = ?", [run_id])
    assert app.reader.scalar("SELECT base_model FROM model_versions WHERE version_id = ?", [version_id]) \
        == app.base_model
    lap("version registered")

    # 3) Samples in the Playground (optional: it leaves nothing in the store), from the new version.
    main(page).get_by_role("button", name=FIRST_STEPS[2]).click()
    expect(main(page).get_by_role("heading", name="Playground")).to_be_visible()
    main(page).get_by_role("button", name="Generate").click()
    expect(main(page).get_by_test_id("stMarkdown").get_by_text(version_id, exact=True)).to_be_visible()  # its column
    expect(main(page).get_by_text(re.compile(r"\d+ tokens, log-prob -?\d")).first).to_be_visible(timeout=WAIT)
    shot(page, "3-playground")
    lap("samples shown")

    # 4) The version publishes on the sandbox.
    page.goto(app.url)
    expect(step_row(page, 3)).to_contain_text("radio_button_unchecked")  # optional, offered beside step 4
    main(page).get_by_role("button", name=FIRST_STEPS[3]).click()
    expect(main(page).get_by_text(f"{version_id} now publishes on sandbox.")).to_be_visible()
    expect(step_row(page, 4)).to_contain_text("check_circle", timeout=60_000)
    expect(step_row(page, 3)).to_contain_text("check_circle")  # done once a later step is
    lap("publishing version set")

    # 5) The online loop: the checklist is done and gives way to the loop's table; a post is published and,
    # a day of audience time later (6 s), read and scored.
    main(page).get_by_role("button", name=FIRST_STEPS[4]).click()
    expect(main(page).get_by_role("heading", name="First steps")).to_have_count(0, timeout=60_000)
    lap("online loop started")
    expect(grid_rows(page, "sandbox").filter(has_text="ONLINE").first).to_be_attached(timeout=30_000)
    expect(main(page).locator(".js-plotly-plot").filter(has_text="Generated posts: mean score per day").last) \
        .to_be_visible(timeout=WAIT)
    shot(page, "4-scored")
    lap("a post scored")
    scored = app.reader.rows("SELECT model_version_id, score FROM posts WHERE face_id = 'sandbox' "
                             "AND status = 'published' AND score IS NOT NULL")
    assert scored and all(version == version_id for version, _ in scored)

    # Stop the loop, as a user would (the next walk reviews on this face).
    page.goto(f"{app.url}/training")
    main(page).get_by_role("button", name="Stop", exact=True).first.click()
    page.get_by_role("button", name="Yes, stop publishing").click()
    expect(main(page).get_by_text("Stop requested for sandbox")).to_be_visible()
    lap("stop requested")


def test_review_with_pick_publishes_the_picked_candidate_and_counts_a_rejection(app, page):
    from playwright.sync_api import expect

    lap = laps()

    # The app first, as `make run` prints it: a first visit to a sub-page's URL runs Streamlit's legacy
    # pages/ mode, without app.py (its navigation, layout and login gate) until the server restarts.
    page.goto(app.url)
    expect(main(page).get_by_role("heading", name="Overview")).to_be_visible(timeout=60_000)
    # A second sandbox, `critic`, whose posts wait for a pick (the Training page's face form); the first
    # walk's loop may still be winding down on `sandbox`.
    page.goto(f"{app.url}/training")
    main(page).get_by_label("Face name").fill("critic")
    choose(page, "Kind", "sandbox")
    config = {**sandbox_config(app.data, "critic"), "review": "pick"}
    main(page).get_by_label("Config (JSON, no secrets").fill(json.dumps(config))
    main(page).get_by_role("button", name="Save face").click()
    expect(main(page).get_by_text("Face critic saved")).to_be_visible()
    lap("face saved")
    # Once the writer has it, it is one of the faces to train online; it has no version of its own, so the
    # form starts from the base model the settings name.
    reload_until(page, grid_rows(page, re.compile(r'"review":\s*"pick"')), timeout=60)
    choose(page, "Face to train online", "critic")
    expect(main(page).get_by_text("Starts from the face's active version")).to_have_count(0)
    expect(main(page).get_by_role("textbox", name="Base model").last).to_have_value(app.base_model)

    # Online training on it: three candidates a slot, a post every 10 audience hours (2.5 s), and decisions
    # never timed out.
    for label, value in (("interval minutes", "600"), ("jitter minutes", "0")):
        main(page).get_by_role("spinbutton", name=label, exact=True).fill(value)
    others = main(page).get_by_test_id("stExpander").filter(has_text="Reward, generation, retry and offline-phase")
    others.get_by_text("Reward, generation, retry and offline-phase settings").click()
    for label, value in (("candidates", "3"), ("review timeout hours", "100000")):
        others.get_by_role("spinbutton", name=label, exact=True).fill(value)
    main(page).get_by_role("button", name="Review and start").click()
    expect(main(page).get_by_text("This publishes.")).to_be_visible(timeout=WAIT)  # a full rerun: slow under load
    main(page).get_by_role("button", name="Yes, start publishing").click()
    expect(main(page).get_by_text(re.compile(r"Online run online-\S+ started"))).to_be_visible()
    lap("online started")

    # The Review page: each slot's rule choice and its candidates side by side; pick a candidate.
    page.goto(f"{app.url}/review")
    reload_until(page, main(page).get_by_role("button", name="Pick"), timeout=120)
    shot(page, "5-review")
    lap("review queue shown")
    # In page order, the oldest slot's Pick buttons (the rule's choice first) come before its "None of these".
    keys = [post_id_of(element)
            for element in main(page).locator("[class*='st-key-pick-'], [class*='st-key-reject-']").all()]
    first_slot = [post_id for action, post_id in keys[:[a for a, _ in keys].index("reject")]]
    assert len(first_slot) >= 2, f"the oldest slot kept only the rule's choice: {keys}"
    picked = first_slot[1]
    main(page).locator(f".st-key-{key_class('pick-' + picked)}").get_by_role("button", name="Pick").click()
    expect(main(page).get_by_text(f"Decided {first_slot[0]}: pick.")).to_be_visible()

    # The Posts page shows the picked candidate published (found by its text).
    words = app.reader.scalar("SELECT text FROM posts WHERE post_id = ?", [picked]).strip().splitlines()[0][:40]
    page.set_viewport_size({"width": 2400, "height": 1000})  # the grid mirrors only the columns on screen
    page.goto(f"{app.url}/posts?" + urlencode({"face": "critic", "q": words}))
    expect(main(page).get_by_label("Search text")).to_have_value(words, timeout=30_000)
    reload_until(page, grid_cells(page, "published"), timeout=60, first_reload=False)
    shot(page, "6-posts")
    lap("picked post published")
    page.set_viewport_size({"width": 1400, "height": 1000})

    # Reject the next slot ("none of these"), and see it counted on the Models page.
    page.goto(f"{app.url}/review")
    reload_until(page, main(page).get_by_role("button", name="None of these"), timeout=60, first_reload=False)
    rejected = post_id_of(main(page).locator("[class*='st-key-reject-']").first)[1]
    main(page).get_by_role("button", name="None of these").first.click()
    expect(main(page).get_by_text(f"Decided {rejected}: reject.")).to_be_visible()
    page.goto(f"{app.url}/models")
    reload_until(page, main(page).get_by_text("1 of 2 reviewed posts rejected."), timeout=60)
    # version (critic has none of its own), reviewed, approved, edited, picked, rejected, rejected share
    expect(grid_rows(page, "(base model)").first.locator("td")).to_have_text(
        ["(base model)", "2", "0", "0", "1", "1", re.compile(r"^(0\.5|50(\.0+)?\s?%)$")])  # screen readers: 0.5
    shot(page, "7-models")
    lap("rejection counted")
