"""The Settings page: credentials are write-only; app settings are shown with secrets masked."""

import tomllib

from tests.faces.conftest import fake_api  # noqa: F401  the local fake social-network API
from tests.faces.test_mastodon import TOKEN, FakeMastodon
from tests.pages.conftest import open_page, page_text, rows, run_queued_jobs, write

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
    assert "`token` :material/warning: not set" in page_text(at)
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
    assert "`token` :material/check_circle: set" in page_text(at)


def test_with_no_set_up_a_token_lands_in_an_owner_only_file_under_the_data_folder(settings, monkeypatch):
    monkeypatch.delenv("CROWDTUNE_SECRETS_FILE", raising=False)
    at = open_page(PAGE)
    at.text_input(key="secret_bluesky_app_password").input("abcd-efgh")
    next(b for b in at.button if b.form_id == "secrets_bluesky").click().run()
    path = settings.data_dir / "secrets.toml"
    assert tomllib.loads(path.read_text())["bluesky"]["app_password"] == "abcd-efgh"
    assert path.stat().st_mode & 0o777 == 0o600
    assert "Saved app_password to the secrets file" in page_text(at) and "abcd-efgh" not in page_text(at)


def test_each_network_face_gets_its_own_write_only_credentials(settings, monkeypatch):
    monkeypatch.delenv("CROWDTUNE_SECRETS_FILE", raising=False)
    write(settings, rows("faces", {"face_id": "work", "kind": "mastodon", "config": {"api_base_url": "https://a.social"}},
                         {"face_id": "home", "kind": "mastodon", "config": {"api_base_url": "https://b.social"}},
                         {"face_id": "tweets", "kind": "dataset", "config": {"source": "trump_tweets"}}))
    at = open_page(PAGE)
    assert "work (mastodon)" in page_text(at) and "home (mastodon)" in page_text(at)
    assert "tweets (dataset)" not in page_text(at)  # nothing to set for a dataset
    for face, token in (("work", "work-token-1"), ("home", "home-token-2")):
        at.text_input(key=f"secret_face_{face}_token").input(token)
        next(b for b in at.button if b.form_id == f"secrets_face_{face}").click().run()
    saved = tomllib.loads((settings.data_dir / "secrets.toml").read_text())
    assert saved["faces"] == {"work": {"token": "work-token-1"}, "home": {"token": "home-token-2"}}
    at.run()
    text = page_text(at)
    assert "work-token-1" not in text and "home-token-2" not in text
    assert at.text_input(key="secret_face_work_token").value == ""
    assert "CROWDTUNE_FACE_WORK_TOKEN" in at.text_input(key="secret_face_work_token").help


def test_check_connection_runs_the_health_check_on_a_worker_and_shows_account_audience_and_limits(
        settings, redis_conn, workers, fake_api, monkeypatch):  # noqa: F811
    FakeMastodon(fake_api)
    monkeypatch.delenv("CROWDTUNE_SECRETS_FILE", raising=False)
    write(settings, rows("faces", {"face_id": "work", "kind": "mastodon", "config": {"api_base_url": fake_api.url}}))
    workers.start("--store", conn=redis_conn)

    def check(at):
        at.button(key="check_work").click().run()
        assert "Checking… (queued" in page_text(at)
        run_queued_jobs(redis_conn)  # what a worker on the control queue does with it
        at.run()
        return page_text(at)

    at = open_page(PAGE)
    # Before any token: the check says what is missing and where to put it, not only "Fix: ...".
    text = check(at)
    assert "The Mastodon face has no access token." in text and "**Fix:** Create a new token" in text
    at.text_input(key="secret_face_work_token").input(TOKEN)
    next(b for b in at.button if b.form_id == "secrets_face_work").click().run()
    text = check(at)
    assert f"**Connected**: @crowd on {fake_api.url} · **250** followers" in text
    assert "300 requests per 5 min per account (https://docs.joinmastodon.org/api/rate-limits/)" in text
    assert "now: the server reports 299 of 300 requests left" in text
    assert TOKEN not in text
    assert len(fake_api.seen("GET", r"/api/v1/accounts/verify_credentials")) == 1  # the worker asked, once
