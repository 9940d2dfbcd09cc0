"""Sampling with KV cache: log-probabilities, sampling settings and filters."""

from __future__ import annotations

import pytest
import torch

from crowdtune.training.generation import (
    GenerationConfig,
    Sample,
    filter_samples,
    generate_posts,
    sample,
    trim_unfinished_sentence,
)
from crowdtune.training.guards import CopyIndex
from crowdtune.training.models import load_base_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_base_model(tiny_model_dir)


def test_logprobs_match_a_recomputation_under_the_model(tiny):
    model, tokenizer = tiny
    config = GenerationConfig(num_samples=6, batch_size=3, max_new_tokens=20, temperature=1.0, top_p=1.0, top_k=0,
                              seed=3)
    prompts = ["", "Big news", "Thank you to all of my great supporters", "", "Obama", "Make"]
    samples = sample(model, tokenizer, config, prompts=prompts)
    assert len(samples) == 6
    eos = tokenizer.eos_token_id
    for s in samples:
        assert len(s.token_ids) == len(s.logprobs) > 0
        assert s.finished == (s.token_ids[-1] == eos)
        context = [eos] + (tokenizer(s.prompt, add_special_tokens=False)["input_ids"] if s.prompt else [])
        ids = torch.tensor([context + s.token_ids])
        with torch.no_grad():  # one plain forward pass, no cache, no padding
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
        expected = [logp[len(context) - 1 + i, t].item() for i, t in enumerate(s.token_ids)]
        assert s.logprobs == pytest.approx(expected, abs=1e-4)


def test_top_k_one_is_greedy_and_has_probability_one(tiny):
    model, tokenizer = tiny
    greedy = sample(model, tokenizer, GenerationConfig(num_samples=2, max_new_tokens=8, temperature=0.0))
    top1 = sample(model, tokenizer, GenerationConfig(num_samples=2, max_new_tokens=8, temperature=1.0, top_k=1, seed=1))
    assert greedy[0].token_ids == greedy[1].token_ids == top1[0].token_ids
    assert all(lp == pytest.approx(0.0, abs=1e-6) for lp in top1[0].logprobs)


def test_top_p_narrows_the_policy(tiny):
    model, tokenizer = tiny
    wide = sample(model, tokenizer,
                  GenerationConfig(num_samples=8, max_new_tokens=16, temperature=1.0, top_p=1.0, seed=5))
    narrow = sample(model, tokenizer,
                    GenerationConfig(num_samples=8, max_new_tokens=16, temperature=1.0, top_p=0.5, seed=5))

    def mean(samples):
        return sum(sum(s.logprobs) for s in samples) / sum(len(s.logprobs) for s in samples)

    assert mean(narrow) > mean(wide)  # tokens are drawn from a renormalised, smaller set


def test_trimming_cuts_text_tokens_and_logprobs_together(tiny):
    _, tokenizer = tiny
    text = "Great rally tonight. We will win big and"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    cut = trim_unfinished_sentence(Sample(text, ids, [-1.0] * len(ids)), tokenizer)
    assert cut.text == "Great rally tonight."
    assert tokenizer.decode(cut.token_ids).strip() == cut.text and len(cut.logprobs) == len(cut.token_ids)
    assert trim_unfinished_sentence(Sample("no sentence end", ids, [0.0] * len(ids)), tokenizer).text == ""


def test_filters_drop_empty_and_copied_posts(tiny):
    model, tokenizer = tiny
    config = GenerationConfig(num_samples=12, max_new_tokens=24, seed=0)
    first = generate_posts(model, tokenizer, config)
    kept_texts = [s.text for s in first.kept]
    assert kept_texts and all(t.strip() for t in kept_texts)
    assert all(s.rejected == "empty" for s in first.rejected)
    # the same draw again, now with its own kept posts declared as training posts: all are copies
    again = generate_posts(model, tokenizer, config, copy_index=CopyIndex(kept_texts, embedding_threshold=None))
    assert not again.kept and sum(s.rejected == "copy" for s in again.rejected) == len(kept_texts)


def test_offensive_posts_are_rejected_when_the_filter_is_on(tiny):
    _, tokenizer = tiny
    texts = ["What a great crowd in Ohio today!", "You are a fucking idiot and a loser!"]

    def samples():
        return [Sample(t, tokenizer(t)["input_ids"], [0.0], finished=True) for t in texts]

    on = filter_samples(samples(), tokenizer, GenerationConfig(offensive_threshold=0.5))
    assert [s.text for s in on.kept] == texts[:1] and [s.rejected for s in on.rejected] == ["offensive"]
    assert len(filter_samples(samples(), tokenizer, GenerationConfig()).kept) == 2
