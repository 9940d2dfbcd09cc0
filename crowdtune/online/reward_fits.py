"""A face's reward model, fitted in named steps, as `jobs.online.fit_reward_model` runs them.

    read_fit_inputs(conn, face_id) -> FitInputs             its scored posts and settings, via the store worker
    fit_model(settings, inputs) -> FittedRewardModel        era rewards, MiniLM vectors, time-split validation,
                                                            the fit, and the online agreement
    save_fit(settings, fitted) -> dict                     the model saved under artifacts_url; its reward_models row
    record_fit(settings, conn, fitted) -> str               the model saved under artifacts_url, its
                                                            reward_models row and metrics written
    ensure_reward_fit(conn, face_id, scored_posts)          queue the job, once per count of scored posts
    refit_if_behind(conn, face_id[, only_refit])            ... when the face's scores changed since its last fit

When a fit runs: the controller asks for one whenever the face's count of scored posts changed since
the last fit (controller.reward_model_due: new scores matured), an online run asks at its start, so a
model exists before the first post, and an import refits a model the face already has once its
history has landed. An import never makes the first fit: a newcomer's first import is followed by
the first offline run, and the fit (~80 s of embedding on 2 cores) would slow it for no one. The job id holds
the count, so each change is fitted once however many ticks see it.

Data: the face's scored posts, imported and published, oldest first. Their rewards are era-normalised
(rewards.era_rewards) over all of them, and the newest PredictorConfig.max_posts are fitted. The
vectors come from the shared embedding cache: the first fit embeds the history, later ones only the
new posts.

Honest figures, stored in the row's `figures` and as metrics of the run `reward-model:<face_id>`:
the time-split validation (predictor.time_split_validation: fitted on the older posts, scored on the
newest), and the online agreement: Spearman of what a reward model predicted when each post was
published (posts.predicted_reward) against the post's real era reward, over the newest
AGREEMENT_POSTS generated posts that had a prediction (NaN with fewer than MIN_AGREEMENT_POSTS).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import redis
from rq import Retry

from crowdtune import artifacts
from crowdtune.online import records
from crowdtune.online.controller import reward_model_due
from crowdtune.online.schedule import ensure_job, job_status, safe_id
from crowdtune.runtime import defaults
from crowdtune.settings import QUEUE_DEFAULT, Settings
from crowdtune.store.remote import read_rows_via_store_worker, read_via_store_worker
from crowdtune.store.writes import StoreWriter, utc_now, write_outcome
from crowdtune.training.rl.predictor import (
    PredictorConfig,
    RewardPredictor,
    fit_predictor,
    spearman,
    time_split_validation,
)
from crowdtune.training.rl.rewards import RewardConfig, era_rewards

AGREEMENT_POSTS = 32      # newest predicted posts the online agreement compares: about a week at 6 a day
MIN_AGREEMENT_POSTS = 8   # fewer: the agreement is NaN (a rank correlation of a handful says nothing)
RECORD_WAIT_SECONDS = 600  # the job ends once its row is in the store, so the next tick sees the fit


@dataclass
class FitInputs:
    face_id: str
    posts: list[dict]            # reward_model_inputs rows: the face's scored posts, oldest first
    reward: RewardConfig         # the face's online run's reward settings (defaults without one)
    predictor: PredictorConfig


@dataclass
class FittedRewardModel:
    face_id: str
    model_id: str
    model: RewardPredictor
    scored_posts: int            # the face's scored posts when read (the fit's key)
    fitted: list[dict]           # the predictor's posts it was fitted on: text, reward, origin, posted_at
    figures: dict
    config: dict


def read_fit_inputs(conn: redis.Redis, face_id: str) -> FitInputs:
    """The face's scored posts and the reward settings of its online run, if it has one."""
    posts = read_rows_via_store_worker(conn, "reward_model_inputs", face_id=face_id)
    controller = read_via_store_worker(conn, "online_controller", face_id=face_id)
    reward = ((controller or {}).get("config") or {}).get("reward") or {}
    return FitInputs(face_id, posts, RewardConfig(**reward), PredictorConfig())


def online_agreement(posts: list[dict], rewards: list[float]) -> tuple[float, int]:
    """(Spearman of predicted_reward vs real reward, posts compared) over the newest AGREEMENT_POSTS
    generated posts that had a prediction; NaN with fewer than MIN_AGREEMENT_POSTS."""
    pairs = [(p["predicted_reward"], r) for p, r in zip(posts, rewards, strict=True)
             if p["origin"] == "generated" and p.get("predicted_reward") is not None][-AGREEMENT_POSTS:]
    if len(pairs) < MIN_AGREEMENT_POSTS:
        return math.nan, len(pairs)
    predicted, real = np.asarray(pairs).T
    return spearman(predicted, real), len(pairs)


def fit_model(settings: Settings, inputs: FitInputs, on_progress=None) -> FittedRewardModel:
    """Fit the face's reward model (module docstring); ValueError with fewer posts than min_posts."""
    from crowdtune.embeddings import shared_cache

    # 1) every scored post against its own era, then the newest max_posts
    posts, config = inputs.posts, inputs.predictor
    rewards = era_rewards([p["score"] for p in posts], [p["posted_at"] for p in posts], inputs.reward)
    agreement, agreement_posts = online_agreement(posts, rewards)
    newest = slice(max(0, len(posts) - config.max_posts), None)
    fitted = [{"text": p["text"], "reward": r, "origin": p["origin"], "posted_at": p["posted_at"]}
              for p, r in zip(posts[newest], rewards[newest], strict=True)]
    if len(fitted) < config.min_posts:
        raise ValueError(f"{inputs.face_id} has {len(fitted)} scored post(s); a reward model needs {config.min_posts}")
    # 2) MiniLM vectors, each text embedded once across fits and machines: [n, 384]
    vectors = shared_cache(settings).embed([p["text"] for p in fitted], on_progress=on_progress)
    # 3) honest figures first (a model fitted on the older posts), then the model on all of them
    figures = time_split_validation(fitted, vectors, config)
    model = fit_predictor(fitted, vectors, config)
    generated = sum(p["origin"] == "generated" for p in fitted)
    figures.update({"online_agreement": agreement, "online_agreement_posts": agreement_posts,
                    "scored_posts": len(posts), "history_posts": len(fitted) - generated,
                    "generated_posts": generated, "noise": model.noise, "ridge_alpha": model.ridge_alpha})
    settings_used = {"predictor": config.model_dump(), "reward": inputs.reward.model_dump()}
    # Same posts, scores and settings: same id, so a re-run job rewrites its own row, not a new one.
    digest = hashlib.sha256(json.dumps([[p["post_id"], p["score"]] for p in posts[newest]] + [settings_used],
                                       sort_keys=True, default=str).encode()).hexdigest()[:10]
    model_id = f"{safe_id(inputs.face_id)}-{len(posts)}-{digest}"
    return FittedRewardModel(inputs.face_id, model_id, model, len(posts), fitted, figures, settings_used)


def reward_model_url(settings: Settings, model_id: str) -> str:
    """Where a reward model lives: under artifacts_url (any fsspec URL), so any worker loads it."""
    return artifacts.join(settings.artifacts, "reward_models", model_id)


def save_fit(settings: Settings, fitted: FittedRewardModel) -> dict:
    """Save the model under artifacts_url; return its reward_models row (what updates and publishing read)."""
    url = reward_model_url(settings, fitted.model_id)
    fitted.model.figures = fitted.figures
    fitted.model.save(url)
    figures = fitted.figures
    return {"model_id": fitted.model_id, "face_id": fitted.face_id, "fitted_at": utc_now(), "artifact_url": url,
            "history_posts": figures["history_posts"], "generated_posts": figures["generated_posts"],
            "validation_spearman": figures["validation_spearman"], "validation_posts": figures["validation_posts"],
            "figures": figures, "config": fitted.config}


def record_fit(settings: Settings, conn: redis.Redis, fitted: FittedRewardModel) -> str:
    """Save the model (save_fit), write its reward_models row and metrics, and wait until they are in the
    store (at most RECORD_WAIT_SECONDS), so that the next tick sees this fit. Returns the artifact's URL."""
    row = save_fit(settings, fitted)
    url, figures = row["artifact_url"], fitted.figures
    metrics = {name: figures[name] for name in ("validation_spearman", "validation_mae", "validation_coverage",
                                                "validation_generated_spearman", "online_agreement")}
    metrics["posts_fitted"] = float(len(fitted.fitted))
    write_id = StoreWriter(conn).submit(records.reward_model_fitted(row, metrics, fitted.scored_posts),
                                        write_id=f"reward-model:{fitted.model_id}")
    deadline, pause = time.monotonic() + RECORD_WAIT_SECONDS, 0.05
    while write_outcome(conn, write_id) is None and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)
    return url


# --------------------------------------------------------------------------------------------
# Triggers


def fit_job_id(face_id: str, scored_posts: int) -> str:
    return f"fit-reward-model-{safe_id(face_id)}-{scored_posts}"


def ensure_reward_fit(conn: redis.Redis, face_id: str, scored_posts: int) -> bool:
    """Queue the face's reward-model fit for its `scored_posts` scored posts on `default` unless a job
    for that count is known to Redis at all (waiting, running, finished or failed): each change is
    fitted once, and a fit that failed is not retried at every tick. Returns whether it queued one."""
    job_id = fit_job_id(face_id, scored_posts)
    if job_status(conn, job_id) is not None:
        return False
    return ensure_job(conn, QUEUE_DEFAULT, "jobs.online.fit_reward_model", face_id, job_id=job_id,
                      timeout=defaults.REWARD_FIT_TIMEOUT, retry=Retry(max=1, interval=30),
                      description=f"reward model of {face_id} on {scored_posts} scored posts")


def refit_if_behind(conn: redis.Redis, face_id: str, only_refit: bool = False) -> str | None:
    """Queue a fit when the face's scored posts changed since its last fit (enough of them for a model);
    return the job id when one is queued or already known, else None. `only_refit`: never the first fit."""
    status = read_via_store_worker(conn, "reward_model_status", face_id=face_id, timeout=60)
    if only_refit and status["fitted_scored_posts"] is None:
        return None
    if not reward_model_due(status["scored_posts"], status["fitted_scored_posts"]):
        return None
    ensure_reward_fit(conn, face_id, status["scored_posts"])
    return fit_job_id(face_id, status["scored_posts"])
