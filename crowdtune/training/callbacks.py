"""The Lightning callbacks SFT and RL runs share, and the sinks they report to.

    MetricsSink      on_metrics(step, {name: value})
    ProgressSink     on_progress(step, total, loss, eta_seconds)
    StopFlag         polls should_stop() after every batch; True stops the run gracefully
    ProgressReport   calls a ProgressSink every `every` optimizer steps, with an ETA
    CheckpointEvery  writes last.ckpt every `every` optimizer steps
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl

from crowdtune.training.checkpoints import save_checkpoint

MetricsSink = Callable[[int, dict[str, float]], None]
ProgressSink = Callable[[int, int, float, float], None]


class StopFlag(pl.Callback):
    """Polls `should_stop()` after every batch; any device saying True stops all of them."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop
        self.fired = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.reduce_boolean_decision(bool(self.should_stop()), all=False):
            self.fired = True
            trainer.should_stop = True


class ProgressReport(pl.Callback):
    """Calls on_progress(step, total, loss, eta_seconds) every `every` optimizer steps (rank 0).

    The loss is the module's `last_loss`; the ETA extrapolates the mean time per step of this
    attempt (a resumed run does not count the steps done before it).
    """

    def __init__(self, on_progress: ProgressSink, total: int, every: int = 1):
        self.on_progress, self.total, self.every = on_progress, total, every
        self.start_time, self.start_step, self.last_step = 0.0, 0, -1

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_time, self.start_step = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self.last_step or step % self.every or not trainer.is_global_zero:
            return  # a micro-batch that did not end an optimizer step, or not yet time
        self.last_step = step
        per_step = (time.monotonic() - self.start_time) / max(1, step - self.start_step)
        self.on_progress(step, self.total, pl_module.last_loss, per_step * max(0, self.total - step))


class CheckpointEvery(pl.Callback):
    """last.ckpt in `folder` every `every` optimizer steps, written atomically."""

    def __init__(self, folder: Path, every: int):
        self.folder, self.every = folder, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            save_checkpoint(trainer, self.folder)
