"""Sampling job (queue `default`): posts from a model version or a base model, never published."""

from __future__ import annotations

from crowdtune.errors import CrowdtuneError
from crowdtune.runtime.queues import connect
from crowdtune.settings import load_settings
from crowdtune.store.remote import read_via_store_worker
from crowdtune.training.devices import torch_device
from crowdtune.training.generation import GenerationConfig, generate_posts
from crowdtune.training.models import load_base_model, load_version


def sample_posts(version_id: str | None, base_model: str | None, count: int, generation: dict,
                 prompts: list[str]) -> list[dict]:
    """Sample `count` posts (or one per prompt). Returns dicts: text, prompt, kept, rejected, logprob, tokens."""
    settings = load_settings()
    cache = settings.data_dir / "models"
    if version_id:
        version = read_via_store_worker(connect(settings), "model_version", version_id=version_id)
        if version is None:
            raise CrowdtuneError(f"There is no model version {version_id!r}.", "Pick one from the Models page.")
        model, tokenizer = load_version(version["artifact_url"], base_model=version["base_model"], cache_dir=cache)
    else:
        model, tokenizer = load_base_model(base_model or settings.base_model, cache_dir=cache)
    model.to(torch_device(settings.device)).eval()  # a worker pinned to a GPU samples there
    config = GenerationConfig(**{**generation, "num_samples": count, "drop_copies": False})
    result = generate_posts(model, tokenizer, config, prompts=prompts or None)
    return [{"text": s.text, "prompt": s.prompt, "kept": s.rejected is None, "rejected": s.rejected,
             "logprob": float(sum(s.logprobs)), "tokens": len(s.token_ids)}
            for s in result.kept + result.rejected]
