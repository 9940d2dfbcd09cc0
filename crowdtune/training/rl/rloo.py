"""RLOO steps against a reward function of texts: what `reward_model` and `guided` practise on between
real reactions.

    RLOOSettings                     the settings of the steps (mixed into an algorithm's config)
    floored_rewards(predict, floor, copy_index) -> reward(texts)   empty posts and copies get the floor
    RLOOModule(..., reward, spread, prompts, seed)                 one step per training_step

Each step samples `rloo_samples` posts for each of `rloo_prompts` prompts from the current policy
(trimmed to their last full sentence, as published), scores them with `reward`, and pushes up each
post by its leave-one-out advantage A_i = r_i - mean_{j != i} r_j (in units of `spread`), with a KL
penalty to the reference model (the base with the adapter off):

    loss = -sum_i(A_i * log pi(post_i)) / (n_samples * max_new_tokens) + kl_coef * KL
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from crowdtune.training.generation import Sample, sample, trim_unfinished_sentence
from crowdtune.training.guards import CopyIndex
from crowdtune.training.rl.configs import RLOOSettings
from crowdtune.training.rl.logprobs import encode_rollouts, importance_weights, sequence_stats
from crowdtune.training.rl.policy import PolicyModule

TextReward = Callable[[list[str]], np.ndarray]  # texts -> (n,) rewards


def floored_rewards(predict: TextReward, floor: float, copy_index: CopyIndex | None) -> TextReward:
    """`predict`, except that empty posts and n-gram copies of `copy_index`'s posts get `floor`: the
    policy is never paid for them."""
    def reward(texts: list[str]) -> np.ndarray:
        predicted = np.asarray(predict(texts), dtype=np.float64)
        bad = [not t.strip() for t in texts]
        if copy_index is not None:
            bad = [b or c for b, c in zip(bad, copy_index.ngram_copies(texts), strict=True)]
        return np.where(bad, floor, predicted)

    return reward


class RLOOModule(PolicyModule):
    """RLOO against `reward` (module docstring); `training_step(index)` is step `index`, seeded by it."""

    def __init__(self, model, tokenizer, config: RLOOSettings, reward: TextReward, spread: float,
                 prompts: list[str], seed: int):
        super().__init__(model, tokenizer, config)
        self.reward, self.spread, self.prompts, self.seed = reward, max(float(spread), 1e-6), prompts or [""], seed

    def training_step(self, index, batch_idx):
        return self.rloo_step(int(index))

    def rloo_step(self, step: int) -> torch.Tensor:
        cfg = self.config
        start = step * cfg.rloo_prompts
        prompts = [self.prompts[(start + i) % len(self.prompts)] for i in range(cfg.rloo_prompts)]
        grouped = [p for p in prompts for _ in range(cfg.rloo_samples)]
        generation = cfg.generation(batch_size=len(grouped), seed=self.seed * 100_003 + step)
        samples = sample(self.model, self.tokenizer, generation, prompts=grouped)
        if cfg.trim_unfinished:
            trimmed = [trim_unfinished_sentence(s, self.tokenizer) for s in samples]
            # a sample trimmed to nothing keeps its first token, so that it can be pushed down
            samples = [t if t.token_ids else Sample(t.text, s.token_ids[:1], s.logprobs[:1], s.prompt)
                       for s, t in zip(samples, trimmed, strict=True)]
        rewards = self.reward([s.text for s in samples]).reshape(cfg.rloo_prompts, cfg.rloo_samples)
        k = cfg.rloo_samples
        leave_one_out = (rewards.sum(1, keepdims=True) - rewards) / (k - 1)  # (prompts, samples)
        advantages = torch.tensor(((rewards - leave_one_out) / self.spread).reshape(-1),
                                  dtype=torch.float32, device=self.device)
        rollouts = encode_rollouts(self.tokenizer, grouped, [s.token_ids for s in samples]).to(self.device)
        stats = sequence_stats(self.model, rollouts, self.policy, reference=cfg.kl_coef > 0)
        loss = -(advantages * stats.logprob).sum() / (len(samples) * cfg.max_new_tokens) + cfg.kl_coef * stats.kl
        recorded = torch.tensor([sum(s.logprobs) for s in samples], device=self.device)
        weights = importance_weights(stats.logprob.detach(), recorded, stats.n_tokens)
        self.record(loss, kl=stats.kl, entropy=stats.entropy, importance_weight_mean=weights.mean(),
                    clip_fraction=0.0, predicted_reward=float(rewards.mean()),
                    sample_length=float(stats.n_tokens.float().mean()))
        return loss
