"""Fixtures for the training tests: real tweets and a tiny GPT-2 built once per session."""

from __future__ import annotations

import pytest
import torch

from crowdtune.testing.sandbox_run import build_tiny_base, real_tweets

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def embedding_cache_folder(tmp_path_factory):
    """Keep the shared embedding cache (under <data_dir>/artifacts) out of the working tree, and shared
    by the session's tests; a test's own `data_dir` fixture points it elsewhere."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        patch.delenv("CROWDTUNE_ARTIFACTS_URL", raising=False)
        yield


@pytest.fixture(scope="session")
def tweets() -> list[dict]:
    """Real tweets (dslabs trump_tweets, no retweets), oldest first, as post dicts."""
    return real_tweets()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tweets) -> str:
    """A tiny GPT-2 + BPE tokenizer, briefly pre-trained on the first 1,500 tweets (a 'base model').

    Tests fine-tune it on later tweets, which it has not seen.
    """
    folder = tmp_path_factory.mktemp("tiny-model")
    build_tiny_base(folder, tweets)
    return str(folder)


@pytest.fixture
def fresh_posts(tweets) -> list[dict]:
    """300 tweets the tiny model never saw."""
    return tweets[2000:2300]
