"""Inside a worker a run trains on exactly one device: never Lightning's multi-process launcher."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

from crowdtune.errors import CrowdtuneError
from crowdtune.training.devices import asks_for_several, one_device
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
