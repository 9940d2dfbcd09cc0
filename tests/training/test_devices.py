"""Inside a worker a run trains on exactly one device: never Lightning's multi-process launcher."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

from crowdtune.errors import CrowdtuneError
from crowdtune.settings import Settings, load_settings, worker_entry
from crowdtune.training.devices import asks_for_several, one_device, pin_to_gpu, torch_device
from crowdtune.training.sft import SFTConfig, train_sft


def test_the_device_setting_names_one_device():
    assert one_device("cuda:1") == {"accelerator": "gpu", "devices": [1], "strategy": "auto"}
    assert one_device("cuda") == {"accelerator": "gpu", "devices": 1, "strategy": "auto"}
    assert one_device("cpu", "gpu") == {"accelerator": "cpu", "devices": 1, "strategy": "auto"}
    assert one_device("auto", "cpu")["devices"] == 1
    with pytest.raises(CrowdtuneError, match="not a device"):
        one_device("tpu:0")
    assert [asks_for_several(d) for d in (1, "1", "auto", [0], 2, "0,1", -1, [0, 1])] == [False] * 4 + [True] * 4


def test_a_trainer_placed_by_the_setting_uses_one_device_without_ddp():
    trainer = pl.Trainer(**one_device("auto"), logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy, SingleDeviceStrategy) and not isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 1 and trainer.world_size == 1


def test_a_worker_run_trains_on_the_one_device_and_refuses_several(tiny_model_dir, fresh_posts, tmp_path):
    config = SFTConfig(batch_size=4, block_size=32, max_steps=2, eval_every=2, eval_samples=0, style_metrics=False,
                       copy_embedding_threshold=None, devices="auto")
    result = train_sft(config, fresh_posts[:40], tiny_model_dir, checkpoint_dir=tmp_path, device="cpu")
    assert (result.device, result.strategy, result.steps) == ("cpu", "SingleDeviceStrategy", 2)
    with pytest.raises(CrowdtuneError, match="a worker trains on exactly one") as error:
        train_sft(config.model_copy(update={"devices": 2}), fresh_posts[:40], tiny_model_dir,
                  checkpoint_dir=tmp_path / "two", device="cpu")
    assert "torchrun" in error.value.fix


def test_a_sampling_job_puts_its_model_on_the_device_the_setting_names():
    assert [torch_device(d, cuda_available=False) for d in ("auto", "cpu", "mps", "cuda", "gpu:2", "cuda:1")] == \
        ["cpu", "cpu", "mps", "cuda", "cuda:2", "cuda:1"]
    assert torch_device("auto", cuda_available=True) == "cuda"
    with pytest.raises(CrowdtuneError, match="not a device"):
        torch_device("tpu")


def test_pinning_a_worker_to_a_gpu_leaves_it_that_gpu_alone_and_refuses_a_missing_one(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "CROWDTUNE_DEVICE"):  # recorded, so that teardown restores them
        monkeypatch.setenv(name, "")
    pin_to_gpu(1, visible_count=lambda: 1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1" and os.environ["CROWDTUNE_DEVICE"] == "cuda"
    assert load_settings().device == "cuda"  # what the worker's jobs read
    with pytest.raises(CrowdtuneError, match="no CUDA device 3") as error:
        pin_to_gpu(3, visible_count=lambda: 0)
    assert "without --gpu" in error.value.fix
    with pytest.raises(CrowdtuneError, match="not a GPU index"):
        pin_to_gpu(-1, visible_count=lambda: 1)


def test_a_worker_asked_for_a_gpu_on_a_machine_without_one_stops_with_the_fix(settings):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal needs one without")
    result = subprocess.run([sys.executable, "-m", "crowdtune.cli", "worker", "--gpu", "0", "--burst"],
                            capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert result.returncode != 0
    assert "torch sees no CUDA device 0" in result.stderr and "without --gpu" in result.stderr


def test_a_worker_queues_entry_can_pin_its_worker_to_a_gpu(settings):
    from crowdtune.runtime.supervisor import Supervisor

    assert worker_entry("train, default@cuda:1") == (["train", "default"], 1)
    assert worker_entry("default @ gpu:0") == (["default"], 0)
    assert worker_entry("control") == (["control"], None)
    for bad in ("train@tpu:0", "train@cuda", "@cuda:0", "train,store@cuda:0"):
        with pytest.raises(ValueError, match="worker entry"):
            worker_entry(bad)
    pinned = Settings(data_dir=settings.data_dir, worker_queues=["train,default@cuda:1"])
    assert pinned.worker_queues == ["train,default@cuda:1", "control"]  # a control worker is still added
    commands = {child.name: child.args for child in Supervisor(pinned).plan()}
    assert commands["worker-1"][commands["worker-1"].index("--queues"):][:4] == ["--queues", "train,default",
                                                                                 "--gpu", "1"]
    assert "--gpu" not in commands["worker-2"]
