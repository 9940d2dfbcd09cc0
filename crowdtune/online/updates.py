"""One online RL update in three named steps, as `jobs.online.rl_update` runs them.

    read_update_inputs(conn, update_id) -> StoredUpdate   what the store holds for it, via the store worker
    train_update(settings, inputs, ...) -> UpdateResult   rewards, then the algorithm's Lightning update
                                                          (its step figures to the store and trackers as it trains)
    record_update(settings, writer, inputs, result)       the new version saved and registered, its metrics written
                                                          (the store, then the trackers of the `loggers` setting)
    update_trackers(settings, update)                     those trackers, built once for both, closed after
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import redis

from crowdtune import artifacts
from crowdtune.online import records
from crowdtune.online.controller import OnlineConfig
from crowdtune.settings import Settings
from crowdtune.store.remote import read_rows_via_store_worker, read_via_store_worker
from crowdtune.store.writes import StoreWriter, utc_now

if TYPE_CHECKING:  # Lightning is imported only by the jobs that train
    from pytorch_lightning.loggers import Logger

log = logging.getLogger(__name__)


@dataclass
class StoredUpdate:
    update: dict             # the online_updates row
    run: dict                # its run
    cfg: OnlineConfig
    active: dict | None      # the face's active version (the policy being improved), if any
    batch: list[dict]        # the matured posts this update learns from
    baseline_scores: list[float]
    history: list[dict]      # earlier scored posts (the reward model's data)
    train_texts: list[str]   # the face's training posts (for the copy guard)
    published_count: int
    reward_model: dict | None = None  # the face's newest reward_models row (its artifact_url), if any
    feedback: dict | None = None      # the review decisions it learns from (reads.update_feedback)
    last_step_figure: int = 0         # the run's highest train/loss step so far (this update's figures go on from it)

    @property
    def base_model(self) -> str:
        from crowdtune.settings import load_settings

        return ((self.active or {}).get("base_model") or self.run.get("base_model") or self.cfg.base_model
                or load_settings().base_model)


def read_update_inputs(conn: redis.Redis, update_id: str) -> StoredUpdate:
    """The update's row, its run and posts, and the face's training texts; ValueError if it is unknown."""
    raw = read_via_store_worker(conn, "update_inputs", update_id=update_id)
    if raw is None:
        raise ValueError(f"there is no online update {update_id!r} in the store")
    update = raw["update"]
    train_texts = [p["text"] for p in read_rows_via_store_worker(conn, "training_posts", face_id=update["face_id"])]
    return StoredUpdate(update=update, run=raw["run"], cfg=OnlineConfig(**raw["run"]["config"]),
                        active=raw.get("active_version"), batch=raw["batch"], baseline_scores=raw["baseline_scores"],
                        history=raw["history"], train_texts=train_texts,
                        published_count=raw.get("published_count", 0), reward_model=raw.get("reward_model"),
                        feedback=raw.get("feedback"), last_step_figure=raw.get("last_step_figure", 0))


def train_update(settings: Settings, inputs: StoredUpdate, on_progress: Callable, should_stop: Callable[[], bool],
                 checkpoint_name: str, writer: StoreWriter | None = None, trackers: Sequence[Logger] = ()):
    """Turn the batch's scores into rewards and run the configured algorithm; return its UpdateResult.

    Checkpoints live under the run's checkpoint folder (mirrored from and to `artifacts_url` when
    that is remote), so a re-run after a crash resumes where the update stopped. The update's step figures
    (train/loss, train/lr, train/grad_norm) go to the store (with a `writer`) and to `trackers` (from
    update_trackers: built once by the job, finalized after) as it trains, numbered on from the run's last
    step figure. That offset is pinned in the update's checkpoint folder, so a retried update logs its steps
    at the same numbers (once each).
    """
    from crowdtune.training.checkpoints import write_json
    from crowdtune.training.loggers import StoreLogger
    from crowdtune.training.rl import run_update

    cfg, update = inputs.cfg, inputs.update
    scores, rewards, history_rewards = batch_rewards(inputs)

    remote = artifacts.checkpoint_url(settings.artifacts, update["run_id"])
    mirrored = not artifacts.is_local(remote)
    base_dir = settings.data_dir / "checkpoints" / update["run_id"] if mirrored else artifacts.local_path(remote)
    if mirrored:
        artifacts.mirror_down(remote, base_dir)
    run_id = update["run_id"]
    store_logger = None if writer is None else StoreLogger(writer, run_id)
    step_loggers = [*([] if store_logger is None else [store_logger]), *trackers]
    pinned = base_dir / checkpoint_name / "step_offset.json"
    step_offset = json.loads(pinned.read_text())["offset"] if pinned.is_file() else inputs.last_step_figure
    write_json(pinned, {"offset": step_offset})
    result = run_update(
        cfg.algorithm, cfg.algorithm_settings, base_model=inputs.base_model,
        policy_url=(inputs.active or {}).get("artifact_url"),
        batch=[{"post_id": p["post_id"], "prompt": p["prompt"] or "", "text": p["text"], "token_ids": p["token_ids"],
                "logprob": p["logprob"], "score": s, "reward": r, "predicted_reward": p.get("predicted_reward"),
                "selection_probability": p.get("selection_probability"), "review": p.get("review"),
                "candidates": [{**c, "prompt": c.get("prompt") or ""} for c in p.get("candidates") or []]}
               for p, s, r in zip(inputs.batch, scores, rewards, strict=True)],
        history=[{**h, "reward": r} for h, r in zip(inputs.history, history_rewards, strict=True)],
        state_dir=base_dir / "state", checkpoint_dir=base_dir / checkpoint_name,
        model_cache_dir=settings.data_dir / "models", train_texts=inputs.train_texts,
        on_progress=on_progress, should_stop=should_stop, seed=cfg.seed * 1000 + update["step"],
        reward_model_url=(inputs.reward_model or {}).get("artifact_url"), device=settings.device,
        feedback=inputs.feedback, step_loggers=step_loggers, step_offset=step_offset,
        # no loggers: record_update logs the update's figures with the batch's, at the update's step
    )
    if store_logger is not None:
        store_logger.finalize("success")
    if mirrored:
        artifacts.mirror_up(base_dir, remote)
    return result


def batch_rewards(inputs: StoredUpdate) -> tuple[list[float], list[float], list[float]]:
    """(scores, rewards) of the batch against the face's earlier posts, and the history's rewards,
    each history post against its own era (rewards.era_rewards: old posts had fewer readers)."""
    from crowdtune.training.rl.rewards import RewardConfig, era_rewards, rewards_for

    reward_config = RewardConfig(**inputs.cfg.reward)
    scores = [float(p["score"]) for p in inputs.batch]
    rewards = rewards_for(scores, inputs.baseline_scores, reward_config)
    history_rewards = era_rewards([float(h["score"]) for h in inputs.history],
                                  [h.get("published_at") for h in inputs.history], reward_config)
    return scores, rewards, history_rewards


def update_metrics(inputs: StoredUpdate, result) -> dict[str, float]:
    """The algorithm's finite figures plus the batch's: score, reward, length, copy rate, posts per day."""
    from crowdtune.training.guards import CopyIndex

    scores, rewards, _ = batch_rewards(inputs)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
    metrics["batch_posts"] = float(len(inputs.batch))
    if inputs.batch:  # a warm start (step 0) has no posts, only the algorithm's figures
        metrics.update({"score_mean": float(np.mean(scores)), "score_max": float(np.max(scores)),
                        "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards))})
        metrics.setdefault("mean_length", float(np.mean([len(p["text"].split()) for p in inputs.batch])))
    if "copy_rate" not in metrics and inputs.train_texts and inputs.batch:
        metrics["copy_rate"] = CopyIndex(inputs.train_texts, embedding_threshold=None).copy_rate(
            [p["text"] for p in inputs.batch])
    started = inputs.run.get("started_at")
    if started:
        elapsed = (utc_now() - datetime.fromisoformat(str(started))).total_seconds()
        metrics["posts_per_day"] = inputs.published_count / max(elapsed * inputs.cfg.time_acceleration / 86400.0, 1.0)
    return metrics


@contextmanager
def update_trackers(settings: Settings, update: dict) -> Iterator[list[Logger]]:
    """The run's trackers (the `loggers` setting), built once for an update's training and record, and
    finalized after the block with its outcome ("failed" if it raised). Built before anything is done, so a
    tracker whose extra is missing fails the update before it trains."""
    from crowdtune.training.loggers import finalize_trackers, run_trackers

    trackers = run_trackers(settings, update["face_id"], update["run_id"])
    status = "failed"
    try:
        yield trackers
        status = "success"
    finally:
        finalize_trackers(trackers, status)


def record_update(settings: Settings, writer: StoreWriter, inputs: StoredUpdate, result,
                  trackers: Sequence[Logger] = ()) -> tuple[str, dict]:
    """Save the update's adapter as a version, register it with its metrics and log them to `trackers`
    (one point per update, at the update's step); return (version id, metrics)."""
    from crowdtune.training.loggers import log_figures
    from crowdtune.training.models import save_version

    update, cfg = inputs.update, inputs.cfg
    metrics = update_metrics(inputs, result)
    version_id = update["update_id"]
    url = artifacts.version_url(settings.artifacts, version_id)
    parent = (inputs.active or {}).get("version_id")
    save_version(result.adapter_dir, url, base_model=inputs.base_model,
                 metadata={"version_id": version_id, "run_id": update["run_id"], "parent_version_id": parent,
                           "algorithm": cfg.algorithm, "update_id": version_id})
    version = {"version_id": version_id, "parent_version_id": parent, "base_model": inputs.base_model,
               "artifact_url": url}
    pause_reason = (result.pause_reason or "the update asked to pause") if result.pause else None
    note = f"online {cfg.algorithm} update {update['step']} on {len(inputs.batch)} posts" if inputs.batch \
        else f"online {cfg.algorithm} warm start against the face's reward model"
    writer.submit(records.update_finished(update, version, metrics, note, pause_reason, result.alerts),
                  write_id=f"update-finish:{version_id}")
    try:
        log_figures(trackers, update["step"], metrics)
    except Exception:  # the version is registered: an unreachable tracker must not fail the update now
        log.warning("update %s: could not log to the trackers %s", version_id, settings.loggers, exc_info=True)
    return version_id, metrics
