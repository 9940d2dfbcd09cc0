"""Sampling posts from a model, with the log-probabilities online RL needs, and the filters
that keep bad samples from being published.

A post is sampled after the EOS token (that is how training lays posts out), optionally
followed by a prompt/context that the post continues. Sampling is batched with left padding and
a KV cache.

Log-probabilities are those of the *sampling policy*: the distribution the token was actually
drawn from, i.e. the model's logits after the repetition penalty, temperature, top-k and top-p
(renormalised over the kept tokens). With temperature 1, no top-k/top-p and no repetition
penalty they equal the model's own log-probabilities. With temperature 0 (greedy) every
log-probability is 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from crowdtune.training.configs import GenerationConfig
from crowdtune.training.guards import CopyIndex


@dataclass
class Sample:
    """One sampled post.

    text: the post (decoded sampled tokens, without EOS, trimmed if it was cut off)
    token_ids: the sampled tokens that make up `text` (+ the final EOS when the post ended itself)
    logprobs: one per token_ids entry, under the sampling policy (see module docstring)
    prompt: the prompt/context it continues ("" for none)
    finished: True if the model ended the post with EOS
    rejected: None if kept, else why a filter rejected it ("empty", "copy", "offensive")
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    prompt: str = ""
    finished: bool = False
    rejected: str | None = None


def _policy_logits(logits: torch.Tensor, seen: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Apply repetition penalty, temperature, top-k and top-p (in HF's order) to [B, V] logits."""
    logits = logits.float()
    if cfg.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if cfg.temperature > 0:
        logits = logits / cfg.temperature
    if cfg.top_k > 0:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def _sample_batch(model, prompts: list[list[int]], cfg: GenerationConfig, eos: int, pad: int,
                  generator: torch.Generator | None, interrupt: Callable[[int], bool] | None = None,
                  ) -> tuple[list[list[int]], list[list[float]], list[bool]]:
    device = next(model.parameters()).device
    batch, width = len(prompts), max(map(len, prompts))
    ids = torch.full((batch, width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((batch, width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):  # left padding: every row's next token goes in the same column
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        mask[i, width - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    vocab = model.get_output_embeddings().weight.shape[0]
    seen = torch.zeros((batch, vocab), dtype=torch.bool, device=device)
    for i, p in enumerate(prompts):
        seen[i, p] = True
    seen[:, eos] = False  # EOS is the post separator, not a repetition

    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache, logits = out.cache, out.logits[:, -1, :]
    next_position = positions[:, -1:] + 1
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logprobs = [], []
    for index in range(cfg.max_new_tokens):
        if interrupt is not None and index and interrupt(index):
            break  # asked to end early (a stop): the posts so far count as cut off by the limit
        policy = _policy_logits(logits[:, :vocab], seen, cfg)
        if cfg.temperature == 0:
            token = policy.argmax(-1)
            logprob = torch.zeros(batch, device=device)
        else:
            log_p = policy.log_softmax(-1)
            token = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(1)
            logprob = log_p.gather(1, token[:, None]).squeeze(1)
        token = token.masked_fill(done, pad)
        tokens.append(token)
        logprobs.append(logprob)
        seen[torch.arange(batch, device=device), token] = True
        seen[:, eos] = False
        done |= token == eos
        if done.all():
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                    cache=cache, use_cache=True)  # transformers >= 5.24 names the KV cache `cache`
        cache, logits = out.cache, out.logits[:, -1, :]
        next_position = next_position + 1

    token_rows = torch.stack(tokens, 1).tolist()
    logprob_rows = torch.stack(logprobs, 1).tolist()
    out_ids, out_logprobs, finished = [], [], []
    for row, lps in zip(token_rows, logprob_rows, strict=True):
        end = row.index(eos) + 1 if eos in row else len(row)
        out_ids.append(row[:end])
        out_logprobs.append(lps[:end])
        finished.append(eos in row)
    return out_ids, out_logprobs, finished


def sample(
    model,
    tokenizer: PreTrainedTokenizerBase,
    config: GenerationConfig | None = None,
    *,
    prompts: list[str] | None = None,
    interrupt: Callable[[int], bool] | None = None,
) -> list[Sample]:
    """Sample raw posts (no filters): `config.num_samples` of them, or one per prompt.

    Returns Samples with text, token ids and per-token sampling-policy log-probabilities.
    The model is put in eval mode while sampling and restored afterwards. `interrupt(tokens)`,
    if given, is called before each new token after the first, with the tokens sampled so far in this
    batch (a place to report progress); True ends sampling there, with the posts cut where they are.
    """
    cfg = config or GenerationConfig()
    prompts = prompts if prompts is not None else [""] * cfg.num_samples
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = [[eos] + tokenizer(p, add_special_tokens=False)["input_ids"] if p else [eos] for p in prompts]
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    samples = []
    try:
        for start in range(0, len(encoded), cfg.batch_size):
            chunk = encoded[start : start + cfg.batch_size]
            ids, lps, finished = _sample_batch(model, chunk, cfg, eos, pad, generator, interrupt)
            for i, (row, row_lps, ended) in enumerate(zip(ids, lps, finished, strict=True)):
                text_ids = row[:-1] if ended else row
                text = tokenizer.decode(text_ids, skip_special_tokens=True).strip()
                samples.append(Sample(text, row, row_lps, prompts[start + i], ended))
    finally:
        model.train(was_training)
    return samples


# A sentence ends at . ! ? or … possibly followed by closing quotes/brackets.
SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")


def trim_unfinished_sentence(sample: Sample, tokenizer: PreTrainedTokenizerBase) -> Sample:
    """Cut a post that was stopped by the length limit back to its last complete sentence.

    Token ids and log-probabilities are cut to the same prefix, so they still describe the
    published text. A post with no complete sentence becomes empty. Finished posts are kept as is.
    """
    if sample.finished:
        return sample
    ends = list(SENTENCE_END.finditer(sample.text))
    if not ends:
        return Sample("", [], [], sample.prompt, False, sample.rejected)
    text = sample.text[: ends[-1].end()].strip()
    # the shortest token prefix that decodes to the trimmed text
    for k in range(1, len(sample.token_ids) + 1):
        decoded = tokenizer.decode(sample.token_ids[:k], skip_special_tokens=True).strip()
        if len(decoded) >= len(text):
            return Sample(decoded, sample.token_ids[:k], sample.logprobs[:k], sample.prompt, False, sample.rejected)
    return sample


@dataclass
class GenerationResult:
    """kept: samples that passed every filter; rejected: the others, each with its reason."""

    kept: list[Sample]
    rejected: list[Sample]


def filter_samples(
    samples: list[Sample],
    tokenizer: PreTrainedTokenizerBase,
    config: GenerationConfig | None = None,
    *,
    copy_index: CopyIndex | None = None,
) -> GenerationResult:
    """Apply the filters in order: trim unfinished sentences, drop empty posts, drop copies of
    training posts (when `copy_index` is given and drop_copies is on), drop offensive posts
    (when offensive_threshold is set; judged on the post's own text, not its prompt)."""
    cfg = config or GenerationConfig()
    if cfg.trim_unfinished:
        samples = [trim_unfinished_sentence(s, tokenizer) for s in samples]
    for s in samples:
        if not s.text.strip():
            s.rejected = "empty"
    pending = [s for s in samples if s.rejected is None]
    if cfg.drop_copies and copy_index is not None and pending:
        for s, copied in zip(pending, copy_index.copy_flags([s.text for s in pending]), strict=True):
            if copied:
                s.rejected = "copy"
    pending = [s for s in samples if s.rejected is None]
    if cfg.offensive_threshold is not None and pending:
        from profanity_check import predict_prob

        for s, p in zip(pending, predict_prob([s.text for s in pending]), strict=True):
            if p >= cfg.offensive_threshold:
                s.rejected = "offensive"
    return GenerationResult([s for s in samples if s.rejected is None], [s for s in samples if s.rejected is not None])


def generate_posts(
    model,
    tokenizer: PreTrainedTokenizerBase,
    config: GenerationConfig | None = None,
    *,
    prompts: list[str] | None = None,
    copy_index: CopyIndex | None = None,
) -> GenerationResult:
    """Sample posts (see `sample`) and keep those that pass `filter_samples`."""
    cfg = config or GenerationConfig()
    return filter_samples(sample(model, tokenizer, cfg, prompts=prompts), tokenizer, cfg, copy_index=copy_index)
