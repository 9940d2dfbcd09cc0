"""The per-face reward model: a bootstrap ridge ensemble over embeddings and cheap text features."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdtune.training.rl.predictor import (
    LEGACY_TEXT_FEATURES,
    TEXT_FEATURES,
    PredictorConfig,
    RewardPredictor,
    agreement_pause,
    choose_ridge_alpha,
    fit_predictor,
    load_predictor,
    penalties,
    spearman_upper_bound,
    text_features,
    time_split_validation,
)


def synthetic_posts(n: int, seed: int = 0, dims: int = 16):
    """Posts whose reward is a fixed linear function of their vector plus a bonus for a question."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dims))
    truth = rng.normal(size=dims)
    start = datetime(2020, 1, 1)
    posts = []
    for i in range(n):
        question = i % 3 == 0
        text = f"post number {i}" + (" why?" if question else ".")
        reward = float(vectors[i] @ truth / math.sqrt(dims) + (0.8 if question else 0.0) + rng.normal(scale=0.2))
        posts.append({"text": text, "reward": reward, "origin": "imported",
                      "posted_at": start + timedelta(hours=7 * i)})
    return posts, vectors


def test_the_ensemble_learns_the_rewards_and_is_less_sure_far_from_its_data():
    posts, vectors = synthetic_posts(400)
    model = fit_predictor(posts, vectors)
    mean, std = model.predict(vectors, [p["text"] for p in posts])
    assert np.corrcoef(mean, [p["reward"] for p in posts])[0, 1] > 0.8
    far_mean, far_std = model.predict(vectors[:20] * 6.0, [p["text"] for p in posts[:20]])
    assert far_std.mean() > 2 * std.mean()  # far from every post it saw: wide uncertainty


def test_the_time_split_validation_predicts_the_newest_posts_from_the_older_ones():
    posts, vectors = synthetic_posts(300)
    figures = time_split_validation(posts, vectors)
    assert figures["validation_posts"] == 60
    assert figures["validation_spearman"] > 0.6
    assert 0.8 <= figures["validation_coverage"] <= 1.0  # ~95% for a calibrated model
    shuffled = [{**p, "reward": r} for p, r in zip(posts, np.random.default_rng(1).permutation(
        [p["reward"] for p in posts]), strict=True)]
    assert abs(time_split_validation(shuffled, vectors)["validation_spearman"]) < 0.3  # nothing to learn


def test_too_few_posts_give_no_model_and_nan_validation():
    posts, vectors = synthetic_posts(10)
    with pytest.raises(ValueError, match="at least 16"):
        fit_predictor(posts, vectors)
    assert math.isnan(time_split_validation(posts, vectors)["validation_spearman"])


def test_generated_posts_weigh_more_than_imported_ones():
    posts, vectors = synthetic_posts(200)
    # The same vectors as generated posts, with rewards that say the opposite: they win as they weigh more.
    generated = [{**p, "origin": "generated", "reward": -p["reward"]} for p in posts[:60]]
    model = fit_predictor(posts + generated, np.vstack([vectors, vectors[:60]]),
                          PredictorConfig(generated_weight=8.0))
    mean, _ = model.predict(vectors[:60], [p["text"] for p in posts[:60]])
    assert np.corrcoef(mean, [p["reward"] for p in generated])[0, 1] > 0


def test_a_saved_model_predicts_the_same_after_loading(tmp_path):
    posts, vectors = synthetic_posts(100)
    model = fit_predictor(posts, vectors)
    model.figures = {"validation_spearman": 0.5}
    model.save(str(tmp_path / "rm"))
    loaded = load_predictor(str(tmp_path / "rm"))
    texts = [p["text"] for p in posts]
    assert np.allclose(model.predict(vectors, texts)[0], loaded.predict(vectors, texts)[0])
    assert loaded.figures == {"validation_spearman": 0.5} and loaded.noise == pytest.approx(model.noise)
    with pytest.raises(FileNotFoundError):
        load_predictor(str(tmp_path / "none"))


def test_the_model_learns_a_preferred_length_not_only_longer_or_shorter():
    # An audience that likes ~15 words best: a bell in log length, which a linear term cannot draw.
    rng = np.random.default_rng(3)
    lengths = rng.integers(2, 70, size=400)
    posts = [{"text": " ".join(["word"] * int(n)), "origin": "imported", "posted_at": None,
              "reward": float(-(math.log(n) - math.log(15)) ** 2 + rng.normal(scale=0.1))} for n in lengths]
    model = fit_predictor(posts, rng.normal(size=(400, 8)))
    short, preferred, long = model.predict(np.zeros((3, 8)), [" ".join(["word"] * n) for n in (4, 15, 50)])[0]
    assert preferred > short + 0.5 and preferred > long + 0.5


def test_a_model_saved_before_the_squared_lengths_still_loads_and_predicts(tmp_path):
    posts, vectors = synthetic_posts(100)
    d = vectors.shape[1] + len(LEGACY_TEXT_FEATURES)
    coefs = np.random.default_rng(2).normal(size=(4, d))
    old = RewardPredictor(np.zeros(d), np.ones(d), coefs, np.zeros(4), PredictorConfig(),
                          features=LEGACY_TEXT_FEATURES)
    old.save(str(tmp_path / "rm"))
    meta_path = tmp_path / "rm" / "predictor.json"
    meta = json.loads(meta_path.read_text())
    del meta["text_features"]  # what an older Crowdtune wrote: no feature names, one penalty for all
    del meta["ridge_alpha"], meta["config"]["ridge_alphas"], meta["config"]["text_ridge_alpha"]
    meta["config"]["ridge_alpha"] = 3.0
    meta_path.write_text(json.dumps(meta))
    texts = [p["text"] for p in posts]
    loaded = load_predictor(str(tmp_path / "rm"))
    assert loaded.features == LEGACY_TEXT_FEATURES
    assert np.allclose(loaded.predict(vectors, texts)[0], old.predict(vectors, texts)[0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=8),
       st.lists(st.one_of(st.none(), st.floats(0, 24)), min_size=8, max_size=8))
def test_text_features_are_finite_for_any_text_and_hour(texts, hours):
    features = text_features(texts, hours[:len(texts)])
    assert features.shape == (len(texts), len(TEXT_FEATURES)) and np.isfinite(features).all()


def brute_force_loo_error(z, y, weights, alpha, text_alpha):
    """The weighted leave-one-out squared error of a weighted ridge with intercept, refitted n times (the
    weights scaled to sum to n, as the bootstrap's counts do)."""
    weights = weights / weights.mean()
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        w, zk, yk = weights[keep], z[keep], y[keep]
        x_mean, y_mean = w @ zk / w.sum(), w @ yk / w.sum()
        zc = zk - x_mean
        coef = np.linalg.solve((zc * w[:, None]).T @ zc + np.diag(penalties(z.shape[1], alpha, text_alpha)),
                               (zc * w[:, None]).T @ (yk - y_mean))
        errors.append(weights[i] * (y[i] - y_mean - (z[i] - x_mean) @ coef) ** 2)
    return float(np.mean(errors))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(20, 40), st.sampled_from([1.0, 4.0]))
def test_the_closed_form_leave_one_out_error_is_that_of_refitting_without_each_post(seed, n, generated_weight):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3 + len(TEXT_FEATURES)))
    y = z[:, 0] - 0.5 * z[:, -1] + rng.normal(size=n)
    weights = np.where(rng.random(n) < 0.3, generated_weight, 1.0)
    config = PredictorConfig(ridge_alphas=(0.5, 5.0, 50.0), text_ridge_alpha=2.0)
    _, errors = choose_ridge_alpha(z, y, weights, config)
    for alpha, error in errors.items():
        assert error == pytest.approx(brute_force_loo_error(z, y, weights, alpha, 2.0), rel=1e-6)


def test_each_fit_penalises_the_embedding_as_much_as_its_own_posts_ask():
    posts, vectors = synthetic_posts(300)  # rewards a linear function of the vectors: little shrinkage
    config = PredictorConfig(ridge_alphas=(10.0, 100.0, 1000.0, 10000.0))
    assert fit_predictor(posts, vectors, config).ridge_alpha == 10.0
    noise = np.random.default_rng(5).normal(size=vectors.shape)  # vectors that say nothing: shrink them away
    chosen = fit_predictor(posts, noise, config)
    assert chosen.ridge_alpha >= 1000.0
    assert chosen.loo_errors[chosen.ridge_alpha] == min(chosen.loo_errors.values())
    # the question bonus lives in a text feature, penalised apart: it survives however the embedding is shrunk
    mean, _ = chosen.predict(noise[:2], ["post number 1 why?", "post number 1."])
    assert mean[0] - mean[1] > 0.5


@pytest.mark.parametrize("alphas", [(), (0.0,), (10.0, -1.0)])
def test_a_penalty_grid_that_is_empty_or_not_positive_is_refused_naming_the_field(alphas):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ridge_alphas"):
        PredictorConfig(ridge_alphas=alphas)


@pytest.mark.parametrize("n", [8, 16, 32])
def test_the_agreement_bound_covers_the_true_rank_correlation_95_times_in_100(n):
    # Pairs of a bivariate normal with correlation 0.4: its Spearman correlation is (6/pi) asin(0.2).
    rng = np.random.default_rng(n)
    truth = 6 / math.pi * math.asin(0.2)
    draws = 4000
    x = rng.standard_normal((draws, n))
    y = 0.4 * x + math.sqrt(1 - 0.4 ** 2) * rng.standard_normal((draws, n))
    rx, ry = x.argsort(1).argsort(1), y.argsort(1).argsort(1)
    rho = 1 - 6 * ((rx - ry) ** 2).sum(1) / (n * (n * n - 1))
    covered = np.mean([spearman_upper_bound(r, n, 0.95) >= truth for r in rho])
    assert 0.93 <= covered <= 0.975, covered


@given(rho=st.floats(-1, 1), n=st.integers(0, 10_000), confidence=st.floats(0.5, 0.999))
def test_the_agreement_bound_is_never_below_the_estimate_and_narrows_with_posts(rho, n, confidence):
    bound = spearman_upper_bound(rho, n, confidence)
    assert rho - 1e-9 <= bound <= 1.0
    assert spearman_upper_bound(rho, n + 100, confidence) <= bound + 1e-9
    assert spearman_upper_bound(rho, None, confidence) == rho
    assert math.isnan(spearman_upper_bound(math.nan, n, confidence))


@given(rho=st.one_of(st.floats(-1, 1), st.just(math.nan)), n=st.one_of(st.none(), st.integers(0, 500)),
       threshold=st.floats(-1, 1), confidence=st.floats(0.5, 0.999))
def test_an_update_pauses_exactly_when_the_agreements_bound_is_below_the_threshold(rho, n, threshold, confidence):
    bound, reason = agreement_pause(rho, n, threshold, confidence)
    assert (reason is not None) == (not math.isnan(bound) and bound < threshold)
    if reason is not None:  # the reason names the figures an operator checks before resuming
        assert f"{rho:.2f}" in reason and f"{threshold:.2f}" in reason and "Nothing was trained" in reason
        assert n is None or f"newest {n} matured posts" in reason
    point, point_reason = agreement_pause(rho, n, threshold, 0.5)  # 0.5: the bare point estimate
    assert (point_reason is not None) == (not math.isnan(rho) and rho < threshold)
