"""Login and read-only links: without a login, a shared link can look but not start, stop or change."""

import pytest

from crowdtune.dashboard.access import password_matches
from crowdtune.runtime import stop_flags
from crowdtune.runtime.queues import queue
from crowdtune.settings import load_settings
from tests.pages.conftest import open_page, page_text


@pytest.fixture
def password(monkeypatch):
    monkeypatch.setenv("CROWDTUNE_LOGIN_PASSWORD", "correct horse")


def button(at, label):
    return next(b for b in at.button if b.label == label)


def test_password_check_accepts_only_the_configured_password(settings, password):
    configured = load_settings()
    assert password_matches(configured, "correct horse")
    assert not password_matches(configured, "correct hors")
    assert not password_matches(settings, "")  # no password configured: nothing matches


@pytest.mark.parametrize("page, labels", [
    ("pages/training.py", ["Save face", "Import", "Start training", "Yes, stop it"]),
    ("pages/models.py", ["Use this version", "Roll back"]),
    ("pages/playground.py", ["Generate"]),
    ("pages/settings.py", ["Save credentials"]),
])
def test_a_shared_link_without_login_opens_read_only_and_cannot_change_anything(populated_store, password,
                                                                                 redis_conn, page, labels):
    at = open_page(page, query={"face": "tweets"})
    assert "Read-only: log in" in page_text(at)
    for label in labels:
        target = button(at, label)
        assert target.disabled, label
        target.proto.disabled = False  # forge the click a browser could not make: it still changes nothing
        target.click().run()
    assert not at.exception
    for name in ("store", "train", "default", "control"):
        assert queue(name, redis_conn).count == 0, name
    assert not stop_flags.stop_requested(redis_conn, "run-b")


def test_logging_in_enables_the_controls(populated_store, password, redis_conn):
    at = open_page("pages/models.py", query={"face": "tweets"})
    at.text_input(key="login_password").input("wrong")
    button(at, "Log in").click().run()
    assert "Wrong password." in page_text(at)
    assert button(at, "Use this version").disabled
    at.text_input(key="login_password").input("correct horse")
    button(at, "Log in").click().run()
    assert not button(at, "Use this version").disabled
    assert "Read-only" not in page_text(at)
    assert "correct horse" not in str(dict(at.query_params))


def test_without_read_only_links_a_login_comes_before_any_page(populated_store, password, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_ALLOW_READONLY_LINKS", "false")
    at = open_page()
    text = page_text(at)
    assert "Log in to open the dashboard." in text
    assert "Overview" not in text and "Reactions are 3 hours late" not in text
    at.text_input(key="login_password").input("correct horse")
    button(at, "Log in").click().run()
    assert "Reactions are 3 hours late" in page_text(at)
