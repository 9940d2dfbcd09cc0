"""What every RL update shares: its settings, the policy, log-probabilities of posts under the
sampling policy, and the Lightning run with its checkpoint.

An update takes the current policy (a LoRA adapter on the base model), trains it on posts whose
reactions have matured, and returns the new adapter. Everything that must survive a crash lives
in `checkpoint_dir`:

    last.ckpt       Lightning checkpoint (adapter weights, optimizer, loop state, step metrics)
    adapter/        the updated policy (a plain PEFT adapter folder), written at the end
    result.json     written when the update has finished; running again returns it at once

Log-probabilities are those of the *sampling policy* (temperature, top-k, top-p, repetition
penalty applied as in crowdtune.training.generation), so they compare with the logprob recorded
when a post was sampled: with an unchanged policy the importance weight is 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pydantic import BaseModel, ConfigDict, Field

from crowdtune.training.generation import GenerationConfig, sample
from crowdtune.training.guards import CopyIndex
from crowdtune.training.models import add_lora, load_base_model, load_version
from crowdtune.training.sft import save_checkpoint

COPY_EMBEDDINGS_FILE = "copy_guard_embeddings.npz"

MetricsSink = Callable[[int, dict[str, float]], None]
ProgressSink = Callable[[int, int, float, float], None]


class RLConfig(BaseModel):
    """Settings every algorithm has; each algorithm's config adds its own (and may change a default)."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-4, gt=0.0, description="AdamW, constant")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW")
    grad_clip: float | None = Field(1.0, gt=0.0, description="max gradient norm; None = off")
    # LoRA: only used when there is no current policy (policy_url None)
    lora_rank: int = Field(8, ge=1, description="LoRA rank of a fresh policy")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha of a fresh policy")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout of a fresh policy")
    lora_targets: str | list[str] = Field("all-linear", description="LoRA modules of a fresh policy")
    # The sampling policy: it must match the GenerationConfig the posts were sampled with (its defaults),
    # so that recorded and recomputed log-probabilities agree.
    temperature: float = Field(0.9, gt=0.0, description="sampling policy: temperature")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="sampling policy: nucleus sampling; 1.0 = off")
    top_k: int = Field(0, ge=0, description="sampling policy: top-k; 0 = off")
    repetition_penalty: float = Field(1.0, gt=0.0, description="sampling policy: repetition penalty; 1.0 = off")
    max_new_tokens: int = Field(40, ge=1, description="tokens per post sampled inside the update (samples, evaluation)")
    eval_samples: int = Field(8, ge=0, description="fresh samples of the updated policy for copy_rate and mean_length; "
                                                   "0 = measure the batch's posts instead")
    copy_min_ngram: int = Field(12, ge=2, description="words in common that make a sample a copy (guards.CopyIndex)")
    copy_embedding_threshold: float | None = Field(
        0.95, gt=0.0, le=1.0, description="cosine that makes a sample a near-copy; None = n-grams only")
    precision: str = Field("auto", description='"auto": "bf16-mixed" on GPUs that support it, else "32-true"')
    accelerator: str = Field("auto", description="Lightning accelerator (cpu, gpu, ...)")
    checkpoint_every: int = Field(1, ge=1, description="optimizer steps between checkpoints (resume after a kill)")

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "32-true"

    def generation(self, **overrides) -> GenerationConfig:
        """The GenerationConfig of this sampling policy (no filters)."""
        values = dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                      repetition_penalty=self.repetition_penalty, max_new_tokens=self.max_new_tokens)
        return GenerationConfig(**{**values, **overrides})


@dataclass
class UpdateResult:
    """What one update produced.

    adapter_dir: local PEFT adapter folder of the updated policy (hand it to models.save_version)
    metrics: reward_mean, reward_std, kl, entropy, mean_length, copy_rate, loss,
        importance_weight_mean, clip_fraction, steps, and per algorithm more
        (reward_model_agreement for reward_model)
    stopped: should_stop fired (no result.json is written: running again continues)
    pause: the reward model disagrees with reality; the controller pauses and alerts
    pause_reason: why, in words, when pause is True
    """

    adapter_dir: Path
    metrics: dict[str, float]
    stopped: bool
    pause: bool = False
    pause_reason: str | None = None


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
    on_metrics: MetricsSink | None = None
    on_progress: ProgressSink | None = None
    should_stop: Callable[[], bool] | None = None
    seed: int = 0


# --------------------------------------------------------------------------------------------
# The policy and log-probabilities


def load_policy(inputs: UpdateInputs, config: RLConfig):
    """(PeftModel with trainable adapter, tokenizer): the current version, or base + fresh LoRA."""
    if inputs.policy_url:
        return load_version(inputs.policy_url, base_model=inputs.base_model, cache_dir=inputs.model_cache_dir,
                            trainable=True)
    model, tokenizer = load_base_model(inputs.base_model, cache_dir=inputs.model_cache_dir)
    model = add_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                     target_modules=config.lora_targets)
    return model.eval(), tokenizer  # new LoRA dropout layers start in train mode


@dataclass
class Rollouts:
    """Posts as one right-padded batch: `EOS prompt completion PAD...`.

    input_ids, attention_mask: [B, L]; completion_mask: [B, L], True on the post's own tokens
    (the ones whose log-probability counts); n_tokens: [B] completion tokens per post.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    n_tokens: torch.Tensor

    def to(self, device) -> Rollouts:
        return Rollouts(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.completion_mask,
                                                  self.n_tokens)))


def encode_rollouts(tokenizer, prompts: list[str], completions: list[list[int]]) -> Rollouts:
    """Lay out (prompt, sampled token ids) pairs exactly as generation.sample fed them to the model."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for prompt, tokens in zip(prompts, completions):
        context = [eos] + (tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
        rows.append((context, list(tokens)))
    width = max(len(c) + len(t) for c, t in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (context, tokens) in enumerate(rows):
        n = len(context) + len(tokens)
        ids[i, :n] = torch.tensor(context + tokens)
        mask[i, :n] = 1
        completion[i, len(context):n] = True
    return Rollouts(ids, mask, completion, completion.sum(1))


def _sampling_log_softmax(logits: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None,
                          config: RLConfig) -> torch.Tensor:
    """Log-probabilities of the sampling policy over [N, V] logits (as generation._policy_logits).

    The sampled token is always kept in the top-k/top-p set: float noise between the cached
    sampling pass and this full pass must not turn a token that was sampled into -inf.
    """
    if seen is not None and config.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / config.repetition_penalty, logits * config.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    logits = logits / config.temperature
    with torch.no_grad():
        drop = torch.zeros_like(logits, dtype=torch.bool)
        if config.top_k > 0:
            kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            drop |= logits < kth
        if config.top_p < 1.0:
            sorted_logits, order = torch.sort(logits.masked_fill(drop, float("-inf")), descending=True, dim=-1)
            probs = sorted_logits.softmax(-1)
            drop_sorted = (probs.cumsum(-1) - probs) >= config.top_p
            drop |= drop_sorted.scatter(-1, order, drop_sorted)
        drop[torch.arange(len(targets), device=logits.device), targets] = False
    return logits.masked_fill(drop, float("-inf")).log_softmax(-1)


@dataclass
class SequenceStats:
    """Per post: logprob [B] (sum under the sampling policy, differentiable), n_tokens [B];
    per token, averaged over all tokens: entropy and kl (to the reference, differentiable)."""

    logprob: torch.Tensor
    n_tokens: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor


def _completion_logits(model, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [N, V] that predicted each completion token, the tokens [N] and their rows [N].

    Runs the model body once and the output head only on completion positions (the full
    [B, L, V] logits of a 49k vocabulary would dominate memory).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(base, base.base_model_prefix)
    head = base.get_output_embeddings()
    hidden = body(input_ids=rollouts.input_ids, attention_mask=rollouts.attention_mask).last_hidden_state
    predicts = rollouts.completion_mask[:, 1:]  # position t predicts token t + 1
    h = hidden[:, :-1][predicts]
    targets = rollouts.input_ids[:, 1:][predicts]
    rows = torch.arange(len(rollouts.input_ids), device=hidden.device)[:, None].expand_as(predicts)[predicts]
    return head(h).float(), targets, rows


def _seen_tokens(rollouts: Rollouts, vocab: int, eos: int) -> torch.Tensor:
    """[N, V]: tokens already in the context of each completion token (repetition penalty)."""
    seen_rows = []
    for ids, mask, completion in zip(rollouts.input_ids, rollouts.attention_mask, rollouts.completion_mask):
        seen = torch.zeros(vocab, dtype=torch.bool)
        start = int(completion.float().argmax()) if completion.any() else int(mask.sum())
        seen[ids[:start]] = True
        for t in range(start, int(mask.sum())):
            row = seen.clone()
            row[eos] = False
            seen_rows.append(row)
            seen[ids[t]] = True
    return torch.stack(seen_rows).to(rollouts.input_ids.device)


def sequence_stats(model, rollouts: Rollouts, config: RLConfig, *, eos: int, reference: bool) -> SequenceStats:
    """Log-probabilities of the posts under the current policy; with `reference`, also the
    per-token KL(policy || reference), the reference being the base with the adapter turned off."""
    logits, targets, rows = _completion_logits(model, rollouts)
    seen = _seen_tokens(rollouts, logits.shape[-1], eos) if config.repetition_penalty != 1.0 else None
    token_logprob = _sampling_log_softmax(logits, targets, seen, config).gather(1, targets[:, None]).squeeze(1)
    batch = len(rollouts.input_ids)
    logprob = torch.zeros(batch, device=logits.device).index_add(0, rows, token_logprob)
    log_p = logits.log_softmax(-1)
    p = log_p.exp()
    entropy = -(p * log_p).sum(-1).mean().detach()
    kl = torch.zeros((), device=logits.device)
    if reference:
        with torch.no_grad(), model.disable_adapter():
            ref_logits, _, _ = _completion_logits(model, rollouts)
        kl = (p * (log_p - ref_logits.log_softmax(-1))).sum(-1).mean()
    return SequenceStats(logprob, rollouts.n_tokens.to(logits.device), entropy, kl)


def importance_weights(logprob: torch.Tensor, recorded: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Sequence-level importance weights, length-normalised (as GSPO): exp((log pi - log mu) / n).

    Normalising by length keeps a 40-token post's weight in the same range as a 5-token one's.
    """
    return torch.exp((logprob - recorded) / n_tokens.clamp(min=1))


# --------------------------------------------------------------------------------------------
# The Lightning run


class PolicyModule(pl.LightningModule):
    """What the algorithms' modules share: the optimizer, adapter-only checkpoints, step metrics.

    Subclasses implement `training_step(index, batch_idx)`, where `index` counts optimizer steps
    (the dataloader yields 0, 1, ...), and record figures with `record(...)`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, config: RLConfig):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.strict_loading = False  # checkpoints carry only the adapter: the base model is reloaded
        self.step_metrics: list[dict[str, float]] = []
        self.last_loss = float("nan")

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Lightning switches to train mode; dropout would make recomputed log-probabilities
        # differ from the recorded ones, so the policy always runs deterministically.
        self.model.eval()

    def record(self, loss: torch.Tensor, **figures: float | torch.Tensor) -> None:
        row = {"loss": float(loss.detach())}
        row.update({k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in figures.items()})
        self.step_metrics.append(row)
        self.last_loss = row["loss"]
        self.log("loss", loss.detach(), prog_bar=True, batch_size=1)

    def mean_step_metrics(self) -> dict[str, float]:
        keys = {k for row in self.step_metrics for k in row}
        return {k: float(np.nanmean([row[k] for row in self.step_metrics if k in row])) for k in sorted(keys)}

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
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


class _Checkpoints(pl.Callback):
    """last.ckpt every `every` optimizer steps, written atomically."""

    def __init__(self, folder: Path, every: int):
        self.folder, self.every = folder, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            save_checkpoint(trainer, self.folder)


class _StopFlag(pl.Callback):
    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop, self.fired = should_stop, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.should_stop():
            self.fired = True
            trainer.should_stop = True


class _Progress(pl.Callback):
    def __init__(self, on_progress: ProgressSink, total: int):
        self.on_progress, self.total, self.started, self.start_step = on_progress, total, 0.0, 0

    def on_train_start(self, trainer, pl_module) -> None:
        import time

        self.started, self.start_step = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        step = trainer.global_step
        per_step = (time.monotonic() - self.started) / max(1, step - self.start_step)
        self.on_progress(step, self.total, pl_module.last_loss, per_step * max(0, self.total - step))


def fit(module: PolicyModule, steps: int, inputs: UpdateInputs) -> bool:
    """Run `steps` optimizer steps of `module` (resuming from checkpoint_dir/last.ckpt).

    Returns True when should_stop stopped it early.
    """
    config = module.config
    folder = inputs.checkpoint_dir
    callbacks: list[pl.Callback] = [_Checkpoints(folder, config.checkpoint_every)]
    stop = _StopFlag(inputs.should_stop) if inputs.should_stop is not None else None
    if stop:
        callbacks.append(stop)
    if inputs.on_progress is not None:
        callbacks.append(_Progress(inputs.on_progress, steps))
    trainer = pl.Trainer(
        accelerator=config.accelerator, devices=1, precision=config.resolved_precision(),
        max_steps=steps, max_epochs=-1, gradient_clip_val=config.grad_clip,
        callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=folder,
    )
    last = folder / "last.ckpt"
    loader = torch.utils.data.DataLoader(_Steps(steps), batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if last.is_file() else None)
    save_checkpoint(trainer, folder)  # the stopped/finished state, so a rerun resumes exactly there
    return bool(stop and stop.fired)


# --------------------------------------------------------------------------------------------
# Starting and finishing an update


class EmbeddingCache:
    """MiniLM embeddings of texts, kept in state_dir so each post is embedded once per face."""

    def __init__(self, path):
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}
        self.dirty = False
        if path is not None and path.is_file():
            with np.load(path) as stored:
                self.vectors = dict(zip(stored["keys"].tolist(), stored["vectors"]))

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def embed(self, texts: list[str], *, keep: bool = True) -> np.ndarray:
        from crowdtune.embeddings import EMBEDDING_DIM, embed

        missing = sorted({t for t in texts if self.key(t) not in self.vectors})
        fresh = dict(zip(missing, embed(missing))) if missing else {}
        if keep and fresh:
            self.vectors.update({self.key(t): v for t, v in fresh.items()})
            self.dirty = True
        rows = [fresh[t] if t in fresh else self.vectors[self.key(t)] for t in texts]
        return np.stack(rows) if rows else np.zeros((0, EMBEDDING_DIM), dtype=np.float32)

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, keys=np.asarray(list(self.vectors)), vectors=np.stack(list(self.vectors.values())))
        tmp.replace(self.path)
        self.dirty = False


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
    """The copy guard over the face's imported posts; their embeddings are kept in state_dir, so
    only the first update of a face pays for embedding them."""
    embedder = None
    if config.copy_embedding_threshold is not None:
        cache = EmbeddingCache(inputs.state_dir / COPY_EMBEDDINGS_FILE)
        cache.embed(inputs.train_texts)
        cache.save()

        def embedder(texts: list[str]) -> np.ndarray:
            return cache.embed(texts, keep=False)

    return CopyIndex(inputs.train_texts, min_ngram=config.copy_min_ngram,
                     embedding_threshold=config.copy_embedding_threshold, embedder=embedder)


def finish(model, tokenizer, config: RLConfig, inputs: UpdateInputs, metrics: dict[str, float], *,
           stopped: bool, pause: bool = False, pause_reason: str | None = None) -> UpdateResult:
    """Save the adapter, add the guard figures, emit metrics, write result.json (unless stopped)."""
    folder = inputs.checkpoint_dir
    adapter_dir = folder / "adapter"
    tmp = folder / "adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(tmp, adapter_dir)
    metrics = {**metrics, **guard_figures(model, tokenizer, config, inputs, inputs.seed)}
    metrics = {k: float(v) for k, v in metrics.items()}
    result = UpdateResult(adapter_dir, metrics, stopped, pause, pause_reason)
    if inputs.on_metrics is not None:
        inputs.on_metrics(int(metrics.get("steps", 0)), metrics)
    if not stopped:
        tmp_json = folder / "result.json.tmp"
        tmp_json.write_text(json.dumps({**asdict(result), "adapter_dir": str(adapter_dir)}, default=_json_float))
        os.replace(tmp_json, folder / "result.json")
    return result


def _json_float(value):
    return float(value)


def reward_figures(rewards: list[float]) -> dict[str, float]:
    return {"reward_mean": float(np.mean(rewards)) if rewards else math.nan,
            "reward_std": float(np.std(rewards)) if rewards else math.nan}


def usable_posts(batch: list[dict]) -> list[dict]:
    """Posts that can be trained on: they have sampled tokens."""
    return [p for p in batch if p.get("token_ids")]


def read_state(path: Path, default: dict) -> dict:
    return json.loads(path.read_text()) if path.is_file() else dict(default)


def write_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)
