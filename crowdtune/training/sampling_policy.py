"""The sampling policy: the one definition of the distribution a post's tokens are drawn from, used
where posts are sampled (crowdtune.training.generation, for publishing, evaluations and the RL
updates' own samples) and where an RL update recomputes their log-probabilities
(crowdtune.training.rl.logprobs), so that the two agree.

    SamplingSettings                        what defines it (GenerationConfig and RLConfig both have it)
    sampling_policy(settings, tokenizer) -> SamplingPolicy
    SamplingPolicy                          a transformers LogitsProcessor: generate() samples from the
                                            softmax of its scores; .log_probs(...) recomputes them
    ONLY_THIS_POLICY                        generate() settings that turn off every other processor

Built from transformers' own logits processors, in the order generate() applies them:

1. repetition penalty (RepetitionPenaltyLogitsProcessor, CTRL-style: a seen token's logit is divided
   by the penalty when positive, multiplied when negative) over the prompt and the sampled tokens,
   except EOS and padding: EOS separates posts and opens every context, padding is layout;
2. temperature (TemperatureLogitsWarper);
3. top-k (TopKLogitsWarper), then top-p on what top-k kept: TopPLogitsWarper's kept set, found among the
   most likely tokens instead of by sorting the whole vocabulary (NucleusCut).

Temperature 0 is greedy: the repetition penalty, then the argmax (top-k and top-p cannot change it).
"""

from __future__ import annotations

from typing import Protocol

import torch
from transformers import (
    LogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

# Every generate() setting that shapes the distribution or changes the decoding mode, off, so that the
# scores are SamplingPolicy's alone and one row is one sample, whatever a model's generation_config.json
# carries (a hub model may ship temperature 0.6, top_p 0.9, suppress_tokens, ...): passed as generate()
# keywords they override it. Cache and compilation settings are left to the model (static caches on GPUs).
ONLY_THIS_POLICY: dict = dict(
    temperature=None, top_k=None, top_p=None, min_p=None, top_h=None, typical_p=None, epsilon_cutoff=None,
    eta_cutoff=None, repetition_penalty=None, encoder_repetition_penalty=None, no_repeat_ngram_size=None,
    encoder_no_repeat_ngram_size=None, bad_words_ids=None, sequence_bias=None, min_length=None,
    min_new_tokens=None, forced_bos_token_id=None, forced_eos_token_id=None, suppress_tokens=None,
    begin_suppress_tokens=None, exponential_decay_length_penalty=None, guidance_scale=None,
    watermarking_config=None, renormalize_logits=None, remove_invalid_values=None, stop_strings=None,
    max_time=None, token_healing=None, dola_layers=None, penalty_alpha=None, prompt_lookup_num_tokens=None,
    use_mtp=None, num_beams=1, num_beam_groups=None, diversity_penalty=None, num_return_sequences=1,
)


class SamplingSettings(Protocol):
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float


class _SparingRepetitionPenalty(RepetitionPenaltyLogitsProcessor):
    """transformers' repetition penalty, blind to the `spared` token ids (EOS and padding)."""

    def __init__(self, penalty: float, spared: list[int]):
        super().__init__(float(penalty))
        self.spared = torch.tensor(spared)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        # ids at or above the vocabulary size are ignored by the parent: spared ids become one
        spared = torch.isin(input_ids, self.spared.to(input_ids.device))
        return super().__call__(input_ids.masked_fill(spared, scores.shape[-1]), scores)


class NucleusCut(TopPLogitsWarper):
    """TopPLogitsWarper's cut (keep the most likely tokens until their mass reaches top_p, and always the
    first), with the same kept set, without sorting the whole vocabulary.

    A token is kept when the mass of the tokens ranked above it is below top_p (TopPLogitsWarper drops it when
    the mass from the bottom up to it is at most 1 - top_p: the same rule). Only tokens among the top `width`
    can be kept once those hold top_p of the mass, so the cut looks at the top 256 first and widens only for
    rows that need it. Why: a step sorts [rows, vocabulary]: for SmolLM2's 49,152 tokens on 2 CPU threads,
    20 ms for the 8 rows of a best-of-8 slot at every token (against ~150 ms for the model's forward pass)
    and ~2.5 s for the ~1,000 token positions of an update's optimizer step (log_probs); topk(256) is ~1 ms.
    """

    FIRST_WIDTH = 256

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        vocabulary = scores.shape[-1]
        log_total = scores.logsumexp(-1, keepdim=True)
        width = min(self.FIRST_WIDTH, vocabulary)
        while True:
            top, index = scores.topk(width, dim=-1)                      # descending
            mass = (top - log_total).exp()
            above = mass.cumsum(-1) - mass                               # mass of the tokens ranked higher
            if width == vocabulary or bool(((above[:, -1] + mass[:, -1]) >= self.top_p).all()):
                break
            width = min(vocabulary, width * 8)
        kept_ranks = above < self.top_p
        kept_ranks[:, : self.min_tokens_to_keep] = True
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter(1, index, kept_ranks)
        return scores.masked_fill(~kept, self.filter_value)


class SamplingPolicy(LogitsProcessor):
    """The sampling policy (module docstring) as a transformers LogitsProcessor.

    Called as processor(input_ids [B, L], logits [B, V]) -> scores [B, V]: the policy is softmax(scores)
    (-inf where top-k or top-p cut). `greedy` when temperature is 0 (then only the penalty applies).
    """

    def __init__(self, settings: SamplingSettings, *, eos: int, pad: int):
        self.greedy = settings.temperature == 0
        self.penalty = (_SparingRepetitionPenalty(settings.repetition_penalty, sorted({eos, pad}))
                        if settings.repetition_penalty != 1.0 else None)
        self.temperature = (TemperatureLogitsWarper(float(settings.temperature))
                            if settings.temperature not in (0, 1) else None)
        self.cuts = [] if self.greedy else [
            *([TopKLogitsWarper(int(settings.top_k))] if settings.top_k > 0 else []),
            *([NucleusCut(float(settings.top_p))] if settings.top_p < 1.0 else []),
        ]
        self.eos = eos

    def scaled(self, input_ids: torch.LongTensor, logits: torch.Tensor) -> torch.Tensor:
        """Steps 1-2: the penalty and the temperature (differentiable)."""
        scores = logits.float()
        if self.penalty is not None:
            scores = self.penalty(input_ids, scores)
        if self.temperature is not None:
            scores = self.temperature(input_ids, scores)
        return scores

    def cut(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """Step 3: top-k and top-p (-inf on the tokens they drop)."""
        for warper in self.cuts:
            scores = warper(input_ids, scores)
        return scores

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return self.cut(input_ids, self.scaled(input_ids, scores))

    def log_probs(self, contexts: torch.LongTensor, logits: torch.Tensor, targets: torch.LongTensor) -> torch.Tensor:
        """Log-probabilities [N] of `targets` [N] under the policy, from the logits [N, V] that predicted
        them and their contexts [N, L] (the tokens before each target; EOS-filled to a common width, EOS
        being spared by the penalty). Differentiable in `logits`.

        The target always stays in the top-k/top-p set: float noise between the cached sampling pass and
        a full forward pass must not turn a token that was sampled into -inf.
        """
        scores = self.scaled(contexts, logits)
        if self.cuts:
            with torch.no_grad():
                kept = self.cut(contexts, scores.detach()) > float("-inf")
                kept[torch.arange(len(targets), device=kept.device), targets] = True
            scores = scores.masked_fill(~kept, float("-inf"))
        return scores.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)


def sampling_policy(settings: SamplingSettings, tokenizer) -> SamplingPolicy:
    """The policy of `settings` (temperature, top_p, top_k, repetition_penalty) for a model with this
    tokenizer (its EOS, and its pad token or EOS when it has none)."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return SamplingPolicy(settings, eos=eos, pad=pad)
