"""The typed settings of training and generation, and the RL algorithms' names, free of torch.

The dashboard's forms, the CLI, the README tables and the jobs read these models. They live apart
from the code that trains (crowdtune.training.sft, crowdtune.training.generation, which import torch,
transformers and Lightning) so that drawing a form never loads those into the dashboard's process:
importing them takes ~4 s and ~0.5 GB, and the ~400,000 objects they leave behind are walked by every
full garbage collection from then on (0.1 s before, 0.3-0.9 s after, measured on 2 cores), which made
an idle Metrics tab cost 3.7 CPU s a minute after a visit to Training instead of 1.1
(benchmarks/dashboard_idle.py). `sft` and `generation` still export SFTConfig and GenerationConfig.
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

from pydantic import BaseModel, Field

DEFAULT_BASE_MODEL = "smollm2-135m"


def gpu_available() -> bool:
    """Whether a run with accelerator "auto" finds a GPU. Asked of torch when it is loaded (a training job
    always has it); else read from the driver's device files (NVIDIA, ROCm) or the platform (Apple
    silicon's MPS), so the dashboard's cost estimate does not import torch to know."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return bool(torch.cuda.is_available() or torch.backends.mps.is_available())
    if platform.system() == "Darwin":
        return platform.machine() == "arm64"
    return Path("/dev/nvidia0").exists() or Path("/dev/kfd").exists()


def cpu_has_native_bf16() -> bool:
    """True if the CPU multiplies bf16 natively (x86 avx512_bf16 or AMX; read from /proc/cpuinfo)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


class SFTConfig(BaseModel):
    """Settings of one supervised fine-tuning run."""

    lora_rank: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling (alpha / rank multiplies the update)")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    lora_targets: str | list[str] = Field("all-linear",
                                          description='or a list of module names (e.g. ["q_proj", "v_proj"])')
    learning_rate: float = Field(2e-4, gt=0.0, description="peak, reached after warm-up")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW")
    warmup_steps: int = Field(10, ge=0, description="linear warm-up, then cosine decay to min_lr_ratio * peak")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="the learning rate at the end, as a share of the peak")
    grad_clip: float | None = Field(1.0, gt=0.0, description="max gradient norm; None = off")
    batch_size: int = Field(8, ge=1, description="blocks per micro-batch (per device)")
    block_size: int = Field(128, ge=8, description="tokens per packed block; posts are packed whole, each "
                            "block starting at a post, so padding is small when a block holds 3+ posts")
    accumulate_grad_batches: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; None: 60 on a CPU, 200 on a GPU")
    max_epochs: int | None = Field(None, ge=1, description="also stop after this many passes over the data")
    eval_every: int = Field(20, ge=1, description="optimizer steps between evaluations")
    log_every_n_steps: int = Field(5, ge=0, description="optimizer steps between the train/loss, train/lr and "
                                                        "train/grad_norm rows (the store and every tracker); 0 = off")
    max_val_batches: int | None = Field(8, ge=1, description="validation micro-batches per evaluation; None = all")
    early_stopping_patience: int | None = Field(
        3, ge=1, description="evaluations without improvement before stopping; None = off")
    early_stopping_min_delta: float = Field(0.0, ge=0.0, description="improvement in val_loss that counts")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="newest share of posts held out for validation")
    lowercase: bool = Field(False, description="lowercase the posts before training")
    precision: str = Field("auto", description='"auto": "bf16-mixed" on GPUs and CPUs with native bf16 '
                                               '(avx512_bf16/AMX), else "32-true"')
    accelerator: str = Field("auto", description="Lightning accelerator (cpu, gpu, ...)")
    devices: int | str = Field(1, description="Lightning devices; a worker trains on exactly one (the `device` "
                                              "setting picks it): several only outside RQ (README, Devices)")
    seed: int = Field(1234, description="seeds Lightning (LoRA init, shuffling) and the evaluation samples")
    eval_samples: int | None = Field(
        None, ge=0, description="posts sampled per evaluation for the guards; 0 = none; None: 8 on a CPU, 16 on a GPU")
    eval_max_new_tokens: int = Field(48, ge=1, description="tokens per evaluation sample at most")
    eval_temperature: float = Field(1.0, ge=0.0, description="temperature of the evaluation samples")
    eval_top_p: float = Field(0.95, gt=0.0, le=1.0, description="top-p of the evaluation samples")
    copy_min_ngram: int = Field(12, ge=2, description="words in common that make a sample a copy")
    copy_embedding_threshold: float | None = Field(
        0.95, gt=0.0, le=1.0, description="cosine that makes a sample a near-copy; None = n-grams only")
    style_metrics: bool = Field(True, description="embed samples to measure style similarity")
    progress_every: int | None = Field(
        None, ge=1, description="optimizer steps between on_progress calls; None: 1 on a CPU, 5 on a GPU")
    num_workers: int = Field(0, ge=0, description="DataLoader workers")
    chunked_loss: bool = Field(True, description="compute head + loss in chunks (much less memory, same loss)")

    def on_cpu(self) -> bool:
        """True when the run will train on the CPU (accelerator "cpu", or "auto" with no GPU, see gpu_available)."""
        if self.accelerator == "cpu":
            return True
        return self.accelerator == "auto" and not gpu_available()

    def resolved(self) -> SFTConfig:
        """A copy with every None-means-auto field set for the accelerator (explicit values are kept)."""
        defaults = CPU_DEFAULTS if self.on_cpu() else GPU_DEFAULTS
        return self.model_copy(update={k: v for k, v in defaults.items() if getattr(self, k) is None})

    def resolved_precision(self) -> str:
        """The Lightning precision the run trains in: `precision`, or for "auto" what the hardware does fast."""
        if self.precision != "auto":
            return self.precision
        import torch  # only a training job (or a benchmark) asks, and it has torch loaded already

        if torch.cuda.is_available():
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
        # measured on a 2-core Zen 4: a LoRA step of SmolLM2-135M took ~1.9x less CPU time under
        # bf16 autocast; CPUs that only emulate bf16 gain nothing, so they stay in fp32
        return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


# The auto defaults. On 2 CPU cores (SmolLM2-135M, LoRA, 8 x 128 tokens, bf16) a step takes ~6 s and
# an evaluation ~30-40 s: 60 steps and 3 evaluations make a first version in ~10 min, progress every
# step keeps the gap between reports at a step's time. A GPU does the 200 steps of the GPU defaults faster.
CPU_DEFAULTS = {"max_steps": 60, "eval_samples": 8, "progress_every": 1}
GPU_DEFAULTS = {"max_steps": 200, "eval_samples": 16, "progress_every": 5}

class GenerationConfig(BaseModel):
    """How to sample posts and which filters apply."""

    num_samples: int = Field(8, ge=1, description="samples when no prompts are given (else one per prompt)")
    batch_size: int = Field(8, ge=1, description="sequences sampled together")
    max_new_tokens: int = Field(64, ge=1, description="sampled tokens per post at most (EOS ends a post earlier)")
    temperature: float = Field(0.9, ge=0.0, description="0 = greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling; 1.0 = off")
    top_k: int = Field(0, ge=0, description="0 = off")
    repetition_penalty: float = Field(1.0, gt=0.0, description="CTRL-style, over prompt and sampled tokens; 1.0 = off")
    trim_unfinished: bool = Field(True, description="cut a post that hit max_new_tokens back to its last full sentence")
    drop_copies: bool = Field(True, description="reject samples that copy a training post (needs a CopyIndex)")
    offensive_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="reject when alt-profanity-check's probability >= this; None = off")
    seed: int | None = Field(None, description="seeds torch's RNG for the draw (then restores it): the same seed "
                                              "draws the same posts; None = torch's global RNG as it stands")
