"""Online RL on audience reactions: pick an algorithm by name, run one update.

    ALGORITHMS           name -> typed config (pydantic; each field carries its default and help)
    DEFAULT_ALGORITHM    "guided"
    algorithm_config(name, values) -> config, or SettingsError naming the problem and the fix
    run_update(algorithm, config, ...) -> UpdateResult (adapter_dir, metrics, stopped, pause)

Algorithms (one module each):
    guided           the default: the face's fitted reward model steers the policy (a warm start before
                     the first post, RLOO distillation in every update), real rewards correct it through a
                     doubly-robust estimate over each best-of-N slot's candidates, and guards (KL leash,
                     copy guard, diversity floor, agreement) alert or pause (rl/guided.py)
    reinforce        the classic loop, the baseline to beat (rl/reinforce.py)
    policy_gradient  learned baseline, clipped importance weights, replay, KL (rl/policy_gradient.py)
    reward_model     ridge reward model on embeddings + many RLOO steps against it, with an
                     agreement check that pauses the face when it stops tracking reality
                     (rl/reward_model.py)

The operator's review decisions are feedback too (rl/feedback.py): a rejected post is a strong negative
(guided, policy_gradient), a pick a preference trained with a DPO loss against the reference (guided,
policy_gradient); an edited post never enters a policy-gradient step.

Rewards come from crowdtune.training.rl.rewards.rewards_for (scores at maturity, log-scaled,
normalised against the face's recent posts, clipped), the history's from era_rewards (each post
against the channel's posts of its own era); the caller puts them in each post's "reward".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

# The configs and names are torch-free (rl/configs.py): the dashboard's form imports this package.
from crowdtune.training.rl.configs import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    GuidedConfig,
    PolicyGradientConfig,
    ReinforceConfig,
    RewardModelConfig,
    algorithm_config,
    warm_start_steps,
)
from crowdtune.training.rl.rewards import RewardConfig, rewards_for

if TYPE_CHECKING:
    from pytorch_lightning.loggers import Logger

    from crowdtune.training.callbacks import ProgressSink
    from crowdtune.training.rl.policy import UpdateResult

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "GuidedConfig", "PolicyGradientConfig", "ReinforceConfig", "RewardConfig",
           "RewardModelConfig", "algorithm_config", "rewards_for", "run_update", "warm_start_steps"]


def _update_function(algorithm: str):
    """The algorithm's update(config, inputs), imported when an update runs (it loads torch)."""
    from crowdtune.training.rl import guided, policy_gradient, reinforce, reward_model

    return {"guided": guided.update, "reinforce": reinforce.update, "policy_gradient": policy_gradient.update,
            "reward_model": reward_model.update}[algorithm]


def run_update(
    algorithm: str,
    config: dict | BaseModel | None,
    *,
    base_model: str,
    policy_url: str | None,
    batch: list[dict],
    history: list[dict],
    state_dir: Path,
    checkpoint_dir: Path,
    model_cache_dir: Path,
    train_texts: list[str] = (),
    loggers: Sequence[Logger] = (),
    log_step: int | None = None,
    step_loggers: Sequence[Logger] = (),
    step_offset: int = 0,
    on_progress: ProgressSink | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed: int = 0,
    reward_model_url: str | None = None,
    device: str = "auto",
    feedback: dict | None = None,
) -> UpdateResult:
    """Run one update of `algorithm` on newly matured posts and return the updated policy.

    In: the algorithm's name and settings (validated by algorithm_config); the base model and the
    current policy's version URL (None = base + fresh LoRA); `batch`, the newly matured published
    posts ({"post_id", "prompt", "text", "token_ids", "logprob" (sum under the sampling policy),
    "score", "reward"}); `history`, every scored post of the face, oldest first ({"post_id",
    "text", "score", "reward", "published_at"}); local folders for the algorithm's state across
    updates and for this update's checkpoint; the face's imported posts for the copy guard;
    Lightning loggers (the trainer's; the update's figures are logged to them at `log_step`, default its
    optimizer steps); `step_loggers` get train/loss, train/lr and train/grad_norm every `log_every_n_steps`
    optimizer steps, numbered from `step_offset` (the run's steps before this update); callbacks
    on_progress(step, total, loss, eta_seconds), should_stop() -> bool; a seed;
    the URL of the face's fitted reward model (reads.latest_reward_model's
    artifact_url; None before its first fit), which `guided` learns from. A `guided` batch post may also
    carry "predicted_reward", "selection_probability" and "candidates" (the unpublished candidates of its
    slot: {"post_id", "prompt", "text", "token_ids", "logprob", "predicted_reward", "selection_probability"}).
    `device` is the one device it trains on (the `device` setting; see crowdtune.training.devices).
    `feedback`: the operator's review decisions since the face's previous update ({"rejected": posts,
    "picks": [{"chosen", "unpicked"}]}, rl/feedback.py), which `guided` and `policy_gradient` learn from.
    A batch post may carry "review" (the decision that let it out): an "edit" is never trained on.
    Out: UpdateResult. Running again with the same checkpoint_dir resumes a killed update or
    returns the finished one's result without training.
    """
    import pytorch_lightning as pl

    from crowdtune.training.rl.feedback import OperatorFeedback
    from crowdtune.training.rl.policy import UpdateInputs

    settings = algorithm_config(algorithm, config)
    checkpoint_dir, state_dir = Path(checkpoint_dir), Path(state_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed, workers=True, verbose=False)
    inputs = UpdateInputs(
        base_model=base_model, policy_url=policy_url, batch=list(batch), history=list(history),
        state_dir=state_dir, checkpoint_dir=checkpoint_dir, model_cache_dir=Path(model_cache_dir),
        train_texts=list(train_texts), loggers=list(loggers), log_step=log_step, on_progress=on_progress,
        step_loggers=list(step_loggers), step_offset=step_offset,
        should_stop=should_stop, seed=seed, reward_model_url=reward_model_url, device=device,
        feedback=OperatorFeedback.from_value(feedback),
    )
    return _update_function(algorithm)(settings, inputs)
