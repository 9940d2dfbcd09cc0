"""Artifacts under a remote `artifacts_url`: versions, checkpoints, the embeddings cache and reward models all
go through fsspec and load back from there.

Tested on fsspec's memory filesystem, a remote filesystem to every path here (is_local is False, nothing
is on disk): a local S3 server (moto) and s3fs do not install beside this project's pinned set (botocore
wants python-dateutil < 3, constraints.txt pins 4.0). The `[s3]` and `[gcs]` extras install s3fs and gcsfs.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime, timedelta

import fsspec
import numpy as np
import pytest
import torch

from crowdtune import artifacts
from crowdtune.errors import SettingsError
from crowdtune.settings import load_settings


def test_every_artifact_lives_under_a_remote_artifacts_url_and_loads_back(data_dir, tiny_model_dir, tmp_path,
                                                                          monkeypatch):
    from crowdtune.embeddings import MODEL_ID, EmbeddingCache, shared_cache
    from crowdtune.online.reward_fits import FitInputs, fit_model, save_fit
    from crowdtune.training.models import add_lora, load_base_model, load_version, save_version
    from crowdtune.training.rl.predictor import PredictorConfig, load_predictor
    from crowdtune.training.rl.rewards import RewardConfig

    url = f"memory://crowdtune-artifacts-{tmp_path.name}"
    monkeypatch.setenv("CROWDTUNE_ARTIFACTS_URL", url)
    settings = load_settings()
    memory = fsspec.filesystem("memory")

    # 1) a model version: written under <url>/versions/, loaded back with the same outputs
    model, tokenizer = load_base_model(tiny_model_dir)
    policy = add_lora(model, rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    ids = torch.tensor([tokenizer("Big news tonight", add_special_tokens=False)["input_ids"]])
    expected = policy.eval()(input_ids=ids).logits
    version = artifacts.version_url(settings.artifacts, "offline-1-step5")
    save_version(policy, version, tokenizer=tokenizer, base_model=tiny_model_dir, metadata={"run_id": "offline-1"})
    assert memory.exists(version.removeprefix("memory://") + "/adapter_config.json")
    loaded, _ = load_version(version)
    assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)

    # 2) a run's checkpoints: mirrored up whole (temporary files left out), down on another machine
    checkpoints = artifacts.checkpoint_url(settings.artifacts, "offline-1")
    assert not artifacts.is_local(checkpoints)
    here = tmp_path / "machine-a"
    (here / "adapter-step5").mkdir(parents=True)
    (here / "last.ckpt").write_bytes(b"checkpoint")
    (here / "adapter-step5" / "adapter_model.safetensors").write_bytes(b"weights")
    (here / "emitted.json.tmp").write_text("half written")
    artifacts.mirror_up(here, checkpoints)
    there = tmp_path / "machine-b"
    assert artifacts.mirror_down(checkpoints, there)
    assert sorted(p.relative_to(there).as_posix() for p in there.rglob("*") if p.is_file()) == [
        "adapter-step5/adapter_model.safetensors", "last.ckpt"]
    assert (there / "last.ckpt").read_bytes() == b"checkpoint"

    # 3) a reward model, fitted on embeddings that land in the shared cache under <url>/embeddings/
    start = datetime(2024, 1, 1)
    posts = [{"post_id": f"f:{i}", "text": f"post {i} about {'cats' if i % 2 else 'dogs'}" + ("?" * (i % 3)),
              "score": float(i % 5), "origin": "imported", "posted_at": start + timedelta(hours=5 * i)}
             for i in range(24)]
    fitted = fit_model(settings, FitInputs("f", posts, RewardConfig(), PredictorConfig(members=4)))
    row = save_fit(settings, fitted)
    assert row["artifact_url"] == f"{url}/reward_models/{fitted.model_id}"
    predictor = load_predictor(row["artifact_url"])
    vectors = shared_cache(settings).embed([p["text"] for p in posts[:4]])
    texts = [p["text"] for p in posts[:4]]
    assert np.allclose(predictor.predict(vectors, texts)[0], fitted.model.predict(vectors, texts)[0])
    shards = memory.ls(f"{url.removeprefix('memory://')}/embeddings/{MODEL_ID}", detail=False)
    assert shards and all(name.endswith(".npz") for name in shards)
    # another machine finds the vectors there and embeds nothing
    elsewhere = EmbeddingCache(f"{url}/embeddings", local_dir=tmp_path / "machine-b-cache")
    assert np.allclose(elsewhere.embed(texts), vectors, atol=1e-6) and elsewhere.embedded == 0


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
def test_an_s3_artifacts_url_without_s3fs_names_the_extra_to_install(data_dir, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_ARTIFACTS_URL", "s3://bucket/crowdtune")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "artifacts_url" in error.value.problem and 'pip install -e ".[s3]"' in error.value.problem
    monkeypatch.setenv("CROWDTUNE_ARTIFACTS_URL", "nosuchfs://bucket")
    with pytest.raises(SettingsError, match="fsspec knows no nosuchfs:// filesystem"):
        load_settings()
