"""Rewards from matured scores: log-scaled, normalised against the face's recent posts, clipped.

A post's score (crowdtune.scoring, read at maturity; immature posts have none and are never
used) spans orders of magnitude and drifts with the channel's audience, so the reward is how
much better a post did than the face's own recent posts:

    reward = clip((log1p(score) - centre(window)) / spread(window), -clip, +clip)

where `window` is log1p of the last `baseline_window` scored posts of the face (before these
ones), `centre`/`spread` are mean/std (normalize="z") or median/1.4826*MAD (normalize="mad",
robust to a viral outlier). With too few baseline posts the batch itself is the reference.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class RewardConfig(BaseModel):
    """How matured scores become rewards."""

    model_config = ConfigDict(extra="forbid")

    log_scale: bool = Field(True, description="use log1p(score) (scores are >= 0 and heavy-tailed)")
    baseline_window: int = Field(64, ge=1, description="how many of the face's previous scored posts form the baseline")
    min_baseline: int = Field(8, ge=1, description="fewer previous posts than this: use them plus the new ones")
    normalize: Literal["mad", "z"] = Field(
        "mad", description='"mad": (x - median) / (1.4826 * MAD); "z": (x - mean) / std')
    min_spread: float = Field(0.05, gt=0.0, description="floor of the spread (in log units), so that near-identical "
                                                        "scores do not blow up into huge rewards")
    clip: float = Field(3.0, gt=0.0, description="rewards are clipped to [-clip, +clip]")


def _scale(values, config: RewardConfig) -> np.ndarray:
    x = np.asarray([max(0.0, float(v)) for v in values], dtype=np.float64)
    return np.log1p(x) if config.log_scale else x


def rewards_for(scores: list[float], baseline_scores: list[float], config: RewardConfig | None = None) -> list[float]:
    """Rewards of newly matured posts.

    In: `scores` of the new posts; `baseline_scores` of the face's previous scored posts, oldest
    first (only the last `baseline_window` are used; may be empty). Out: one reward per score,
    in [-clip, clip]. With fewer than `min_baseline` previous posts the reference is those plus
    the new posts; a single post with no baseline gets 0 (nothing to compare it with).
    """
    config = config or RewardConfig()
    if not scores:
        return []
    new = _scale(scores, config)
    reference = _scale(list(baseline_scores)[-config.baseline_window:], config)
    if len(reference) < config.min_baseline:
        reference = np.concatenate([reference, new])
    if config.normalize == "z":
        centre, spread = reference.mean(), reference.std()
    else:
        centre = np.median(reference)
        spread = 1.4826 * np.median(np.abs(reference - centre))
    spread = max(float(spread), config.min_spread)
    rewards = np.clip((new - centre) / spread, -config.clip, config.clip)
    return [0.0 if math.isnan(r) else float(r) for r in rewards]
