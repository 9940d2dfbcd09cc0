import pytest

from crowdtune.errors import SettingsError
from crowdtune.training.configs import ALGORITHM_NAMES
from crowdtune.training.rl import ALGORITHMS, DEFAULT_ALGORITHM, algorithm_config, run_update
from crowdtune.training.rl.policy_gradient import PolicyGradientConfig


def test_every_algorithm_has_a_typed_config_with_defaults():
    assert set(ALGORITHMS) == {"reinforce", "policy_gradient", "reward_model"}
    assert tuple(ALGORITHMS) == ALGORITHM_NAMES  # the torch-free names the dashboard's form offers
    assert DEFAULT_ALGORITHM == "policy_gradient"
    for name, cls in ALGORITHMS.items():
        config = algorithm_config(name)
        assert isinstance(config, cls)
        assert all(field.description for field in cls.model_fields.values())  # each default with its help
    assert algorithm_config("policy_gradient", {"kl_coef": 0.2}).kl_coef == 0.2
    assert isinstance(algorithm_config("policy_gradient", PolicyGradientConfig()), PolicyGradientConfig)


def test_unknown_algorithm_lists_the_valid_ones(tmp_path):
    with pytest.raises(SettingsError) as error:
        algorithm_config("ppo")
    assert "ppo" in error.value.problem
    assert all(name in error.value.fix for name in ALGORITHMS)
    with pytest.raises(SettingsError):  # before loading any model
        run_update("ppo", {}, base_model="unused", policy_url=None, batch=[], history=[], state_dir=tmp_path,
                   checkpoint_dir=tmp_path, model_cache_dir=tmp_path)


def test_invalid_values_name_the_field():
    with pytest.raises(SettingsError) as error:
        algorithm_config("reward_model", {"agreement_threshold": 3})
    assert "agreement_threshold" in error.value.problem
    with pytest.raises(SettingsError) as error:
        algorithm_config("reinforce", {"learning_rte": 1e-3})
    assert "learning_rte" in error.value.problem
