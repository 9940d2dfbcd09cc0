"""Online RL in the sandbox, honestly: how far each algorithm raises a simulated audience's score
over what a user starts online training from, against a best-of-8 ceiling, within a post budget.

The channel. A sandbox face (faces/sandbox.py) whose history holds `--history` real bundled posts
with the reactions of the benchmark's own audience (SandboxConfig.history_posts), scored as the
import job scores imported posts (jobs.imports.history_rows). So a reward model fitted on that
history is fair for any audience, an audience from `--audience-file` too.

The starting model. What a user starts online training from: a version trained offline with the
product's default SFT settings on the history's texts (made once, cached under `--results`). The
bare base is measured as well (`base`), for scale.

Audiences (`--audience`, default likes sentiment rules; faces/audience.py): `likes` (MiniLM + ridge
on real likes), `sentiment` (VADER), `rules` (length, questions, topic words, links: no embeddings),
`human` (MiniLM + ridge on human ratings); `--audience-file PATH:NAME` adds any object with
`log_appeal(texts) -> float array`.

Arms, per audience and seed:
    start     the starting model, one post per slot (a uniform pick among a slot's guarded samples),
              on `--start-posts` (>= 256) posts: the denominator of every relative score
    oracle    best-of-8 from the starting model, chosen by the true audience (its noise-free appeal):
              the ceiling of what selection alone buys (the same samples as `start`)
    base      the bare base model (`--base-posts` posts), for scale
    <name>    each algorithm of `--algorithms` (default: every one in crowdtune.training.rl.ALGORITHMS),
              run as the product runs it: best-of-N publishing on the face's reward model, refitted
              whenever a score matures, and an RL update every `posts_per_update` matured posts
    <name>@N  the same with N candidates a slot (OnlineConfig.candidates). The default arms add
              `policy_gradient@1`: policy_gradient as it was before best-of-N publishing (one sample a
              slot), the baseline of the goals' gain and wall-time ratios (issue 14: "today's")

The loop drives the functions the jobs run, not copies (tests/jobs/test_benchmark_drives_the_jobs.py
checks it): each slot is crowdtune.online.candidates.draft_slot (what jobs.online.publish_post calls:
one batched sampling call, the guards, Thompson sampling on the reward model); each fit is
crowdtune.online.reward_fits.fit_model (jobs.online.fit_reward_model: era rewards, MiniLM vectors,
time-split validation); each update is crowdtune.online.updates.train_update and update_metrics
(jobs.online.rl_update: rewards_for / era_rewards, then crowdtune.training.rl.run_update). Only the
store and Redis are left out: the posts' rows live in memory, the clock is fake (slots every
`interval_minutes` of audience time, scores read at maturity), and an update finishes before the
next slot. A paused update keeps the old version active (as the job does) and the run goes on.

Figures per arm and audience (`--seeds`, default 3): the relative score (mean score / the start's
mean) of the first 16 posts and of the last 32 at budgets of 64, 128 and 256 posts; the share of
the oracle's gain reached ((rel - 1) / (oracle rel - 1)); copy rate (samples rejected as copies of
training posts, before the filter); the last update's KL (against the bare base: the algorithms'
reference is the base with the adapter turned off); distinct-2 of the last 64 posts and its ratio to
the start's; wall minutes; one-sided Welch p-values (log1p scores of the window, pooled over seeds,
against the start's). A JSON last line.

Runs in parts: every finished (arm, audience, seed) is appended to `<results>/runs.jsonl`; with
`--resume` those made under the same settings are taken from it, not run again. The default results
folder, benchmarks/results/online-sandbox, keeps runs.jsonl and the fixed arms' samples (pools/) in
git (its .gitignore leaves out the rest): commit them after a part, and any clone resumes from there.
A run's settings do not include the code's version, but each part records it (`code`: the commit and
whether the arms' code had uncommitted changes) and its machine (`machine`: the CPU, AVX-512 or not, a
matmul's GFLOP/s, the load before it); --resume names the parts whose arms' code changed since: remove
those lines from runs.jsonl to measure them again. Wall times are comparable only within one machine:
each arm's row lists its parts' machines, and the goal's wall-time ratio the machines it mixes.

    python benchmarks/online_sandbox.py --quick --posts 32 --seeds 1 --audience rules --algorithms reinforce
    python benchmarks/online_sandbox.py --quick                          # tiny GPT-2, 64 posts, 1 seed
    python benchmarks/online_sandbox.py --threads 2 --resume             # hours on 2 cores, in parts
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FACE = "bench"
START_TIME = datetime(2026, 1, 1, 8, 0)   # the fake audience clock's first slot
FIRST_POSTS = 16                          # the warm start's window: before any real reaction matured
LAST_POSTS = 32                           # the window at each budget
BUDGETS = (64, 128, 256)
DISTINCT_POSTS = 64                       # distinct-2 depends on the number of texts: compare equal sets
ORACLE_CANDIDATES = 8
HISTORY_LIMIT = 2000                      # scored posts an update sees (store.reads.update_inputs' default)
DEFAULT_AUDIENCES = ("likes", "sentiment", "rules")
FIXED_ARMS = ("start", "oracle", "base")
# policy_gradient as it was when the goals were set: one sample a slot, no best-of-N (the ratios' baseline)
BASELINE_ARM = "policy_gradient@1"
ROOT = Path(__file__).resolve().parent.parent
# what an arm's figures depend on: a part made at another commit is stale when any of these changed since
ARM_CODE = ("crowdtune", "jobs", "faces", "benchmarks/online_sandbox.py")


# --------------------------------------------------------------------------------------------
# The channel: a sandbox face with a history, on a fake audience clock


def audiences_of(args) -> dict:
    """{name: audience object} of --audience and --audience-file (file ones named by their NAME)."""
    from faces.audience import AudienceConfig, load_audience, load_audience_file

    named = {}
    for kind in args.audience:
        config = AudienceConfig(kind=kind, **({"cache_dir": args.audience_cache} if args.audience_cache else {}))
        named[kind] = load_audience(config)
    for spec in args.audience_file:
        named[f"file:{spec.rpartition(':')[2]}"] = load_audience_file(spec)
    return named


class Channel:
    """One sandbox face (its audience, its seed's noise) on a fake audience clock."""

    def __init__(self, folder: Path, audience, seed: int, history_posts: int = 0):
        from crowdtune.scoring import ScorerConfig
        from faces.sandbox import SandboxConfig, SandboxFace

        shutil.rmtree(folder, ignore_errors=True)  # a fresh sandbox: no stale posts of an interrupted run
        self.now = START_TIME
        self.face = SandboxFace(SandboxConfig(state_url=str(folder), seed=seed, history_posts=history_posts),
                                clock=lambda: self.now, audience=audience)
        self.scorer = ScorerConfig()

    def history(self) -> list[dict]:
        """The face's imported history, scored as the import job scores it, oldest first, as
        reward_model_inputs rows (post_id, origin, text, score, posted_at)."""
        from jobs.imports import history_rows

        posts = list(self.face.fetch_history())
        upsert = history_rows(FACE, posts, self.now, self.face.audience_size(), self.scorer)[0]
        rows = sorted(upsert["rows"], key=lambda r: r["created_at"])
        return [{"post_id": r["post_id"], "origin": "imported", "text": r["text"], "score": r["score"],
                 "posted_at": r["created_at"], "predicted_reward": None, "reward_model_id": None} for r in rows]

    def publish(self, text: str, intent_id: str) -> str:
        return self.face.publish(text, intent_id).platform_id

    def score(self, platform_id: str) -> float:
        """The post's score at maturity (call once it is mature on the clock), as collect_reactions scores."""
        from crowdtune.scoring import score_at_maturity

        snap = self.face.reactions(platform_id)
        return score_at_maturity([(snap.post_age_seconds, snap.counts, snap.audience_size)], self.scorer)

    def publish_and_score(self, texts: list[str], prefix: str) -> list[float]:
        """Publish the texts now, let them mature, return their scores."""
        ids = [self.publish(text, f"{prefix}-{i}") for i, text in enumerate(texts)]
        self.now += timedelta(seconds=self.scorer.maturity_seconds + 1)
        return [self.score(pid) for pid in ids]


# --------------------------------------------------------------------------------------------
# The starting model and the fixed arms' samples (made once, cached under --results)


def settings_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


# bump when the offline data's layout changes, so that a cached starting model is made again
# (2: posts packed whole, every block starting at a post)
STARTING_MODEL_RECIPE = 2


def starting_model(args, history: list[dict]) -> str:
    """The version a user starts online training from: the product's default SFT on the history's texts.
    Trained once per (model, history, steps); returns its version URL."""
    from crowdtune.training.models import save_version
    from crowdtune.training.sft import SFTConfig, train_sft

    sft = SFTConfig(**({"max_steps": args.sft_steps, "eval_every": max(1, args.sft_steps // 3)}
                       if args.sft_steps else {}))
    key = settings_key(args.model, len(history), sft.model_dump(), STARTING_MODEL_RECIPE)
    folder = args.results / "start-model" / key
    version = folder / "version"
    if (folder / "done.json").is_file():
        return str(version)
    started = time.monotonic()
    print(f"starting model: SFT of {args.model} on {len(history)} history posts", flush=True)
    result = train_sft(sft, [{"text": p["text"], "created_at": p["posted_at"]} for p in history], args.model,
                       model_cache_dir=args.model_cache, checkpoint_dir=folder / "checkpoints")
    save_version(result.adapter_dir, str(version), base_model=args.model, metadata={"benchmark": "online_sandbox"})
    figures = {"steps": result.steps, "best_val_loss": result.best_val_loss, "seconds": time.monotonic() - started}
    (folder / "done.json").write_text(json.dumps(figures))
    print(f"starting model ready: {figures}", flush=True)
    return str(version)


def online_config(args, algorithm: str, seed: int, candidates: int | None = None):
    """The OnlineConfig of one arm: the product's defaults, the benchmark's model, tokens and seed. The
    loop measures copies itself, so updates skip their own evaluation samples and embedding guard."""
    from crowdtune.online.controller import OnlineConfig
    from crowdtune.training.rl import ALGORITHMS

    fields = ALGORITHMS[algorithm].model_fields
    settings = {"max_new_tokens": args.max_new_tokens}
    settings.update({k: v for k, v in {"eval_samples": 0, "copy_embedding_threshold": None}.items() if k in fields})
    values = {"algorithm": algorithm, "algorithm_settings": settings, "base_model": args.model,
              "generation": {"max_new_tokens": args.max_new_tokens}, "seed": seed}
    if candidates is not None:
        values["candidates"] = candidates
    if args.posts_per_update is not None:
        values["posts_per_update"] = args.posts_per_update
    return OnlineConfig(**values)


def load_policy(url: str | None, args):
    from crowdtune.training.models import load_base_model, load_version

    model, tokenizer = (load_version(url, base_model=args.model, cache_dir=args.model_cache) if url
                        else load_base_model(args.model, cache_dir=args.model_cache))
    model.eval()
    return model, tokenizer


def sample_pool(args, name: str, policy_url: str | None, train_texts: list[str], slots: int, seed: int) -> list[dict]:
    """`slots` slots of ORACLE_CANDIDATES guarded samples of a fixed policy, through draft_slot with no
    reward model (so its pick is uniform). Cached per settings. Out per slot: {"chosen", "kept" (chosen
    first), "drawn", "copies", "seconds" (the slot's sampling time)}."""
    from crowdtune.online import candidates
    from crowdtune.training.rl import DEFAULT_ALGORITHM

    # the policy by its place in the results folder: the same key in every clone, so kept pools are found
    policy = os.path.relpath(policy_url, args.results) if policy_url else None
    key = settings_key(args.model, args.history, args.sft_steps, args.max_new_tokens, policy, slots)
    path = args.results / "pools" / f"{name}-s{seed}-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    cfg = online_config(args, DEFAULT_ALGORITHM, seed, candidates=ORACLE_CANDIDATES)  # the default sampling policy
    model, tokenizer = load_policy(policy_url, args)
    pool, published, started = [], [], time.monotonic()  # pool: one entry per slot
    for slot in range(slots):
        # no novelty window: the fixed arms are the policy as sampled, without the diversity floor
        guards = candidates.guard_indexes(train_texts, published, cfg.copy_embedding_threshold)
        draft = candidates.draft_slot(model, tokenizer, cfg, candidates.SlotIds(FACE, f"{name}-s{seed}", slot),
                                      guards=guards, reward_model=candidates.SlotRewardModel(), version_id=None,
                                      hour=None)
        if draft.chosen is None:
            continue
        published.append(draft.chosen["text"])
        kept = [draft.chosen["text"]] + [c["text"] for c in draft.candidates]
        drawn = len(kept) + len(draft.rejected)
        pool.append({"chosen": draft.chosen["text"], "kept": kept, "drawn": drawn,
                     "copies": sum(r["reject_reason"] == "copy" for r in draft.rejected)})
    for entry in pool:  # each slot's share of the sampling time, so that the arms' wall minutes include it
        entry["seconds"] = (time.monotonic() - started) / max(1, len(pool))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pool))
    print(f"  {name} pool seed {seed}: {len(pool)} slots in {time.monotonic() - started:.0f} s", flush=True)
    return pool


def fixed_arm(arm: str, pool: list[dict], channel: Channel, audience, seed: int, limit: int) -> dict:
    """start: each slot's uniform pick; oracle: each slot's best by the true audience (choose, greedy, on
    its appeal as a one-member ensemble); base: every kept sample. At most `limit` posts."""
    import numpy as np

    from crowdtune.online import candidates

    started = time.monotonic()
    if arm == "oracle":
        texts = []
        for slot, entry in enumerate(pool[:limit]):
            appeal = np.asarray(audience.log_appeal(entry["kept"]), dtype=np.float64)[None, :]  # (1, kept)
            texts.append(entry["kept"][candidates.choose(len(entry["kept"]), "greedy", seed * 1000 + slot,
                                                         appeal).index])
    elif arm == "start":
        texts = [entry["chosen"] for entry in pool[:limit]]
    else:
        texts = [text for entry in pool for text in entry["kept"]][:limit]
    scores = channel.publish_and_score(texts, arm)
    used = pool[:limit] if arm != "base" else pool
    return {"scores": scores, "texts": texts, "drawn": sum(e["drawn"] for e in used),
            "copies": sum(e["copies"] for e in used), "pauses": 0, "updates": [],
            "seconds": time.monotonic() - started + sum(e["seconds"] for e in used)}


# --------------------------------------------------------------------------------------------
# An algorithm arm: the online loop of the jobs, in-process


@dataclass
class Published:
    row: dict                 # the chosen candidate's posts row (draft_slot's), plus platform_id, published_at
    candidates: list[dict] = field(default_factory=list)  # the slot's other kept candidates (draft_slot's rows)
    score: float | None = None
    used: bool = False        # already in an update's batch


@dataclass
class OnlineRun:
    """The in-memory state of one algorithm arm: what the store would hold."""

    run_id: str
    posts: list[Published] = field(default_factory=list)
    updates: list[dict] = field(default_factory=list)
    fits: list[dict] = field(default_factory=list)
    drawn: int = 0
    copies: int = 0
    reward_model: dict | None = None  # the newest fit's reward_models row, as the update job reads it
    warm_started: bool = False


def fit_reward_model(settings, cfg, history: list[dict], run: OnlineRun):
    """The fit job's steps on the face's scored posts: fit_model, then the model as publishing loads it."""
    from crowdtune.online import candidates, reward_fits
    from crowdtune.training.rl.predictor import PredictorConfig
    from crowdtune.training.rl.rewards import RewardConfig

    scored = history + [{"post_id": p.row["post_id"], "origin": "generated", "text": p.row["text"],
                         "score": p.score, "posted_at": p.row["published_at"],
                         "predicted_reward": p.row.get("predicted_reward"),
                         "reward_model_id": p.row.get("reward_model_id")} for p in run.posts if p.score is not None]
    inputs = reward_fits.FitInputs(FACE, scored, RewardConfig(**cfg.reward), PredictorConfig())
    fitted = reward_fits.fit_model(settings, inputs)
    run.reward_model = reward_fits.save_fit(settings, fitted)  # what the update job reads (its artifact_url)
    run.fits.append({k: fitted.figures.get(k) for k in ("validation_spearman", "online_agreement", "scored_posts")})
    return candidates.SlotRewardModel(fitted.model, fitted.model_id)


def as_update_reads(post: Published) -> dict:
    """A batch post as the update job reads it from the store (store.reads.update_inputs): its row, its score
    and its slot's other candidates, which guided's doubly-robust groups are made of."""
    from crowdtune.store.reads import UPDATE_CANDIDATE_COLUMNS

    return {**post.row, "score": post.score,
            "candidates": [{column: c.get(column) for column in UPDATE_CANDIDATE_COLUMNS} for c in post.candidates]}


def update_policy(settings, cfg, args, run: OnlineRun, batch: list[Published], history: list[dict],
                  train_texts: list[str], active: dict):
    """One update as the update job runs it: train_update, update_metrics, and the new version saved and
    made active unless the update asks to pause. Returns the active version afterwards."""
    from crowdtune import artifacts
    from crowdtune.online import updates
    from crowdtune.online.schedule import safe_id
    from crowdtune.training.models import save_version

    # Numbered as the controller numbers them (UpdatePlan; a warm start is step 0): the seed is seed * 1000 + step.
    step = len(run.updates) + (0 if run.warm_started else 1) if batch else 0
    update = {"update_id": f"{run.run_id}-u{step}", "run_id": run.run_id, "face_id": FACE, "step": step}
    first = min((p.row["published_at"] for p in batch), default=None)
    baseline = [p.score for p in run.posts if p.score is not None and p not in batch and p.row["published_at"] < first]
    if not batch:
        run.warm_started = True
    generated = [{"post_id": p.row["post_id"], "text": p.row["text"], "score": p.score,
                  "published_at": p.row["published_at"]} for p in run.posts if p.score is not None]
    scored_history = ([{"post_id": h["post_id"], "text": h["text"], "score": h["score"], "published_at": h["posted_at"]}
                       for h in history] + generated)[-HISTORY_LIMIT:]
    stored = updates.StoredUpdate(
        update=update, run={"run_id": run.run_id, "base_model": args.model, "started_at": None}, cfg=cfg,
        active=active, batch=[as_update_reads(p) for p in batch], baseline_scores=baseline,
        history=scored_history, train_texts=train_texts, published_count=len(run.posts),
        reward_model=run.reward_model)
    result = updates.train_update(settings, stored, on_progress=lambda *a, **k: None, should_stop=lambda: False,
                                  checkpoint_name=safe_id(update["update_id"]))
    metrics = updates.update_metrics(stored, result)
    run.updates.append({**metrics, "pause": bool(result.pause),
                        "pause_reason": (result.pause_reason or "") if result.pause else None})
    if result.pause:  # the job registers it but keeps the old version active (and pauses; here the run goes on)
        return active
    url = artifacts.version_url(settings.artifacts, safe_id(update["update_id"]))
    save_version(result.adapter_dir, url, base_model=args.model, metadata={"update_id": update["update_id"]})
    return {"version_id": update["update_id"], "artifact_url": url, "base_model": args.model}


class PhaseClock:
    """Wall seconds spent per phase of an arm (`with clock("slots"): ...`), in `seconds` {phase: s}:
    where a run's time goes, beside its total."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.monotonic() - started


def split_arm(arm: str) -> tuple[str, int | None]:
    """An arm's algorithm and candidates a slot: policy_gradient@1 gives ("policy_gradient", 1), guided
    gives ("guided", None), the product's default N. ValueError naming the valid forms for anything else."""
    from crowdtune.training.rl import ALGORITHMS

    algorithm, at, count = arm.partition("@")
    candidates = int(count) if at and count.isascii() and count.isdigit() else None
    if algorithm not in ALGORITHMS or (at and not (candidates and candidates <= 64)):
        raise ValueError(f"{arm!r}: expected NAME or NAME@N with NAME one of {', '.join(ALGORITHMS)} "
                         "and N candidates a slot, 1-64")
    return algorithm, candidates


def arm_folder(arm: str) -> str:
    """An arm's name as a run id and folder name (letters, digits, _ and - only)."""
    return arm.replace("@", "-n").replace(":", "_")


def algorithm_arm(args, settings, arm: str, audience_name: str, channel: Channel, history: list[dict],
                  start_url: str, seed: int) -> dict:
    """Drive one algorithm arm ("NAME" or "NAME@N") for --posts slots (module docstring). Returns its figures."""
    from crowdtune import artifacts
    from crowdtune.online import candidates
    from crowdtune.training.rl import warm_start_steps

    algorithm, count = split_arm(arm)
    cfg = online_config(args, algorithm, seed, candidates=count)
    run = OnlineRun(f"{arm_folder(arm)}-{arm_folder(audience_name)}-s{seed}")
    # a fresh run: an interrupted attempt's checkpoints would be resumed by train_update
    shutil.rmtree(artifacts.local_path(artifacts.checkpoint_url(settings.artifacts, run.run_id)), ignore_errors=True)
    train_texts = [h["text"] for h in history]
    training_guard = candidates.guard_indexes(train_texts, [], cfg.copy_embedding_threshold).training
    active = {"version_id": "start", "artifact_url": start_url, "base_model": args.model}
    model, tokenizer = load_policy(start_url, args)
    # The face's reward model chooses among candidates and guides `guided`; with one candidate a slot,
    # policy_gradient and reinforce never read it, and as they were run before best-of-N, nothing fits one.
    fits = cfg.candidates > 1 or algorithm == "guided"
    reward_model, fitted_at = (fit_reward_model(settings, cfg, history, run) if fits
                               else candidates.SlotRewardModel()), 0  # day 0: the history's model
    started = time.monotonic()
    phases = PhaseClock()
    if warm_start_steps(cfg.algorithm, cfg.algorithm_settings) > 0:
        # As the controller does (warm_start_due): an update with no posts before the first slot.
        with phases("updates"):
            active = update_policy(settings, cfg, args, run, [], history, train_texts, active)
            model, tokenizer = load_policy(active["artifact_url"], args)
    for slot in range(args.posts):
        channel.now = START_TIME + timedelta(minutes=cfg.interval_minutes * slot)
        # 1) reactions: every post whose maturity has passed gets its score (collect_reactions)
        matured = [p for p in run.posts if p.score is None
                   and channel.now - p.row["published_at"] >= timedelta(seconds=cfg.maturity_seconds)]
        for post in matured:
            post.score = channel.score(post.row["platform_id"])
        # 2) new scores: the face's reward model is refitted (the fit job; the controller asks at every new
        # score, the benchmark at every --fit-every-th: a fit on 3,000 posts takes ~0.5 s here)
        scored = sum(p.score is not None for p in run.posts)
        if fits and matured and scored - fitted_at >= args.fit_every:
            with phases("fits"):
                reward_model, fitted_at = fit_reward_model(settings, cfg, history, run), scored
        # 3) posts_per_update matured posts: an update (the update job), then publishing uses its version
        ready = [p for p in run.posts if p.score is not None and not p.used]
        if len(ready) >= cfg.posts_per_update:
            batch = ready[:cfg.posts_per_update]
            for post in batch:
                post.used = True
            with phases("updates"):
                new = update_policy(settings, cfg, args, run, batch, history, train_texts, active)
                if new is not active:
                    active = new
                    model, tokenizer = load_policy(active["artifact_url"], args)
            u = run.updates[-1]
            print(f"    {arm} {audience_name} s{seed} update {len(run.updates)} after {slot} posts: "
                  f"batch score {u['score_mean']:.1f}, kl {u.get('kl', math.nan):.4f}"
                  + (f" PAUSE: {u['pause_reason']}" if u["pause"] else "") + f" ({time.monotonic() - started:.0f} s)",
                  flush=True)
        # 4) the slot (the publish job): N candidates, the guards, the exploring choice, then publish
        published = [p.row["text"] for p in run.posts]
        # the job builds both indexes per slot; the training posts' one never changes here, so it is built once
        guards = dataclasses.replace(candidates.guard_indexes([], published, cfg.copy_embedding_threshold,
                                                              cfg.novelty_window), training=training_guard)
        with phases("slots"):
            draft = candidates.draft_slot(model, tokenizer, cfg, candidates.SlotIds(FACE, run.run_id, slot),
                                          guards=guards, reward_model=reward_model, version_id=active["version_id"],
                                          hour=channel.now.hour + channel.now.minute / 60)
        run.drawn += len(draft.rejected) + (len(draft.candidates) + 1 if draft.chosen else 0)
        run.copies += sum(r["reject_reason"] == "copy" for r in draft.rejected)
        if draft.chosen is None:
            continue
        platform_id = channel.publish(draft.chosen["text"], draft.chosen["intent_id"])
        run.posts.append(Published({**draft.chosen, "platform_id": platform_id, "published_at": channel.now},
                                   candidates=draft.candidates))
    # the last posts mature after the last slot: read them for the figures (no more updates)
    channel.now += timedelta(seconds=cfg.maturity_seconds + 1)
    for post in run.posts:
        if post.score is None:
            post.score = channel.score(post.row["platform_id"])
    return {"scores": [p.score for p in run.posts], "texts": [p.row["text"] for p in run.posts],
            "drawn": run.drawn, "copies": run.copies,
            "pauses": sum(u["pause"] for u in run.updates), "updates": run.updates, "fits": run.fits[-1:],
            "seconds": time.monotonic() - started, "phase_seconds": phases.seconds}


# --------------------------------------------------------------------------------------------
# Figures


def last_kl(run: dict) -> float | None:
    """The KL of a run's last update that trained (a paused one trains nothing: its KL is no figure)."""
    return next((u.get("kl") for u in reversed(run.get("updates") or []) if not u.get("pause")), None)


def window(scores: list[float], budget: int | None) -> list[float]:
    """The first FIRST_POSTS scores (budget None), or the last LAST_POSTS before `budget`; [] if too few."""
    if budget is None:
        return scores[:FIRST_POSTS] if len(scores) >= FIRST_POSTS else []
    return scores[budget - LAST_POSTS:budget] if len(scores) >= budget else []


def summarise(args, runs: dict, arms: list[str], audiences: list[str]) -> dict:
    """Per audience and arm: the figures of the module docstring, over the seeds run."""
    import numpy as np
    from scipy.stats import ttest_ind

    from crowdtune.training.guards import distinct_n

    def mean(values):
        values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return float(np.mean(values)) if values else None

    out = {}
    for audience in audiences:
        starts = {s: runs[("start", audience, s)] for s in args.seeds if ("start", audience, s) in runs}
        if not starts:
            continue
        start_mean = {s: float(np.mean(r["scores"])) for s, r in starts.items()}
        start_log = np.log1p(np.concatenate([r["scores"] for r in starts.values()]))
        start_distinct = mean([distinct_n(r["texts"][-DISTINCT_POSTS:], 2) for r in starts.values()])
        oracle = {s: runs[("oracle", audience, s)] for s in starts if ("oracle", audience, s) in runs}
        oracle_rel = {s: float(np.mean(r["scores"])) / start_mean[s] for s, r in oracle.items()}
        rows = {}
        for arm in arms:
            mine = {s: runs[(arm, audience, s)] for s in starts if (arm, audience, s) in runs}
            if not mine:
                continue
            row = {"seeds": len(mine), "posts": mean([len(r["scores"]) for r in mine.values()])}
            for label, budget in [("first_16", None)] + [(f"last_32_at_{b}", b) for b in BUDGETS]:
                parts = {s: window(r["scores"], budget) for s, r in mine.items()}
                parts = {s: w for s, w in parts.items() if w}
                if not parts:
                    continue
                relative = {s: float(np.mean(w)) / start_mean[s] for s, w in parts.items()}
                pooled = np.log1p(np.concatenate(list(parts.values())))
                entry = {"relative": mean(relative.values()), "per_seed": [relative[s] for s in sorted(relative)],
                         "p_vs_start": float(ttest_ind(pooled, start_log, equal_var=False,
                                                       alternative="greater").pvalue)}
                shares = [(relative[s] - 1) / (oracle_rel[s] - 1) for s in relative
                          if s in oracle_rel and oracle_rel[s] > 1]
                entry["share_of_oracle_gain"] = mean(shares)
                row[label] = entry
            row["relative_all"] = mean(float(np.mean(r["scores"])) / start_mean[s] for s, r in mine.items())
            row["share_of_oracle_gain"] = row.get("last_32_at_128", row.get(f"last_32_at_{BUDGETS[0]}", {})).get(
                "share_of_oracle_gain")
            row["copy_rate"] = mean([r["copies"] / max(1, r["drawn"]) for r in mine.values()])
            row["kl"] = mean([last_kl(r) for r in mine.values()])
            if arm == "oracle":  # the KL of best-of-n from its policy is at most log n - (n - 1) / n
                row["kl_bound"] = math.log(ORACLE_CANDIDATES) - (ORACLE_CANDIDATES - 1) / ORACLE_CANDIDATES
            row["distinct_2"] = mean([distinct_n(r["texts"][-DISTINCT_POSTS:], 2) for r in mine.values()])
            row["distinct_2_vs_start"] = row["distinct_2"] / start_distinct if start_distinct else None
            row["pauses"] = int(sum(r["pauses"] for r in mine.values()))
            row["wall_minutes"] = mean([r["seconds"] / 60 for r in mine.values()])
            row["machines"] = sorted({machine_label(r) for r in mine.values()})
            phases = [r["phase_seconds"] for r in mine.values() if "phase_seconds" in r]  # older parts lack them
            if phases:
                names = sorted(set().union(*phases))
                row["phase_minutes"] = {k: mean([p.get(k, 0.0) / 60 for p in phases]) for k in names}
            if arm not in FIXED_ARMS:
                row["reward_model_last_fit"] = [r["fits"][-1] if r["fits"] else None for r in mine.values()]
            rows[arm] = row
        rows["start"]["mean_score"] = mean(start_mean.values())
        out[audience] = rows
    return out


def goals(summary: dict, algorithm: str) -> dict | None:
    """The issue's goals for `algorithm` (the default), each True/False/None (not measured)."""
    import numpy as np

    rows = {a: r.get(algorithm) for a, r in summary.items()}
    if not any(rows.values()):
        return None

    def at(row, label, key):
        return ((row or {}).get(label) or {}).get(key)

    def every(values):
        values = list(values)
        return None if any(v is None for v in values) or not values else bool(all(values))

    # the ratios' baseline: policy_gradient as it was (one sample a slot) where measured, else as the product runs it
    baseline = BASELINE_ARM if all(summary[a].get(BASELINE_ARM) for a in rows) else "policy_gradient"
    gains = {a: (at(r, "last_32_at_128", "relative") or math.nan) - 1 for a, r in rows.items()}
    pg = {a: (at(summary[a].get(baseline), "last_32_at_128", "relative") or math.nan) - 1 for a in rows}
    ratio = float(np.nanmean(list(gains.values())) / np.nanmean(list(pg.values()))) if pg else math.nan
    pg_minutes = [(summary[a].get(baseline) or {}).get("wall_minutes") for a in rows]
    machines = sorted({m for a, r in rows.items() for row in (r, summary[a].get(baseline)) for m in
                       (row or {}).get("machines", [])})
    minutes = [(r or {}).get("wall_minutes") for r in rows.values()]
    return {
        "algorithm": algorithm,
        "ratios_against": baseline,
        "share_at_128_at_least_0.6": every(None if at(r, "last_32_at_128", "share_of_oracle_gain") is None
                                           else at(r, "last_32_at_128", "share_of_oracle_gain") >= 0.6
                                           for r in rows.values()),
        "relative_at_128_at_least_1.3": every(None if at(r, "last_32_at_128", "relative") is None
                                              else at(r, "last_32_at_128", "relative") >= 1.3 for r in rows.values()),
        "beats_oracle_gain_at_256": every(None if at(r, "last_32_at_256", "share_of_oracle_gain") is None
                                          else at(r, "last_32_at_256", "share_of_oracle_gain") > 1
                                          for r in rows.values()),
        "first_16_significantly_above_start_on_likes": None if "likes" not in rows or rows["likes"] is None else bool(
            (at(rows["likes"], "first_16", "relative") or 0) > 1 and (at(rows["likes"], "first_16", "p_vs_start") or 1)
            < 0.05),
        "gain_vs_policy_gradient_at_128": None if math.isnan(ratio) or algorithm == "policy_gradient" else ratio,
        "copy_rate_at_most_1pct": every(None if r is None else r["copy_rate"] <= 0.01 for r in rows.values()),
        "distinct_2_at_least_80pct_of_start": every(None if r is None or r["distinct_2_vs_start"] is None
                                                    else r["distinct_2_vs_start"] >= 0.8 for r in rows.values()),
        "wall_time_vs_policy_gradient": (float(np.mean(minutes) / np.mean(pg_minutes))
                                         if all(pg_minutes) and all(minutes) and algorithm != "policy_gradient"
                                         else None),
        "wall_time_machines": machines,  # more than one: the ratio mixes machines (machine_profile)
    }


# --------------------------------------------------------------------------------------------
# Driver


def settings_of(args) -> dict:
    """What makes two runs of one (arm, audience, seed) the same run."""
    return {"model": args.model, "posts": args.posts, "history": args.history, "sft_steps": args.sft_steps,
            "max_new_tokens": args.max_new_tokens, "fit_every": args.fit_every,
            "posts_per_update": args.posts_per_update, "start_posts": args.start_posts,
            "base_posts": args.base_posts,
            "audience_files": args.audience_file}


def git(root: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True, check=False)


def code_version(root: Path = ROOT) -> dict:
    """{"commit": HEAD's sha or None outside a git checkout, "changed": uncommitted changes to ARM_CODE}:
    recorded with each part, so that a part can be traced to the code that made it."""
    head = git(root, "rev-parse", "HEAD")
    if head.returncode != 0:
        return {"commit": None, "changed": None}
    changes = git(root, "status", "--porcelain", "--", *ARM_CODE).stdout
    return {"commit": head.stdout.strip(), "changed": bool(changes.strip())}


def machine_profile(threads: int) -> dict:
    """What the part's wall minutes were measured on: the CPU's name, cores, whether it has AVX-512, the load
    average before the run, and fp32 matmul GFLOP/s at the run's threads (best of 5 products of 1024 x 1024).
    Why: this benchmark's wall times differ 2-3x between machines of one type (110 against ~300 GFLOP/s on two
    2-core machines, AVX2 against AVX-512), so a ratio of two parts means something only on one machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    flags = ""
    with contextlib.suppress(OSError):
        info = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b  # warm up
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "avx512": "avx512f" in flags.split(),
            "matmul_gflops": round(2 * 1024**3 / best / 1e9, 1), "load_before": round(os.getloadavg()[0], 2)}


def machine_label(part: dict) -> str:
    """A part's CPU as the figures compare machines: its name and whether it has AVX-512."""
    machine = part.get("machine")
    if not machine:
        return "unrecorded"
    return f"{machine['cpu']}{' (AVX-512)' if machine.get('avx512') else ''}"


def stale_code(part: dict, root: Path = ROOT) -> list[str]:
    """The ARM_CODE files that changed between the commit that made `part` and HEAD ([] when unknown:
    a part recorded before commits were, or a commit this checkout does not have)."""
    commit = (part.get("code") or {}).get("commit")
    if not commit:
        return []
    changed = git(root, "diff", "--name-only", commit, "HEAD", "--", *ARM_CODE)
    return changed.stdout.split() if changed.returncode == 0 else []


def finished_runs(args) -> dict[tuple[str, str, int], dict]:
    """Runs in <results>/runs.jsonl made with this invocation's settings, by (arm, audience, seed)."""
    path = args.results / "runs.jsonl"
    if not args.resume or not path.is_file():
        return {}
    wanted, done = settings_of(args), {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            run = json.loads(line)
        except json.JSONDecodeError as error:
            raise SystemExit(f"{path}: line {number} is not JSON ({error}); fix or remove that line, "
                             "then resume again") from None
        if run.get("settings") == wanted:
            done[(run["arm"], run["audience"], run["seed"])] = run
    return done


def parse_args(argv=None):
    from crowdtune.training.rl import ALGORITHMS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--posts", type=int, default=max(BUDGETS), help="published posts per algorithm run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    def arm(value: str) -> str:
        try:
            split_arm(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return value

    parser.add_argument("--algorithms", nargs="*", type=arm, default=[*ALGORITHMS, BASELINE_ARM],
                        metavar="NAME[@N]",
                        help=f"algorithms ({', '.join(ALGORITHMS)}), each optionally @N candidates a slot; "
                             f"default: every registered one and {BASELINE_ARM} (start, oracle and base always run)")
    parser.add_argument("--audience", nargs="*", default=list(DEFAULT_AUDIENCES),
                        choices=["likes", "sentiment", "human", "rules"])
    parser.add_argument("--audience-file", action="append", default=[], metavar="PATH:NAME",
                        help="an object with log_appeal(texts) -> float array defined in a Python file")
    parser.add_argument("--history", type=int, default=3000, help="bundled posts in the face's history")
    parser.add_argument("--sft-steps", type=int, default=None, help="steps of the starting model's SFT "
                                                                    "(default: the product's default)")
    parser.add_argument("--start-posts", type=int, default=None, help="posts measuring the start (>= 256)")
    parser.add_argument("--base-posts", type=int, default=256, help="posts measuring the bare base")
    parser.add_argument("--posts-per-update", type=int, default=None,
                        help="matured posts per RL update (default: OnlineConfig's)")
    parser.add_argument("--fit-every", type=int, default=4, help="refit the reward model after this many new "
                                                                 "scores (the controller: 1)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-cache", type=Path, default=Path("data/models"))
    parser.add_argument("--audience-cache", type=Path, default=None, help="folder of fitted audiences")
    parser.add_argument("--results", type=Path, default=None,
                        help="runs.jsonl, the starting model, the samples of the fixed arms, the embedding cache "
                             "(default benchmarks/results/online-sandbox, kept in git; with --quick "
                             "data/benchmarks/online-sandbox-quick)")
    parser.add_argument("--resume", action="store_true", help="take runs already in <results>/runs.jsonl "
                                                              "(same settings) instead of running them again")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny GPT-2, 64 posts, 1 seed, "
                                                             "600 history posts, 20 SFT steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.posts = 64 if args.posts == max(BUDGETS) else args.posts
        args.seeds = 1 if args.seeds == 3 else args.seeds
        args.history = 600 if args.history == 3000 else args.history
        args.sft_steps = args.sft_steps or 20
    args.start_posts = args.start_posts or max(256, args.posts)
    args.seeds = list(range(args.seeds))
    if args.results is None:  # a smoke run's parts stay out of the parts kept in git
        args.results = Path("data/benchmarks/online-sandbox-quick" if args.quick
                            else "benchmarks/results/online-sandbox")
    args.results = args.results.absolute()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    # the embedding cache, reward models, versions and checkpoints live under the results folder
    os.environ["CROWDTUNE_DATA_DIR"] = str(args.results / "data")
    os.environ.pop("CROWDTUNE_ARTIFACTS_URL", None)
    import torch

    torch.set_num_threads(args.threads)
    from crowdtune.settings import load_settings
    from crowdtune.training.rl import DEFAULT_ALGORITHM

    settings = load_settings()
    if args.quick:
        from crowdtune.testing.sandbox_run import build_tiny_base, real_tweets

        tiny = args.results / "tiny-model"
        if not (tiny / "config.json").is_file():
            build_tiny_base(tiny, real_tweets())
        args.model = str(tiny)
    audiences = audiences_of(args)
    arms = list(FIXED_ARMS) + args.algorithms
    print(f"online sandbox: model {args.model}, {args.posts} posts, seeds {args.seeds}, audiences "
          f"{list(audiences)}, arms {arms}, results {args.results}", flush=True)
    # The history's texts do not depend on the audience: one starting model for every audience and seed.
    texts_only = Channel(args.results / "sandbox" / "history", audiences[next(iter(audiences))], 0, args.history)
    start_url = starting_model(args, texts_only.history())
    train_texts = [h["text"] for h in texts_only.history()]

    done, runs, code = finished_runs(args), {}, code_version()
    machine = machine_profile(args.threads)
    print(f"machine: {machine}", flush=True)
    for seed in args.seeds:
        pools = {}
        for name, policy in (("start", start_url), ("base", None)):
            slots = args.start_posts if name == "start" else math.ceil(args.base_posts / ORACLE_CANDIDATES) + 4
            pools[name] = sample_pool(args, name, policy, train_texts, slots, seed)
        pools["oracle"] = pools["start"]
        for audience_name, audience in audiences.items():
            history = None
            for arm in arms:
                key = (arm, audience_name, seed)
                if key in done:
                    runs[key] = done[key]
                    print(f"{arm} {audience_name} seed {seed}: taken from {args.results / 'runs.jsonl'}", flush=True)
                    stale = stale_code(done[key])
                    if stale:
                        print(f"  note: made at {done[key]['code']['commit'][:8]}; since then {len(stale)} file(s) "
                              f"it may depend on changed ({', '.join(stale[:4])}{', ...' if len(stale) > 4 else ''}): "
                              "remove its line from runs.jsonl to measure it again", flush=True)
                    continue
                folder = args.results / "sandbox" / f"{arm_folder(arm)}-{arm_folder(audience_name)}-s{seed}"
                channel = Channel(folder, audience, seed, args.history)
                if arm in FIXED_ARMS:
                    limit = {"start": args.start_posts, "oracle": args.start_posts, "base": args.base_posts}[arm]
                    run = fixed_arm(arm, pools[arm], channel, audience, seed, limit)
                else:
                    history = history if history is not None else channel.history()
                    run = algorithm_arm(args, settings, arm, audience_name, channel, history, start_url, seed)
                run.update({"arm": arm, "audience": audience_name, "seed": seed, "settings": settings_of(args),
                            "code": code, "machine": machine})
                runs[key] = run
                with open(args.results / "runs.jsonl", "a") as out:
                    out.write(json.dumps(run, default=str) + "\n")
                print(f"{arm} {audience_name} seed {seed}: mean score {sum(run['scores']) / len(run['scores']):.2f} "
                      f"on {len(run['scores'])} posts, copies {run['copies']}/{run['drawn']}, "
                      f"{run['seconds'] / 60:.1f} min", flush=True)
    summary = summarise(args, runs, arms, list(audiences))
    for audience_name, rows in summary.items():
        for arm, row in rows.items():
            windows = "  ".join(f"{label} x{row[label]['relative']:.3f}" for label in
                                ["first_16"] + [f"last_32_at_{b}" for b in BUDGETS] if label in row)
            print(f"{audience_name:10s} {arm:18s} {windows}  share {row['share_of_oracle_gain']}  "
                  f"copy {row['copy_rate']:.3f}  distinct-2 {row['distinct_2']:.3f}  {row['wall_minutes']:.1f} min")
    print(json.dumps({"benchmark": "online_sandbox", "smoke": bool(args.quick), "settings": settings_of(args),
                      "seeds": args.seeds, "arms": arms, "audiences": summary,
                      "goal": goals(summary, DEFAULT_ALGORITHM)}, default=str))


if __name__ == "__main__":
    main()
