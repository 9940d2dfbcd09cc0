"""The typed settings of the online RL algorithms, by name, free of torch.

    ALGORITHMS           name -> typed config (pydantic; each field carries its default and help)
    DEFAULT_ALGORITHM    "guided"
    algorithm_config(name, values) -> config, or SettingsError naming the problem and the fix
    warm_start_steps(name, values) -> steps before a run's first post (0: no warm start)

Each algorithm's module (reinforce, policy_gradient, reward_model, guided) imports its config from
here and holds the code that trains. Why apart: the dashboard's online form draws these settings,
and importing the training code loads torch, transformers and Lightning into the app process
(seconds, ~0.5 GB, and every later garbage collection walks their objects: crowdtune.training.configs).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crowdtune.errors import SettingsError
from crowdtune.training.configs import GenerationConfig


class RLConfig(BaseModel):
    """Settings every algorithm has; each algorithm's config adds its own (and may change a default)."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-4, gt=0.0, description="AdamW, constant")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW")
    grad_clip: float | None = Field(1.0, gt=0.0, description="max gradient norm; None = off")
    # LoRA: only used when there is no current policy (policy_url None)
    lora_rank: int = Field(8, ge=1, description="LoRA rank of a fresh policy")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha of a fresh policy")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout of a fresh policy")
    lora_targets: str | list[str] = Field("all-linear", description="LoRA modules of a fresh policy")
    # The sampling policy: it must match the GenerationConfig the posts were sampled with (its defaults),
    # so that recorded and recomputed log-probabilities agree.
    temperature: float = Field(0.9, gt=0.0, description="sampling policy: temperature")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="sampling policy: nucleus sampling; 1.0 = off")
    top_k: int = Field(0, ge=0, description="sampling policy: top-k; 0 = off")
    repetition_penalty: float = Field(1.0, gt=0.0, description="sampling policy: repetition penalty; 1.0 = off")
    max_new_tokens: int = Field(40, ge=1, description="tokens per post sampled inside the update (samples, evaluation)")
    eval_samples: int = Field(8, ge=0, description="fresh samples of the updated policy for copy_rate and mean_length; "
                                                   "0 = measure the batch's posts instead")
    copy_min_ngram: int = Field(12, ge=2, description="words in common that make a sample a copy (guards.CopyIndex)")
    copy_embedding_threshold: float | None = Field(
        0.95, gt=0.0, le=1.0, description="cosine that makes a sample a near-copy; None = n-grams only")
    precision: str = Field("auto", description='"auto": "bf16-mixed" on GPUs that support it, else "32-true"')
    accelerator: str = Field("auto", description="Lightning accelerator (cpu, gpu, ...)")
    checkpoint_every: int = Field(1, ge=1, description="optimizer steps between checkpoints (resume after a kill)")
    log_every_n_steps: int = Field(1, ge=0, description="optimizer steps between the train/loss, train/lr and "
                                   "train/grad_norm figures, counted over the run's updates; 0 = off")

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        import torch  # only where training runs: this module stays free of torch (module docstring)

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "32-true"

    def generation(self, **overrides) -> GenerationConfig:
        """The GenerationConfig of this sampling policy (no filters)."""
        values = dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                      repetition_penalty=self.repetition_penalty, max_new_tokens=self.max_new_tokens)
        return GenerationConfig(**{**values, **overrides})


class ReinforceConfig(RLConfig):
    """Settings of a REINFORCE update (and every RLConfig setting)."""

    window: int = Field(64, ge=2, description="z-score the batch's rewards against the last `window` rewards of the "
                                              "face (history) plus the batch itself")


class OperatorFeedbackSettings(RLConfig):
    """How an update learns from the operator's review decisions (crowdtune.training.rl.feedback), mixed into
    the configs of the algorithms that do (guided, policy_gradient)."""

    rejection_reward: float = Field(-3.0, le=0.0, description="the real reward of a post the operator rejected on "
                                    "review: the floor of audience rewards (-RewardConfig.clip), so a rejection "
                                    "counts as the worst reaction a post can get")
    preference_weight: float = Field(1.0, ge=0.0, description="weight of the DPO loss on the operator's picks (the "
                                     "picked candidate over each unpicked one of its slot); 0 = picks teach nothing")
    preference_beta: float = Field(0.1, gt=0.0, description="DPO beta: how far from the reference (the base, adapter "
                                   "off) the policy may move to honour a pick; higher = stays closer")


class PolicyGradientConfig(OperatorFeedbackSettings):
    """Settings of a policy-gradient update (and every OperatorFeedbackSettings and RLConfig setting)."""

    epochs: int = Field(4, ge=1, description="passes over (batch + replay) per update")
    minibatch_size: int = Field(16, ge=1, description="posts per optimizer step")
    replay_posts: int = Field(64, ge=0, description="earlier posts kept in state_dir and trained on again; 0 = off")
    clip_epsilon: float = Field(0.2, gt=0.0, lt=1.0, description="importance weights are clipped to [1 - eps, 1 + eps]")
    kl_coef: float = Field(0.05, ge=0.0, description="weight of KL(policy || reference) in the loss")
    baseline_rate: float = Field(0.1, gt=0.0, le=1.0,
                                 description="how fast the learned baseline follows rewards (per post)")
    learning_rate: float = Field(2e-4, gt=0.0, description="AdamW, constant")


class RLOOSettings(RLConfig):
    """Settings of RLOO steps against a reward function (and every RLConfig setting)."""

    rloo_prompts: int = Field(4, ge=1, description="prompts per step (the batch's prompts; the empty prompt when none)")
    rloo_samples: int = Field(4, ge=2, description="samples per prompt (the leave-one-out group)")
    kl_coef: float = Field(0.05, ge=0.0, description="weight of KL(policy || reference) in the loss")
    trim_unfinished: bool = Field(True, description="trim samples to their last full sentence, as published")


class AgreementPauseSettings(RLConfig):
    """When an update that trusts a reward model pauses instead of training (predictor.agreement_pause),
    mixed into the configs of the algorithms that do (reward_model, guided)."""

    agreement_threshold: float = Field(0.1, ge=-1.0, le=1.0, description="the reward model's online agreement "
                                       "(Spearman) below this: pause, nothing is trained")
    agreement_confidence: float = Field(0.95, ge=0.5, lt=1.0, description="pause only when the agreement is below "
                                        "agreement_threshold with this confidence: its one-sided upper bound on "
                                        "the posts it was measured on (Fisher z); 0.5 = the point estimate alone")


class RewardModelConfig(RLOOSettings, AgreementPauseSettings):
    """Settings of a reward-model update (and every RLOOSettings, AgreementPauseSettings and RLConfig setting)."""

    ridge_alpha: float = Field(3.0, gt=0.0, description="ridge regularisation of the reward model")
    min_fit_posts: int = Field(16, ge=2, description="fewer scored posts than this: no reward model, no training")
    agreement_posts: int = Field(32, ge=2, description="newest matured posts the agreement check predicts")
    min_agreement_posts: int = Field(
        8, ge=2, description="fewer (or too few older posts to fit on): agreement is NaN, no pause")
    rloo_steps: int = Field(8, ge=1, description="optimizer steps against the reward model per update")
    learning_rate: float = Field(2e-4, gt=0.0, description="AdamW, constant")


class GuidedConfig(RLOOSettings, OperatorFeedbackSettings, AgreementPauseSettings):
    """Settings of a guided update (and every RLOOSettings, OperatorFeedbackSettings, AgreementPauseSettings and
    RLConfig setting)."""

    warm_start_steps: int = Field(8, ge=0, description="RLOO steps against the reward model before the run's first "
                                                       "post (an update with no posts); 0 = no warm start")
    distil_steps: int = Field(0, ge=0, description="RLOO steps on fresh samples against the reward model in each "
                                                   "update, after the real-reward steps; 0: the groups' unpublished "
                                                   "candidates, rewarded by the reward model, are the distillation")
    real_epochs: int = Field(2, ge=1, description="passes over the batch's best-of-N groups (real rewards, "
                                                  "doubly robust)")
    groups_per_step: int = Field(4, ge=1, description="best-of-N groups (a published post and its candidates) per "
                                                      "optimizer step")
    clip_epsilon: float = Field(0.2, gt=0.0, lt=1.0, description="importance weights are clipped to [1 - eps, 1 + eps]")
    max_kl: float = Field(1.0, gt=0.0, description="KL leash: KL per token of fresh samples to the reference (the "
                                                   "base, adapter off) above this trips an alert")
    max_copy_rate: float = Field(0.01, ge=0.0, le=1.0, description="copy guard: share of fresh samples copying a "
                                 "training post or one of the face's earlier posts above this trips an alert")
    diversity_floor: float = Field(0.8, ge=0.0, le=1.0, description="diversity floor: distinct-2 of fresh samples "
                                   "below this share of the start model's pauses the face and alerts")
    guard_samples: int = Field(32, ge=4, description="fresh samples of the updated policy the guards measure")
    eval_samples: int = Field(0, ge=0, description="unused: the guards measure copy_rate and mean_length on "
                                                   "guard_samples")
    learning_rate: float = Field(2e-4, gt=0.0, description="AdamW, constant")


ALGORITHMS: dict[str, type[BaseModel]] = {
    "guided": GuidedConfig,
    "reinforce": ReinforceConfig,
    "policy_gradient": PolicyGradientConfig,
    "reward_model": RewardModelConfig,
}
DEFAULT_ALGORITHM = "guided"


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


def warm_start_steps(name: str, values: dict | BaseModel | None = None) -> int:
    """How many steps algorithm `name` takes against the face's reward model before a run's first post
    (0: it does not warm start)."""
    return int(getattr(algorithm_config(name, values), "warm_start_steps", 0))


