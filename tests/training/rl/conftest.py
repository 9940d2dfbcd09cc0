"""Helpers for the RL tests: batches of posts sampled from the tiny model, with synthetic rewards."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from crowdtune.training.generation import GenerationConfig, sample
from crowdtune.training.models import load_base_model


def short_post_reward(token_ids: list[int]) -> float:
    """A reward the tiny model can learn in a few updates: shorter posts are better (0..1)."""
    return 1.0 - len(token_ids) / 40


def sampled_batch(model, tokenizer, n: int, seed: int, reward: Callable[[list[int]], float] = short_post_reward,
                  first_id: int = 0) -> list[dict]:
    """n posts sampled from `model` as run_update's batch: tokens, sampling logprob, score, reward."""
    samples = sample(model, tokenizer, GenerationConfig(num_samples=n, batch_size=n, max_new_tokens=40, seed=seed))
    batch = []
    for i, s in enumerate(samples):
        r = reward(s.token_ids)
        batch.append({"post_id": f"p{first_id + i}", "prompt": "", "text": s.text, "token_ids": s.token_ids,
                      "logprob": float(sum(s.logprobs)), "score": 10 * r, "reward": r})
    return batch


def as_history(batch: list[dict]) -> list[dict]:
    return [{"post_id": p["post_id"], "text": p["text"], "score": p["score"], "reward": p["reward"],
             "published_at": i} for i, p in enumerate(batch)]


@pytest.fixture
def tiny_policy(tiny_model_dir):
    """(model, tokenizer) of the tiny base model: what policy_url=None starts from."""
    return load_base_model(tiny_model_dir)
