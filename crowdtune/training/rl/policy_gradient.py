"""Policy gradient with a learned baseline, importance weights and a KL leash (the default).

Real reactions are scarce, so each one is used many times, safely:

- advantage = reward - baseline, the baseline being learned across updates (an exponential
  moving average of the face's rewards, kept in state_dir) rather than re-estimated from the
  handful of posts in one batch;
- the batch is trained on for several epochs together with a replay buffer of earlier posts;
  since those were sampled by older policies, each post's gradient is weighted by its
  sequence-level importance weight w = exp((log pi - log mu) / n) against the logprob recorded
  when it was sampled (mu), clipped PPO-style to [1 - eps, 1 + eps]:

      loss = -mean(min(w * A, clip(w, 1 - eps, 1 + eps) * A)) + kl_coef * KL(pi || reference)

- the KL penalty to the reference model (the base with the adapter turned off) keeps the
  policy from drifting into text the audience model (or the audience) was never asked about.

The operator's decisions (rl/feedback.py): a post rejected on review trains like a new post whose
reward is `rejection_reward` (advantage rejection_reward - baseline, importance-weighted against its own
recorded logprob; it does not move the baseline, which follows the audience, and is replayed like any
post); each pick's pairs (picked > each unpicked candidate) add preference_weight * their DPO loss to
one step of every epoch. Edited posts are never trained on (logprobs.usable_posts).
"""

from __future__ import annotations

import math
import random

import torch

from crowdtune.training.rl.configs import PolicyGradientConfig
from crowdtune.training.rl.feedback import preference_loss, preference_pairs, rejected_posts
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
from crowdtune.training.rl.state import read_state, write_state

STATE_FILE = "policy_gradient.json"


class PolicyGradientModule(PolicyModule):
    def __init__(self, model, tokenizer, config: PolicyGradientConfig, posts: list[dict], advantages: list[float],
                 order: list[list[int]], pairs: list[list[tuple[dict, dict]]] | None = None):
        super().__init__(model, tokenizer, config)
        self.posts, self.advantages, self.order = posts, advantages, order
        self.pairs = pairs or [[] for _ in order]  # per step: the operator's preference pairs it trains on

    def training_step(self, index, batch_idx):
        cfg = self.config
        rows = self.order[int(index)]
        posts = [self.posts[i] for i in rows]
        rollouts = encode_rollouts(self.tokenizer, [p.get("prompt", "") for p in posts],
                                   [p["token_ids"] for p in posts]).to(self.device)
        stats = sequence_stats(self.model, rollouts, self.policy, reference=cfg.kl_coef > 0)
        recorded = torch.tensor([float(p["logprob"]) for p in posts], device=self.device)
        advantages = torch.tensor([self.advantages[i] for i in rows], device=self.device)
        weights = importance_weights(stats.logprob, recorded, stats.n_tokens)
        clipped = weights.clamp(1 - cfg.clip_epsilon, 1 + cfg.clip_epsilon)
        surrogate = torch.minimum(weights * advantages, clipped * advantages)
        loss = -surrogate.mean() + cfg.kl_coef * stats.kl
        clip_fraction = ((weights * advantages) > (clipped * advantages)).float().mean()
        figures = {}
        if self.pairs[int(index)] and cfg.preference_weight > 0:
            preference, figures = preference_loss(self.model, self.tokenizer, self.pairs[int(index)],
                                                  cfg.preference_beta, self.device)
            loss = loss + cfg.preference_weight * preference
        self.record(loss, kl=stats.kl, entropy=stats.entropy, importance_weight_mean=weights.mean(),
                    clip_fraction=clip_fraction, **figures)
        return loss


def minibatch_order(n: int, epochs: int, size: int, seed: int) -> list[list[int]]:
    """Shuffled minibatches of row indices, `epochs` passes over n rows."""
    rng = random.Random(seed)
    order = []
    for _ in range(epochs):
        rows = list(range(n))
        rng.shuffle(rows)
        order.extend(rows[i:i + size] for i in range(0, n, size))
    return order


def pairs_by_step(picks: list[list[tuple[dict, dict]]], n_steps: int, epochs: int) -> list[list[tuple[dict, dict]]]:
    """Each pick's pairs on one step of every epoch (pick i on the epoch's step i mod its steps)."""
    per_epoch = max(1, n_steps // max(epochs, 1))
    steps: list[list[tuple[dict, dict]]] = [[] for _ in range(n_steps)]
    for epoch in range(epochs):
        for i, pairs in enumerate(picks):
            steps[min(epoch * per_epoch + i % per_epoch, n_steps - 1)].extend(pairs)
    return steps


def update(config: PolicyGradientConfig, inputs: UpdateInputs) -> UpdateResult:
    """Several clipped, importance-weighted epochs over batch + replay (see the module docstring)."""
    done = stored_result(inputs.checkpoint_dir)
    if done is not None:
        return done
    state_path = inputs.state_dir / STATE_FILE
    state = read_state(state_path, {"baseline": None, "seen": [], "replay": []})
    new = usable_posts(inputs.batch)
    new_ids = {p.get("post_id") for p in new}
    replay = [p for p in state["replay"] if p.get("post_id") not in new_ids][-config.replay_posts:] \
        if config.replay_posts else []
    rejected = [p for p in rejected_posts(inputs.feedback, config.rejection_reward) if p.get("post_id") not in new_ids]
    replay = [p for p in replay if p.get("post_id") not in {r.get("post_id") for r in rejected}]
    posts = new + rejected + replay
    rewards = [float(p["reward"]) for p in new]
    # the baseline as it was before this batch: the state only moves once per post id (below)
    baseline = state["baseline"] if state["baseline"] is not None else 0.0
    advantages = [float(p["reward"]) - baseline for p in posts]
    picks = preference_pairs(inputs.feedback) if config.preference_weight > 0 else []

    model, tokenizer = load_policy(inputs, config)
    metrics = {**reward_figures(rewards), "baseline": baseline, "replayed_posts": float(len(replay)),
               "rejected_posts": float(len(rejected)), "preference_pairs": float(sum(len(p) for p in picks))}
    stopped = False
    if posts:
        order = minibatch_order(len(posts), config.epochs, config.minibatch_size, inputs.seed)
        module = PolicyGradientModule(model, tokenizer, config, posts, advantages, order,
                                      pairs_by_step(picks, len(order), config.epochs))
        stopped = fit(module, len(order), inputs)
        metrics.update(module.mean_step_metrics())
        metrics["steps"] = len(module.step_metrics)
    if not stopped:
        seen = set(state["seen"])
        b = state["baseline"]
        for p in new:
            if p.get("post_id") in seen:
                continue
            b = float(p["reward"]) if b is None else b + config.baseline_rate * (float(p["reward"]) - b)
            seen.add(p.get("post_id"))
        keep = ("post_id", "prompt", "token_ids", "logprob", "reward")
        replay_out = (replay + [{k: p.get(k) for k in keep} for p in new + rejected])[-config.replay_posts:] \
            if config.replay_posts else []
        write_state(state_path, {"baseline": b, "seen": list(seen)[-5000:], "replay": replay_out})
    metrics.setdefault("kl", math.nan)
    return finish(model, tokenizer, config, inputs, metrics, stopped=stopped)
