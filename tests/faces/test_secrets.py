"""Secrets never show: not in reprs, error messages, tracebacks or logs, on success or failure."""

from __future__ import annotations

import traceback

import pytest
from pydantic import SecretStr

from faces.base import FaceError
from faces.registry import build_face
from faces.retry import RetryPolicy
from faces.secrets import (
    SECRETS_FILE_ENV,
    face_env_var,
    load_face_secrets,
    read_secrets_file,
    secret_env_var,
    write_secret,
)

PLANTED = "planted-secret-0123456789abcdef"


def test_secrets_come_from_environment_or_toml_file_masked(tmp_path, monkeypatch):
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text(f'[reddit]\nclient_secret = "{PLANTED}-file"\npassword = "{PLANTED}-pw"\n')
    monkeypatch.setenv(secret_env_var("reddit", "password"), f"{PLANTED}-env")
    found = load_face_secrets("reddit", ("client_secret", "password"), secrets_file=secrets_file)
    assert found["client_secret"].get_secret_value() == f"{PLANTED}-file"
    assert found["password"].get_secret_value() == f"{PLANTED}-env"  # the environment wins
    assert PLANTED not in repr(found) and PLANTED not in str(found)
    assert secret_env_var("mastodon", "token") == "CROWDTUNE_MASTODON_TOKEN"


def test_build_face_reads_the_token_from_the_environment_and_hides_it(monkeypatch, leak_check):
    monkeypatch.setenv("CROWDTUNE_MASTODON_TOKEN", PLANTED)
    retry = {"max_attempts": 2, "base_delay_seconds": 0.01}
    face = build_face("mastodon", {"api_base_url": "http://127.0.0.1:9", "retry": retry})  # nothing listens there
    assert face.config.token.get_secret_value() == PLANTED
    leak_check.exercise(face)
    assert len(leak_check.errors) == 4  # health() reports instead of raising
    assert PLANTED not in leak_check.everything_shown(face)


def test_an_invalid_config_error_does_not_echo_a_token_put_in_the_wrong_field():
    with pytest.raises(FaceError) as raised:
        build_face("mastodon", {"page_size": PLANTED}, secrets={"token": PLANTED})
    assert "page_size" in str(raised.value)
    assert PLANTED not in str(raised.value) and PLANTED not in "".join(traceback.format_exception(raised.value))


def test_retry_policy_and_secretstr_reprs_are_plain():
    assert "**********" in repr(SecretStr(PLANTED)) and repr(RetryPolicy()).startswith("RetryPolicy(")


def test_a_face_finds_its_own_secrets_before_its_kinds(tmp_path):
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text('[faces.work-masto]\ntoken = "own-file"\n\n[faces."home masto"]\ntoken = "home-file"\n\n'
                            '[mastodon]\ntoken = "kind-file"\n')
    environ = {"CROWDTUNE_MASTODON_TOKEN": "kind-env"}

    def token(name, env=environ):
        found = load_face_secrets("mastodon", ("token",), environ=env, secrets_file=secrets_file, face_name=name)
        return found["token"].get_secret_value()

    assert face_env_var("work-masto", "token") == "CROWDTUNE_FACE_WORK_MASTO_TOKEN"
    assert token("work-masto", {**environ, "CROWDTUNE_FACE_WORK_MASTO_TOKEN": "own-env"}) == "own-env"
    assert token("work-masto") == "own-file"      # the face's own table beats the kind's variable
    assert token("home masto") == "home-file"     # a name that needs quoting in TOML
    assert token("other") == "kind-env"           # no secrets of its own: today's per-kind names
    assert token("other", {}) == "kind-file"
    assert token(None) == "kind-env"


def test_written_secrets_land_in_an_owner_only_file_that_reads_back(tmp_path):
    path = tmp_path / "new" / "secrets.toml"
    write_secret(path, "token", 'tok "quoted" \\ back', face_name="home masto")
    write_secret(path, "token", "kind-token", kind="mastodon")
    write_secret(path, "app_password", "sky-pw", face_name="sky")
    assert path.stat().st_mode & 0o777 == 0o600
    data = read_secrets_file(path)
    assert data["faces"] == {"home masto": {"token": 'tok "quoted" \\ back'}, "sky": {"app_password": "sky-pw"}}
    assert data["mastodon"] == {"token": "kind-token"}
    assert [p.name for p in path.parent.iterdir()] == ["secrets.toml"]  # no temporary file left behind


def test_without_a_configured_file_the_data_folders_secrets_file_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRETS_FILE_ENV, raising=False)
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path))
    assert load_face_secrets("mastodon", ("token",), environ={}, face_name="m") == {}  # none yet: no error
    write_secret(tmp_path / "secrets.toml", "token", "from-the-page", face_name="m")
    found = load_face_secrets("mastodon", ("token",), environ={}, face_name="m")
    assert found["token"].get_secret_value() == "from-the-page"


def test_two_mastodon_faces_publish_side_by_side_each_with_its_own_token(fake_api, tmp_path, monkeypatch):
    from tests.faces.conftest import FakeApi
    from tests.faces.test_mastodon import FakeMastodon

    other_api = FakeApi()
    try:
        work, home = FakeMastodon(fake_api, token="work-token-1"), FakeMastodon(other_api, token="home-token-2")
        secrets_file = tmp_path / "secrets.toml"
        write_secret(secrets_file, "token", "home-token-2", face_name="home")
        monkeypatch.setenv(SECRETS_FILE_ENV, str(secrets_file))
        monkeypatch.setenv("CROWDTUNE_FACE_WORK_TOKEN", "work-token-1")
        monkeypatch.setenv("CROWDTUNE_MASTODON_TOKEN", "a-shared-token-neither-server-takes")
        retry = {"max_attempts": 2, "base_delay_seconds": 0.01}
        faces = {name: build_face("mastodon", {"api_base_url": api.url, "retry": retry}, name=name)
                 for name, api in (("work", fake_api), ("home", other_api))}
        for round_ in range(2):
            for name, face in faces.items():
                face.publish(f"{name} post {round_}", intent_id=f"{name}-{round_}")
        for server, api, token, name in ((work, fake_api, "work-token-1", "work"),
                                          (home, other_api, "home-token-2", "home")):
            posts = api.seen("POST", r"/api/v1/statuses")
            assert [p.headers["Authorization"] for p in posts] == [f"Bearer {token}"] * 2
            assert [s["content"] for s in server.statuses[:2]] == [f"<p>{name} post 1</p>", f"<p>{name} post 0</p>"]
            assert server.created == 2
    finally:
        other_api.close()
