"""A reward model per face: what the channel's audience rewards, learnt from every reaction it had.

    PredictorConfig                 its settings (each field: default and help)
    fit_predictor(posts, vectors, config) -> RewardPredictor
    RewardPredictor.predict(vectors, texts, hours) -> (mean, std)   reward units, per text
    time_split_validation(posts, vectors, config) -> dict           honest figures, stored with each fit
    RewardPredictor.save(url) / load_predictor(url)                 under artifacts_url: any worker loads it

In: scored posts of one face, oldest first, each {"text", "reward", "origin" ("imported" or
"generated"), "posted_at" (datetime or ISO text, may be None)}; their MiniLM vectors
(crowdtune.embeddings, [n, 384]). The rewards are era-normalised (training/rl/rewards.py), so an
imported post of 2009 and a post published today are on one scale.

Features fit short posts: the embedding, plus cheap text features an embedding blurs (log length
in characters and words, question mark, exclamation mark, links, hashtags, mentions, the hour of day
as a point on a circle, an unknown hour being the circle's centre, and the squares of the two log
lengths: an audience's taste in length is usually a preferred length, a bell a linear term cannot
draw. On the sandbox's `rules` audience the squares raised the time-split Spearman on 3,000 history
posts from 0.50 to 0.65 and the ranking of the start model's 8 candidates of a slot from 0.37 to 0.52;
on `likes` and `sentiment` they changed neither by more than 0.01).

Model: a bootstrap ensemble of ridge regressions, solved in closed form (numpy: milliseconds for
thousands of posts). The embedding's 384 dimensions and the few text features are penalised apart: one
strong text feature (a preferred length) needs little shrinkage, hundreds of weak embedding dimensions
need much, and one penalty for both is wrong for either. The embedding's penalty is chosen at each fit,
from `ridge_alphas`, by the weighted leave-one-out error of the fit's own posts (closed form); the
time-split validation chooses on its older posts only, so its figure stays honest. On the sandbox's
three audiences (fitted on 3,000 history posts each, scored on the start model's 8 candidates of each
of 256 slots), one penalty of 3 for every feature against the chosen one (100, 1,000 and 3,000; the text
features 1): within-slot Spearman with the true audience 0.855 -> 0.872 (likes), 0.423 -> 0.471
(sentiment), 0.502 -> 0.673 (rules); the greedy pick's share of the best-of-8 oracle's gain 0.905 ->
0.922, 0.506 -> 0.610, 0.791 -> 0.847; time-split Spearman 0.828 -> 0.830, 0.663 -> 0.696, 0.646 ->
0.692. A fit on 3,000 posts takes ~0.5 s instead of ~0.3 s.

Each member is fitted on a weighted resample of the posts; the prediction is the members' mean and the
uncertainty their spread, which is what an exploring choice needs (it is wide where the posts are few or
disagree, e.g. far from anything the channel ever wrote). Generated posts weigh `generated_weight` times
an imported one: they are what the policy writes now, and their reactions were observed the way new
posts' will be.
"""

from __future__ import annotations

import io
import json
import math
import re
from datetime import datetime

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat

_LINK = re.compile(r"https?://|www\.", re.IGNORECASE)
_HASHTAG = re.compile(r"(?:^|\s)#\w")
_MENTION = re.compile(r"(?:^|\s)@\w")
TEXT_FEATURES = ("log_chars", "log_words", "question", "exclamation", "link", "hashtag", "mention",
                 "hour_sin", "hour_cos", "log_chars_squared", "log_words_squared")
# What models saved before the squared lengths were fitted on (their predictor.json names no features).
LEGACY_TEXT_FEATURES = TEXT_FEATURES[:9]


class PredictorConfig(BaseModel):
    """How a face's reward model is fitted."""

    model_config = ConfigDict(extra="forbid")

    members: int = Field(16, ge=2, le=256, description="ridge models in the bootstrap ensemble (the uncertainty)")
    ridge_alphas: tuple[PositiveFloat, ...] = Field((10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0), min_length=1,
                                            description="ridge penalties tried on the embedding's dimensions; each "
                                                        "fit takes the one with the least leave-one-out error")
    text_ridge_alpha: float = Field(1.0, gt=0.0, description="ridge penalty of the text features (length, "
                                                             "question, links, ...)")
    generated_weight: float = Field(4.0, gt=0.0, description="weight of a scored generated post, "
                                                             "relative to an imported one")
    min_posts: int = Field(16, ge=4, description="fewer scored posts than this: no reward model")
    validation_share: float = Field(0.2, gt=0.0, lt=0.9, description="newest share of the posts held out "
                                                                     "by the time-split validation")
    seed: int = Field(0, description="seed of the bootstrap resamples")
    max_posts: int = Field(4000, ge=16, description="the newest scored posts a fit uses (crowdtune.online."
                                                    "reward_fits): older ones say less about today's audience, "
                                                    "and the first fit embeds each once (~20 ms a post)")


def text_features(texts: list[str], hours: list[float | None] | None = None,
                  names: tuple[str, ...] = TEXT_FEATURES) -> np.ndarray:
    """[n, len(names)] cheap features of short posts (module docstring), in the order of `names`
    (a subset of TEXT_FEATURES)."""
    hours = hours if hours is not None else [None] * len(texts)
    rows = []
    for text, hour in zip(texts, hours, strict=True):
        angle = None if hour is None or (isinstance(hour, float) and math.isnan(hour)) else 2 * math.pi * hour / 24
        log_chars, log_words = math.log1p(len(text)), math.log1p(len(text.split()))
        rows.append([
            log_chars, log_words, float("?" in text), float("!" in text),
            float(bool(_LINK.search(text))), float(bool(_HASHTAG.search(text))), float(bool(_MENTION.search(text))),
            0.0 if angle is None else math.sin(angle), 0.0 if angle is None else math.cos(angle),
            log_chars ** 2, log_words ** 2,
        ])
    columns = [TEXT_FEATURES.index(name) for name in names]
    return np.asarray(rows, dtype=np.float64).reshape(len(texts), len(TEXT_FEATURES))[:, columns]


def hour_of(posted_at) -> float | None:
    """Hour of day (0-24, UTC) of a datetime or ISO text; None when unknown."""
    if posted_at is None:
        return None
    if not isinstance(posted_at, datetime):
        try:
            posted_at = datetime.fromisoformat(str(posted_at))
        except ValueError:
            return None
    return posted_at.hour + posted_at.minute / 60


def _design(vectors: np.ndarray, texts: list[str], hours, names: tuple[str, ...] = TEXT_FEATURES) -> np.ndarray:
    return np.hstack([np.asarray(vectors, dtype=np.float64).reshape(len(texts), -1),
                      text_features(texts, hours, names)])


class RewardPredictor:
    """A fitted ensemble: standardisation of the features, and one (coefficients, intercept) per member,
    over the embedding and the text features named in `features`."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, coefs: np.ndarray, intercepts: np.ndarray,
                 config: PredictorConfig, figures: dict | None = None, noise: float = 0.0,
                 features: tuple[str, ...] = TEXT_FEATURES, ridge_alpha: float | None = None,
                 loo_errors: dict[float, float] | None = None):
        self.mean, self.scale, self.coefs, self.intercepts = mean, scale, coefs, intercepts
        # the embedding penalty the fit chose, and each tried penalty's leave-one-out error
        self.ridge_alpha, self.loo_errors = ridge_alpha, dict(loo_errors or {})
        self.features = tuple(features)
        self.config, self.figures = config, dict(figures or {})
        self.noise = float(noise)  # std of a real reward around the prediction (what no model foresees)

    def member_predictions(self, vectors: np.ndarray, texts: list[str], hours=None) -> np.ndarray:
        """[members, n] each member's predicted reward."""
        if not texts:
            return np.zeros((len(self.intercepts), 0))
        x = (_design(vectors, texts, hours, self.features) - self.mean) / self.scale
        return self.coefs @ x.T + self.intercepts[:, None]

    def predict(self, vectors: np.ndarray, texts: list[str], hours=None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) predicted reward of each text, in reward units. The std is the ensemble's
        disagreement (what more data would settle, what exploring needs); a real reward also varies
        by `noise` around the mean."""
        members = self.member_predictions(vectors, texts, hours)
        return members.mean(axis=0), members.std(axis=0)

    def save(self, url: str) -> None:
        """Write the model to `url` (a folder under artifacts_url: any fsspec URL) as npz + json."""
        import fsspec

        from crowdtune.artifacts import join

        fs, root = fsspec.core.url_to_fs(url)
        fs.makedirs(root, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, scale=self.scale, coefs=self.coefs, intercepts=self.intercepts,
                 noise=np.float64(self.noise))
        with fs.open(join(root, "predictor.npz"), "wb") as out:
            out.write(buffer.getvalue())
        with fs.open(join(root, "predictor.json"), "w") as out:  # written last: its presence means complete
            json.dump({"config": self.config.model_dump(), "figures": self.figures,
                       "text_features": list(self.features), "ridge_alpha": self.ridge_alpha}, out)


def load_predictor(url: str) -> RewardPredictor:
    """The model RewardPredictor.save wrote to `url`; FileNotFoundError when there is none."""
    import fsspec

    from crowdtune.artifacts import join

    fs, root = fsspec.core.url_to_fs(url)
    with fs.open(join(root, "predictor.json")) as handle:
        meta = json.load(handle)
    with fs.open(join(root, "predictor.npz"), "rb") as handle:
        arrays = np.load(io.BytesIO(handle.read()))
        # settings a newer or older version wrote that this one lacks (a single ridge_alpha) are left out:
        # the coefficients are what predicts
        config = PredictorConfig(**{k: v for k, v in meta["config"].items() if k in PredictorConfig.model_fields})
        return RewardPredictor(arrays["mean"], arrays["scale"], arrays["coefs"], arrays["intercepts"],
                               config, meta.get("figures"), float(arrays["noise"]),
                               tuple(meta.get("text_features", LEGACY_TEXT_FEATURES)), meta.get("ridge_alpha"))


def _weights(posts: list[dict], config: PredictorConfig) -> np.ndarray:
    return np.asarray([config.generated_weight if p.get("origin") == "generated" else 1.0 for p in posts])


def fit_predictor(posts: list[dict], vectors: np.ndarray, config: PredictorConfig | None = None) -> RewardPredictor:
    """Fit the ensemble on scored posts and their vectors (module docstring); ValueError if too few."""
    config = config or PredictorConfig()
    if len(posts) < config.min_posts:
        raise ValueError(f"{len(posts)} scored post(s); a reward model needs at least {config.min_posts}")
    texts = [p["text"] for p in posts]
    x = _design(vectors, texts, [hour_of(p.get("posted_at")) for p in posts])
    y = np.asarray([float(p["reward"]) for p in posts])
    weights = _weights(posts, config)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (x - mean) / scale
    rng = np.random.default_rng(config.seed)
    n, d = z.shape
    alpha, loo_errors = choose_ridge_alpha(z, y, weights, config)
    penalty = penalties(d, alpha, config.text_ridge_alpha)
    coefs, intercepts = np.zeros((config.members, d)), np.zeros(config.members)
    probabilities = weights / weights.sum()
    for member in range(config.members):
        # A weighted bootstrap: n draws with replacement, generated posts drawn more often.
        counts = np.bincount(rng.choice(n, size=n, p=probabilities), minlength=n).astype(np.float64)
        total = counts.sum()
        x_mean = counts @ z / total
        y_mean = counts @ y / total
        zc, yc = z - x_mean, y - y_mean
        gram = (zc * counts[:, None]).T @ zc + np.diag(penalty)
        coefs[member] = np.linalg.solve(gram, (zc * counts[:, None]).T @ yc)
        intercepts[member] = y_mean - x_mean @ coefs[member]
    fitted = (coefs @ z.T + intercepts[:, None]).mean(axis=0)
    noise = math.sqrt(float(weights @ (y - fitted) ** 2 / weights.sum()))
    return RewardPredictor(mean, scale, coefs, intercepts, config, noise=noise, ridge_alpha=alpha,
                           loo_errors=loo_errors)


def penalties(d: int, alpha: float, text_alpha: float) -> np.ndarray:
    """(d,) the ridge penalty of each design column: `alpha` on the embedding's, `text_alpha` on the
    text features' (the last len(TEXT_FEATURES) columns)."""
    penalty = np.full(d, float(alpha))
    penalty[d - len(TEXT_FEATURES):] = text_alpha
    return penalty


def choose_ridge_alpha(z: np.ndarray, y: np.ndarray, weights: np.ndarray,
                       config: PredictorConfig) -> tuple[float, dict[float, float]]:
    """(the embedding penalty of config.ridge_alphas with the least weighted leave-one-out squared error,
    {penalty: that error}) for the standardised design z [n, d], rewards y (n,) and weights (n,).

    Closed form: with columns scaled by 1 / sqrt(penalty), the fit is a ridge of penalty 1, whose
    leave-one-out residual is the residual over 1 - leverage; the leverages come from one eigen
    decomposition of the [d, d] gram per penalty (~50 ms for 3,000 posts), the intercept adding w_i / sum(w)."""
    if len(config.ridge_alphas) == 1:
        return float(config.ridge_alphas[0]), {}
    root = np.sqrt(weights / weights.mean())
    x_mean, y_mean = weights @ z / weights.sum(), weights @ y / weights.sum()
    zw, yw = (z - x_mean) * root[:, None], (y - y_mean) * root
    intercept_leverage = weights / weights.sum()
    errors = {}
    for alpha in config.ridge_alphas:
        scaled = zw / np.sqrt(penalties(z.shape[1], alpha, config.text_ridge_alpha))
        eigenvalues, vectors = np.linalg.eigh(scaled.T @ scaled)
        projected = scaled @ vectors                                   # [n, d]
        shrink = 1.0 / (eigenvalues + 1.0)
        leverage = (projected ** 2) @ shrink + intercept_leverage
        fitted = projected @ (shrink * (projected.T @ yw))
        residual = (yw - fitted) / np.maximum(1.0 - leverage, 1e-6)
        errors[float(alpha)] = float(np.mean(residual ** 2))
    return min(errors, key=errors.get), errors


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation; NaN when either side is constant or there are fewer than 2."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a), np.asarray(b)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def spearman_upper_bound(rho: float, n: int | None, confidence: float) -> float:
    """The one-sided upper `confidence` bound of a Spearman correlation `rho` measured on `n` pairs: Fisher's
    z with var 1.06 / (n - 3) (Fieller, Hartley & Pearson 1957). `rho` itself when n is unknown or the
    confidence 0.5, 1.0 for n <= 3 (so few pairs bound nothing), NaN for a NaN rho.
    At 95%, -0.24 on 16 posts bounds at +0.22, -0.4 on 32 at -0.11."""
    from scipy.stats import norm

    if rho is None or math.isnan(rho):
        return math.nan
    if n is None or confidence <= 0.5:
        return float(rho)
    if n <= 3:
        return 1.0
    z = math.atanh(min(max(float(rho), -0.999999), 0.999999))
    return max(float(rho), math.tanh(z + norm.ppf(confidence) * math.sqrt(1.06 / (n - 3))))  # rho = +-1: z clipped


def agreement_pause(agreement: float, posts: int | None, threshold: float,
                    confidence: float) -> tuple[float, str | None]:
    """Whether an update that trusts the reward model pauses instead: its online `agreement` (Spearman of its
    predictions against the real rewards of the newest `posts`, None if unknown) is below `threshold` with
    `confidence` (spearman_upper_bound is). Out: (that bound, the pause reason, or None to train on).
    A NaN agreement (too few posts to tell) never pauses."""
    bound = spearman_upper_bound(agreement, posts, confidence)
    if math.isnan(bound) or bound >= threshold:
        return bound, None
    measured = f" on the newest {posts} matured posts" if posts is not None else ""
    if bound != agreement:
        measured += f" (its upper {confidence:.0%} bound {bound:.2f})"
    return bound, (f"The reward model's predictions disagree with real reactions: online agreement (Spearman) "
                   f"{agreement:.2f}{measured}, below the threshold {threshold:.2f}. Nothing was trained; check "
                   "the face (audience change? scoring?) before resuming.")


def time_split_validation(posts: list[dict], vectors: np.ndarray, config: PredictorConfig | None = None) -> dict:
    """Fit on the oldest posts, predict the newest `validation_share` (posts are oldest first).

    Out: {"validation_spearman", "validation_posts", "validation_mae", "validation_coverage" (share
    of held-out rewards within 2 predictive std, sqrt(std^2 + noise^2), of the mean),
    "validation_generated_spearman" (on the generated posts among them, NaN with fewer than 4)};
    NaN figures when the posts are too few for both sides.
    """
    config = config or PredictorConfig()
    n_new = int(round(len(posts) * config.validation_share))
    nan = {"validation_spearman": math.nan, "validation_posts": 0, "validation_mae": math.nan,
           "validation_coverage": math.nan, "validation_generated_spearman": math.nan}
    if n_new < 4 or len(posts) - n_new < config.min_posts:
        return nan
    older, newer = posts[:-n_new], posts[-n_new:]
    model = fit_predictor(older, vectors[:-n_new], config)
    mean, std = model.predict(vectors[-n_new:], [p["text"] for p in newer],
                              [hour_of(p.get("posted_at")) for p in newer])
    real = np.asarray([float(p["reward"]) for p in newer])
    generated = np.asarray([p.get("origin") == "generated" for p in newer])
    return {"validation_spearman": spearman(mean, real), "validation_posts": n_new,
            "validation_mae": float(np.abs(mean - real).mean()),
            "validation_coverage": float((np.abs(mean - real) <= 2 * np.sqrt(std ** 2 + model.noise ** 2)).mean()),
            "validation_generated_spearman": spearman(mean[generated], real[generated])
            if generated.sum() >= 4 else math.nan}
