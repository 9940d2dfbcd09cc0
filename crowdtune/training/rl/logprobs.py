"""Log-probabilities of posts under the sampling policy: posts laid out as one batch (Rollouts),
their per-post log-probabilities, entropy and KL to the reference (sequence_stats), and the
importance weights against the logprob recorded when each post was sampled.

The sampling policy is the model with temperature, top-k, top-p and repetition penalty applied by the
very function generation applies at sampling (crowdtune.training.sampling_policy), so recomputed
log-probabilities equal the recorded ones up to float noise: with an unchanged policy the importance
weight is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crowdtune.training.sampling_policy import SamplingPolicy


def usable_posts(batch: list[dict]) -> list[dict]:
    """Posts that can be trained on: they have sampled tokens, and they went out as sampled. A post the
    operator edited (review "edit") went out with text the policy never sampled, while its tokens and
    logprob are still the original's: it never enters a policy-gradient step (its edit is offline training
    data instead: store.reads.training_posts)."""
    return [p for p in batch if p.get("token_ids") and p.get("review") != "edit"]


@dataclass
class Rollouts:
    """Posts as one right-padded batch: `EOS prompt completion PAD...`.

    input_ids, attention_mask: [B, L]; completion_mask: [B, L], True on the post's own tokens
    (the ones whose log-probability counts); n_tokens: [B] completion tokens per post.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    n_tokens: torch.Tensor

    def to(self, device) -> Rollouts:
        return Rollouts(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.completion_mask,
                                                  self.n_tokens)))


def encode_rollouts(tokenizer, prompts: list[str], completions: list[list[int]]) -> Rollouts:
    """Lay out (prompt, sampled token ids) pairs exactly as generation.sample fed them to the model."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for prompt, tokens in zip(prompts, completions, strict=True):
        context = [eos] + (tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
        rows.append((context, list(tokens)))
    width = max(len(c) + len(t) for c, t in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (context, tokens) in enumerate(rows):
        n = len(context) + len(tokens)
        ids[i, :n] = torch.tensor(context + tokens)
        mask[i, :n] = 1
        completion[i, len(context):n] = True
    return Rollouts(ids, mask, completion, completion.sum(1))


@dataclass
class SequenceStats:
    """Per post: logprob [B] (sum under the sampling policy, differentiable), n_tokens [B];
    per token, averaged over all tokens: entropy and kl (to the reference, differentiable);
    token_logprob [N]: each completion token's, posts one after the other (n_tokens each)."""

    logprob: torch.Tensor
    n_tokens: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor
    token_logprob: torch.Tensor


def _completion_logits(model, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [N, V] that predicted each completion token, the tokens [N] and their rows [N].

    Runs the model body once and the output head only on completion positions (the full
    [B, L, V] logits of a 49k vocabulary would dominate memory).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    head = base.get_output_embeddings()
    hidden = body(input_ids=rollouts.input_ids, attention_mask=rollouts.attention_mask).last_hidden_state
    predicts = rollouts.completion_mask[:, 1:]  # position t predicts token t + 1
    h = hidden[:, :-1][predicts]
    targets = rollouts.input_ids[:, 1:][predicts]
    rows = torch.arange(len(rollouts.input_ids), device=hidden.device)[:, None].expand_as(predicts)[predicts]
    return head(h).float(), targets, rows


def _contexts(rollouts: Rollouts, eos: int) -> torch.Tensor:
    """[N, L]: the tokens before each completion token (what the repetition penalty saw when it was
    sampled), EOS after them (the penalty spares EOS)."""
    predicts = rollouts.completion_mask[:, 1:]
    rows, positions = predicts.nonzero(as_tuple=True)  # position t predicts token t + 1 (row-major, as masks)
    width = rollouts.input_ids.shape[1]
    later = torch.arange(width, device=positions.device)[None, :] > positions[:, None]
    return rollouts.input_ids[rows].masked_fill(later, eos)


def sequence_stats(model, rollouts: Rollouts, policy: SamplingPolicy, *, reference: bool) -> SequenceStats:
    """Log-probabilities of the posts under the current policy's sampling policy (`policy`, as they were
    sampled); with `reference`, also the per-token KL(model || reference) of the raw distributions, the
    reference being the base with the adapter turned off."""
    logits, targets, rows = _completion_logits(model, rollouts)
    token_logprob = policy.log_probs(_contexts(rollouts, policy.eos), logits, targets)
    batch = len(rollouts.input_ids)
    logprob = torch.zeros(batch, device=logits.device).index_add(0, rows, token_logprob)
    log_p = logits.log_softmax(-1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1).mean().detach()
    kl = torch.zeros((), device=logits.device)
    if reference:
        with torch.no_grad(), model.disable_adapter():
            ref_logits, _, _ = _completion_logits(model, rollouts)
        kl = (p * (log_p - ref_logits.log_softmax(-1))).sum(-1).mean()
    return SequenceStats(logprob, rollouts.n_tokens.to(logits.device), entropy, kl, token_logprob)


def model_logprobs(model, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy [B] differentiable, reference [B]): each post's summed log-probability under the model itself
    (temperature 1, no filters, as DPO uses it), and under the reference (the adapter turned off)."""
    batch = len(rollouts.input_ids)

    def summed(logits, targets, rows):
        token = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        return torch.zeros(batch, device=logits.device).index_add(0, rows, token)

    policy = summed(*_completion_logits(model, rollouts))
    with torch.no_grad(), model.disable_adapter():
        reference = summed(*_completion_logits(model, rollouts))
    return policy, reference


def importance_weights(logprob: torch.Tensor, recorded: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Sequence-level importance weights, length-normalised (as GSPO): exp((log pi - log mu) / n).

    Normalising by length keeps a 40-token post's weight in the same range as a 5-token one's.
    """
    return torch.exp((logprob - recorded) / n_tokens.clamp(min=1))

