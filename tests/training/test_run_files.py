"""Run files: a run's settings as TOML read back as the same typed config; a bad file names the field and the fix."""

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdtune.cli import run_request
from crowdtune.errors import CrowdtuneError, SettingsError
from crowdtune.online.controller import OnlineConfig
from crowdtune.training.configs import SFTConfig
from crowdtune.training.run_files import RunKind, RunRequest, parse_run_file, read_run_file, run_file_text

texts = st.text(max_size=20)  # any text: quotes, backslashes, newlines, DEL, emoji
sft_values = st.fixed_dictionaries({}, optional={
    "learning_rate": st.floats(min_value=1e-9, max_value=10.0),
    "max_steps": st.none() | st.integers(min_value=1, max_value=10**9),
    "grad_clip": st.none() | st.floats(min_value=1e-6, max_value=1e6),
    "early_stopping_patience": st.none() | st.integers(min_value=1, max_value=99),
    "lora_targets": st.sampled_from(["all-linear"]) | st.lists(texts, max_size=3),
    "lowercase": st.booleans(),
    "precision": texts,
    "early_stopping_min_delta": st.floats(min_value=0.0, allow_infinity=True, allow_nan=False),
    "seed": st.integers(min_value=-(2**63), max_value=2**63 - 1),
})


@settings(max_examples=60, deadline=None)
@given(values=sft_values, face=st.none() | texts.filter(lambda t: t != "none"),
       base_model=st.none() | st.sampled_from(["smollm2-135m", "/models/my base", 'we"ird\\name']))
def test_an_offline_run_file_reads_back_as_the_same_config(values, face, base_model):
    config = SFTConfig(**values)
    request = parse_run_file(run_file_text(RunRequest(RunKind.OFFLINE, config, face, base_model)), "offline")
    assert request.config == config
    assert (request.kind, request.face, request.base_model, request.parent_version) == (
        RunKind.OFFLINE, face, base_model, None)


def test_an_online_run_file_reads_back_as_the_same_config_nested_settings_and_nones_included():
    config = OnlineConfig(algorithm="guided", interval_minutes=120, quiet_hours=(23, 7), post_times=["09:00"],
                          algorithm_settings={"grad_clip": None, "max_kl": 0.5, "lora_targets": ["q_proj"]},
                          generation={"offensive_threshold": None},
                          offline={"max_steps": 30}, base_model="smollm2-135m")
    text = run_file_text(RunRequest(RunKind.ONLINE, config, "sandbox"))
    assert "[settings.algorithm_settings]" in text and 'grad_clip = "none"' in text
    request = parse_run_file(text, "online")
    assert request.config == config and request.face == "sandbox"
    assert request.config.algorithm_settings["grad_clip"] is None


SFT_FIELDS = sorted(SFTConfig.model_fields)
# a value (as TOML) each field refuses: text where a number goes, a table for a flag, a number for text
WRONG = {int: '"many"', float: '"fast"', bool: "{a = 1}", str: "3"}
REFUSED = [n for n in SFT_FIELDS if n not in ("lora_targets", "devices", "precision", "accelerator")]  # take text


def wrong_value(name: str) -> str:
    annotation = SFTConfig.model_fields[name].annotation
    return next(value for kind, value in WRONG.items() if annotation is kind or annotation == kind | None)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(REFUSED), good=sft_values)
def test_a_bad_value_in_a_run_file_names_the_field_and_the_fix(name, good):
    text = run_file_text(RunRequest(RunKind.OFFLINE, SFTConfig(**good), "tweets"))
    bad, count = re.subn(rf"^{name} = .*$", f"{name} = {wrong_value(name)}", text, flags=re.M)
    assert count == 1
    with pytest.raises(SettingsError) as error:
        parse_run_file(bad, "offline", source="run.toml")
    assert f"run.toml: settings.{name}: " in error.value.problem
    assert f"Fix settings.{name} in run.toml" in error.value.fix and "config-docs SFTConfig" in error.value.fix


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(SFT_FIELDS), typo=st.sampled_from(["x", "s", "_"]))
def test_a_misspelt_setting_is_refused_with_the_nearest_name(name, typo):
    misspelt = name[:-1] + typo if not name.endswith(typo) else name + typo
    with pytest.raises(SettingsError) as error:
        parse_run_file(f"[settings]\n{misspelt} = 1\n", "offline", source="run.toml")
    assert f"there is no setting settings.{misspelt}" in error.value.problem
    assert "did you mean settings." in error.value.fix


@pytest.mark.parametrize("text, problem, fix", [
    ("face = tweets\n", "run.toml is not valid TOML", "one `key = value` per line"),
    ('kind = "online"\n', "says kind = 'online', but `crowdtune train offline` reads it", "crowdtune train online"),
    ('face = 3\n', "face must be text", "in quotes"),
    ('settings = 3\n', "settings must be a table", "[settings]"),
    ('epochs = 3\n', "there is no setting epochs", "Offline run files hold only kind, face"),
    ('[settings]\nmax_steps = 0\n', "settings.max_steps: Input should be greater than or equal to 1 (got 0)",
     "Fix settings.max_steps in run.toml"),
])
def test_each_kind_of_bad_file_gets_its_own_message(text, problem, fix):
    with pytest.raises(SettingsError) as error:
        parse_run_file(text, "offline", source="run.toml")
    assert problem in error.value.problem and fix in error.value.fix


def test_an_online_file_names_a_bad_nested_setting_and_a_broken_rule():
    with pytest.raises(SettingsError, match="settings: interval 30 min is below the minimum gap 60 min"):
        parse_run_file("[settings]\ninterval_minutes = 30\n", "online", source="run.toml")
    with pytest.raises(SettingsError, match="learning_rate"):
        parse_run_file("[settings.algorithm_settings]\nlearning_rate = -1\n", "online", source="run.toml")


def test_the_command_line_takes_the_face_from_the_file_and_its_options_over_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(run_file_text(RunRequest(RunKind.OFFLINE, SFTConfig(max_steps=30, learning_rate=1e-3), "tweets",
                                             "smollm2-135m")))
    request = run_request("offline", path, None, {"max_steps": 12}, base_model=None, parent_version=None)
    assert (request.face, request.base_model) == ("tweets", "smollm2-135m")
    assert request.config == SFTConfig(max_steps=12, learning_rate=1e-3)
    assert run_request("offline", path, "other", {}, base_model="gpt2", parent_version=None).face == "other"
    with pytest.raises(CrowdtuneError, match="No face was named"):
        run_request("offline", None, None, {})
    with pytest.raises(SettingsError, match="There is no run file"):
        read_run_file(tmp_path / "missing.toml", "offline")
    online = run_request("online", None, "sandbox", {"algorithm_settings": {"grad_clip": "none"}})
    assert online.config.algorithm_settings == {"grad_clip": None}


def test_crowdtune_train_with_a_bad_run_file_prints_the_field_and_the_fix(data_dir, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('face = "tweets"\n[settings]\nlearning_rate = "fast"\n')
    result = subprocess.run([sys.executable, "-m", "crowdtune.cli", "train", "offline", "--config", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"Error: {path}: settings.learning_rate: Input should be a valid number" in result.stderr
    assert f"Fix: Fix settings.learning_rate in {path}" in result.stderr and "Traceback" not in result.stderr
