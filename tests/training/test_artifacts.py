"""Artifacts under a remote `artifacts_url`: versions, checkpoints, the embeddings cache and reward models all
go through fsspec and load back from there.

Tested twice: on a local S3 server (moto's, over HTTP) through s3fs, as a user's `s3://` bucket, and on
fsspec's memory filesystem. Both are remote to every path here (is_local is False, nothing is on disk).
The `[s3]` and `[gcs]` extras install s3fs and gcsfs; the dev extra brings s3fs and moto.
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
from crowdtune.testing.processes import free_port


@pytest.fixture(params=["s3", "memory"])
def remote_artifacts(request, tmp_path, monkeypatch):
    """An `artifacts_url` on another machine: a bucket on a local S3 server, or fsspec's memory filesystem."""
    if request.param == "memory":
        yield f"memory://crowdtune-artifacts-{tmp_path.name}"
        return
    moto_server = pytest.importorskip("moto.server", reason="the dev extra installs moto[server]")
    s3fs = pytest.importorskip("s3fs", reason='the [s3] extra installs s3fs')
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # what a user of MinIO or another S3-compatible store sets (botocore reads AWS_ENDPOINT_URL)
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fsspec.filesystem("s3").mkdir("crowdtune-artifacts")
    try:
        yield "s3://crowdtune-artifacts/channel"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_every_artifact_lives_under_a_remote_artifacts_url_and_loads_back(data_dir, tiny_model_dir, tmp_path,
                                                                          monkeypatch, remote_artifacts):
    from crowdtune.embeddings import MODEL_ID, EmbeddingCache, shared_cache
    from crowdtune.online.reward_fits import FitInputs, fit_model, save_fit
    from crowdtune.training.models import add_lora, load_base_model, load_version, save_version
    from crowdtune.training.rl.predictor import PredictorConfig, load_predictor
    from crowdtune.training.rl.rewards import RewardConfig

    url = remote_artifacts
    monkeypatch.setenv("CROWDTUNE_ARTIFACTS_URL", url)
    settings = load_settings()
    remote, _ = fsspec.core.url_to_fs(url)

    def path(full_url: str) -> str:
        return fsspec.core.url_to_fs(full_url)[1]

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
    assert remote.exists(path(version) + "/adapter_config.json")
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
    shards = remote.ls(path(f"{url}/embeddings/{MODEL_ID}"), detail=False)
    assert shards and all(name.endswith(".npz") for name in shards)
    # another machine finds the vectors there and embeds nothing
    elsewhere = EmbeddingCache(f"{url}/embeddings", local_dir=tmp_path / "machine-b-cache")
    assert np.allclose(elsewhere.embed(texts), vectors, atol=1e-6) and elsewhere.embedded == 0


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed here")
def test_a_gs_artifacts_url_without_gcsfs_names_the_extra_to_install(data_dir, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_ARTIFACTS_URL", "gs://bucket/crowdtune")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "artifacts_url" in error.value.problem and 'pip install -e ".[gcs]"' in error.value.problem
    monkeypatch.setenv("CROWDTUNE_ARTIFACTS_URL", "nosuchfs://bucket")
    with pytest.raises(SettingsError, match="fsspec knows no nosuchfs:// filesystem"):
        load_settings()
