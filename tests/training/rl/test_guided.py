"""The guided algorithm on the tiny model: warm start, best-of-N updates with doubly-robust rewards, guards."""

import json
import math

import numpy as np
import pytest

from crowdtune.embeddings import EMBEDDING_DIM, shared_cache
from crowdtune.training.generation import GenerationConfig, sample
from crowdtune.training.models import load_version, save_version
from crowdtune.training.rl import run_update
from crowdtune.training.rl.guided import (
    STATE_FILE,
    WORST_REWARD,
    GuidedConfig,
    doubly_robust_rewards,
    fresh_samples,
    leave_one_out_advantages,
)
from crowdtune.training.rl.predictor import TEXT_FEATURES, PredictorConfig, RewardPredictor

QUICK = {"max_new_tokens": 24, "guard_samples": 8, "rloo_prompts": 2, "rloo_samples": 4, "distil_steps": 1,
         "copy_embedding_threshold": None}


def reward_model_liking(feature: str, weight: float, url: str, figures: dict | None = None) -> str:
    """Save a reward model whose members all prefer one text feature (predictor.TEXT_FEATURES) to `url`."""
    d = EMBEDDING_DIM + len(TEXT_FEATURES)
    coefs = np.zeros((4, d))
    coefs[:, EMBEDDING_DIM + TEXT_FEATURES.index(feature)] = weight * np.array([0.8, 0.9, 1.1, 1.2])
    RewardPredictor(np.zeros(d), np.ones(d), coefs, np.zeros(4), PredictorConfig(), figures).save(url)
    return url


def predicted(url: str, texts: list[str]) -> np.ndarray:
    """What the distillation pays for: the model's mean prediction, the worst reward for an empty post."""
    from crowdtune.training.rl.predictor import load_predictor

    mean, _ = load_predictor(url).predict(shared_cache().embed(texts, keep=False), texts)
    return np.where([not t.strip() for t in texts], WORST_REWARD, mean)


def guided(tiny_model_dir, tmp_path, name, *, batch=(), history=(), url=None, policy_url=None, train_texts=(),
           **config):
    return run_update("guided", {**QUICK, **config}, base_model=tiny_model_dir, policy_url=policy_url,
                      batch=list(batch), history=list(history), state_dir=tmp_path / "state",
                      checkpoint_dir=tmp_path / name, model_cache_dir=tmp_path / "cache",
                      train_texts=list(train_texts), reward_model_url=url, seed=3)


# --------------------------------------------------------------------------------------------
# The estimator on fixed numbers


def test_the_published_member_carries_its_correction_weighted_by_one_over_its_selection_probability():
    estimates = doubly_robust_rewards([1.0, 0.5, 0.0, 0.5], published=0, real=2.0, selection_probability=0.5)
    assert estimates.tolist() == [3.0, 0.5, 0.0, 0.5]                  # 1 + (2 - 1) / 0.5
    # the probability is clipped at 1/N: a rare pick weighs at most N times
    assert doubly_robust_rewards([1.0, 0.5, 0.0, 0.5], 0, 2.0, 0.05)[0] == 5.0
    assert doubly_robust_rewards([1.0, 0.5], 1, 2.0, None).tolist() == [1.0, 0.5 + 1.5 / 0.5]  # None: uniform
    advantages = leave_one_out_advantages(estimates)
    assert np.allclose(advantages, [3.0 - 1.0 / 3, 0.5 - 3.5 / 3, 0.0 - 4.0 / 3, 0.5 - 3.5 / 3])
    assert leave_one_out_advantages([2.0]).tolist() == [0.0]


@pytest.mark.parametrize("probabilities", [[0.25, 0.25, 0.25, 0.25], [0.55, 0.15, 0.2, 0.1]])
def test_over_the_choice_each_members_estimate_averages_to_its_real_reward_up_to_the_clip(probabilities):
    predictions, real = np.array([0.2, 1.0, -0.5, 0.3]), np.array([1.0, 0.0, 0.5, 2.0])
    n = len(real)
    expected = sum(p * doubly_robust_rewards(predictions, k, real[k], p) for k, p in enumerate(probabilities))
    # unbiased where p >= 1/N; a rarer pick's correction is shrunk by N * p (the documented clip)
    shrink = np.minimum(1.0, n * np.asarray(probabilities))
    assert np.allclose(expected, predictions + shrink * (real - predictions))
    if min(probabilities) >= 1 / n:
        assert np.allclose(expected, real)


# --------------------------------------------------------------------------------------------
# Warm start, updates with candidates


def test_the_warm_start_moves_the_policy_toward_what_the_reward_model_prefers(tiny_model_dir, tiny_policy, tmp_path):
    url = reward_model_liking("log_words", 1.0, str(tmp_path / "rm"))  # longer complete posts are better
    result = guided(tiny_model_dir, tmp_path, "u0", url=url, warm_start_steps=6, learning_rate=3e-3)
    assert result.metrics["warm_start"] == 1.0 and result.metrics["steps"] == 6
    assert result.metrics["real_steps"] == 0 and not result.pause and result.alerts == []
    model, tokenizer = tiny_policy
    policy, _ = load_version(save_version(result.adapter_dir, str(tmp_path / "v0"), base_model=tiny_model_dir))
    config = GuidedConfig(**{**QUICK, "guard_samples": 48})
    before = predicted(url, [s.text for s in fresh_samples(model, tokenizer, config, seed=99)]).mean()
    after = predicted(url, [s.text for s in fresh_samples(policy, tokenizer, config, seed=99)]).mean()
    assert after > before + 0.3, (before, after)
    assert result.metrics["predicted_reward_last"] > result.metrics["predicted_reward_first"]
    assert 0 < result.metrics["start_distinct_2"] <= 1
    assert json.loads((tmp_path / "state" / STATE_FILE).read_text())["start_distinct_2"] == \
        result.metrics["start_distinct_2"]  # measured once, kept for the face's later updates


def best_of_n_batch(model, tokenizer, posts: int, group: int, seed: int) -> list[dict]:
    """`posts` published posts, each the first of `group` samples, the rest its candidates."""
    samples = sample(model, tokenizer, GenerationConfig(num_samples=posts * group, batch_size=posts * group,
                                                        max_new_tokens=24, seed=seed))
    batch = []
    for p in range(posts):
        members = [{"post_id": f"p{p}c{i}", "prompt": "", "text": s.text, "token_ids": s.token_ids,
                    "logprob": float(sum(s.logprobs)), "predicted_reward": 0.1 * i, "selection_probability": 0.1}
                   for i, s in enumerate(samples[p * group:(p + 1) * group])]
        published = {**members[0], "post_id": f"p{p}", "score": 5.0 + p, "reward": 1.0 - p,
                     "selection_probability": 0.5}
        batch.append({**published, "candidates": members[1:]})
    return batch


def test_an_update_on_best_of_n_groups_trains_on_every_member_then_distils(tiny_model_dir, tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    batch = best_of_n_batch(model, tokenizer, posts=3, group=4, seed=11)
    history = [{"post_id": p["post_id"], "text": p["text"], "score": p["score"], "reward": 2.0 * p["reward"],
                "published_at": i} for i, p in enumerate(batch)]
    url = reward_model_liking("log_words", 1.0, str(tmp_path / "rm"))
    result = guided(tiny_model_dir, tmp_path, "u1", batch=batch, history=history, url=url, real_epochs=1,
                    groups_per_step=2, distil_steps=1)
    m = result.metrics
    assert (m["dr_groups"], m["dr_members"], m["dr_single_posts"]) == (3, 12, 0)
    assert (m["real_steps"], m["distil_steps"], m["steps"]) == (2, 1, 3)  # ceil(3 groups / 2) + 1
    # the correction uses the era reward from the history (2 * reward), stored prediction 0.0, p = 0.5
    assert m["dr_correction_mean"] == pytest.approx(np.mean([abs(2.0 * (1.0 - p)) / 0.5 for p in range(3)]))
    assert abs(m["importance_weight_mean"] - 1) < 0.05  # the first steps train on what this policy sampled
    for name in ("kl", "train_kl", "copy_rate", "distinct_2", "mean_length", "loss", "real_advantage_abs"):
        assert math.isfinite(m[name]), name
    assert not result.pause


# --------------------------------------------------------------------------------------------
# Guards, each forced


def test_the_kl_leash_alerts_when_the_policy_moves_further_than_allowed(tiny_model_dir, tmp_path):
    url = reward_model_liking("log_words", 1.0, str(tmp_path / "rm"))
    result = guided(tiny_model_dir, tmp_path, "u0", url=url, warm_start_steps=2, learning_rate=3e-3, max_kl=1e-6)
    assert [a["guard"] for a in result.alerts] == ["kl"]
    assert result.metrics["kl"] > 1e-6 and "max_kl" in result.alerts[0]["message"]
    assert not result.pause


def test_the_copy_guard_and_the_diversity_floor_trip_on_samples_that_copy_and_repeat(tiny_model_dir, tiny_policy,
                                                                                     tmp_path):
    model, tokenizer = tiny_policy
    # No training (no reward model, no posts): the guard samples are the start model's own, so make them copies.
    # 32 samples: with 8 short ones, every bigram could be distinct (distinct-2 = 1.0, not below the floor)
    config = GuidedConfig(**{**QUICK, "guard_samples": 32})
    copied = [s.text for s in fresh_samples(model, tokenizer, config, seed=3) if len(s.text.split()) >= 4]
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / STATE_FILE).write_text(json.dumps({"start_distinct_2": 1.0}))  # a perfectly diverse start
    result = guided(tiny_model_dir, tmp_path, "u0", train_texts=copied, diversity_floor=1.0, guard_samples=32)
    assert {a["guard"] for a in result.alerts} == {"copy", "diversity"}
    assert result.metrics["copy_rate"] > 0.01 and result.metrics["steps"] == 0
    assert result.pause and "Diversity floor" in result.pause_reason
    assert result.metrics["distinct_2"] < 1.0


def test_a_reward_model_that_stopped_agreeing_with_real_scores_pauses_without_training(tiny_model_dir, tiny_policy,
                                                                                      tmp_path):
    model, tokenizer = tiny_policy
    url = reward_model_liking("log_words", 1.0, str(tmp_path / "rm"),
                              figures={"online_agreement": -0.4, "online_agreement_posts": 32})
    result = guided(tiny_model_dir, tmp_path, "u1", batch=best_of_n_batch(model, tokenizer, 2, 2, seed=5), url=url)
    assert result.pause and "online agreement (Spearman) -0.40 on the newest 32 matured posts" in result.pause_reason
    assert result.metrics["steps"] == 0 and result.metrics["reward_model_agreement"] == -0.4
    assert -0.4 < result.metrics["reward_model_agreement_bound"] < 0.1


def test_a_low_agreement_on_few_posts_is_noise_and_trains_on(tiny_model_dir, tiny_policy, tmp_path):
    # -0.24 on 16 posts: its upper 95% bound is +0.22, so the model may well agree; the bare point
    # estimate paused sentiment's benchmark run twice in its first eight updates
    model, tokenizer = tiny_policy
    figures = {"online_agreement": -0.24, "online_agreement_posts": 16}
    url = reward_model_liking("log_words", 1.0, str(tmp_path / "rm"), figures=figures)
    result = guided(tiny_model_dir, tmp_path, "u1", batch=best_of_n_batch(model, tokenizer, 2, 2, seed=5), url=url)
    assert not result.pause and result.metrics["steps"] > 0
    assert result.metrics["reward_model_agreement_bound"] > 0.1
    pointwise = guided(tiny_model_dir, tmp_path, "u2", batch=best_of_n_batch(model, tokenizer, 2, 2, seed=5), url=url,
                       agreement_confidence=0.5)
    assert pointwise.pause and pointwise.metrics["steps"] == 0
