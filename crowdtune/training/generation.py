"""Sampling posts from a model, with the log-probabilities online RL needs, and the filters
that keep bad samples from being published.

A post is sampled after the EOS token (that is how training lays posts out), optionally
followed by a prompt/context that the post continues. Sampling is transformers' `generate`, batched
with left padding (so every row's next token is in the same column), with the model's own cache and
compilation settings (a GPU user's `generation_config.cache_implementation = "static"` applies); a row
ends at EOS, or at `max_new_tokens` (then it is cut off, `finished` False).

Log-probabilities are those of the *sampling policy* (crowdtune.training.sampling_policy): the
distribution the token was actually drawn from, i.e. the model's logits after the repetition penalty,
temperature, top-k and top-p (renormalised over the kept tokens), read from generate's scores
(`output_scores`). With temperature 1, no top-k/top-p and no repetition penalty they equal
the model's own log-probabilities. With temperature 0 (greedy) every log-probability is 0. The RL
updates recompute the same numbers from the stored token ids (crowdtune.training.rl.logprobs).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from crowdtune.training.configs import GenerationConfig
from crowdtune.training.guards import CopyIndex
from crowdtune.training.sampling_policy import ONLY_THIS_POLICY, SamplingPolicy, sampling_policy


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


class _Interrupt(StoppingCriteria):
    """generate()'s stopping criterion for `sample`'s interrupt: after each token, interrupt(tokens so far)."""

    def __init__(self, interrupt: Callable[[int], bool], prompt_width: int):
        self.interrupt, self.prompt_width = interrupt, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stop = bool(self.interrupt(input_ids.shape[1] - self.prompt_width))
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Seed torch's RNG (generate() samples from it) for the block, and restore it afterwards, so that a
    seeded draw neither depends on nor disturbs anything else; no seed: the global RNG as it stands."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def _sample_batch(model, prompts: list[list[int]], cfg: GenerationConfig, policy: SamplingPolicy, eos: int, pad: int,
                  interrupt: Callable[[int], bool] | None = None,
                  ) -> tuple[list[list[int]], list[list[float]], list[bool]]:
    device = next(model.parameters()).device
    batch, width = len(prompts), max(map(len, prompts))
    ids = torch.full((batch, width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((batch, width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):  # left padding: every row's next token goes in the same column
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        mask[i, width - len(p):] = 1
    stopping = StoppingCriteriaList([_Interrupt(interrupt, width)] if interrupt is not None else [])
    out = model.generate(
        input_ids=ids, attention_mask=mask, **ONLY_THIS_POLICY, logits_processor=LogitsProcessorList([policy]),
        stopping_criteria=stopping, do_sample=not policy.greedy, max_new_tokens=cfg.max_new_tokens,
        eos_token_id=eos, pad_token_id=pad, output_scores=True, return_dict_in_generate=True,
    )
    tokens = out.sequences[:, width:]
    if policy.greedy:  # a deterministic policy: every token has probability 1
        logprobs = torch.zeros(tokens.shape, device=device)
    else:
        # log-softmax of the policy's scores at each sampled token, as the update computes it. Not
        # compute_transition_scores: its log-softmax runs over a strided view and its float32 sum was
        # up to 1.2e-5 off (tiny model, temperature 0.7, tokens of probability ~1); this is within 5e-6
        logprobs = torch.stack([step.log_softmax(-1).gather(1, tokens[:, t, None]).squeeze(1)
                                for t, step in enumerate(out.scores)], 1)

    out_ids, out_logprobs, finished = [], [], []
    for row, lps in zip(tokens.tolist(), logprobs.tolist(), strict=True):
        end = row.index(eos) + 1 if eos in row else len(row)  # after EOS generate() pads
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
    if given, is called after each new token with the tokens sampled so far in this batch (a place to
    report progress); True ends sampling there, with the posts cut where they are. A seed
    (`config.seed`) makes the draw repeatable and leaves torch's global RNG as it was.
    """
    cfg = config or GenerationConfig()
    prompts = prompts if prompts is not None else [""] * cfg.num_samples
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = [[eos] + tokenizer(p, add_special_tokens=False)["input_ids"] if p else [eos] for p in prompts]
    policy = sampling_policy(cfg, tokenizer)
    was_training = model.training
    model.eval()
    samples = []
    try:
        with _seeded(cfg.seed, next(model.parameters()).device):
            for start in range(0, len(encoded), cfg.batch_size):
                chunk = encoded[start : start + cfg.batch_size]
                ids, lps, finished = _sample_batch(model, chunk, cfg, policy, eos, pad, interrupt)
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
