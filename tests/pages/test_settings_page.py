"""The Settings page: credentials are write-only; app settings are shown with secrets masked."""

import tomllib

from tests.pages.conftest import open_page, page_text

PAGE = "pages/settings.py"


def test_app_settings_are_shown_read_only_with_the_redis_password_masked(settings, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:sekret-pw@redis.example:6379/0")
    monkeypatch.setenv("CROWDTUNE_LOGIN_PASSWORD", "letmein")
    at = open_page(PAGE, session={"crowdtune_logged_in": True})
    text = page_text(at)
    assert "redis://:***@redis.example:6379/0" in text
    assert "sekret-pw" not in text and "letmein" not in text
    assert dict(at.query_params) == {}


def test_a_credential_goes_to_the_secrets_file_and_is_never_shown_back(settings, tmp_path, monkeypatch):
    secrets = tmp_path / "secrets.toml"
    monkeypatch.setenv("CROWDTUNE_SECRETS_FILE", str(secrets))
    at = open_page(PAGE)
    assert "`token` ⚠️ not set" in page_text(at)
    at.text_input(key="secret_mastodon_token").input("tok-123456")
    next(b for b in at.button if b.form_id == "secrets_mastodon").click().run()
    assert tomllib.loads(secrets.read_text())["mastodon"]["token"] == "tok-123456"
    assert secrets.stat().st_mode & 0o077 == 0
    assert at.text_input(key="secret_mastodon_token").value == ""
    assert at.session_state["secret_mastodon_token"] == ""  # not even kept in the server's session
    text = page_text(at)
    assert "Saved token to the secrets file" in text and "tok-123456" not in text
    assert "tok-123456" not in str(dict(at.query_params))
    at.run()
    assert "`token` ✅ set" in page_text(at)


def test_without_a_secrets_file_the_page_names_the_environment_variable(settings, monkeypatch):
    monkeypatch.delenv("CROWDTUNE_SECRETS_FILE", raising=False)
    at = open_page(PAGE)
    at.text_input(key="secret_bluesky_app_password").input("abcd-efgh")
    next(b for b in at.button if b.form_id == "secrets_bluesky").click().run()
    assert "CROWDTUNE_BLUESKY_APP_PASSWORD" in page_text(at)
