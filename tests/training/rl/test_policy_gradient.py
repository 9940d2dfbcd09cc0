import math

import numpy as np
import torch

from crowdtune.training.generation import GenerationConfig, sample
from crowdtune.training.models import add_lora, load_version, save_version
from crowdtune.training.rl import run_update
from crowdtune.training.rl.logprobs import encode_rollouts, importance_weights, sequence_stats
from crowdtune.training.rl.policy import RLConfig
from crowdtune.training.sampling_policy import sampling_policy

from .conftest import as_history, sampled_batch, short_post_reward


def _update(tiny_model_dir, tmp_path, batch, history, name, policy_url=None, **config):
    return run_update("policy_gradient", {"eval_samples": 4, **config}, base_model=tiny_model_dir,
                      policy_url=policy_url, batch=batch, history=history, state_dir=tmp_path / "state",
                      checkpoint_dir=tmp_path / name, model_cache_dir=tmp_path / "cache",
                      train_texts=["a training post that nobody will ever copy word for word"], seed=1)


def test_recomputed_logprobs_equal_the_recorded_ones_so_weights_are_one(tiny_policy):
    model, tokenizer = tiny_policy
    model = add_lora(model).eval()  # a fresh adapter, as run_update starts from: the policy is still the base
    for cfg in (RLConfig(), RLConfig(temperature=0.7, top_k=50, top_p=0.8, repetition_penalty=1.3)):
        gen = GenerationConfig(num_samples=8, batch_size=8, max_new_tokens=20, seed=3, temperature=cfg.temperature,
                               top_p=cfg.top_p, top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty)
        samples = sample(model, tokenizer, gen, prompts=["", "Make America", "", "The", "", "", "Great", ""])
        rollouts = encode_rollouts(tokenizer, [s.prompt for s in samples], [s.token_ids for s in samples])
        with torch.no_grad():
            stats = sequence_stats(model, rollouts, sampling_policy(cfg, tokenizer), reference=True)
        recorded = torch.tensor([sum(s.logprobs) for s in samples])
        weights = importance_weights(stats.logprob, recorded, stats.n_tokens)
        assert torch.allclose(weights, torch.ones_like(weights), atol=1e-3)
        assert float(stats.kl) < 1e-6  # the fresh policy is the reference


def test_update_returns_a_loadable_adapter_and_its_metrics(tiny_model_dir, tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    batch = sampled_batch(model, tokenizer, 16, seed=0)
    # one step over the whole batch: the weights are computed before the policy moves, so they are 1
    result = _update(tiny_model_dir, tmp_path, batch, as_history(batch), "u0", epochs=1, minibatch_size=16)
    assert not result.stopped and not result.pause
    for name in ("reward_mean", "reward_std", "kl", "entropy", "mean_length", "copy_rate", "loss",
                 "importance_weight_mean", "clip_fraction"):
        assert math.isfinite(result.metrics[name]), name
    assert abs(result.metrics["importance_weight_mean"] - 1) < 1e-3
    assert result.metrics["clip_fraction"] == 0.0
    url = save_version(result.adapter_dir, str(tmp_path / "v1"), base_model=tiny_model_dir)
    policy, _ = load_version(url, trainable=True)
    assert any(p.requires_grad for p in policy.parameters())


def test_a_few_updates_raise_the_reward_of_fresh_samples(tiny_model_dir, tiny_policy, tmp_path):
    model, tokenizer = tiny_policy

    def fresh_reward(policy) -> float:
        samples = sample(policy, tokenizer, GenerationConfig(num_samples=48, batch_size=48, max_new_tokens=40, seed=99))
        return float(np.mean([short_post_reward(s.token_ids) for s in samples]))

    start = fresh_reward(model)
    policy, url, history, kls = model, None, [], []
    for k in range(4):
        batch = sampled_batch(policy, tokenizer, 16, seed=10 + k, first_id=16 * k)
        history += as_history(batch)
        result = _update(tiny_model_dir, tmp_path, batch, history, f"u{k}", policy_url=url, learning_rate=2e-3,
                         kl_coef=0.01)
        kls.append(result.metrics["kl"])
        url = save_version(result.adapter_dir, str(tmp_path / f"v{k}"), base_model=tiny_model_dir)
        policy, _ = load_version(url)
    end = fresh_reward(policy)
    assert end > start + 0.05, (start, end)
    assert all(math.isfinite(kl) and kl >= 0 for kl in kls)
    assert (tmp_path / "state" / "policy_gradient.json").is_file()  # the learned baseline and replay


def test_a_finished_update_is_returned_again_without_training(tiny_model_dir, tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    batch = sampled_batch(model, tokenizer, 8, seed=5)
    first = _update(tiny_model_dir, tmp_path, batch, as_history(batch), "same", epochs=1)
    steps = []
    again = run_update("policy_gradient", {"eval_samples": 4, "epochs": 1}, base_model=tiny_model_dir, policy_url=None,
                       batch=batch, history=as_history(batch), state_dir=tmp_path / "state",
                       checkpoint_dir=tmp_path / "same", model_cache_dir=tmp_path / "cache",
                       on_progress=lambda *args: steps.append(args))
    assert steps == []
    assert again.adapter_dir == first.adapter_dir
    assert again.metrics == first.metrics


def test_a_stopped_update_resumes_where_it_stopped(tiny_model_dir, tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    batch = sampled_batch(model, tokenizer, 8, seed=6)
    config = {"eval_samples": 0, "epochs": 3, "minibatch_size": 8}
    common = dict(base_model=tiny_model_dir, policy_url=None, batch=batch, history=as_history(batch),
                  state_dir=tmp_path / "state", checkpoint_dir=tmp_path / "ck", model_cache_dir=tmp_path / "cache")
    stopped = run_update("policy_gradient", config, should_stop=lambda: True, **common)
    assert stopped.stopped and stopped.metrics["steps"] == 1
    assert not (tmp_path / "ck" / "result.json").exists()
    steps = []
    resumed = run_update("policy_gradient", config, on_progress=lambda step, *rest: steps.append(step), **common)
    assert not resumed.stopped
    assert steps == [2, 3]  # only the remaining steps ran
    assert resumed.metrics["steps"] == 3
