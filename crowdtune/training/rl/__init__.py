"""Online RL on audience reactions: pick an algorithm by name, run one update.

    ALGORITHMS           name -> typed config (pydantic; each field carries its default and help)
    DEFAULT_ALGORITHM    "policy_gradient"
    algorithm_config(name, values) -> config, or SettingsError naming the problem and the fix
    run_update(algorithm, config, ...) -> UpdateResult (adapter_dir, metrics, stopped, pause)

Algorithms (one module each):
    reinforce        the classic loop, the baseline to beat (rl/reinforce.py)
    policy_gradient  learned baseline, clipped importance weights, replay, KL (rl/policy_gradient.py)
    reward_model     ridge reward model on embeddings + many RLOO steps against it, with an
                     agreement check that pauses the face when it stops tracking reality
                     (rl/reward_model.py)

Rewards come from crowdtune.training.rl.rewards.rewards_for (scores at maturity, log-scaled,
normalised against the face's recent posts, clipped); the caller puts them in each post's
"reward".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ValidationError

from crowdtune.errors import SettingsError
from crowdtune.training.callbacks import MetricsSink, ProgressSink
from crowdtune.training.configs import DEFAULT_ALGORITHM  # kept torch-free for the dashboard's form
from crowdtune.training.rl import policy_gradient, reinforce, reward_model
from crowdtune.training.rl.policy import UpdateInputs, UpdateResult
from crowdtune.training.rl.policy_gradient import PolicyGradientConfig
from crowdtune.training.rl.reinforce import ReinforceConfig
from crowdtune.training.rl.reward_model import RewardModelConfig
from crowdtune.training.rl.rewards import RewardConfig, rewards_for

ALGORITHMS: dict[str, type[BaseModel]] = {
    "reinforce": ReinforceConfig,
    "policy_gradient": PolicyGradientConfig,
    "reward_model": RewardModelConfig,
}
_UPDATES = {"reinforce": reinforce.update, "policy_gradient": policy_gradient.update,
            "reward_model": reward_model.update}

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "PolicyGradientConfig", "ReinforceConfig", "RewardConfig",
           "RewardModelConfig", "UpdateResult", "algorithm_config", "rewards_for", "run_update"]


def algorithm_config(name: str, values: dict | BaseModel | None = None) -> BaseModel:
    """The typed config of algorithm `name` from plain values (None = all defaults).

    Raises SettingsError for an unknown name (listing the valid ones) or invalid values
    (naming each bad field and what it must be).
    """
    if name not in ALGORITHMS:
        raise SettingsError(f"Unknown RL algorithm {name!r}.",
                            f"Use one of: {', '.join(ALGORITHMS)} (default {DEFAULT_ALGORITHM}).")
    cls = ALGORITHMS[name]
    if isinstance(values, cls):
        return values
    if isinstance(values, BaseModel):
        values = values.model_dump()
    try:
        return cls(**(values or {}))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']} (got {e.get('input')!r})"
                             for e in error.errors())
        raise SettingsError(f"Invalid {name} settings: {problems}.",
                            f"Fix those fields; `crowdtune config-docs {cls.__name__}` lists every setting and its "
                            "default.") from None


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
    on_metrics: MetricsSink | None = None,
    on_progress: ProgressSink | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed: int = 0,
) -> UpdateResult:
    """Run one update of `algorithm` on newly matured posts and return the updated policy.

    In: the algorithm's name and settings (validated by algorithm_config); the base model and the
    current policy's version URL (None = base + fresh LoRA); `batch`, the newly matured published
    posts ({"post_id", "prompt", "text", "token_ids", "logprob" (sum under the sampling policy),
    "score", "reward"}); `history`, every scored post of the face, oldest first ({"post_id",
    "text", "score", "reward", "published_at"}); local folders for the algorithm's state across
    updates and for this update's checkpoint; the face's imported posts for the copy guard;
    callbacks on_metrics(step, metrics), on_progress(step, total, loss, eta_seconds),
    should_stop() -> bool; a seed.
    Out: UpdateResult. Running again with the same checkpoint_dir resumes a killed update or
    returns the finished one's result without training.
    """
    import pytorch_lightning as pl

    settings = algorithm_config(algorithm, config)
    checkpoint_dir, state_dir = Path(checkpoint_dir), Path(state_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed, workers=True, verbose=False)
    inputs = UpdateInputs(
        base_model=base_model, policy_url=policy_url, batch=list(batch), history=list(history),
        state_dir=state_dir, checkpoint_dir=checkpoint_dir, model_cache_dir=Path(model_cache_dir),
        train_texts=list(train_texts), on_metrics=on_metrics, on_progress=on_progress,
        should_stop=should_stop, seed=seed,
    )
    return _UPDATES[algorithm](settings, inputs)
