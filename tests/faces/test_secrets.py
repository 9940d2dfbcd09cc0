"""Secrets never show: not in reprs, error messages, tracebacks or logs, on success or failure."""

from __future__ import annotations

import traceback

import pytest
from pydantic import SecretStr

from faces.base import FaceError
from faces.registry import build_face
from faces.retry import RetryPolicy
from faces.secrets import load_face_secrets, secret_env_var

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
