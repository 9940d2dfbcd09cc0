"""Log-probabilities of posts under the sampling policy: posts laid out as one batch (Rollouts),
their per-post log-probabilities, entropy and KL to the reference (sequence_stats), and the
importance weights against the logprob recorded when each post was sampled.

The sampling policy is the model with temperature, top-k, top-p and repetition penalty applied as
in crowdtune.training.generation, so recomputed log-probabilities compare with the recorded ones:
with an unchanged policy the importance weight is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crowdtune.training.rl.configs import RLConfig


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


def _sampling_log_softmax(logits: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None,
                          config: RLConfig) -> torch.Tensor:
    """Log-probabilities of the sampling policy over [N, V] logits (as generation._policy_logits).

    The sampled token is always kept in the top-k/top-p set: float noise between the cached
    sampling pass and this full pass must not turn a token that was sampled into -inf.
    """
    if seen is not None and config.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / config.repetition_penalty, logits * config.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    logits = logits / config.temperature
    with torch.no_grad():
        drop = torch.zeros_like(logits, dtype=torch.bool)
        if config.top_k > 0:
            kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            drop |= logits < kth
        if config.top_p < 1.0:
            sorted_logits, order = torch.sort(logits.masked_fill(drop, float("-inf")), descending=True, dim=-1)
            probs = sorted_logits.softmax(-1)
            drop_sorted = (probs.cumsum(-1) - probs) >= config.top_p
            drop |= drop_sorted.scatter(-1, order, drop_sorted)
        drop[torch.arange(len(targets), device=logits.device), targets] = False
    return logits.masked_fill(drop, float("-inf")).log_softmax(-1)


@dataclass
class SequenceStats:
    """Per post: logprob [B] (sum under the sampling policy, differentiable), n_tokens [B];
    per token, averaged over all tokens: entropy and kl (to the reference, differentiable)."""

    logprob: torch.Tensor
    n_tokens: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor


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


def _seen_tokens(rollouts: Rollouts, vocab: int, eos: int) -> torch.Tensor:
    """[N, V]: tokens already in the context of each completion token (repetition penalty)."""
    seen_rows = []
    for ids, mask, completion in zip(rollouts.input_ids, rollouts.attention_mask, rollouts.completion_mask,
                                     strict=True):
        seen = torch.zeros(vocab, dtype=torch.bool)
        start = int(completion.float().argmax()) if completion.any() else int(mask.sum())
        seen[ids[:start]] = True
        for t in range(start, int(mask.sum())):
            row = seen.clone()
            row[eos] = False
            seen_rows.append(row)
            seen[ids[t]] = True
    return torch.stack(seen_rows).to(rollouts.input_ids.device)


def sequence_stats(model, rollouts: Rollouts, config: RLConfig, *, eos: int, reference: bool) -> SequenceStats:
    """Log-probabilities of the posts under the current policy; with `reference`, also the
    per-token KL(policy || reference), the reference being the base with the adapter turned off."""
    logits, targets, rows = _completion_logits(model, rollouts)
    seen = _seen_tokens(rollouts, logits.shape[-1], eos) if config.repetition_penalty != 1.0 else None
    token_logprob = _sampling_log_softmax(logits, targets, seen, config).gather(1, targets[:, None]).squeeze(1)
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
    return SequenceStats(logprob, rollouts.n_tokens.to(logits.device), entropy, kl)


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

