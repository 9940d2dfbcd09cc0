"""Guided (the default): the face's fitted reward model steers the policy from before the first post,
and real reactions, corrected for best-of-N publishing, steer it as they mature.

    GuidedConfig                                       its settings
    update(config, inputs) -> UpdateResult             one update (below)
    doubly_robust_rewards(predicted, published, real, selection_probability) -> (N,)   the group estimate
    leave_one_out_advantages(values) -> (N,)           RLOO's advantage inside a group

The reward model is not refitted here: it is the face's own (crowdtune.training.rl.predictor, fitted by
jobs.online.fit_reward_model on the history and every scored post), loaded from
UpdateInputs.reward_model_url; its predictions are era rewards, the scale of the real rewards used here.

One update, in order:

0. The diversity reference, once per face (kept in state_dir/guided.json): distinct-2 of `guard_samples`
   samples of the start model (the adapter disabled).
1. Agreement: when the reward model's online agreement (Spearman of its predictions at publishing time
   against the real rewards of the newest 8-32 posts, a figure of its fit) is below `agreement_threshold`
   with `agreement_confidence` (its one-sided upper bound is below it: predictor.agreement_pause),
   nothing is trained and the update asks to pause: the controller pauses the face and alerts. A bare
   point estimate paused on noise: on 16 posts its standard error is ~0.27.
2. Real rewards, `real_epochs` passes over the batch's best-of-N groups (the doubly-robust estimate below),
   `groups_per_step` groups per optimizer step.
3. Distillation, so that the policy itself comes to write what best-of-N would pick and needs fewer
   candidates over time. Step 2 already does it: a group's unpublished members are rewarded by the reward
   model's predictions (the estimate below), so every update distils the model over the 7 of 8 samples a
   slot drew and did not publish, without sampling anything. `distil_steps` (default 0) adds RLOO steps on
   fresh samples against the reward model (crowdtune.training.rl.rloo); why 0: on 2 CPU threads a step
   samples 16 posts and trains on them (~22 s), and 4 of them were a third of an update (255 s), while the
   groups hold ~110 such members an update. The warm start is an update with no posts (step 0, queued by
   the controller before the run's first post): `warm_start_steps` of the RLOO steps only, so that the
   first posts are already better than the start model's.
4. Guards on `guard_samples` fresh samples of the updated policy, each tripping an alert: the KL leash (KL
   per token to the reference above `max_kl`), the copy guard (share of samples copying a training post
   or one of the face's earlier posts above `max_copy_rate`) and the diversity floor (distinct-2 below
   `diversity_floor` times the start model's: the update also asks to pause).

The doubly-robust group estimate (step 2). A published post k was chosen among the N candidates of its
slot that the guards kept: i.i.d. samples of the sampling policy mu (the version that published them)
given the prompt, each stored with its token ids, its log-probability under mu, the reward model's
prediction r^_i at publishing time and, for k, the probability p_k that the selection rule chose it. Only
r_k, the real (era) reward of k, is ever observed. Every member i gets

    y_i = r^_i + 1[i = k] * (r_k - r^_k) / max(p_k, 1/N)                        (N,)
    A_i = y_i - sum_{j != i} y_j / (N - 1)                                       (N,) leave-one-out
    loss = -mean_i min(w_i * A_i, clip(w_i, 1 - eps, 1 + eps) * A_i) + kl_coef * KL(pi || reference)

with w_i = exp((log pi_theta(y_i) - log mu(y_i)) / n_i) the length-normalised importance weight against the
recorded log-probability (logprobs.importance_weights). Given the group's texts, the choice is the only
randomness in y, and E_choice[y_i] = r^_i + p_i * (rbar_i - r^_i) / p_i = rbar_i, the expected real reward
of text i, for every member, chosen or not. A is linear in y, so E_choice[A_i] is the leave-one-out
advantage of the true expected rewards, and since the members are i.i.d. draws of mu, sum_i A_i grad log
mu(y_i) is an unbiased estimate of the policy gradient of the expected real reward (at theta = mu; for
theta != mu through w). The reward model only lowers the variance: a good r^ makes the correction small.

Unbiased under these assumptions: (a) p_k is the probability the rule really had (exact for the stored
thompson, greedy and uniform rules); (b) r^ was fixed before r_k was seen (the stored predictions are;
a slot published without a reward model gets the current model's predictions, and that model may have
been fitted on r_k, which shrinks the correction toward r^); (c) a post's reward depends on its own text
only, not on which others were in its group; (d) neither clip bites: p_k >= 1/N and w within 1 +- eps.
The clips trade that bias for bounded variance (a rule that picks k once in 64 would weigh r_k 64 times).
The gradient is that of mu restricted to what the guards keep (rejected samples are not in the group).
Posts published without candidates (N = 1) form one leave-one-out group together, on their real rewards.

The operator's decisions (rl/feedback.py, which says why the weighting stays correct). A post rejected on
review joins step 2 as a group of its own with its candidates, its real reward `rejection_reward` (the
floor), its recorded logprob and selection probability: the same estimate, with the operator's verdict as
the outcome (without candidates, its advantage is rejection_reward - the mean real reward of the batch's
posts, 0 for none: two floors would cancel in a leave-one-out group). A post the operator picked is
corrected with p = 1 when its reward arrives (the operator, not the rule, chose it). Each pick's pairs
(picked > each unpicked candidate) are a unit of step 2 like a group: a step's loss adds
preference_weight * the DPO loss of its pairs against the reference. Edited posts are never trained on
here (logprobs.usable_posts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from crowdtune.training.generation import sample, trim_unfinished_sentence
from crowdtune.training.guards import CopyIndex, distinct_n
from crowdtune.training.rl.configs import GuidedConfig
from crowdtune.training.rl.feedback import preference_loss, preference_pairs, rejected_posts
from crowdtune.training.rl.logprobs import encode_rollouts, importance_weights, sequence_stats, usable_posts
from crowdtune.training.rl.policy import (
    UpdateInputs,
    UpdateResult,
    finish,
    fit,
    load_policy,
    reward_figures,
    stored_result,
)
from crowdtune.training.rl.policy_gradient import minibatch_order
from crowdtune.training.rl.predictor import agreement_pause, load_predictor
from crowdtune.training.rl.rewards import RewardConfig
from crowdtune.training.rl.rloo import RLOOModule, TextReward, floored_rewards
from crowdtune.training.rl.state import read_state, write_state
from crowdtune.training.sampling_policy import sampling_policy

STATE_FILE = "guided.json"
WORST_REWARD = -RewardConfig().clip  # what empty samples and copies earn in distillation: the worst real reward
START_SEED = 7_919  # the start model's diversity samples: one fixed draw, measured once per face


# --------------------------------------------------------------------------------------------
# The doubly-robust estimate of a best-of-N group (module docstring)


def doubly_robust_rewards(predicted, published: int, real: float, selection_probability: float | None) -> np.ndarray:
    """y_i = r^_i + 1[i = published] (real - r^_published) / max(p, 1/N) for the N members of a group.

    In: the members' predicted rewards r^ (N,), the published member's index, its real reward and its
    selection probability (None: 1/N, a uniform choice). Out: (N,) estimates of each member's reward."""
    values = np.asarray(predicted, dtype=np.float64).copy()
    n = len(values)
    p = max(1.0 / n, float(selection_probability) if selection_probability is not None else 1.0 / n)
    values[published] += (float(real) - values[published]) / p
    return values


def leave_one_out_advantages(values) -> np.ndarray:
    """A_i = v_i - mean_{j != i} v_j (N,); zeros for a group of one (nothing to compare with)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return np.zeros_like(values)
    return values - (values.sum() - values) / (len(values) - 1)


@dataclass
class Groups:
    """The batch as rows to train on: rows[i] = {"prompt", "token_ids", "logprob", "advantage"}; members[g]
    the row indices of group g; figures about the estimate."""

    rows: list[dict]
    members: list[list[int]]
    figures: dict[str, float]


def best_of_n_groups(batch: list[dict], real_rewards: dict[str, float], predict: TextReward | None) -> Groups:
    """Each usable published post with its candidates as one group, with doubly-robust advantages.

    In: the batch (run_update's posts, each maybe with "candidates", "predicted_reward",
    "selection_probability"); the real reward of each post id on the reward model's scale; `predict`
    (texts -> predicted rewards) for members without a stored prediction (None: they get 0).
    """
    rows, members, singles, lone_rejections = [], [], [], []
    corrections, groups = [], 0
    for post in usable_posts(batch):
        group = [post] + usable_posts(post.get("candidates") or [])
        # a rejection's reward is the operator's verdict (the floor), never an era reward of the history
        real = float(post["reward"]) if post.get("rejected") else real_rewards.get(post.get("post_id"),
                                                                                   float(post["reward"]))
        if len(group) == 1:
            (lone_rejections if post.get("rejected") else singles).append((post, real))
            continue
        predicted = np.asarray([m.get("predicted_reward") for m in group], dtype=object)
        missing = [i for i, v in enumerate(predicted) if v is None]
        if missing:
            filled = predict([group[i]["text"] for i in missing]) if predict is not None else np.zeros(len(missing))
            predicted[missing] = list(filled)
        predicted = predicted.astype(np.float64)
        # the operator, not the rule, chose a pick: its real reward replaces its prediction (p = 1)
        probability = 1.0 if post.get("review") == "pick" else post.get("selection_probability")
        estimates = doubly_robust_rewards(predicted, 0, real, probability)
        corrections.append(abs(estimates[0] - predicted[0]))
        members.append(_add_rows(rows, group, leave_one_out_advantages(estimates)))
        groups += 1
    if len(singles) >= 2:
        members.append(_add_rows(rows, [p for p, _ in singles], leave_one_out_advantages([r for _, r in singles])))
    if lone_rejections:  # rejections without candidates: compared with the batch's real rewards (0 if none)
        reals = [real_rewards.get(p.get("post_id"), float(p["reward"])) for p in batch if not p.get("rejected")]
        baseline = float(np.mean(reals)) if reals else 0.0
        members.append(_add_rows(rows, [p for p, _ in lone_rejections],
                                 np.array([r - baseline for _, r in lone_rejections])))
    figures = {"dr_groups": float(groups), "dr_members": float(len(rows)), "dr_single_posts": float(len(singles)),
               "dr_correction_mean": float(np.mean(corrections)) if corrections else math.nan}
    return Groups(rows, members, figures)


def _add_rows(rows: list[dict], posts: list[dict], advantages: np.ndarray) -> list[int]:
    start = len(rows)
    rows += [{"prompt": p.get("prompt") or "", "token_ids": p["token_ids"], "logprob": float(p["logprob"]),
              "advantage": float(a)} for p, a in zip(posts, advantages, strict=True)]
    return list(range(start, len(rows)))


# --------------------------------------------------------------------------------------------
# The Lightning module: real-reward steps first, then distillation steps


@dataclass
class RealStep:
    """One optimizer step of step 2: rows of Groups.rows (policy gradient) and preference pairs (DPO)."""

    rows: list[int]
    pairs: list[tuple[dict, dict]]


class GuidedModule(RLOOModule):
    """Steps 0 .. len(real_steps) - 1 train on the real-reward rows and the operator's preference pairs
    (`real_steps[s]`), the rest are RLOO steps against the reward model."""

    def __init__(self, model, tokenizer, config: GuidedConfig, rows: list[dict], real_steps: list[RealStep],
                 reward: TextReward | None, prompts: list[str], seed: int):
        super().__init__(model, tokenizer, config, reward, 1.0, prompts, seed)  # era rewards: already in MAD units
        self.rows, self.real_steps = rows, real_steps

    def training_step(self, index, batch_idx):
        step = int(index)
        if step < len(self.real_steps):
            return self.real_step(self.real_steps[step])
        return self.rloo_step(step - len(self.real_steps))

    def real_step(self, step: RealStep) -> torch.Tensor:
        cfg = self.config
        figures: dict = {}
        loss = torch.zeros((), device=self.device)
        if step.rows:
            loss, figures = self.policy_gradient(step.rows)
        if step.pairs and cfg.preference_weight > 0:
            preference, preference_figures = preference_loss(self.model, self.tokenizer, step.pairs,
                                                             cfg.preference_beta, self.device)
            loss = loss + cfg.preference_weight * preference
            figures.update(preference_figures)
        self.record(loss, **figures)
        return loss

    def policy_gradient(self, row_ids: list[int]) -> tuple[torch.Tensor, dict]:
        """The clipped, importance-weighted surrogate of the rows (module docstring) and its figures."""
        cfg = self.config
        rows = [self.rows[i] for i in row_ids]
        rollouts = encode_rollouts(self.tokenizer, [r["prompt"] for r in rows],
                                   [r["token_ids"] for r in rows]).to(self.device)
        stats = sequence_stats(self.model, rollouts, self.policy, reference=cfg.kl_coef > 0)
        recorded = torch.tensor([r["logprob"] for r in rows], device=self.device)
        advantages = torch.tensor([r["advantage"] for r in rows], dtype=torch.float32, device=self.device)
        weights = importance_weights(stats.logprob, recorded, stats.n_tokens)
        clipped = weights.clamp(1 - cfg.clip_epsilon, 1 + cfg.clip_epsilon)
        surrogate = torch.minimum(weights * advantages, clipped * advantages)
        loss = -surrogate.mean() + cfg.kl_coef * stats.kl
        return loss, {"kl": stats.kl, "entropy": stats.entropy, "importance_weight_mean": weights.mean(),
                      "clip_fraction": ((weights * advantages) > (clipped * advantages)).float().mean(),
                      "real_advantage_abs": advantages.abs().mean()}


# --------------------------------------------------------------------------------------------
# Guards


def fresh_samples(model, tokenizer, config: GuidedConfig, seed: int) -> list:
    """`guard_samples` samples of the policy as published (trimmed to their last full sentence)."""
    samples = sample(model, tokenizer, config.generation(num_samples=config.guard_samples,
                                                         batch_size=config.guard_samples, seed=seed))
    return [trim_unfinished_sentence(s, tokenizer) for s in samples] if config.trim_unfinished else samples


def start_diversity(model, tokenizer, config: GuidedConfig) -> float:
    """distinct-2 of the start model's samples (the adapter disabled)."""
    with model.disable_adapter():
        return distinct_n([s.text for s in fresh_samples(model, tokenizer, config, START_SEED)], 2)


@torch.no_grad()
def sample_kl(model, tokenizer, config: GuidedConfig, samples: list) -> float:
    """KL(policy || reference) per token, on the policy's own samples."""
    kept = [s for s in samples if s.token_ids]
    if not kept:
        return 0.0
    rollouts = encode_rollouts(tokenizer, [s.prompt or "" for s in kept], [s.token_ids for s in kept])
    model.eval()
    stats = sequence_stats(model, rollouts.to(next(model.parameters()).device), sampling_policy(config, tokenizer),
                           reference=True)
    return float(stats.kl)


def check_guards(model, tokenizer, config: GuidedConfig, inputs: UpdateInputs,
                 start_distinct_2: float) -> tuple[dict[str, float], list[dict], str | None]:
    """(figures, alerts, pause reason or None) of the guards on fresh samples of the updated policy."""
    samples = fresh_samples(model, tokenizer, config, inputs.seed)
    texts = [s.text for s in samples if s.text.strip()]
    earlier = list(dict.fromkeys([*inputs.train_texts, *(h["text"] for h in inputs.history if h.get("text"))]))
    copies = CopyIndex(earlier, min_ngram=config.copy_min_ngram,
                       embedding_threshold=config.copy_embedding_threshold).copy_rate(texts) if earlier else 0.0
    figures = {"kl": sample_kl(model, tokenizer, config, samples), "copy_rate": copies,
               "distinct_2": distinct_n(texts, 2), "start_distinct_2": start_distinct_2,
               "mean_length": float(np.mean([len(s.token_ids) for s in samples])), "guard_samples": float(len(samples))}
    alerts, pause = [], None
    n = len(samples)
    if figures["kl"] > config.max_kl:
        alerts.append({"guard": "kl", "message": f"KL leash: the updated policy's KL to the reference is "
                       f"{figures['kl']:.3f} per token on {n} fresh samples, above max_kl {config.max_kl:g}."})
    if copies > config.max_copy_rate:
        alerts.append({"guard": "copy", "message": f"Copy guard: {copies:.1%} of {n} fresh samples copy a training "
                       f"post or an earlier post of the face, above max_copy_rate {config.max_copy_rate:.1%}."})
    floor = config.diversity_floor * start_distinct_2
    if figures["distinct_2"] < floor:
        pause = (f"Diversity floor: distinct-2 of {n} fresh samples is {figures['distinct_2']:.3f}, below "
                 f"{config.diversity_floor:.0%} of the start model's {start_distinct_2:.3f} ({floor:.3f}); "
                 "the policy may be collapsing onto what the reward model likes")
        alerts.append({"guard": "diversity", "message": pause + "."})
    return figures, alerts, pause


# --------------------------------------------------------------------------------------------
# One update


def load_reward_model(url: str | None):
    """(predictor or None, problem or None): the face's fitted reward model at `url`."""
    if not url:
        return None, None
    try:
        return load_predictor(url), None
    except Exception as exc:  # noqa: BLE001 - train on real rewards alone, and say so
        return None, f"the reward model at {url} did not load ({type(exc).__name__}: {exc})"


def update(config: GuidedConfig, inputs: UpdateInputs) -> UpdateResult:
    """Agreement check, real-reward steps, distillation, guards (module docstring)."""
    from crowdtune.embeddings import shared_cache

    done = stored_result(inputs.checkpoint_dir)
    if done is not None:
        return done
    model, tokenizer = load_policy(inputs, config)
    # 0) the start model's diversity, once per face
    state_path = inputs.state_dir / STATE_FILE
    state = read_state(state_path, {})
    if "start_distinct_2" not in state:
        state["start_distinct_2"] = start_diversity(model, tokenizer, config)
        write_state(state_path, state)
    predictor, problem = load_reward_model(inputs.reward_model_url)
    alerts = [{"guard": "reward_model", "message": f"Guided update without a reward model: {problem}."}] \
        if problem else []
    warm_start = not inputs.batch and not inputs.feedback
    metrics = {**reward_figures([float(p["reward"]) for p in inputs.batch if p.get("reward") is not None]),
               "warm_start": float(warm_start), "reward_model_used": float(predictor is not None)}

    # 1) a reward model that stopped agreeing with reality steers nothing; a few posts' rank correlation
    # is noisy (SE ~0.27 on 16), so only an agreement confidently below the threshold pauses
    fit_figures = (predictor.figures or {}) if predictor is not None else {}
    agreement = fit_figures.get("online_agreement")
    agreement = math.nan if agreement is None else float(agreement)
    compared = fit_figures.get("online_agreement_posts")
    compared = int(compared) if compared is not None else None
    bound, reason = agreement_pause(agreement, compared, config.agreement_threshold, config.agreement_confidence)
    metrics.update({"reward_model_agreement": agreement, "reward_model_agreement_bound": bound})
    if reason is not None:
        return finish(model, tokenizer, config, inputs, {**metrics, "steps": 0.0, "kl": 0.0},
                      stopped=False, pause=True, pause_reason=reason, alerts=alerts)

    # 2) + 3) real-reward steps over the best-of-N groups, then distillation against the reward model
    predict = None
    if predictor is not None:
        embeddings = shared_cache()

        def predict(texts):
            return predictor.predict(embeddings.embed(texts, keep=False), texts)[0]

    real_rewards = {h.get("post_id"): float(h["reward"]) for h in inputs.history if h.get("reward") is not None}
    # the operator's rejections join the batch as groups; each pick's pairs are a unit like a group
    rejected = rejected_posts(inputs.feedback, config.rejection_reward)
    groups = best_of_n_groups([*inputs.batch, *rejected], real_rewards, predict)
    picks = preference_pairs(inputs.feedback) if config.preference_weight > 0 else []
    metrics.update({**groups.figures, "rejected_posts": float(len(rejected)),
                    "preference_pairs": float(sum(len(p) for p in picks))})
    units = [RealStep(rows, []) for rows in groups.members] + [RealStep([], pairs) for pairs in picks]
    order = minibatch_order(len(units), config.real_epochs, config.groups_per_step, inputs.seed) if units else []
    real_steps = [RealStep([r for u in step for r in units[u].rows], [p for u in step for p in units[u].pairs])
                  for step in order]
    distil = (config.warm_start_steps if warm_start else config.distil_steps) if predictor is not None else 0
    reward = None
    if predictor is not None:
        earlier = [*inputs.train_texts, *(h["text"] for h in inputs.history if h.get("text"))]
        # n-grams only: embedding every sample twice (reward + near-copy test) would double the cost
        copy_index = CopyIndex(earlier, min_ngram=config.copy_min_ngram, embedding_threshold=None) if earlier else None
        reward = floored_rewards(predict, WORST_REWARD, copy_index)
    prompts = sorted({p.get("prompt", "") or "" for p in inputs.batch}) or [""]
    module = GuidedModule(model, tokenizer, config, groups.rows, real_steps, reward, prompts, inputs.seed)
    stopped = False
    if real_steps or distil:
        stopped = fit(module, len(real_steps) + distil, inputs)
    steps = module.step_metrics
    metrics.update({f"train_{k}" if k == "kl" else k: v for k, v in module.mean_step_metrics().items()})
    metrics.update({"steps": float(len(steps)), "real_steps": float(len(real_steps)), "distil_steps": float(distil)})
    distilled = [row["predicted_reward"] for row in steps if "predicted_reward" in row]
    if distilled:
        metrics["predicted_reward_first"], metrics["predicted_reward_last"] = distilled[0], distilled[-1]

    # 4) the guards, on fresh samples of the updated policy
    pause_reason = None
    if not stopped:
        figures, tripped, pause_reason = check_guards(model, tokenizer, config, inputs, state["start_distinct_2"])
        metrics.update(figures)
        alerts += tripped
    return finish(model, tokenizer, config, inputs, metrics, stopped=stopped, pause=pause_reason is not None,
                  pause_reason=pause_reason, alerts=alerts)
