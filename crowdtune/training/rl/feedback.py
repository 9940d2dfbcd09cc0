"""Learning from the operator: review decisions as feedback the audience never gives.

    OperatorFeedback.from_value(value) -> OperatorFeedback   what run_update's `feedback` carries
    rejected_posts(feedback, reward) -> posts                 rejections as batch posts with a floor reward
    preference_pairs(feedback) -> [(picked, unpicked)]        the picks as preference pairs
    preference_loss(model, tokenizer, pairs, beta) -> (loss, figures)   DPO against the reference

What comes in (the store's reads.update_inputs "feedback", handed on by crowdtune.online.updates): the
decisions taken on review since the face's previous update (the controller marks each one with the
update that learns from it, so each is learnt from once):

    rejected  posts the operator rejected, as sampled: {"post_id", "prompt", "text", "token_ids",
              "logprob" (sum under the sampling policy when it was drafted), "predicted_reward",
              "selection_probability", "candidates" (the slot's other kept samples, the same fields)}
    picks     {"chosen": the candidate the operator picked, "unpicked": the slot's other candidates}

How they train (guided, rl/guided.py; policy_gradient, rl/policy_gradient.py):

- A rejection is a strong negative: its real reward is `rejection_reward` (default -3, the floor of audience
  rewards, RewardConfig.clip), as if the audience had hated it. In `guided` the rejected post and its
  candidates form a best-of-N group like a published post's, so the doubly-robust estimate and the
  leave-one-out advantages treat it exactly as an audience outcome; in `policy_gradient` its advantage is
  rejection_reward - baseline (the learned baseline is not moved by it: it follows the audience).
- A pick is a preference: the picked candidate over each unpicked one, all sampled by the same policy for
  the same slot and prompt. Each pair adds a DPO loss against the reference model (the base with the
  adapter turned off, the same reference as the KL penalty), on the model's own log-probabilities:

      loss_pair = -log sigmoid(beta * ((log pi(w) - log ref(w)) - (log pi(l) - log ref(l))))

  weighted by `preference_weight` and added to the real-reward steps' loss.

Why the importance weighting stays correct. A rejected post and its candidates were sampled, guarded
and chosen exactly as a published post is; only the outcome differs (the operator's verdict instead of
the audience's). So they enter the policy-gradient term with their own recorded logprob (the weight
pi/mu corrects for updates since they were drafted, clipped as for every row) and their own selection
probability (the doubly-robust correction). On a face with review, an audience reward is only observed
for posts the operator let out; counting every rejection as the floor gives every chosen post an
outcome, so the estimate is not taken over approved posts only. A picked post is different: the operator,
not the exploring rule, chose it, and the operator's probability of choosing it is unknown, so when its
audience reward arrives its group is corrected with probability 1 (its real reward replaces its
prediction, no inverse-probability weight). The DPO term needs no importance weight at all: it is a loss
on fixed pairs against a fixed reference, not an expectation over the policy's samples. Edited posts
never enter a policy-gradient step (logprobs.usable_posts; their tokens are the original's): their text
is offline training data (store.reads.training_posts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from crowdtune.training.rl.logprobs import encode_rollouts, model_logprobs, usable_posts


@dataclass
class OperatorFeedback:
    """The review decisions an update learns from (module docstring)."""

    rejected: list[dict] = field(default_factory=list)
    picks: list[dict] = field(default_factory=list)

    @classmethod
    def from_value(cls, value: OperatorFeedback | dict | None) -> OperatorFeedback:
        """From run_update's `feedback` argument: an OperatorFeedback, a dict of the same fields, or None."""
        if isinstance(value, OperatorFeedback):
            return value
        value = value or {}
        return cls(rejected=list(value.get("rejected") or []), picks=list(value.get("picks") or []))

    def __bool__(self) -> bool:
        return bool(self.rejected or self.picks)


def rejected_posts(feedback: OperatorFeedback, reward: float) -> list[dict]:
    """The rejected posts that can be trained on, as batch posts whose real reward is `reward`, marked
    "rejected" (their candidates kept, as a published post's)."""
    return [{**p, "reward": float(reward), "rejected": True} for p in usable_posts(feedback.rejected)]


def preference_pairs(feedback: OperatorFeedback) -> list[list[tuple[dict, dict]]]:
    """Per pick, its pairs (picked, unpicked) of usable posts; picks with none are left out."""
    pairs = []
    for pick in feedback.picks:
        chosen = usable_posts([pick.get("chosen") or {}])
        if not chosen:
            continue
        losers = usable_posts(pick.get("unpicked") or [])
        if losers:
            pairs.append([(chosen[0], loser) for loser in losers])
    return pairs


def preference_loss(model, tokenizer, pairs: list[tuple[dict, dict]], beta: float,
                    device=None) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean DPO loss of `pairs` (picked, unpicked) against the reference, and its figures:
    preference_loss, preference_accuracy (share of pairs whose implicit reward ranks the pick first) and
    preference_margin (mean of beta * the log-ratio difference)."""
    posts = [p for pair in pairs for p in pair]  # (2P,): picked, unpicked, picked, unpicked ...
    rollouts = encode_rollouts(tokenizer, [p.get("prompt") or "" for p in posts], [p["token_ids"] for p in posts])
    policy, reference = model_logprobs(model, rollouts.to(device or next(model.parameters()).device))
    ratios = (policy - reference).view(-1, 2)  # (P, 2): log pi/ref of the picked, of the unpicked
    margins = beta * (ratios[:, 0] - ratios[:, 1])  # (P,)
    loss = -F.logsigmoid(margins).mean()
    return loss, {"preference_loss": float(loss.detach()), "preference_accuracy": float((margins > 0).float().mean()),
                  "preference_margin": float(margins.detach().mean())}
