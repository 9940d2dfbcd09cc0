"""The policy an RL update trains and the run around it: the settings every algorithm shares
(RLConfig), what an update takes and gives (UpdateInputs, UpdateResult), loading the policy, the
Lightning module and `fit`, and `finish`.

An update takes the current policy (a LoRA adapter on the base model), trains it on posts whose
reactions have matured, and returns the new adapter. Everything that must survive a crash lives
in `checkpoint_dir`:

    last.ckpt       Lightning checkpoint (adapter weights, optimizer, loop state, step metrics)
    adapter/        the updated policy (a plain PEFT adapter folder), written at the end
    result.json     written when the update has finished; running again returns it at once
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from crowdtune.training.adapter_module import AdapterModule
from crowdtune.training.callbacks import CheckpointEvery, ProgressReport, ProgressSink, StepFigures, StopFlag
from crowdtune.training.checkpoints import save_adapter, save_checkpoint, write_json
from crowdtune.training.devices import one_device
from crowdtune.training.generation import sample
from crowdtune.training.guards import CopyIndex
from crowdtune.training.loggers import log_figures
from crowdtune.training.models import add_lora, load_base_model, load_version
from crowdtune.training.rl.configs import RLConfig
from crowdtune.training.rl.feedback import OperatorFeedback
from crowdtune.training.sampling_policy import sampling_policy


@dataclass
class UpdateResult:
    """What one update produced.

    adapter_dir: local PEFT adapter folder of the updated policy (hand it to models.save_version)
    metrics: reward_mean, reward_std, kl, entropy, mean_length, copy_rate, loss,
        importance_weight_mean, clip_fraction, steps, and per algorithm more
        (reward_model_agreement for reward_model)
    stopped: should_stop fired (no result.json is written: running again continues)
    pause: the reward model disagrees with reality (or a guard asks to stop); the controller pauses and alerts
    pause_reason: why, in words, when pause is True
    alerts: guards that tripped, each {"guard": its name (kl, copy, diversity ...), "message": what and why};
        the update is recorded as usual and each becomes a dashboard alert
    """

    adapter_dir: Path
    metrics: dict[str, float]
    stopped: bool
    pause: bool = False
    pause_reason: str | None = None
    alerts: list[dict] = field(default_factory=list)


@dataclass
class UpdateInputs:
    """The arguments of run_update, passed on to an algorithm's `update`."""

    base_model: str
    policy_url: str | None
    batch: list[dict]
    history: list[dict]
    state_dir: Path
    checkpoint_dir: Path
    model_cache_dir: Path
    train_texts: list[str] = field(default_factory=list)
    loggers: Sequence[Logger] = ()  # Lightning loggers: the trainer's, and the update's figures at log_step
    log_step: int | None = None  # the step the update's figures are logged at; None = its optimizer steps
    step_loggers: Sequence[Logger] = ()  # where train/loss, train/lr, train/grad_norm go (callbacks.StepFigures)
    step_offset: int = 0  # the run's optimizer steps before this update: the step figures' first step follows it
    device: str = "auto"  # the one device the update trains on (the `device` setting, see training.devices)
    on_progress: ProgressSink | None = None
    should_stop: Callable[[], bool] | None = None
    seed: int = 0
    reward_model_url: str | None = None  # the face's fitted reward model (predictor.load_predictor), if any
    feedback: OperatorFeedback = field(default_factory=OperatorFeedback)  # review decisions (rl/feedback.py)


def load_policy(inputs: UpdateInputs, config: RLConfig):
    """(PeftModel with trainable adapter, tokenizer): the current version, or base + fresh LoRA."""
    if inputs.policy_url:
        return load_version(inputs.policy_url, base_model=inputs.base_model, cache_dir=inputs.model_cache_dir,
                            trainable=True)
    model, tokenizer = load_base_model(inputs.base_model, cache_dir=inputs.model_cache_dir)
    model = add_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                     target_modules=config.lora_targets)
    return model.eval(), tokenizer  # new LoRA dropout layers start in train mode


# --------------------------------------------------------------------------------------------
# The Lightning run


class PolicyModule(AdapterModule):
    """What the algorithms' modules share: a deterministic policy and step metrics kept in checkpoints
    (AdapterModule brings AdamW at a constant learning rate and adapter-only checkpoints).

    Subclasses implement `training_step(index, batch_idx)`, where `index` counts optimizer steps
    (the dataloader yields 0, 1, ...), and record figures with `record(...)`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, config: RLConfig):
        super().__init__(model, config)
        self.tokenizer = tokenizer
        self.policy = sampling_policy(config, tokenizer)  # what sampled the posts, to recompute their log-probs
        self.step_metrics: list[dict[str, float]] = []

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Lightning switches to train mode; dropout would make recomputed log-probabilities
        # differ from the recorded ones, so the policy always runs deterministically.
        self.model.eval()

    def record(self, loss: torch.Tensor, **figures: float | torch.Tensor) -> None:
        row = {"loss": float(loss.detach())}
        row.update({k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in figures.items()})
        self.step_metrics.append(row)
        self.last_loss = row["loss"]
        # logger=False: each update restarts at step 0, so per-step rows would pile onto the same steps;
        # loggers get the update's figures once, from finish
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=1)

    def mean_step_metrics(self) -> dict[str, float]:
        keys = {k for row in self.step_metrics for k in row}
        return {k: float(np.nanmean([row[k] for row in self.step_metrics if k in row])) for k in sorted(keys)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rl_step_metrics"] = self.step_metrics

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.step_metrics = list(checkpoint.get("rl_step_metrics", []))


class _Steps(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def fit(module: PolicyModule, steps: int, inputs: UpdateInputs) -> bool:
    """Run `steps` optimizer steps of `module` (resuming from checkpoint_dir/last.ckpt) on one device
    (inputs.device), with inputs.loggers as the trainer's loggers and the step figures (train/loss, train/lr,
    train/grad_norm every `log_every_n_steps`, at inputs.step_offset + the step) to inputs.step_loggers.

    Returns True when should_stop stopped it early.
    """
    config = module.config
    folder = inputs.checkpoint_dir
    callbacks: list[pl.Callback] = [CheckpointEvery(folder, config.checkpoint_every)]
    stop = StopFlag(inputs.should_stop) if inputs.should_stop is not None else None
    if stop:
        callbacks.append(stop)
    if inputs.on_progress is not None:
        callbacks.append(ProgressReport(inputs.on_progress, steps))
    if inputs.step_loggers and config.log_every_n_steps:
        callbacks.append(StepFigures(inputs.step_loggers, config.log_every_n_steps, folder / "logged_steps.json",
                                     offset=inputs.step_offset))
    trainer = pl.Trainer(
        **one_device(inputs.device, config.accelerator), precision=config.resolved_precision(),
        max_steps=steps, max_epochs=-1, gradient_clip_val=config.grad_clip,
        callbacks=callbacks, logger=list(inputs.loggers) or False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=folder,
    )
    last = folder / "last.ckpt"
    loader = torch.utils.data.DataLoader(_Steps(steps), batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if last.is_file() else None)
    save_checkpoint(trainer, folder)  # the stopped/finished state, so a rerun resumes exactly there
    return bool(stop and stop.fired)


# --------------------------------------------------------------------------------------------
# Finishing an update


def stored_result(checkpoint_dir: Path) -> UpdateResult | None:
    """The result of an update that already finished in this folder, else None."""
    path = checkpoint_dir / "result.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    return UpdateResult(**{**stored, "adapter_dir": Path(stored["adapter_dir"])})


def guard_figures(model, tokenizer, config: RLConfig, inputs: UpdateInputs, seed: int) -> dict[str, float]:
    """copy_rate and mean_length (tokens) of fresh samples of the policy (or of the batch's posts)."""
    if config.eval_samples:
        samples = sample(model, tokenizer, config.generation(num_samples=config.eval_samples,
                                                             batch_size=config.eval_samples, seed=seed))
        texts, lengths = [s.text for s in samples], [len(s.token_ids) for s in samples]
    else:
        texts, lengths = [p["text"] for p in inputs.batch], [len(p["token_ids"]) for p in inputs.batch]
    copy_rate = copy_index(inputs, config).copy_rate(texts) if inputs.train_texts and texts else 0.0
    return {"copy_rate": copy_rate, "mean_length": float(np.mean(lengths)) if lengths else 0.0}


def copy_index(inputs: UpdateInputs, config: RLConfig) -> CopyIndex:
    """The copy guard over the face's imported posts; their embeddings come from the shared cache, so
    only the first user of a post (an offline run, an update or a publish job) pays for embedding it."""
    return CopyIndex(inputs.train_texts, min_ngram=config.copy_min_ngram,
                     embedding_threshold=config.copy_embedding_threshold)


def finish(model, tokenizer, config: RLConfig, inputs: UpdateInputs, metrics: dict[str, float], *,
           stopped: bool, pause: bool = False, pause_reason: str | None = None,
           alerts: list[dict] | None = None) -> UpdateResult:
    """Save the adapter, add the guard figures (unless the algorithm measured copy_rate and mean_length
    itself), log the figures to inputs.loggers at inputs.log_step, write result.json (unless stopped)."""
    folder = inputs.checkpoint_dir
    adapter_dir = folder / "adapter"
    save_adapter(model, adapter_dir, tokenizer)
    if not {"copy_rate", "mean_length"} <= metrics.keys():
        metrics = {**metrics, **guard_figures(model, tokenizer, config, inputs, inputs.seed)}
    metrics = {k: float(v) for k, v in metrics.items()}
    result = UpdateResult(adapter_dir, metrics, stopped, pause, pause_reason, list(alerts or []))
    step = inputs.log_step if inputs.log_step is not None else int(metrics.get("steps", 0))
    log_figures(inputs.loggers, step, metrics)
    if not stopped:
        write_json(folder / "result.json", {**asdict(result), "adapter_dir": str(adapter_dir)})
    return result


def reward_figures(rewards: list[float]) -> dict[str, float]:
    return {"reward_mean": float(np.mean(rewards)) if rewards else math.nan,
            "reward_std": float(np.std(rewards)) if rewards else math.nan}

