"""REINFORCE: the classic loop, kept as the baseline to beat.

Each batch of newly scored posts is used once: its rewards are z-scored against a sliding
window of the face's recent rewards, and one gradient step raises the log-probability of the
posts that did better than usual and lowers the others':

    loss = -mean_i(z_i * log pi(post_i) / n_i)

(per-token mean, so the learning rate means the same for short and long posts). No importance
weights, no reference model, no reuse of older posts.
"""

from __future__ import annotations

import numpy as np
import torch

from crowdtune.training.rl.configs import ReinforceConfig
from crowdtune.training.rl.logprobs import encode_rollouts, importance_weights, sequence_stats, usable_posts
from crowdtune.training.rl.policy import (
    PolicyModule,
    UpdateInputs,
    UpdateResult,
    finish,
    fit,
    load_policy,
    reward_figures,
    stored_result,
)
from crowdtune.training.sampling_policy import sampling_policy


def z_scores(rewards: list[float], window: list[float]) -> list[float]:
    """Rewards relative to the mean and std of `window` + the rewards themselves."""
    reference = np.asarray(list(window) + list(rewards), dtype=np.float64)
    std = reference.std()
    if std < 1e-8:
        return [0.0] * len(rewards)
    return [float((r - reference.mean()) / std) for r in rewards]


class ReinforceModule(PolicyModule):
    def __init__(self, model, tokenizer, config: ReinforceConfig, posts: list[dict], advantages: list[float]):
        super().__init__(model, tokenizer, config)
        self.rollouts = encode_rollouts(tokenizer, [p.get("prompt", "") for p in posts],
                                        [p["token_ids"] for p in posts])
        self.recorded = torch.tensor([float(p["logprob"]) for p in posts])
        self.advantages = torch.tensor(advantages, dtype=torch.float32)

    def training_step(self, index, batch_idx):
        rollouts = self.rollouts.to(self.device)
        stats = sequence_stats(self.model, rollouts, self.policy, reference=False)
        advantages = self.advantages.to(self.device)
        loss = -(advantages * stats.logprob / stats.n_tokens.clamp(min=1)).mean()
        weights = importance_weights(stats.logprob.detach(), self.recorded.to(self.device), stats.n_tokens)
        self.record(loss, entropy=stats.entropy, importance_weight_mean=weights.mean(), clip_fraction=0.0)
        return loss


def update(config: ReinforceConfig, inputs: UpdateInputs) -> UpdateResult:
    """One REINFORCE step on the batch (see the module docstring)."""
    done = stored_result(inputs.checkpoint_dir)
    if done is not None:
        return done
    posts = usable_posts(inputs.batch)
    batch_ids = {p.get("post_id") for p in posts}
    window = [float(h["reward"]) for h in inputs.history if h.get("post_id") not in batch_ids][-config.window:]
    rewards = [float(p["reward"]) for p in posts]
    model, tokenizer = load_policy(inputs, config)
    metrics = reward_figures(rewards)
    stopped = False
    if posts:
        module = ReinforceModule(model, tokenizer, config, posts, z_scores(rewards, window))
        stopped = fit(module, 1, inputs)
        metrics.update(module.mean_step_metrics())
        metrics["steps"] = len(module.step_metrics)
    # kl to the reference: measured on the batch's posts after the step (no penalty in REINFORCE)
    metrics["kl"] = _kl_after(model, tokenizer, config, posts) if posts else 0.0
    return finish(model, tokenizer, config, inputs, metrics, stopped=stopped)


@torch.no_grad()
def _kl_after(model, tokenizer, config, posts) -> float:
    rollouts = encode_rollouts(tokenizer, [p.get("prompt", "") for p in posts], [p["token_ids"] for p in posts])
    rollouts = rollouts.to(next(model.parameters()).device)
    model.eval()
    stats = sequence_stats(model, rollouts, sampling_policy(config, tokenizer), reference=True)
    return float(stats.kl)
