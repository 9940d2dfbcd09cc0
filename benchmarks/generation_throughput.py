"""Generation throughput: Crowdtune's sampler (crowdtune.training.generation.sample: transformers'
generate with the sampling policy as a logits processor, its scores kept and read back with
compute_transition_scores, the posts cut at EOS and decoded) against a plain `model.generate` loop
(what a user would write: the same policy through generate's own settings, no scores).

Both sides sample the same number of posts from the same prompt (EOS alone: a post from scratch) at
each batch size, with the same seed, from one loaded model in one process; rounds alternate
(ours, plain, plain, ours, ...) so that a change in machine load hits both alike, and each figure is
the median over rounds. Tokens count every sampled token up to and including EOS (a plain user's
padding after EOS is not counted). With the same seed and policy the two sides draw the same posts
(`same_posts`): what differs is the bookkeeping, not the work.

Prints figures per batch size, then a JSON last line: posts/s and tokens/s of each side at batch 1, 8
and 32, and ours / plain.

    python benchmarks/generation_throughput.py --quick      # tiny GPT-2 (built first), ~1-2 min
    python benchmarks/generation_throughput.py              # the default base model (SmolLM2-135M)
    python benchmarks/generation_throughput.py --model PATH --threads 1   # any model, a loaded machine

On a machine that other work loads, torch's 2 threads slow small matmuls erratically (NOTES): figures
taken there at --threads 2 compare nothing; use --threads 1 or an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def tiny_model(folder: Path) -> str:
    """A tiny GPT-2 briefly pre-trained on real tweets, so that its posts end at EOS as real ones do."""
    from crowdtune.testing.sandbox_run import build_tiny_base, real_tweets

    build_tiny_base(folder, real_tweets())
    return str(folder)


def ours(model, tokenizer, config) -> tuple[int, list[list[int]]]:
    from crowdtune.training.generation import sample

    samples = sample(model, tokenizer, config)
    return len(samples), [s.token_ids for s in samples]


def plain(model, tokenizer, config) -> tuple[int, list[list[int]]]:
    """A plain loop of `generate` calls with the same policy and seed, no scores."""
    import torch

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    posts = []
    torch.manual_seed(config.seed)
    for start in range(0, config.num_samples, config.batch_size):
        batch = min(config.batch_size, config.num_samples - start)
        ids = torch.full((batch, 1), eos, dtype=torch.long, device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                                 repetition_penalty=config.repetition_penalty, max_new_tokens=config.max_new_tokens,
                                 eos_token_id=eos, pad_token_id=pad)
        for row in out[:, 1:].tolist():
            posts.append(row[: row.index(eos) + 1] if eos in row else row)
    return len(posts), posts


def measure(side, model, tokenizer, config) -> dict:
    started = time.perf_counter()
    n, posts = side(model, tokenizer, config)
    elapsed = time.perf_counter() - started
    tokens = sum(len(p) for p in posts)
    return {"posts_per_second": n / elapsed, "tokens_per_second": tokens / elapsed, "tokens": tokens,
            "seconds": elapsed, "posts": posts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny GPT-2 built on the tweets instead of --model")
    parser.add_argument("--model", default=None, help="base model (default: the offline default, smollm2-135m)")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes to measure")
    parser.add_argument("--posts", type=int, default=32, help="posts per side, batch size and round (at least "
                                                              "one batch)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: GenerationConfig's")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side per batch size, alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--cache-implementation", default=None,
                        help='for both sides, e.g. "static" (what a GPU user sets for compiled decoding)')
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from crowdtune.training.configs import DEFAULT_BASE_MODEL, GenerationConfig
    from crowdtune.training.models import load_base_model

    torch.set_num_threads(args.threads)
    if args.quick:
        name, source = "tiny-gpt2", tiny_model(Path(tempfile.mkdtemp(prefix="crowdtune-bench-")) / "tiny")
    else:
        name = source = args.model or DEFAULT_BASE_MODEL
    model, tokenizer = load_base_model(source)  # float32, eval mode
    if torch.cuda.is_available():
        model = model.cuda()
    if args.cache_implementation:
        model.generation_config.cache_implementation = args.cache_implementation
    defaults = GenerationConfig()
    max_new_tokens = args.max_new_tokens or defaults.max_new_tokens
    print(f"{name}: {args.posts} posts per side and round, up to {max_new_tokens} tokens, temperature "
          f"{defaults.temperature}, top_p {defaults.top_p}, {args.rounds} rounds, {args.threads} thread(s), "
          f"device {next(model.parameters()).device}", flush=True)

    summary = {"benchmark": "generation_throughput", "model": name, "posts": args.posts, "rounds": args.rounds,
               "max_new_tokens": max_new_tokens, "threads": args.threads, "temperature": defaults.temperature,
               "top_p": defaults.top_p, "cache_implementation": args.cache_implementation, "batches": {}}
    sides = {"ours": ours, "plain": plain}
    for batch in [int(b) for b in args.batches.split(",")]:
        posts = max(args.posts, batch)  # at least one full batch
        config = GenerationConfig(num_samples=posts, batch_size=batch, max_new_tokens=max_new_tokens,
                                  seed=args.seed)
        for side in sides.values():  # warm-up: first-call costs (allocations, lazy imports) stay out
            side(model, tokenizer, config.model_copy(update={"num_samples": min(batch, 2), "max_new_tokens": 4}))
        runs = {k: [] for k in sides}
        order = [k for r in range(args.rounds) for k in (("ours", "plain") if r % 2 == 0 else ("plain", "ours"))]
        for key in order:
            runs[key].append(measure(sides[key], model, tokenizer, config))
        med = {k: {f: statistics.median(r[f] for r in v) for f in ("posts_per_second", "tokens_per_second")}
               for k, v in runs.items()}
        same = all(o["posts"] == p["posts"] for o, p in zip(runs["ours"], runs["plain"], strict=True))
        figures = {
            "ours_posts_per_second": round(med["ours"]["posts_per_second"], 2),
            "plain_posts_per_second": round(med["plain"]["posts_per_second"], 2),
            "ours_tokens_per_second": round(med["ours"]["tokens_per_second"], 1),
            "plain_tokens_per_second": round(med["plain"]["tokens_per_second"], 1),
            "ours_runs_tokens_per_second": [round(r["tokens_per_second"], 1) for r in runs["ours"]],
            "plain_runs_tokens_per_second": [round(r["tokens_per_second"], 1) for r in runs["plain"]],
            "posts": posts,
            "mean_post_tokens": round(statistics.mean(r["tokens"] for r in runs["ours"]) / posts, 1),
            "posts_per_second_ratio": round(med["ours"]["posts_per_second"] / med["plain"]["posts_per_second"], 3),
            "tokens_per_second_ratio": round(med["ours"]["tokens_per_second"] / med["plain"]["tokens_per_second"], 3),
            "same_posts": same,
        }
        summary["batches"][str(batch)] = figures
        print(f"batch {batch:>3}: ours {figures['ours_posts_per_second']:.2f} posts/s "
              f"{figures['ours_tokens_per_second']:.1f} tokens/s | plain {figures['plain_posts_per_second']:.2f} "
              f"posts/s {figures['plain_tokens_per_second']:.1f} tokens/s | ours/plain "
              f"{figures['tokens_per_second_ratio']:.3f}x tokens/s, same posts: {same}", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
