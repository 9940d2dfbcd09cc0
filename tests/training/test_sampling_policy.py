"""The sampling policy is one function for publishing and for the RL updates: the log-probabilities
recorded when posts are sampled are the ones an update recomputes from their token ids."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import TopPLogitsWarper

from crowdtune.training.generation import GenerationConfig, sample
from crowdtune.training.models import load_base_model
from crowdtune.training.rl.logprobs import encode_rollouts, sequence_stats
from crowdtune.training.rl.policy import RLConfig
from crowdtune.training.sampling_policy import NucleusCut, SamplingPolicy, sampling_policy

PROMPTS = ["", "Make America", "", "Thank you to all of my great supporters", "", "The", "Great", ""]
SETTINGS = {  # each sampling-policy setting alone, the defaults, and all of them at once
    "plain": dict(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0),
    "temperature": dict(temperature=0.7, top_p=1.0, top_k=0, repetition_penalty=1.0),
    "top_k": dict(temperature=1.0, top_p=1.0, top_k=20, repetition_penalty=1.0),
    "top_p": dict(temperature=1.0, top_p=0.8, top_k=0, repetition_penalty=1.0),
    "repetition_penalty": dict(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.5),
    "defaults": {k: getattr(RLConfig(), k) for k in ("temperature", "top_p", "top_k", "repetition_penalty")},
    "all": dict(temperature=0.7, top_p=0.8, top_k=50, repetition_penalty=1.3),
}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_base_model(tiny_model_dir)  # float32


def recomputed(model, tokenizer, samples, settings: dict) -> list[list[float]]:
    """Per-token log-probabilities of `samples` as an RL update recomputes them (one full forward pass)."""
    rollouts = encode_rollouts(tokenizer, [s.prompt for s in samples], [s.token_ids for s in samples])
    with torch.no_grad():
        stats = sequence_stats(model, rollouts, sampling_policy(RLConfig(**settings), tokenizer), reference=False)
    return [t.tolist() for t in stats.token_logprob.split(stats.n_tokens.tolist())]


@pytest.mark.parametrize("name", SETTINGS)
def test_recorded_logprobs_equal_the_updates_recomputation(tiny, name):
    model, tokenizer = tiny
    settings = SETTINGS[name]
    # batches of 4 with prompts of different lengths: left padding in the sampler, right padding in the update
    samples = sample(model, tokenizer, GenerationConfig(num_samples=8, batch_size=4, max_new_tokens=24, seed=11,
                                                        **settings), prompts=PROMPTS)
    assert any(s.finished for s in samples) and all(s.token_ids for s in samples)
    for s, again in zip(samples, recomputed(model, tokenizer, samples, settings), strict=True):
        assert len(again) == len(s.logprobs) == len(s.token_ids)
        assert max(abs(a - b) for a, b in zip(s.logprobs, again, strict=True)) <= 1e-5, (name, s.text)


def test_the_policy_differs_from_the_model_where_a_setting_bites(tiny):
    model, tokenizer = tiny
    samples = sample(model, tokenizer, GenerationConfig(num_samples=8, max_new_tokens=24, seed=11,
                                                        **SETTINGS["plain"]), prompts=PROMPTS)
    plain = recomputed(model, tokenizer, samples, SETTINGS["plain"])
    for name in ("temperature", "top_k", "top_p", "repetition_penalty"):
        other = recomputed(model, tokenizer, samples, SETTINGS[name])
        changed = max(abs(a - b) for p, o in zip(plain, other, strict=True) for a, b in zip(p, o, strict=True))
        assert changed > 1e-3, name  # so the equality above is not that of settings that do nothing


def test_a_models_own_generation_config_does_not_change_the_policy(tiny):
    model, tokenizer = tiny
    config = GenerationConfig(num_samples=6, batch_size=3, max_new_tokens=16, seed=5, **SETTINGS["all"])
    clean = sample(model, tokenizer, config, prompts=PROMPTS[:6])
    saved = copy.deepcopy(model.generation_config)
    # what a hub model's generation_config.json may carry; generate() would otherwise apply it on top
    model.generation_config.update(temperature=0.2, top_k=3, top_p=0.5, repetition_penalty=2.0,
                                   no_repeat_ngram_size=2, min_new_tokens=8, suppress_tokens=[5, 6, 7])
    try:
        shaped = sample(model, tokenizer, config, prompts=PROMPTS[:6])
    finally:
        model.generation_config = saved
    assert [s.token_ids for s in shaped] == [s.token_ids for s in clean]
    assert [s.logprobs for s in shaped] == [s.logprobs for s in clean]


def test_the_repetition_penalty_spares_eos_and_padding():
    eos, pad, vocab = 0, 1, 6
    policy = SamplingPolicy(GenerationConfig(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=2.0),
                            eos=eos, pad=pad)
    logits = torch.tensor([[4.0, 4.0, 4.0, -4.0, 4.0, 4.0]])
    scores = policy(torch.tensor([[pad, eos, 3, 4]]), logits)
    assert scores.shape == (1, vocab)
    # seen tokens 3 and 4 are penalised (a negative logit multiplied, a positive one divided); EOS, pad, unseen not
    assert scores.tolist() == [[4.0, 4.0, 4.0, -8.0, 2.0, 4.0]]


def test_a_seeded_draw_repeats_and_leaves_the_global_rng_alone(tiny):
    model, tokenizer = tiny
    config = GenerationConfig(num_samples=4, max_new_tokens=12, seed=21)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first, second = sample(model, tokenizer, config), sample(model, tokenizer, config)
    assert torch.equal(torch.get_rng_state(), before)
    assert [s.token_ids for s in first] == [s.token_ids for s in second]
    other = sample(model, tokenizer, config.model_copy(update={"seed": 22}))
    assert [s.token_ids for s in other] != [s.token_ids for s in first]


def test_an_interrupt_cuts_every_post_where_it_stands(tiny):
    model, tokenizer = tiny
    asked: list[int] = []

    def interrupt(tokens: int) -> bool:
        asked.append(tokens)
        return tokens >= 3

    samples = sample(model, tokenizer, GenerationConfig(num_samples=4, max_new_tokens=20, temperature=1.0,
                                                        top_p=1.0, seed=2), interrupt=interrupt)
    assert asked == [1, 2, 3]
    assert all(len(s.token_ids) == len(s.logprobs) <= 3 for s in samples)
    assert all(s.finished == (s.token_ids[-1] == tokenizer.eos_token_id) for s in samples)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), vocabulary=st.integers(2, 5000), scale=st.floats(0.05, 30.0),
       top_p=st.floats(0.01, 0.999), seed=st.integers(0, 2**16))
def test_the_nucleus_cut_keeps_what_transformers_top_p_keeps(rows, vocabulary, scale, top_p, seed):
    scores = torch.randn(rows, vocabulary, generator=torch.Generator().manual_seed(seed)) * scale
    ours = NucleusCut(top_p)(None, scores) > float("-inf")
    theirs = TopPLogitsWarper(top_p)(None, scores) > float("-inf")
    # where they differ, the mass above the token is top_p up to float32 rounding (a tie of the rule)
    probabilities = scores.softmax(-1)
    above = (probabilities.unsqueeze(1) > probabilities.unsqueeze(2)).float() @ probabilities.unsqueeze(2) \
        if vocabulary <= 600 else None
    differ = (ours != theirs).nonzero().tolist()
    if above is not None:
        assert all(abs(float(above[r, t, 0]) - top_p) < 1e-4 for r, t in differ), differ
    else:
        assert len(differ) <= rows, differ
    assert ours.any(-1).all()  # the first token is always kept


def test_the_nucleus_cut_widens_for_a_flat_distribution():
    scores = torch.zeros(2, 49_152)
    scores[0, :10] = 20.0  # one peaked row, one flat: the flat one needs ~46,700 tokens for 95%
    kept = (NucleusCut(0.95)(None, scores) > float("-inf")).sum(-1).tolist()
    assert kept == (TopPLogitsWarper(0.95)(None, scores) > float("-inf")).sum(-1).tolist()
    assert kept[0] == 10 and kept[1] > 40_000
