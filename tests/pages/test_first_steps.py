"""The Overview's first steps: a checklist from the store, one button for the next step, each doing it."""

import re
from pathlib import Path

import pytest

from crowdtune.actions import FIRST_STEPS, QUICK_FIRST_VERSION
from crowdtune.dashboard.checklist import first_steps, next_step, offered
from crowdtune.runtime.queues import queue
from crowdtune.runtime.supervisor import up_banner
from crowdtune.settings import Settings
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import initialise
from crowdtune.testing.processes import wait_for
from tests.pages.conftest import open_page, page_text, rows, write

NOTHING = {"imported": {}, "latest_version": None, "active": {}, "online": {}}


@pytest.mark.parametrize("facts, expected", [
    (NOTHING, 0),
    ({**NOTHING, "imported": {"tweets": 20761}}, 1),
    ({**NOTHING, "imported": {"tweets": 20761}, "latest_version": "v1"}, 3),
    ({**NOTHING, "imported": {"tweets": 9}, "latest_version": "v1", "active": {"sandbox": "v1"}}, 4),
    ({**NOTHING, "imported": {"tweets": 9}, "latest_version": "v1", "active": {"sandbox": "v1"},
      "online": {"sandbox": "ONLINE"}}, None),
    ({**NOTHING, "imported": {"tweets": 9}, "latest_version": "v1", "online": {"sandbox": "IDLE"}}, 3),
    ({**NOTHING, "imported": {"tweets": 9}, "latest_version": "v1", "active": {"sandbox": "v1"},
      "online": {"sandbox": "IDLE"}}, None),
])
def test_the_next_step_is_the_first_whose_result_is_not_in_the_store(facts, expected):
    steps = first_steps(facts, "tweets", "sandbox")
    assert next_step(steps) == expected and [s.title for s in steps] == [title for title, _ in FIRST_STEPS]


def test_the_playground_step_is_offered_beside_the_next_step_and_never_holds_it_up():
    steps = first_steps({**NOTHING, "imported": {"tweets": 9}, "latest_version": "v1"}, "tweets", "sandbox")
    assert offered(steps) == [2, 3] and steps[2].optional


def test_the_quick_preset_is_what_the_printed_command_sets():
    command = dict(FIRST_STEPS)["Train a first version (quick)"]
    assert all(f"--set {name}={value}" in command for name, value in QUICK_FIRST_VERSION.items())


ROOT = Path(__file__).resolve().parents[2]


def what_you_will_see() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("### What you will see"):readme.index("## Architecture")]


def test_the_readme_quotes_make_run_s_output_and_the_pages_word_for_word():
    section = what_you_will_see()
    printed = re.search(r"```\n(.*?)\n```", section, re.S).group(1)
    defaults = Settings(data_dir=Path("data"), db_path=None, redis_url=None, app_host="localhost", app_port=8501)
    assert printed == up_banner(defaults)
    # every button, heading and sentence it names in bold or quotes is one the app draws
    drawn = "\n".join(p.read_text() for p in [ROOT / "app.py", ROOT / "crowdtune" / "actions.py",
                                              *sorted((ROOT / "pages").glob("*.py"))])
    prose = section.replace(printed, "")
    named = re.findall(r"\*\*(.+?)\*\*", prose) + re.findall(r'"(.+?)"', prose)
    assert len(named) >= 15 and [n for n in named if n not in drawn] == []
    assert all(f"**{title}**" in prose for title, _ in FIRST_STEPS)


def default_faces(settings):
    initialise(settings.store_path)
    write(settings, rows("faces", {"face_id": "tweets", "kind": "dataset", "config": {"source": "trump_tweets"}},
                         {"face_id": "sandbox", "kind": "sandbox", "config": {"time_acceleration": 60.0}}))


def test_a_new_installation_shows_the_checklist_and_its_first_button_imports_the_bundled_posts(settings,
                                                                                            redis_conn):
    default_faces(settings)
    at = open_page()
    text = page_text(at)
    assert "First steps" in text and "1. Import the bundled posts" in text
    assert "5. Start the sandbox online loop" in text
    [button] = [b for b in at.button if b.key and b.key.startswith("first_step_")]
    assert button.label == "Import the bundled posts"
    button.click().run()
    [job] = queue("control", redis_conn).jobs
    assert (job.func_name, job.args) == ("jobs.imports.import_history", ["tweets"])
    assert "Importing `tweets`" in page_text(at)


def test_the_buttons_make_the_version_publish_then_start_the_sandbox_online_loop(populated_store, redis_conn,
                                                                                  workers):
    at = open_page()
    labels = [b.label for b in at.button if b.key and b.key.startswith("first_step_")]
    # Samples in the Playground leave nothing in the store: offered beside the step after them.
    assert labels == ["Generate samples in the Playground", "Make it the publishing version"]
    next(b for b in at.button if b.label == "Make it the publishing version").click().run()
    assert "`v2` now publishes on `sandbox`" in page_text(at)
    [write_job] = queue("store", redis_conn).jobs
    assert write_job.args[1][0]["where"] == {"face_id": "sandbox"}
    assert write_job.args[1][0]["set"] == {"active_version_id": "v2"}

    workers.start("--store", conn=redis_conn)  # applies it; starting online reads the face through it too
    reader = StoreReader(populated_store.store_path)
    wait_for(lambda: reader.scalar("SELECT active_version_id FROM faces WHERE face_id = 'sandbox'") == "v2",
             message="the publishing version")
    at = open_page()
    [button] = [b for b in at.button if b.key and b.key.startswith("first_step_")]
    assert button.label == "Start the sandbox online loop"
    button.click().run()
    assert "Online run `online-" in page_text(at)
    [tick] = queue("control", redis_conn).jobs
    assert tick.func_name == "jobs.online.tick" and tick.args == ["sandbox"]
