import math

from peft import PeftModel

from crowdtune.training.models import load_base_model
from crowdtune.training.rl import run_update
from crowdtune.training.rl.reinforce import z_scores

from .conftest import as_history, sampled_batch


def test_one_reinforce_step_returns_a_loadable_adapter(tiny_model_dir, tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    batch = sampled_batch(model, tokenizer, 12, seed=2)
    result = run_update("reinforce", {"eval_samples": 4, "learning_rate": 1e-3}, base_model=tiny_model_dir,
                        policy_url=None, batch=batch, history=as_history(batch), state_dir=tmp_path / "state",
                        checkpoint_dir=tmp_path / "ck", model_cache_dir=tmp_path / "cache")
    assert result.metrics["steps"] == 1
    for name in ("reward_mean", "kl", "entropy", "mean_length", "copy_rate", "loss", "importance_weight_mean"):
        assert math.isfinite(result.metrics[name]), name
    assert result.metrics["kl"] > 0  # the step moved the policy away from the reference
    base, _ = load_base_model(tiny_model_dir)
    PeftModel.from_pretrained(base, result.adapter_dir)  # plain PEFT loads it


def test_z_scores_use_the_sliding_window():
    assert z_scores([1.0, 1.0], []) == [0.0, 0.0]
    high, low = z_scores([2.0, -2.0], [0.0] * 10)
    assert high > 1 and low < -1
