"""Fixtures for the training tests (the tweets and the tiny GPT-2 are tests/conftest.py's, shared by the session)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def embedding_cache_folder(tmp_path_factory):
    """Keep the shared embedding cache (under <data_dir>/artifacts) out of the working tree, and shared
    by the session's tests; a test's own `data_dir` fixture points it elsewhere."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        patch.delenv("CROWDTUNE_ARTIFACTS_URL", raising=False)
        yield
