"""Reward model + RLOO: learn what the audience likes from every scored post, then practise
against that model between real reactions.

1. Fit a ridge regression from MiniLM embeddings (crowdtune.embeddings) of every scored post of
   the face to log1p(score). Cheap (milliseconds once embedded) and strong: on real tweets
   such a model reaches a held-out Spearman of ~0.7 on likes.
2. Check it against reality before trusting it: a model fitted on all but the newest
   `agreement_posts` matured posts predicts those, and the Spearman correlation with their real
   scores is `reward_model_agreement`. Below `agreement_threshold` the update trains nothing
   and returns pause=True with a reason: the controller pauses the face and alerts.
3. Take `rloo_steps` on-policy steps: sample `rloo_samples` posts for each of `rloo_prompts`
   prompts from the current policy, score them with the reward model, and push up each post by
   its leave-one-out advantage A_i = r_i - mean_{j != i} r_j (in units of the score spread),
   with a KL penalty to the reference model:

       loss = -sum_i(A_i * log pi(post_i)) / (n_samples * max_new_tokens) + kl_coef * KL

   Empty posts and copies of training posts get the worst real score seen, so the policy is
   never paid for them. Samples are trimmed to their last full sentence like published posts.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field

from crowdtune.embeddings import EmbeddingCache, shared_cache
from crowdtune.training.generation import Sample, sample, trim_unfinished_sentence
from crowdtune.training.guards import CopyIndex
from crowdtune.training.rl.logprobs import encode_rollouts, importance_weights, sequence_stats
from crowdtune.training.rl.policy import (
    PolicyModule,
    RLConfig,
    UpdateInputs,
    UpdateResult,
    finish,
    fit,
    load_policy,
    reward_figures,
    stored_result,
)


class RewardModelConfig(RLConfig):
    """Settings of a reward-model update (and every RLConfig setting)."""

    ridge_alpha: float = Field(3.0, gt=0.0, description="ridge regularisation of the reward model")
    min_fit_posts: int = Field(16, ge=2, description="fewer scored posts than this: no reward model, no training")
    agreement_posts: int = Field(32, ge=2, description="newest matured posts the agreement check predicts")
    min_agreement_posts: int = Field(
        8, ge=2, description="fewer (or too few older posts to fit on): agreement is NaN, no pause")
    agreement_threshold: float = Field(0.1, ge=-1.0, le=1.0,
                                       description="Spearman below this: pause=True, nothing is trained")
    rloo_steps: int = Field(8, ge=1, description="optimizer steps against the reward model per update")
    rloo_prompts: int = Field(4, ge=1, description="prompts per step (the batch's prompts; the empty prompt when none)")
    rloo_samples: int = Field(4, ge=2, description="samples per prompt (the leave-one-out group)")
    kl_coef: float = Field(0.05, ge=0.0, description="weight of KL(policy || reference) in the loss")
    trim_unfinished: bool = Field(True, description="trim samples to their last full sentence, as published")
    learning_rate: float = Field(2e-4, gt=0.0, description="AdamW, constant")


class RewardModel:
    """Ridge regression: embedding -> log1p(score)."""

    def __init__(self, vectors: np.ndarray, targets: np.ndarray, alpha: float):
        from sklearn.linear_model import Ridge

        self.ridge = Ridge(alpha=alpha).fit(vectors, targets)
        self.floor = float(targets.min())  # the worst real post: what empty posts and copies get
        self.spread = max(float(targets.std()), 1e-3)

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        return self.ridge.predict(vectors)


def scored_posts(inputs: UpdateInputs) -> list[dict]:
    """History (oldest first) plus any batch post it lacks, with texts and scores."""
    posts = [h for h in inputs.history if h.get("text") is not None and h.get("score") is not None]
    known = {h.get("post_id") for h in posts}
    posts += [p for p in inputs.batch if p.get("post_id") not in known and p.get("score") is not None]
    return posts


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def agreement(vectors: np.ndarray, targets: np.ndarray, config: RewardModelConfig) -> tuple[float, int]:
    """(Spearman of predictions vs real scores on the newest posts, how many) by a model fitted on older ones."""
    n_new = min(config.agreement_posts, len(targets) - config.min_fit_posts)
    if n_new < config.min_agreement_posts:
        return math.nan, 0
    model = RewardModel(vectors[:-n_new], targets[:-n_new], config.ridge_alpha)
    return spearman(model.predict(vectors[-n_new:]), targets[-n_new:]), n_new


class RLOOModule(PolicyModule):
    def __init__(self, model, tokenizer, config: RewardModelConfig, reward_model: RewardModel,
                 embeddings: EmbeddingCache, prompts: list[str], copy_index: CopyIndex | None, seed: int):
        super().__init__(model, tokenizer, config)
        self.reward_model, self.embeddings, self.prompts = reward_model, embeddings, prompts or [""]
        self.copy_index, self.seed = copy_index, seed

    def rewards(self, texts: list[str]) -> np.ndarray:
        predicted = self.reward_model.predict(self.embeddings.embed(texts, keep=False))
        bad = [not t.strip() for t in texts]
        if self.copy_index is not None:
            bad = [b or c for b, c in zip(bad, self.copy_index.ngram_copies(texts), strict=True)]
        return np.where(bad, self.reward_model.floor, predicted)

    def training_step(self, index, batch_idx):
        cfg, step = self.config, int(index)
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
        rewards = self.rewards([s.text for s in samples]).reshape(cfg.rloo_prompts, cfg.rloo_samples)
        k = cfg.rloo_samples
        leave_one_out = (rewards.sum(1, keepdims=True) - rewards) / (k - 1)
        advantages = torch.tensor(((rewards - leave_one_out) / self.reward_model.spread).reshape(-1),
                                  dtype=torch.float32, device=self.device)
        rollouts = encode_rollouts(self.tokenizer, grouped, [s.token_ids for s in samples]).to(self.device)
        stats = sequence_stats(self.model, rollouts, cfg, eos=self.tokenizer.eos_token_id, reference=cfg.kl_coef > 0)
        loss = -(advantages * stats.logprob).sum() / (len(samples) * cfg.max_new_tokens) + cfg.kl_coef * stats.kl
        recorded = torch.tensor([sum(s.logprobs) for s in samples], device=self.device)
        weights = importance_weights(stats.logprob.detach(), recorded, stats.n_tokens)
        self.record(loss, kl=stats.kl, entropy=stats.entropy, importance_weight_mean=weights.mean(),
                    clip_fraction=0.0, predicted_reward=float(rewards.mean()),
                    sample_length=float(stats.n_tokens.float().mean()))
        return loss


def update(config: RewardModelConfig, inputs: UpdateInputs) -> UpdateResult:
    """Fit the reward model, check it against fresh scores, then RLOO against it (module docstring)."""
    done = stored_result(inputs.checkpoint_dir)
    if done is not None:
        return done
    posts = scored_posts(inputs)
    embeddings = shared_cache()  # the face's posts were embedded by its offline runs or earlier updates
    metrics = {**reward_figures([float(p["reward"]) for p in inputs.batch if p.get("reward") is not None]),
               "reward_model_posts": float(len(posts))}
    targets = np.log1p(np.maximum(0.0, np.asarray([float(p["score"]) for p in posts], dtype=np.float64)))
    vectors = embeddings.embed([p["text"] for p in posts])
    agree, n_checked = agreement(vectors, targets, config) if len(posts) >= config.min_fit_posts else (math.nan, 0)
    metrics["reward_model_agreement"] = agree
    metrics["reward_model_checked_posts"] = float(n_checked)

    model, tokenizer = load_policy(inputs, config)
    pause, reason, stopped = False, None, False
    if not math.isnan(agree) and agree < config.agreement_threshold:
        pause = True
        reason = (f"The reward model's predictions disagree with real reactions: Spearman {agree:.2f} on the "
                  f"newest {n_checked} matured posts, below the threshold {config.agreement_threshold:.2f}. "
                  "Nothing was trained; check the face (audience change? scoring?) before resuming.")
    elif len(posts) >= config.min_fit_posts:
        reward_model = RewardModel(vectors, targets, config.ridge_alpha)
        # n-grams only: embedding every sample twice (reward + near-copy test) would double the cost
        copy_index = CopyIndex(inputs.train_texts, min_ngram=config.copy_min_ngram, embedding_threshold=None) \
            if inputs.train_texts else None
        prompts = sorted({p.get("prompt", "") or "" for p in inputs.batch}) or [""]
        module = RLOOModule(model, tokenizer, config, reward_model, embeddings, prompts, copy_index, inputs.seed)
        stopped = fit(module, config.rloo_steps, inputs)
        figures = module.mean_step_metrics()
        metrics.update(figures)
        metrics["steps"] = len(module.step_metrics)
        rows = module.step_metrics
        if rows:
            metrics["predicted_reward_first"] = rows[0]["predicted_reward"]
            metrics["predicted_reward_last"] = rows[-1]["predicted_reward"]
    metrics.setdefault("kl", 0.0)
    metrics.setdefault("steps", 0.0)
    return finish(model, tokenizer, config, inputs, metrics, stopped=stopped, pause=pause, pause_reason=reason)
