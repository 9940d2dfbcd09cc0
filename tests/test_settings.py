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
    assert s.data_dir == Path("/srv/ct") and s.app_port == 9100 and s.worker_queues == ["train", "control"]


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


# --------------------------------------------------------------------------------------------
# One source for each default: the field. The docs tables are generated from it.

ROOT = Path(__file__).resolve().parent.parent
GENERATED_DOCS = (ROOT / "README.md", ROOT / "docs" / "CONFIG.md")


def test_every_setting_of_every_config_carries_its_help_on_the_field():
    from crowdtune.cli import CONFIGS, config_class

    bare = {name: [field for field, info in config_class(name).model_fields.items() if not info.description]
            for name in CONFIGS}
    assert {name: fields for name, fields in bare.items() if fields} == {}
    assert not any("Defaults:" in (config_class(name).__doc__ or "") for name in CONFIGS)


def test_the_readme_and_config_doc_tables_are_the_ones_the_fields_generate():
    from crowdtune.cli import CONFIGS, MARKED_TABLE, refresh_config_tables

    tabled = []
    for path in GENERATED_DOCS:
        text = path.read_text()
        tabled += [match[2] for match in MARKED_TABLE.finditer(text)]
        assert refresh_config_tables(text) == text, (
            f"{path.name} disagrees with the config fields: run "
            "`crowdtune config-docs --write README.md --write docs/CONFIG.md`")
    assert sorted(tabled) == sorted(CONFIGS)  # every config tabled once


def test_a_table_row_that_drifts_from_its_field_is_caught_and_regenerated(tmp_path):
    from typer.testing import CliRunner

    from crowdtune.cli import app, refresh_config_tables

    readme = (ROOT / "README.md").read_text()
    stale = readme.replace("| `app_port` | `8501` |", "| `app_port` | `8502` |")
    assert stale != readme and refresh_config_tables(stale) == readme
    copy = tmp_path / "README.md"
    copy.write_text(stale.replace("| `login_password` |", "| `old_password` |"))
    result = CliRunner().invoke(app, ["config-docs", "--write", str(copy)])
    assert result.exit_code == 0 and "1 table(s), updated" in result.output
    assert copy.read_text() == readme


def test_a_bad_config_value_points_at_the_command_that_lists_that_config():
    from crowdtune.actions import validate_face_config
    from crowdtune.cli import CONFIGS
    from crowdtune.errors import CrowdtuneError
    from crowdtune.online.controller import parse_online_config
    from crowdtune.training.rl import algorithm_config
    from faces.registry import build_face

    attempts = {
        "RewardModelConfig": lambda: algorithm_config("reward_model", {"agreement_threshold": 3}),
        "OnlineConfig": lambda: parse_online_config({"daily_cap": 0}),
        "DatasetConfig": lambda: validate_face_config("dataset", {"chunk_rows": 0}),
        "SandboxConfig": lambda: build_face("sandbox", {"audience_size": -1}, secrets={}),
    }
    for name, attempt in attempts.items():
        with pytest.raises(CrowdtuneError) as error:
            attempt()
        assert f"`crowdtune config-docs {name}`" in error.value.fix and name in CONFIGS
