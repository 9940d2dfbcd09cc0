"""Supervised fine-tuning (LoRA) of a base model on a channel's posts.

`train_sft(config, posts, base_model, ...)` is the whole thing: it loads the base model, wraps it
with LoRA, packs the posts (crowdtune.training.data), runs a Lightning Trainer and reports
through Lightning loggers and plain callbacks, so the RQ job that calls it stays thin:

    loggers                                    Lightning Loggers (crowdtune.training.loggers: the store,
                                               TensorBoard, CSV ...): log_metrics(figures, step) at every
                                               evaluation, after its checkpoint is saved, and train/loss,
                                               train/lr, train/grad_norm every `log_every_n_steps` steps
    on_metrics(step, {name: value})            the evaluations' figures, as a plain callable (a SinkLogger)
    on_progress(step, total, loss, eta_seconds, phase)
                                               every `progress_every` optimizer steps and in every
                                               phase of an evaluation ("evaluating: sampling 8 posts")
    should_stop() -> bool                      polled every batch, validation batch and sampled token;
                                               True stops gracefully (an evaluation under way is dropped)

SFTConfig lives in crowdtune.training.configs, free of torch, for the dashboard's form.
Some defaults depend on where the run trains (None = auto, see SFTConfig.resolved): on a CPU a
first version must come in minutes, on a GPU the same minutes buy more steps.

Everything that must survive a crash lives in `checkpoint_dir`:
    last.ckpt            Lightning checkpoint (adapter weights, optimizer, scheduler, loop, monitor state)
    adapter-step<N>/     the best adapter so far (a plain PEFT adapter folder)
    emitted.json         the last step whose metrics (and sampled posts) reached the loggers
    logged_steps.json    the last step whose train/ figures reached the loggers (callbacks.StepFigures)
    result.json          written when the run has finished (completed or early-stopped)
Running again with the same folder resumes from last.ckpt; step numbers continue and no
(metric, step) pair is emitted twice. A finished run returns its stored result at once.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from crowdtune.errors import CrowdtuneError
from crowdtune.training.adapter_module import AdapterModule
from crowdtune.training.callbacks import MetricsSink, ProgressReport, ProgressSink, StepFigures, StopFlag
from crowdtune.training.checkpoints import save_adapter, save_checkpoint, write_json
from crowdtune.training.configs import SFTConfig
from crowdtune.training.data import PostsDataModule
from crowdtune.training.devices import asks_for_several, one_device
from crowdtune.training.generation import GenerationConfig, sample
from crowdtune.training.guards import CopyIndex, StyleProbe, guard_metrics
from crowdtune.training.loggers import SinkLogger, log_samples
from crowdtune.training.models import (
    DEFAULT_BASE_MODEL,
    DEFAULT_MODEL_CACHE,
    add_lora,
    load_base_model,
    store_frozen_layers_in,
)

# Lightning precision -> the dtype its autocast computes matmuls in
MIXED_PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass
class SFTResult:
    """What a run produced.

    adapter_dir: local PEFT adapter folder of the best evaluation (or of the last step when the
        run stopped before any evaluation); hand it to models.save_version
    best_step / best_val_loss: the evaluation it comes from (None if there was none)
    metrics: one dict per evaluation, {"step": ..., name: value}, over all attempts of the run
    stopped_reason: "completed" | "early_stopped" | "stopped"
    steps: optimizer steps done in total
    data: sizes and padding of the packed data (PostsDataModule.stats)
    tokens_per_second: real (non-padding) training tokens per second in this attempt, evaluations
        left out (what a cost estimate multiplies steps by)
    eval_seconds: mean seconds of an evaluation in this attempt (0.0 if none finished)
    device: the device this attempt trained on ("cpu", "cuda:1") and strategy: Lightning's strategy class
    """

    adapter_dir: Path
    best_step: int | None
    best_val_loss: float | None
    metrics: list[dict]
    stopped_reason: str
    steps: int
    base_model: str
    data: dict = field(default_factory=dict)
    tokens_per_second: float = 0.0
    eval_seconds: float = 0.0
    device: str = ""
    strategy: str = ""


def lr_lambda(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak learning rate: linear warm-up, then cosine decay to min_lr_ratio."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def causal_lm_loss(model, batch: dict[str, torch.Tensor], chunk_tokens: int = 512) -> torch.Tensor:
    """Mean next-token cross-entropy over labels != -100, as `model(**batch).loss`, with less memory.

    The full [batch, seq, vocab] logits (200 MB for 8 x 128 tokens of a 49k vocabulary, held
    three times over by softmax and backward) are never built: the output head and the loss run
    on `chunk_tokens` rows at a time under activation checkpointing, so backward recomputes each
    chunk's logits instead of keeping them. A batch that fits in one chunk skips the
    checkpointing: its logits are small, and recomputing the head would cost ~10% of a step.
    Assumes the head is the plain output embedding (true for GPT-2/Llama-style models; models
    with logit soft-capping should not use it).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    head = base.get_output_embeddings()
    hidden = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    labels = batch["labels"][:, 1:].reshape(-1)

    def chunk_loss(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(head(h).float(), y, ignore_index=-100, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        h, y = hidden[start : start + chunk_tokens], labels[start : start + chunk_tokens]
        if torch.is_grad_enabled() and hidden.shape[0] > chunk_tokens:
            total = total + torch.utils.checkpoint.checkpoint(chunk_loss, h, y, use_reentrant=False)
        else:
            total = total + chunk_loss(h, y)
    return total / (labels != -100).sum().clamp(min=1)


class SFTModule(AdapterModule):
    """Causal-LM loss on packed blocks; only the LoRA weights train (and are checkpointed)."""

    def __init__(self, model: torch.nn.Module, config: SFTConfig, total_steps: int):
        super().__init__(model, config)
        self.model.train()  # from_pretrained leaves eval mode, which would disable LoRA dropout
        self.total_steps = total_steps
        # running sums since the last evaluation; per process, reduced across devices when read
        self.train_loss_sum = 0.0
        self.train_loss_count = 0
        self.real_tokens = 0
        self.stopping: Callable[[], bool] = lambda: False  # set by train_sft to the stop flag

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        # logger=False: loggers get the evaluations' rows (Evaluation.emit), as the store always has
        self.log("train_loss", loss, on_step=True, prog_bar=True, logger=False, batch_size=batch["input_ids"].shape[0])
        self.last_loss = loss.item()
        self.train_loss_sum += self.last_loss
        self.train_loss_count += 1
        self.real_tokens += int(batch["attention_mask"].sum())
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        if self.stopping():
            return None  # Lightning cannot leave a validation loop early: skip the rest of its batches
        # weight each batch by its real tokens so the last, padded block does not count double
        tokens = batch["attention_mask"].sum()
        loss = self.loss(batch)
        self.log("val_loss", loss, on_epoch=True, sync_dist=True, logger=False, batch_size=int(tokens))
        return loss

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.config.chunked_loss:
            return causal_lm_loss(self.model, batch)
        return self.model(**batch).loss

    def take_train_loss(self) -> float:
        """Mean training loss since the last call, averaged over devices."""
        mean = self.train_loss_sum / max(1, self.train_loss_count)
        self.train_loss_sum, self.train_loss_count = 0.0, 0
        reduced = self.trainer.strategy.reduce(torch.tensor(mean, device=self.device), reduce_op="mean")
        return float(reduced)

    def configure_optimizers(self):
        optimizer = self.adamw()
        schedule = lr_lambda(self.config.warmup_steps, self.total_steps, self.config.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class Evaluation(pl.Callback):
    """After each validation: guard metrics, early stopping, best adapter, checkpoint, emission to the
    trainer's loggers.

    Order matters for crash safety: the best adapter and last.ckpt are written before the
    metrics are emitted, and emitted.json records what was emitted, so a resumed run neither
    repeats nor loses a (metric, step) pair.
    """

    def __init__(self, config: SFTConfig, checkpoint_dir: Path, tokenizer, copy_index: CopyIndex,
                 style: StyleProbe | None,
                 phase: Callable[[str], None] = lambda text: None, stopping: Callable[[], bool] = lambda: False):
        self.config = config
        self.phase, self.stopping = phase, stopping
        self.dir = checkpoint_dir
        self.tokenizer = tokenizer
        self.copy_index = copy_index
        self.style = style
        # state saved in checkpoints
        self.best_val_loss: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.early_stopped = False
        self.history: list[dict] = []
        self.samples: dict[int, list[str]] = {}  # step -> the posts sampled at that evaluation

    def state_dict(self) -> dict:
        return {"best_val_loss": self.best_val_loss, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "early_stopped": self.early_stopped, "history": self.history, "samples": self.samples}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update({"samples": {}, **state})  # a checkpoint from before samples were kept has none

    @property
    def emitted_step(self) -> int:
        path = self.dir / "emitted.json"
        return json.loads(path.read_text())["step"] if path.is_file() else -1

    def emit(self, trainer) -> None:
        """Log every evaluation not yet emitted to each of the trainer's loggers, oldest first (rank 0 only)."""
        if not trainer.is_global_zero:
            return
        done = self.emitted_step
        for row in self.history:
            if row["step"] > done:
                figures = {k: v for k, v in row.items() if k != "step" and v is not None}
                for logger in trainer.loggers:
                    logger.log_metrics(figures, row["step"])
                if self.samples.get(row["step"]):
                    log_samples(trainer.loggers, row["step"], self.samples[row["step"]])
                write_json(self.dir / "emitted.json", {"step": row["step"]})

    def on_train_start(self, trainer, pl_module) -> None:
        self.emit(trainer)  # evaluations checkpointed by a run that died before emitting them

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.dropped(trainer):
            return
        cfg, step = self.config, trainer.global_step
        val_loss = float(trainer.callback_metrics["val_loss"])
        train_loss = pl_module.take_train_loss()
        metrics = {
            "val_loss": val_loss,
            "val_ppl": math.exp(min(val_loss, 50.0)),
            "train_loss": train_loss,
            "gap": val_loss - train_loss,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        if cfg.eval_samples and trainer.is_global_zero:
            generation = GenerationConfig(num_samples=cfg.eval_samples, batch_size=cfg.eval_samples,
                                          max_new_tokens=cfg.eval_max_new_tokens, temperature=cfg.eval_temperature,
                                          top_p=cfg.eval_top_p, seed=cfg.seed + step)
            self.phase(f"evaluating: sampling {cfg.eval_samples} posts")
            with trainer.precision_plugin.forward_context():  # the frozen layers may be bf16
                texts = [s.text for s in sample(pl_module.model, self.tokenizer, generation,
                                                interrupt=self.sampling_progress(cfg))]
            if self.dropped(trainer):
                return
            self.samples[step] = texts
            self.phase(f"evaluating: copy and style guards on {len(texts)} posts")
            metrics.update(guard_metrics(texts, self.copy_index, self.style))
            if self.dropped(trainer):
                return

        improved = self.best_val_loss is None or val_loss < self.best_val_loss - cfg.early_stopping_min_delta
        if improved:
            self.best_val_loss, self.best_step, self.bad_evals = val_loss, step, 0
            if trainer.is_global_zero:
                save_adapter(pl_module.model, self.dir / f"adapter-step{step}")
        else:
            self.bad_evals += 1
            if cfg.early_stopping_patience and self.bad_evals >= cfg.early_stopping_patience:
                self.early_stopped = True
                trainer.should_stop = True
        metrics["best_val_loss"] = self.best_val_loss
        self.history.append({"step": step, **metrics})
        self.phase("evaluating: saving the checkpoint")
        save_checkpoint(trainer, self.dir)
        if trainer.is_global_zero:
            _prune_adapters(self.dir, keep=self.best_step)
        self.emit(trainer)

    def dropped(self, trainer) -> bool:
        """A stop came during this evaluation: drop it (its figures are partial) and end the run."""
        if self.stopping():
            trainer.should_stop = True
            return True
        return False

    def sampling_progress(self, cfg: SFTConfig) -> Callable[[int], bool]:
        """The sampler's interrupt: a progress report every few seconds, and True once a stop is asked."""
        last = time.monotonic()

        def interrupt(tokens: int) -> bool:
            nonlocal last
            if time.monotonic() - last > 5.0:
                last = time.monotonic()
                self.phase(f"evaluating: sampling {cfg.eval_samples} posts, "
                           f"token {tokens} of {cfg.eval_max_new_tokens}")
            return self.stopping()

        return interrupt


def _no_phase(text: str) -> None:
    return None


def _prune_adapters(folder: Path, keep: int | None) -> None:
    for path in folder.glob("adapter-step*"):
        if path.name != f"adapter-step{keep}":
            shutil.rmtree(path, ignore_errors=True)


def train_sft(
    config: SFTConfig,
    posts: list[dict],
    base_model: str = DEFAULT_BASE_MODEL,
    *,
    model_cache_dir: str | Path = DEFAULT_MODEL_CACHE,
    loggers: Sequence[Logger] = (),
    on_metrics: MetricsSink | None = None,
    on_progress: ProgressSink | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    device: str | None = None,
) -> SFTResult:
    """Fine-tune `base_model` with LoRA on `posts` (dicts with text and created_at).

    Loggers and sinks are described in the module docstring. `checkpoint_dir` (a local folder; a fresh
    temp folder if None) holds checkpoints and the best adapter; with `resume`, a run killed earlier
    continues from its last checkpoint. `device` (the `device` setting, as RQ workers pass it) trains on
    exactly that one device; None leaves `config.accelerator` and `config.devices` to Lightning (a script
    under torchrun). Raises ModelError / DatasetError / CrowdtuneError for unusable settings.
    Returns an SFTResult whose adapter_dir is the best adapter.
    """
    if device is not None:
        if asks_for_several(config.devices):
            raise CrowdtuneError(
                f"devices={config.devices!r} asks for several devices, but a worker trains on exactly one.",
                "Leave devices at 1 (the `device` setting picks which), or train on several GPUs outside RQ "
                "with torchrun (README, Devices).")
        placement = one_device(device, config.accelerator)
        config = config.model_copy(update={"accelerator": placement["accelerator"]})
    else:
        placement = {"accelerator": config.accelerator, "devices": config.devices}
    config = config.resolved()
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else Path(tempfile.mkdtemp(prefix="crowdtune-sft-"))
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if resume and (checkpoint_dir / "result.json").is_file():
        stored = json.loads((checkpoint_dir / "result.json").read_text())
        return SFTResult(**{**stored, "adapter_dir": Path(stored["adapter_dir"])})
    if not resume:
        for path in checkpoint_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()

    # 1) progress and stop reach every phase from here on (ProgressReport reports before training, too)
    stop_flag = StopFlag(should_stop) if should_stop is not None else None
    stopping = stop_flag.requested if stop_flag else (lambda: False)
    report = ProgressReport(on_progress, 0, 1) if on_progress is not None else None
    phase: Callable[[str], None] = report.phase if report is not None else _no_phase

    # 2) model, data, LoRA
    pl.seed_everything(config.seed, workers=True, verbose=False)
    # one call that cannot report from inside (the first load de-quantizes a GGUF file: ~40 s on 2 busy cores)
    with report.keep_alive("loading the base model") if report is not None else contextlib.nullcontext():
        model, tokenizer = load_base_model(base_model, cache_dir=model_cache_dir)
    phase(f"packing {len(posts):,} posts into blocks of {config.block_size} tokens")
    data = PostsDataModule(posts, tokenizer, block_size=config.block_size, batch_size=config.batch_size,
                           val_fraction=config.val_fraction, lowercase=config.lowercase, num_workers=config.num_workers)
    model = add_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                     target_modules=config.lora_targets)
    low_precision = MIXED_PRECISION_DTYPES.get(config.resolved_precision())
    if low_precision is not None:
        store_frozen_layers_in(model, low_precision)

    steps_per_epoch = math.ceil(len(data.train_blocks.input_ids) / config.batch_size / config.accumulate_grad_batches)
    total = (config.max_steps if config.max_epochs is None
             else min(config.max_steps, config.max_epochs * steps_per_epoch))
    module = SFTModule(model, config, total)
    module.stopping = stopping

    # 3) the guards: n-gram index now, embeddings of candidates only, at each evaluation
    phase(f"copy guard: indexing {len(data.train_posts):,} training posts")
    train_texts = [p.text for p in data.train_posts]
    # The embedding test compares a sample only with posts sharing a 4-word run with it (CopyIndex's
    # candidates): embedding all ~18,700 posts at the first evaluation was a ten-minute stall.
    copy_index = CopyIndex(train_texts, min_ngram=config.copy_min_ngram,
                           embedding_threshold=config.copy_embedding_threshold)
    style = None
    if config.style_metrics and config.eval_samples:
        # a fixed, seeded subset keeps the probe cheap on large channels
        generator = torch.Generator().manual_seed(config.seed)
        ref = [train_texts[i] for i in torch.randperm(len(train_texts), generator=generator)[:256].tolist()]
        heldout = [p.text for p in data.val_posts][-256:]
        phase(f"style probe: embedding {len(heldout) + len(ref)} posts")
        style = StyleProbe(heldout, ref)

    # 4) the trainer; ProgressReport after Evaluation, so that an evaluation's time includes its guards
    evaluation = Evaluation(config, checkpoint_dir, tokenizer, copy_index, style, phase, stopping)
    callbacks: list[pl.Callback] = [evaluation]
    if config.log_every_n_steps and loggers:  # the step figures go to the loggers; on_metrics hears evaluations
        callbacks.append(StepFigures(loggers, config.log_every_n_steps, checkpoint_dir / "logged_steps.json"))
    if report is not None:
        # until one is timed, an evaluation counts as its validation batches (a forward pass is ~1/3 of
        # a step) plus sampling (~1 step per 8 new tokens, a guess from 2 CPU cores)
        val_batches = config.max_val_batches or 8
        guess = val_batches / 3 + (config.eval_max_new_tokens / 8 if config.eval_samples else 0)
        report.total, report.every = total, config.progress_every
        report.eval_every, report.eval_guess_steps = config.eval_every, guess
        callbacks.append(report)
    if stop_flag:
        callbacks.append(stop_flag)

    loggers = [*loggers, *([SinkLogger(on_metrics)] if on_metrics is not None else [])]
    trainer = pl.Trainer(
        **placement,
        precision=config.resolved_precision(),
        max_steps=config.max_steps,
        max_epochs=config.max_epochs if config.max_epochs is not None else -1,
        accumulate_grad_batches=config.accumulate_grad_batches,
        gradient_clip_val=config.grad_clip,
        # validation counts micro-batches; across epochs, not per epoch
        val_check_interval=config.eval_every * config.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=config.max_val_batches,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=False,  # Evaluation writes last.ckpt and the best adapter itself
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=checkpoint_dir,
    )
    last = checkpoint_dir / "last.ckpt"
    started = time.monotonic()
    for logger in loggers:
        logger.log_hyperparams({"base_model": base_model, **config.model_dump(mode="json")})
    phase("training: the first step")  # with Lightning's set-up, slower than the steps after it
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume and last.is_file() else None)
    elapsed = time.monotonic() - started
    timed_evals = report.eval_seconds if report is not None else []
    eval_seconds = sum(timed_evals) / len(timed_evals) if timed_evals else 0.0
    train_seconds = elapsed - sum(timed_evals)

    if stop_flag and stop_flag.fired:
        reason = "stopped"
    elif evaluation.early_stopped:
        reason = "early_stopped"
    else:
        reason = "completed"
    # a checkpoint at the very end, so that a stopped run resumes exactly where it stopped
    phase("saving the checkpoint")
    save_checkpoint(trainer, checkpoint_dir)
    if evaluation.best_step is not None:
        adapter_dir = checkpoint_dir / f"adapter-step{evaluation.best_step}"
    else:
        adapter_dir = checkpoint_dir / f"adapter-step{trainer.global_step}"
        if trainer.is_global_zero:
            save_adapter(model, adapter_dir)
    result = SFTResult(
        adapter_dir=adapter_dir, best_step=evaluation.best_step, best_val_loss=evaluation.best_val_loss,
        metrics=list(evaluation.history), stopped_reason=reason, steps=trainer.global_step, base_model=base_model,
        data=data.stats(), tokens_per_second=module.real_tokens / train_seconds if train_seconds > 0 else 0.0,
        eval_seconds=eval_seconds, device=str(trainer.strategy.root_device), strategy=type(trainer.strategy).__name__,
    )
    if reason != "stopped" and trainer.is_global_zero:
        write_json(checkpoint_dir / "result.json", {**asdict(result), "adapter_dir": str(adapter_dir)})
    return result
