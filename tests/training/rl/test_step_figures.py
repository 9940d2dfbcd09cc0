"""An online update's step figures: train/loss, train/lr and train/grad_norm per optimizer step, numbered
on from the run's earlier updates, and not logged twice when the update runs again."""

import math

from crowdtune.training.loggers import SinkLogger
from crowdtune.training.rl import run_update

from .conftest import as_history, sampled_batch


def _update(tiny_model_dir, tmp_path, batch, rows, offset, **config):
    return run_update("policy_gradient", {"eval_samples": 0, "learning_rate": 3e-4, **config},
                      base_model=tiny_model_dir, policy_url=None, batch=batch, history=as_history(batch),
                      state_dir=tmp_path / "state", checkpoint_dir=tmp_path / "ck", model_cache_dir=tmp_path / "cache",
                      step_loggers=[SinkLogger(lambda step, figures: rows.append((step, figures)))],
                      step_offset=offset, seed=1)


def test_each_optimizer_step_logs_loss_lr_and_grad_norm_after_the_runs_earlier_steps(
        tiny_model_dir, tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    batch = sampled_batch(model, tokenizer, 8, seed=4)
    rows = []
    result = _update(tiny_model_dir, tmp_path, batch, rows, offset=30)
    steps = int(result.metrics["steps"])
    assert steps >= 2
    assert [step for step, _ in rows] == list(range(31, 31 + steps))
    for _, figures in rows:
        assert set(figures) == {"train/loss", "train/lr", "train/grad_norm"}
        assert math.isfinite(figures["train/loss"]) and figures["train/grad_norm"] > 0
        assert figures["train/lr"] == 3e-4
    # the same update again (a retried job): its stored result, and nothing logged twice
    again = []
    _update(tiny_model_dir, tmp_path, batch, again, offset=30)
    assert again == []


def test_log_every_n_steps_thins_the_step_figures_and_zero_turns_them_off(tiny_model_dir, tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    batch = sampled_batch(model, tokenizer, 8, seed=4)
    rows = []
    result = _update(tiny_model_dir, tmp_path / "every-2", batch, rows, offset=1, log_every_n_steps=2)
    assert [step for step, _ in rows] == [s for s in range(2, 2 + int(result.metrics["steps"])) if s % 2 == 0]
    off = []
    _update(tiny_model_dir, tmp_path / "off", batch, off, offset=0, log_every_n_steps=0)
    assert off == []
