"""Reward model + RLOO: learn what the audience likes from every scored post, then practise
against that model between real reactions.

1. Fit a ridge regression from MiniLM embeddings (crowdtune.embeddings) of every scored post of
   the face to log1p(score). Cheap (milliseconds once embedded) and strong: on real tweets
   such a model reaches a held-out Spearman of ~0.7 on likes.
2. Check it against reality before trusting it: a model fitted on all but the newest
   `agreement_posts` matured posts predicts those, and the Spearman correlation with their real
   scores is `reward_model_agreement`. Below `agreement_threshold` with `agreement_confidence` (its
   upper bound is below it: predictor.agreement_pause, the rule guided applies too) the update trains
   nothing and returns pause=True with a reason: the controller pauses the face and alerts.
3. Take `rloo_steps` on-policy steps (crowdtune.training.rl.rloo): sample `rloo_samples` posts
   for each of `rloo_prompts` prompts from the current policy, score them with the reward model,
   and push up each post by its leave-one-out advantage A_i = r_i - mean_{j != i} r_j (in units
   of the score spread), with a KL penalty to the reference model:

       loss = -sum_i(A_i * log pi(post_i)) / (n_samples * max_new_tokens) + kl_coef * KL

   Empty posts and copies of training posts get the worst real score seen, so the policy is
   never paid for them. Samples are trimmed to their last full sentence like published posts.
"""

from __future__ import annotations

import math

import numpy as np

from crowdtune.embeddings import shared_cache
from crowdtune.training.guards import CopyIndex
from crowdtune.training.rl.configs import RewardModelConfig
from crowdtune.training.rl.policy import (
    UpdateInputs,
    UpdateResult,
    finish,
    fit,
    load_policy,
    reward_figures,
    stored_result,
)
from crowdtune.training.rl.predictor import agreement_pause, spearman
from crowdtune.training.rl.rloo import RLOOModule, floored_rewards


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


def agreement(vectors: np.ndarray, targets: np.ndarray, config: RewardModelConfig) -> tuple[float, int]:
    """(Spearman of predictions vs real scores on the newest posts, how many) by a model fitted on older ones."""
    n_new = min(config.agreement_posts, len(targets) - config.min_fit_posts)
    if n_new < config.min_agreement_posts:
        return math.nan, 0
    model = RewardModel(vectors[:-n_new], targets[:-n_new], config.ridge_alpha)
    return spearman(model.predict(vectors[-n_new:]), targets[-n_new:]), n_new


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
    bound, reason = agreement_pause(agree, n_checked, config.agreement_threshold, config.agreement_confidence)
    metrics.update({"reward_model_agreement": agree, "reward_model_agreement_bound": bound,
                    "reward_model_checked_posts": float(n_checked)})

    model, tokenizer = load_policy(inputs, config)
    pause, stopped = reason is not None, False
    if not pause and len(posts) >= config.min_fit_posts:
        reward_model = RewardModel(vectors, targets, config.ridge_alpha)
        # n-grams only: embedding every sample twice (reward + near-copy test) would double the cost
        copy_index = CopyIndex(inputs.train_texts, min_ngram=config.copy_min_ngram, embedding_threshold=None) \
            if inputs.train_texts else None
        prompts = sorted({p.get("prompt", "") or "" for p in inputs.batch}) or [""]
        reward = floored_rewards(lambda texts: reward_model.predict(embeddings.embed(texts, keep=False)),
                                 reward_model.floor, copy_index)
        module = RLOOModule(model, tokenizer, config, reward, reward_model.spread, prompts, inputs.seed)
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
