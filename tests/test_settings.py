"""One typed settings object: defaults, TOML file, environment, masking."""

from pathlib import Path

import pytest

from crowdtune.errors import SettingsError
from crowdtune.settings import load_settings


def test_defaults_put_everything_under_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("CROWDTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("CROWDTUNE_CONFIG", str(tmp_path / "absent.toml"))
    s = load_settings()
    assert s.store_path == Path("data/crowdtune.duckdb")
    assert s.artifacts.endswith("data/artifacts")
    assert s.embedded_redis and s.app_port == 8501


def test_environment_overrides_the_toml_file(monkeypatch, tmp_path):
    config = tmp_path / "crowdtune.toml"
    config.write_text('data_dir = "/srv/ct"\napp_port = 9000\nworker_queues = ["train"]\n')
    monkeypatch.setenv("CROWDTUNE_CONFIG", str(config))
    monkeypatch.delenv("CROWDTUNE_DATA_DIR", raising=False)
    monkeypatch.setenv("CROWDTUNE_APP_PORT", "9100")
    s = load_settings()
    assert s.data_dir == Path("/srv/ct") and s.app_port == 9100 and s.worker_queues == ["train"]


def test_redis_url_comes_from_the_usual_variable_and_its_password_is_masked(monkeypatch, tmp_path):
    monkeypatch.setenv("CROWDTUNE_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("REDIS_URL", "redis://user:s3cret@redis.example:6379/2")
    s = load_settings()
    assert s.redis_url.endswith("/2") and not s.embedded_redis
    assert s.redis_display_url == "redis://user:***@redis.example:6379/2"


def test_a_bad_value_names_the_setting_and_the_place_to_fix_it(monkeypatch, tmp_path):
    monkeypatch.setenv("CROWDTUNE_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("CROWDTUNE_STORE_LOCK_WAIT_SECONDS", "-1")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "store_lock_wait_seconds" in err.value.problem
    assert "CROWDTUNE_" in err.value.fix
