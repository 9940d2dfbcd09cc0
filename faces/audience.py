"""Simulated audiences: how much a crowd would like a text, learned from real reactions.

An audience turns texts into a `log_appeal`: the natural log of how many times more reactions a
post gets than an average post of the data it learned from (0 = average, 1 = e times more).
The sandbox face multiplies that into expected counts. Audiences:

- `likes` (default): all-MiniLM-L6-v2 embeddings + ridge regression on log1p(favorite_count) of
  the real trump_tweets. Likes grew ~100x over 2009-2018, so it learns from one era only
  (`fit_since`, default 2016-01-01, retweets "RT @..." left out). Held-out Spearman 0.65
  (measured: 4,546 tweets to fit, 1,136 held out).
- `sentiment`: VADER compound score (-1..1): cheerful posts do better.
- `human`: embeddings + ridge regression on the hutto_tweets human sentiment ratings (-4..4).
- `rules`: hand-written rules over surface features, no embeddings and no fit: a preferred length
  (a bell curve in log words), questions, topic words, and dislikes for links, hashtags and
  shouting, with an interaction (an exclamation helps only a short post). Nonlinear in its features
  and not a function of MiniLM vectors, so a reward model of embeddings + ridge cannot share its form.

`load_audience_file("path/to/file.py:NAME")` plugs in an audience written elsewhere: any object
with `log_appeal(texts) -> float array` (a class is instantiated without arguments).

Fitting embeds a few thousand posts (~2.5 minutes for 5,700 on 2 loaded cores), so the fitted
coefficients are cached in `cache_dir` under a name that encodes every fitting setting (later loads
take milliseconds), and the posts' embeddings go through the shared embedding cache
(crowdtune.embeddings), so a refit on another machine or with other settings embeds nothing again.
Call `load_audience` (or `SandboxFace.prepare`) at set-up, with progress, so that no publish job pays.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from crowdtune.embeddings import Progress

# A very lucky or unlucky text cannot get more than e^4 (~55x) the reactions of an average one.
MAX_ABS_LOG_APPEAL = 4.0
FIT_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("CROWDTUNE_CACHE_DIR", Path.home() / ".cache" / "crowdtune")) / "audiences"


class AudienceConfig(BaseModel):
    """Which audience, and how it learns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["likes", "sentiment", "human", "rules"] = Field("likes",
                                                                  description="likes | sentiment | human | rules")
    cache_dir: Path = Field(default_factory=default_cache_dir,
                            description="$CROWDTUNE_CACHE_DIR/audiences, else ~/.cache/crowdtune/audiences")
    fit_since: str = Field("2016-01-01", description="likes: learn from tweets created on or after this date")
    fit_max_posts: int | None = Field(
        default=None, gt=10, description="learn from at most this many posts (sampled with fit_seed); None = all")
    fit_seed: int = Field(0, description="sampling and train/held-out split")
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1,
                                    description="share of posts kept out of fitting to measure Spearman")
    ridge_alpha: float = Field(default=3.0, gt=0,
                               description="ridge regularisation (3.0 was best by cross-validation on 2016+)")
    sentiment_sensitivity: float = Field(1.5, description="sentiment: log_appeal = sensitivity * VADER compound")
    human_sensitivity: float = Field(
        0.4, description="human: log_appeal = sensitivity * (predicted rating - mean rating)")


class Audience(Protocol):
    def log_appeal(self, texts: list[str]) -> np.ndarray:
        """In: texts. Out: float64 array of log appeal per text, clipped to +-MAX_ABS_LOG_APPEAL."""


@dataclass
class FittedRidge:
    """A ridge regression over MiniLM embeddings, with how well it did on held-out posts."""

    coef: np.ndarray
    intercept: float
    target_mean: float
    holdout_spearman: float
    n_train: int
    n_holdout: int

    def predict(self, texts: list[str]) -> np.ndarray:
        from crowdtune.embeddings import cached_embed

        # keep=False: a text to judge is a sample, seen once (its copy-guard vector is reused in memory)
        return cached_embed(texts, keep=False) @ self.coef + self.intercept

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(
            temporary,
            coef=self.coef,
            meta=json.dumps(
                {
                    "intercept": self.intercept,
                    "target_mean": self.target_mean,
                    "holdout_spearman": self.holdout_spearman,
                    "n_train": self.n_train,
                    "n_holdout": self.n_holdout,
                }
            ),
        )
        os.replace(temporary, path)  # atomic: a concurrent reader sees the old file or the new one

    @classmethod
    def load(cls, path: Path) -> FittedRidge:
        with np.load(path) as stored:
            meta = json.loads(str(stored["meta"]))
            return cls(coef=stored["coef"], **meta)


def fit_ridge(texts: list[str], targets: np.ndarray, config: AudienceConfig,
              on_progress: Progress | None = None) -> FittedRidge:
    """Fit ridge on embeddings of `texts` -> `targets`, measuring Spearman on a held-out share.
    on_progress(done, total) follows the embedding of texts not in the shared cache yet."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import Ridge

    from crowdtune.embeddings import cached_embed

    order = np.random.default_rng(config.fit_seed).permutation(len(texts))
    n_holdout = max(1, int(len(texts) * config.holdout_fraction))
    holdout, train = order[:n_holdout], order[n_holdout:]
    vectors = cached_embed([texts[i] for i in order], on_progress=on_progress)
    position = {index: row for row, index in enumerate(order)}
    train_x = vectors[[position[i] for i in train]]
    holdout_x = vectors[[position[i] for i in holdout]]
    model = Ridge(alpha=config.ridge_alpha).fit(train_x, targets[train])
    spearman = float(spearmanr(model.predict(holdout_x), targets[holdout]).statistic)
    # Refit on everything for use; the held-out figure describes this procedure's quality.
    model = Ridge(alpha=config.ridge_alpha).fit(vectors, targets[order])
    return FittedRidge(
        coef=model.coef_.astype(np.float64),
        intercept=float(model.intercept_),
        target_mean=float(targets.mean()),
        holdout_spearman=spearman,
        n_train=len(train),
        n_holdout=n_holdout,
    )


def sample_for_fit(texts: list[str], targets: np.ndarray, config: AudienceConfig) -> tuple[list[str], np.ndarray]:
    if config.fit_max_posts is None or len(texts) <= config.fit_max_posts:
        return texts, targets
    chosen = sorted(random.Random(config.fit_seed).sample(range(len(texts)), config.fit_max_posts))
    return [texts[i] for i in chosen], targets[chosen]


def cache_path(config: AudienceConfig) -> Path:
    settings = config.model_dump(mode="json", exclude={"cache_dir", "sentiment_sensitivity", "human_sensitivity"})
    settings["format"] = FIT_FORMAT_VERSION
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return Path(config.cache_dir) / f"{config.kind}-{key}.npz"


def fitted_ridge(config: AudienceConfig, on_progress: Progress | None = None) -> FittedRidge:
    """The fitted regression for a `likes` or `human` audience: from the cache, or fitted and cached."""
    path = cache_path(config)
    if path.is_file():
        return FittedRidge.load(path)
    if config.kind == "likes":
        texts, targets = likes_training_data(config)
    else:
        texts, targets = human_training_data()
    texts, targets = sample_for_fit(texts, targets, config)
    ridge = fit_ridge(texts, targets, config, on_progress)
    ridge.save(path)
    return ridge


def likes_training_data(config: AudienceConfig) -> tuple[list[str], np.ndarray]:
    """Real tweets of one era and log1p(likes): the texts and targets the likes audience learns from."""
    from faces.dataset import DatasetFace

    since = datetime.fromisoformat(config.fit_since)
    texts, targets = [], []
    for post in DatasetFace().fetch_history(after=since):
        if post.text.startswith("RT @"):  # retweets carry no likes of their own
            continue
        texts.append(post.text)
        targets.append(np.log1p(post.reactions.get("likes", 0)))
    return texts, np.asarray(targets, dtype=np.float64)


def human_training_data() -> tuple[list[str], np.ndarray]:
    """The hutto tweets and their mean human ratings (-4..4)."""
    from faces.dataset import DatasetConfig, DatasetFace

    posts = list(DatasetFace(DatasetConfig(source="hutto_tweets")).fetch_history())
    ratings = np.asarray([post.reactions["human_rating_x1000"] / 1000.0 for post in posts], dtype=np.float64)
    return [post.text for post in posts], ratings


class RidgeAudience:
    """likes / human: appeal is the predicted target relative to the training mean."""

    def __init__(self, ridge: FittedRidge, sensitivity: float = 1.0):
        self.ridge = ridge
        self.sensitivity = sensitivity

    def log_appeal(self, texts: list[str]) -> np.ndarray:
        predicted = self.ridge.predict(texts) - self.ridge.target_mean
        return np.clip(self.sensitivity * predicted, -MAX_ABS_LOG_APPEAL, MAX_ABS_LOG_APPEAL)


class SentimentAudience:
    """Appeal from VADER's compound sentiment: an audience that likes cheerful posts."""

    def __init__(self, sensitivity: float):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()
        self.sensitivity = sensitivity

    def log_appeal(self, texts: list[str]) -> np.ndarray:
        compound = np.asarray([self.analyzer.polarity_scores(text)["compound"] for text in texts], dtype=np.float64)
        return np.clip(self.sensitivity * compound, -MAX_ABS_LOG_APPEAL, MAX_ABS_LOG_APPEAL)


class RulesAudience:
    """Appeal from surface rules (module docstring): deterministic, pure Python, ~10 us a text."""

    PREFERRED_WORDS = 18        # the length this crowd likes best ...
    LENGTH_TOLERANCE = 0.7      # ... within about this many log-words (a Gaussian bell: 9 or 36 words cost ~0.5)
    QUESTION = 0.35             # asking the crowd something
    TOPIC_WORD = 0.3            # per distinct topic word, at most TOPIC_CAP of them
    TOPIC_CAP = 3
    TOPICS = frozenset({"jobs", "economy", "workers", "family", "families", "veterans", "farmers", "school",
                        "schools", "health", "future", "community", "together", "thank", "congratulations"})
    SHORT_EXCLAMATION = 0.4     # "!" on a post of at most SHORT_WORDS words; on longer ones it costs ...
    LONG_EXCLAMATION = -0.2     # ... this (shouting at length)
    SHORT_WORDS = 12
    LINK = -0.6                 # this crowd does not click away
    HASHTAG = -0.25
    SHOUTED_WORD = -0.15        # per ALL-CAPS word of 3+ letters, at most 4 of them

    def log_appeal(self, texts: list[str]) -> np.ndarray:
        import math
        import re

        out = np.empty(len(texts), dtype=np.float64)
        for i, text in enumerate(texts):
            tokens = text.split()
            words = [re.sub(r"[^a-z]", "", t.lower()) for t in tokens]
            n = max(1, len(tokens))
            appeal = -((math.log(n) - math.log(self.PREFERRED_WORDS)) / self.LENGTH_TOLERANCE) ** 2 / 2
            appeal += self.QUESTION * ("?" in text)
            appeal += self.TOPIC_WORD * min(self.TOPIC_CAP, len(self.TOPICS.intersection(words)))
            if "!" in text:
                appeal += self.SHORT_EXCLAMATION if n <= self.SHORT_WORDS else self.LONG_EXCLAMATION
            appeal += self.LINK * bool(re.search(r"https?://|www\.", text))
            appeal += self.HASHTAG * any(t.startswith("#") for t in tokens)
            appeal += self.SHOUTED_WORD * min(4, sum(len(t) >= 3 and t.isalpha() and t.isupper() for t in tokens))
            out[i] = appeal
        return np.clip(out, -MAX_ABS_LOG_APPEAL, MAX_ABS_LOG_APPEAL)


def load_audience_file(spec: str) -> Audience:
    """The audience `NAME` defined in a Python file, from "PATH:NAME": an object with log_appeal, or a
    class (or function) called without arguments to make one. ValueError when it is neither."""
    import importlib.util

    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise ValueError(f"audience file {spec!r}: expected PATH:NAME, e.g. my_audience.py:MyAudience")
    module_spec = importlib.util.spec_from_file_location(f"crowdtune_audience_{Path(path).stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"audience file {path!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    audience = getattr(module, name, None)
    if audience is None:
        raise ValueError(f"audience file {path!r} defines no {name!r}")
    if isinstance(audience, type) or (not hasattr(audience, "log_appeal") and callable(audience)):
        audience = audience()
    if not callable(getattr(audience, "log_appeal", None)):
        raise ValueError(f"{spec}: {name} has no log_appeal(texts) method")
    return audience


_audiences: dict[AudienceConfig, Audience] = {}
_audiences_lock = threading.Lock()


def load_audience(config: AudienceConfig | None = None, on_progress: Progress | None = None) -> Audience:
    """The audience for a config, built once per process (fitting and caching it if needed; a fit
    reports on_progress(texts embedded, texts to embed))."""
    config = config or AudienceConfig()
    with _audiences_lock:
        if config not in _audiences:
            if config.kind == "sentiment":
                _audiences[config] = SentimentAudience(config.sentiment_sensitivity)
            elif config.kind == "rules":
                _audiences[config] = RulesAudience()
            elif config.kind == "likes":
                _audiences[config] = RidgeAudience(fitted_ridge(config, on_progress))
            else:
                _audiences[config] = RidgeAudience(fitted_ridge(config, on_progress), config.human_sensitivity)
        return _audiences[config]
