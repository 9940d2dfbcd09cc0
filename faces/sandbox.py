"""A simulated social network, so the whole online loop runs offline.

The sandbox is a server, not an in-process toy: its state is a folder addressed by an fsspec URL
(a local folder by default), one small JSON file per post, so workers in different processes or
on different machines publish to it and read reactions from it. Writes are atomic (write a
temporary file, then rename).

Reactions are a pure function of (text, the post's audience age, seed):

    final[kind]  = audience_size * like_rate * e^log_appeal(text) * ratio[kind] * noise(seed, text, kind)
    counts[kind] = floor(final[kind] * (1 - e^(-age / growth_tau)))

`log_appeal` comes from the configured audience (faces.audience), the noise is a seeded
log-normal factor fixed per post, and the growth curve only rises, so reading twice at the same
moment gives the same numbers and counts never decrease with age. The audience lives in
accelerated time: age = wall-clock age * time_acceleration (3600 => a real second is an hour),
so a day of reactions passes in seconds in tests and demos.

History (`history_posts` > 0): the face's history also holds that many real bundled posts (the
newest non-retweets of trump_tweets, with their real posting times), each with the reactions this
face's own audience gives it once fully grown (the formula above, same noise). A reward model
fitted on that history learns the audience the face really has, whichever it is, as it would from
a real channel's imported posts.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime

import fsspec
import numpy as np
from pydantic import Field

from crowdtune.states import ReviewMode
from faces.audience import Audience, AudienceConfig, load_audience
from faces.base import (
    REVIEW_HELP,
    Capabilities,
    Face,
    FaceConfig,
    FaceHealth,
    HistoryPost,
    PostNotFoundError,
    Published,
    ReactionSnapshot,
    utc_now,
)

POST_ID_PREFIX = "sbx-"
HISTORY_ID_PREFIX = "hist-"


class SandboxConfig(FaceConfig):
    """The simulated network and its audience."""

    review: ReviewMode = Field(ReviewMode.OFF, description=REVIEW_HELP)  # a simulation: nobody's name at stake

    state_url: str = Field("data/sandbox", description='fsspec URL of the folder holding the posts (the "server")')
    audience: AudienceConfig = Field(
        default_factory=AudienceConfig, description="which audience reacts (likes | sentiment | human | rules)")
    audience_size: int = Field(default=1000, ge=0,
                               description="followers; reported by audience_size() and scales all counts")
    time_acceleration: float = Field(
        default=1.0, gt=0, description="audience seconds per wall-clock second (3600: an hour per second)")
    seed: int = Field(0, description="seeds the per-post noise")
    like_rate: float = Field(default=0.05, ge=0,
                             description="share of the audience liking an average post, once fully grown")
    repost_ratio: float = Field(default=0.25, ge=0, description="reposts per like of an average post")
    reply_ratio: float = Field(default=0.08, ge=0, description="replies per like of an average post")
    noise_sigma: float = Field(default=0.3, ge=0, description="spread of the per-post log-normal noise")
    growth_tau_hours: float = Field(
        default=3.0, gt=0, description="audience hours until 63% of a post's reactions have arrived")
    history_posts: int = Field(
        default=0, ge=0, description="real bundled posts in the face's history, with reactions from its own "
                                     "audience (module docstring); 0 = only the posts published to it")


def post_id_for_intent(intent_id: str) -> str:
    # Derived from the intent, so publishing the same intent again finds the same file.
    return POST_ID_PREFIX + hashlib.sha256(intent_id.encode()).hexdigest()[:24]


def post_noise(seed: int, text: str, kind: str, sigma: float) -> float:
    """A log-normal factor fixed by (seed, text, kind): the luck of one post on one reaction kind."""
    digest = hashlib.sha256(f"{seed}\x00{kind}\x00{text}".encode()).digest()
    normal = np.random.default_rng(int.from_bytes(digest[:8], "little")).standard_normal()
    return math.exp(sigma * normal - sigma**2 / 2)  # mean 1


def growth(age_seconds: float, tau_hours: float) -> float:
    """Share of a post's final reactions that have arrived at this audience age (0 at birth, -> 1)."""
    if age_seconds <= 0:
        return 0.0
    return 1.0 - math.exp(-age_seconds / (tau_hours * 3600.0))


def expected_final_counts(log_appeal: float, text: str, config: SandboxConfig) -> dict[str, float]:
    """Reactions a post will have once fully grown: audience size, appeal, ratios and seeded noise."""
    likes = config.audience_size * config.like_rate * math.exp(log_appeal)
    ratios = {"likes": 1.0, "reposts": config.repost_ratio, "replies": config.reply_ratio}
    return {kind: likes * ratio * post_noise(config.seed, text, kind, config.noise_sigma)
            for kind, ratio in ratios.items()}


def counts_at_age(log_appeal: float, text: str, age_seconds: float, config: SandboxConfig) -> dict[str, int]:
    """Reaction counts of a post at an audience age. Deterministic, and non-decreasing in age."""
    fraction = growth(age_seconds, config.growth_tau_hours)
    finals = expected_final_counts(log_appeal, text, config)
    return {kind: math.floor(final * fraction) for kind, final in finals.items()}


def bundled_history(config: SandboxConfig, audience: Audience) -> list[HistoryPost]:
    """The face's `history_posts` bundled posts, newest first, each with its fully grown reactions from
    `audience` (module docstring). The audience judges them all in one call (one batch of embeddings)."""
    from faces.dataset import DatasetFace

    if config.history_posts == 0:
        return []
    real = [p for p in DatasetFace().fetch_history() if not p.text.startswith("RT @")]  # retweets: not the channel's
    real.sort(key=lambda p: p.created_at, reverse=True)
    chosen = real[:config.history_posts]
    appeals = audience.log_appeal([p.text for p in chosen])
    return [HistoryPost(platform_id=HISTORY_ID_PREFIX + p.platform_id, text=p.text, created_at=p.created_at,
                        url=f"sandbox://{HISTORY_ID_PREFIX}{p.platform_id}", author="sandbox",
                        reactions={kind: math.floor(final) for kind, final
                                   in expected_final_counts(float(a), p.text, config).items()},
                        audience_size=config.audience_size)
            for p, a in zip(chosen, appeals, strict=True)]


class SandboxFace(Face):
    """Publishes into a folder and simulates the audience's reactions."""

    kind = "sandbox"
    Config = SandboxConfig
    capabilities = Capabilities(fetch_history=True, publish=True, reactions=True)

    def __init__(self, config: SandboxConfig | None = None, clock: Callable[[], datetime] = utc_now,
                 audience: Audience | None = None):
        """`audience`: an object with log_appeal(texts) that replaces the configured one (a benchmark's
        audience from a file); None = the config's audience."""
        super().__init__(config)
        self.clock = clock  # wall clock, naive UTC; tests pass a fixed one
        self.fs, self.root = fsspec.core.url_to_fs(self.config.state_url)
        self._audience = audience
        self._history: list[HistoryPost] | None = None

    def audience(self, on_progress: Callable[[int, int], None] | None = None) -> Audience:
        """The audience that reacts: the one given at construction, else the config's (loaded once per process)."""
        return self._audience if self._audience is not None else load_audience(self.config.audience, on_progress)

    def prepare(self, on_progress: Callable[[int, int], None] | None = None) -> None:
        """Fit (or load) the audience now, at set-up, so that no publish job pays for it.
        on_progress(done, total) follows the embedding of the posts it learns from."""
        self.audience(on_progress)

    def _path(self, platform_id: str) -> str:
        return f"{self.root.rstrip('/')}/{platform_id}.json"

    def _read(self, platform_id: str) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self._path(platform_id)))
        except FileNotFoundError:
            return None

    def _audience_age(self, published_at: datetime, now: datetime) -> float:
        return max(0.0, (now - published_at).total_seconds()) * self.config.time_acceleration

    def publish(self, text: str, intent_id: str) -> Published:
        """Store the post as `<state_url>/<platform_id>.json`. The same intent_id twice gives the same post."""
        platform_id = post_id_for_intent(intent_id)
        existing = self._read(platform_id)
        if existing is not None:
            return self._published(existing)
        # The audience judges the text once, at posting time, so reading reactions later is cheap
        # and does not need the embedding model.
        appeal = float(self.audience().log_appeal([text])[0])
        record = {
            "platform_id": platform_id,
            "intent_id": intent_id,
            "text": text,
            "published_at": self.clock().isoformat(),
            "log_appeal": appeal,
        }
        self.fs.makedirs(self.root, exist_ok=True)
        temporary = f"{self.root.rstrip('/')}/.{platform_id}.{uuid.uuid4().hex}.tmp"
        self.fs.pipe_file(temporary, json.dumps(record).encode())
        self.fs.mv(temporary, self._path(platform_id))
        return self._published(record)

    def _published(self, record: dict) -> Published:
        return Published(
            platform_id=record["platform_id"],
            url=f"sandbox://{record['platform_id']}",
            published_at=datetime.fromisoformat(record["published_at"]),
        )

    def find_published(self, intent_id: str, text: str, since: datetime) -> Published | None:
        record = self._read(post_id_for_intent(intent_id))
        if record is None or datetime.fromisoformat(record["published_at"]) < since:
            return None
        return self._published(record)

    def reactions(self, platform_id: str) -> ReactionSnapshot:
        """Counts of a published post now (by the face's clock), with its accelerated age."""
        record = self._read(platform_id)
        if record is None:
            raise PostNotFoundError(
                f"The sandbox at {self.config.state_url} has no post {platform_id}.",
                "Check the id, and that the publishing and collecting workers use the same sandbox state_url.",
            )
        now = self.clock()
        age = self._audience_age(datetime.fromisoformat(record["published_at"]), now)
        return ReactionSnapshot(
            platform_id=platform_id,
            observed_at=now,
            counts=counts_at_age(record["log_appeal"], record["text"], age, self.config),
            audience_size=self.config.audience_size,
            post_age_seconds=age,
        )

    def fetch_history(
        self, limit: int | None = None, before: datetime | None = None, after: datetime | None = None
    ) -> Iterator[HistoryPost]:
        """Yield the sandbox's posts newest first, with their reactions now, then its bundled history
        (`history_posts`, module docstring), also newest first."""
        try:
            paths = [path for path in self.fs.ls(self.root, detail=False) if path.endswith(".json")]
        except FileNotFoundError:
            paths = []
        records = [json.loads(self.fs.cat_file(path)) for path in paths]
        records.sort(key=lambda record: record["published_at"], reverse=True)
        yielded = 0
        for post in self._published_history(records):
            if (before is not None and post.created_at >= before) or (after is not None and post.created_at <= after):
                continue
            yield post
            yielded += 1
            if limit is not None and yielded >= limit:
                return

    def _published_history(self, records: list[dict]) -> Iterator[HistoryPost]:
        for record in records:
            yield HistoryPost(
                platform_id=record["platform_id"],
                text=record["text"],
                created_at=datetime.fromisoformat(record["published_at"]),
                url=f"sandbox://{record['platform_id']}",
                author="sandbox",
                reactions=self.reactions(record["platform_id"]).counts,
                audience_size=self.config.audience_size,
            )
        if self._history is None:  # judged once per face object: the audience may embed thousands of posts
            self._history = bundled_history(self.config, self.audience())
        yield from self._history

    def audience_size(self) -> int | None:
        return self.config.audience_size

    def health(self) -> FaceHealth:
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            probe = f"{self.root.rstrip('/')}/.health-{uuid.uuid4().hex}"
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm_file(probe)
        except Exception as error:  # noqa: BLE001 - health never raises
            return FaceHealth(False, f"Cannot write to the sandbox state at {self.config.state_url} ({error}): "
                                     "fix state_url.")
        return FaceHealth(True, f"Sandbox at {self.config.state_url} ready ({self.config.audience.kind} audience).",
                          account=f"the simulated network at {self.config.state_url}",
                          audience=self.config.audience_size, audience_label="simulated followers",
                          limits=("none: a simulation takes every request",))
