"""The Lightning callbacks SFT and RL runs share, and the sinks they report to.

    MetricsSink      on_metrics(step, {name: value})
    ProgressSink     on_progress(step, total, loss, eta_seconds[, phase])
    StopFlag         polls should_stop() after every batch; True stops the run gracefully
    ProgressReport   calls a ProgressSink every `every` optimizer steps and in each evaluation phase,
                     with an ETA that counts the evaluations still to come
    CheckpointEvery  writes last.ckpt every `every` optimizer steps
    StepFigures      logs train/loss, train/lr and train/grad_norm every `every` optimizer steps, once per step
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch

from crowdtune.training.checkpoints import save_checkpoint, write_json

MetricsSink = Callable[[int, dict[str, float]], None]
# on_progress(step, total, loss, eta_seconds, phase): phase is optional for sinks that only follow steps
ProgressSink = Callable[..., None]


class StopFlag(pl.Callback):
    """Polls `should_stop()` after every batch; any device saying True stops all of them.

    `requested()` polls it too, for the phases between batches (validation, sampling,
    checkpointing), so that a stop is honoured there as well; once True it stays True.
    """

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop
        self.fired = False

    def requested(self) -> bool:
        if not self.fired and self.should_stop():
            self.fired = True
        return self.fired

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.reduce_boolean_decision(bool(self.should_stop()), all=False):
            self.fired = True
        if self.fired:
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.requested():  # asked during validation, sampling or checkpointing: end right after it
            trainer.should_stop = True


class ProgressReport(pl.Callback):
    """Calls on_progress(step, total, loss, eta_seconds, phase) every `every` optimizer steps (rank 0),
    at the start of each validation batch, and whenever `phase(text)` is called (evaluation steps
    such as sampling or the copy guard report what they do that way).

    The loss is the module's `last_loss`. The ETA is (mean time of a training step) x (steps left)
    + (mean time of an evaluation) x (evaluations left), both measured in this attempt (a resumed
    run does not count what was done before it); until an evaluation has been timed, one counts
    as `eval_guess_steps` training steps. Evaluations come every `eval_every` steps (None: none).
    """

    TRAINING = "training"

    def __init__(self, on_progress: ProgressSink, total: int, every: int = 1, *, eval_every: int | None = None,
                 eval_guess_steps: float = 0.0):
        self.on_progress, self.total, self.every = on_progress, total, every
        self.takes_phase = _takes_phase(on_progress)
        self.eval_every, self.eval_guess_steps = eval_every, eval_guess_steps
        self.start_time, self.start_step, self.last_step = 0.0, 0, -1
        self.eval_seconds: list[float] = []  # one per finished evaluation of this attempt
        self.eval_started: float | None = None
        self.step, self.loss = 0, float("nan")
        self.is_zero = True

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_time, self.start_step = time.monotonic(), trainer.global_step
        self.step, self.is_zero = trainer.global_step, trainer.is_global_zero

    def evals_left(self, step: int) -> int:
        if not self.eval_every:
            return 0
        return max(0, self.total // self.eval_every - step // self.eval_every)

    def eta(self, step: int, in_eval: bool = False) -> float | None:
        """Seconds left: the remaining steps and evaluations (counting the one under way as left)."""
        steps_done = step - self.start_step
        if steps_done <= 0:
            return None
        now = time.monotonic()
        eval_time = sum(self.eval_seconds) + (now - self.eval_started if self.eval_started is not None else 0.0)
        per_step = max(0.0, now - self.start_time - eval_time) / steps_done
        per_eval = (sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds
                    else self.eval_guess_steps * per_step)
        evals = self.evals_left(step) + (1 if in_eval else 0)
        spent = now - self.eval_started if in_eval and self.eval_started is not None else 0.0
        return per_step * max(0, self.total - step) + max(0.0, per_eval * evals - spent)

    def report(self, phase: str) -> None:
        if not self.is_zero or (not self.takes_phase and phase != self.TRAINING):
            return  # a sink of steps only hears of steps
        args = (self.step, self.total, self.loss, self.eta(self.step, self.eval_started is not None))
        self.on_progress(*args, phase) if self.takes_phase else self.on_progress(*args)

    def phase(self, text: str) -> None:
        """Report what the run is doing now (rank 0), e.g. "evaluating: sampling 16 posts"."""
        self.report(text)

    @contextlib.contextmanager
    def keep_alive(self, text: str, every: float = 10.0) -> Iterator[None]:
        """Report `text` now and, for a call that cannot report from inside, again every `every`
        seconds with the time it has taken so far, until the block ends."""
        started, done = time.monotonic(), threading.Event()

        def beat() -> None:
            while not done.wait(every):
                self.report(f"{text} ({time.monotonic() - started:.0f} s)")

        self.report(text)
        thread = threading.Thread(target=beat, name="progress-keep-alive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        self.step, self.loss = step, pl_module.last_loss
        if step == self.last_step or step % self.every or not trainer.is_global_zero:
            return  # a micro-batch that did not end an optimizer step, or not yet time
        self.last_step = step
        self.report(self.TRAINING)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.eval_started = time.monotonic()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.eval_started is not None:
            batches = trainer.num_val_batches[dataloader_idx] if trainer.num_val_batches else "?"
            self.report(f"evaluating: validation loss, batch {batch_idx + 1} of {batches}")

    def on_validation_end(self, trainer, pl_module) -> None:
        # listed after the callbacks that evaluate, so this time includes their sampling and guards
        if self.eval_started is not None:
            self.eval_seconds.append(time.monotonic() - self.eval_started)
            self.eval_started = None
            self.report(self.TRAINING)


def _takes_phase(sink: ProgressSink) -> bool:
    """Whether the sink accepts the fifth argument, phase (older sinks take four)."""
    try:
        inspect.signature(sink).bind(0, 0, 0.0, 0.0, "")
    except TypeError:
        return False
    except ValueError:  # no signature to read (a builtin): assume the current protocol
        return True
    return True


class CheckpointEvery(pl.Callback):
    """last.ckpt in `folder` every `every` optimizer steps, written atomically."""

    def __init__(self, folder: Path, every: int):
        self.folder, self.every = folder, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            save_checkpoint(trainer, self.folder)


class StepFigures(pl.Callback):
    """train/loss, train/lr and train/grad_norm every `every` optimizer steps, to each of `loggers` (rank 0).

    loss: the mean over the micro-batches of that optimizer step (the module's `last_loss` of each);
    lr: the first parameter group's, as that step used it; grad_norm: the L2 norm of every trainable
    gradient before clipping. The names share the prefix "train/", apart from the evaluations' figures
    (train_loss there is the mean since the last evaluation), so trackers group them and the store keys
    them apart. Once per step across a crash: `marker` (a JSON file beside the checkpoints) holds the last
    step logged, and a step done again after a resume from an older checkpoint is not logged twice.
    `offset` is added to the trainer's step: an online update's trainer starts at 0, the run's count of
    optimizer steps goes on from the updates before it.
    """

    PREFIX = "train/"

    def __init__(self, loggers: Sequence, every: int, marker: Path | None = None, offset: int = 0):
        self.loggers, self.every, self.marker, self.offset = list(loggers), every, marker, offset
        self.seen_step, self.logged_step = 0, -1
        self.losses: list[float] = []  # the micro-batches of the optimizer step under way
        self.lr, self.grad_norm = float("nan"), float("nan")

    def on_train_start(self, trainer, pl_module) -> None:
        self.seen_step = trainer.global_step
        if self.marker is not None and self.marker.is_file():
            self.logged_step = json.loads(self.marker.read_text())["step"]

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step > self.logged_step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # the step about to be taken; norms cost only when logged
        if not self.due(self.offset + trainer.global_step + 1):
            return
        self.lr = float(optimizer.param_groups[0]["lr"])
        norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in pl_module.parameters()
                 if p.requires_grad and p.grad is not None]
        self.grad_norm = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(pl_module.last_loss))
        step = trainer.global_step
        if step == self.seen_step:
            return  # a micro-batch that did not end an optimizer step
        self.seen_step, losses, self.losses = step, self.losses, []
        step += self.offset
        if not self.due(step) or not trainer.is_global_zero:
            return
        figures = {f"{self.PREFIX}loss": sum(losses) / len(losses), f"{self.PREFIX}lr": self.lr,
                   f"{self.PREFIX}grad_norm": self.grad_norm}
        for logger in self.loggers:
            logger.log_metrics(figures, step)
        self.logged_step = step
        if self.marker is not None:
            write_json(self.marker, {"step": step})
