"""The one interface every face implements, and the plain values it trades in.

A face is an adapter to a place where posts live: a dataset file, the simulated sandbox, or a
social network. Faces know nothing of the store, the queue or training; jobs wire them together.

Times are naive datetimes in UTC everywhere (`utc_now()`), so values compare and sort without
time-zone surprises. Reaction counts use a shared vocabulary of kinds (REACTION_KINDS) so the
scorer can weigh them the same way on every network; kinds a network has beyond those keep
a prefixed name (e.g. `emoji:👍` on Discord).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from crowdtune.errors import CrowdtuneError
from crowdtune.states import ReviewMode

REACTION_KINDS = {
    "likes": "favourites (Mastodon), likes (Bluesky), net score (Reddit)",
    "reposts": "reblogs (Mastodon), reposts (Bluesky), retweets (datasets)",
    "replies": "replies, or comments on Reddit",
    "quotes": "quote posts (Bluesky)",
    "upvote_ratio_percent": "share of upvotes among votes, 0..100 (Reddit)",
    "human_rating_x1000": "mean human sentiment rating times 1000, -4000..4000 (hutto_tweets)",
}
# Kinds that measure a post rather than count people reacting, so they may be negative.
SIGNED_REACTION_KINDS = frozenset({"human_rating_x1000"})


def utc_now() -> datetime:
    """The current time as a naive UTC datetime."""
    return datetime.now(UTC).replace(tzinfo=None)


def as_naive_utc(moment: datetime) -> datetime:
    """Convert an aware datetime to naive UTC; a naive one is taken to be UTC already."""
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


@dataclass
class HistoryPost:
    """A post that already exists where the face reads from."""

    platform_id: str
    text: str
    created_at: datetime  # naive UTC
    url: str | None = None
    author: str | None = None
    reactions: dict[str, int] = field(default_factory=dict)
    audience_size: int | None = None
    line: int | None = None  # where a file face read it (its line, see faces.dataset), for reports


@dataclass
class Published:
    """Where a post went when it was published."""

    platform_id: str
    url: str | None
    published_at: datetime  # naive UTC


@dataclass
class ReactionSnapshot:
    """Reaction counts of one post at one moment.

    `post_age_seconds` is the post's age in the platform's own time when observed. On real
    networks that is observed_at - created_at; on the sandbox, whose audience lives in accelerated
    time, it is the accelerated age. Score maturity with this, not with wall-clock differences.
    """

    platform_id: str
    observed_at: datetime  # naive UTC
    counts: dict[str, int]
    audience_size: int | None = None
    post_age_seconds: float | None = None


@dataclass(frozen=True)
class FaceHealth:
    """What a face's health check found (Face.health; the Settings page's "Check connection" shows it).

    `ok` whether the face can work now, `message` what was checked or what is wrong (a FaceError's problem and
    fix), `account` who the face acts as ("@crowd on https://mastodon.social"), `audience` how many people its
    posts reach as the network counts them (`audience_label`: followers, members, subscribers), and `limits` the
    documented limits it keeps (faces.limits), with what the server itself last reported. None or () where the
    network does not say or the check did not get that far.
    """

    ok: bool
    message: str
    account: str | None = None
    audience: int | None = None
    audience_label: str = "followers"
    limits: tuple[str, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    fetch_history: bool
    publish: bool
    reactions: bool


class FaceError(CrowdtuneError):
    """Something a face could not do. Carries the problem and the fix (see CrowdtuneError)."""


class CapabilityError(FaceError):
    """The face cannot do this at all (e.g. a dataset cannot publish)."""


class FaceConfigError(FaceError):
    """The face's configuration is invalid or names something that does not exist."""


class FaceAuthError(FaceError):
    """The network rejected the credentials."""


class FaceRateLimitError(FaceError):
    """The network kept rate-limiting us past the retry budget."""


class FaceUnavailableError(FaceError):
    """The network kept failing (5xx, connection errors) past the retry budget."""


class FaceMalformedAnswerError(FaceError):
    """The network answered with something that is not its API: not JSON, an HTML page, JSON of the wrong shape."""


class PostNotFoundError(FaceError):
    """The post asked for does not exist (deleted, or never published here)."""


REVIEW_HELP = ("off | approve | pick: approve = each post waits on the Review page (or `crowdtune review`) "
               "for approve / edit / reject, pick = the operator picks one of the slot's candidates or none; "
               "nothing is published without it. A post not reviewed within the run's review_timeout_hours is "
               "skipped")
SHADOW_HELP = ("dry run: generate, guard and review as usual, but never call the network; each post is kept "
               "as 'would have posted' and gets no reactions")


class FaceConfig(BaseModel):
    """Base of every face's Config: unknown fields are an error, so typos do not pass silently.

    Secret fields are pydantic SecretStr: their repr and str are '**********'. `review` and `shadow` are
    publishing policy that the online loop applies (jobs.online.publish_post); a face itself ignores them.
    Network faces review by default (approve); the sandbox and datasets override it to off.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    review: ReviewMode = Field(ReviewMode.APPROVE, description=REVIEW_HELP)
    shadow: bool = Field(False, description=SHADOW_HELP)


class Face:
    """One place posts come from and go to.

    Subclasses set `kind`, `Config`, `capabilities` and `secret_fields` (the Config fields that hold
    tokens, filled from faces.secrets), and override the methods their capabilities allow. The
    defaults here raise CapabilityError with a message naming the face and what to use instead.
    """

    kind: ClassVar[str] = "face"
    Config: ClassVar[type[FaceConfig]] = FaceConfig
    capabilities: ClassVar[Capabilities] = Capabilities(fetch_history=False, publish=False, reactions=False)
    secret_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: FaceConfig | None = None):
        self.config = config if config is not None else self.Config()

    def __repr__(self) -> str:
        # The config's repr masks SecretStr fields, so this never shows a token.
        return f"{type(self).__name__}({self.config!r})"

    def fetch_history(
        self, limit: int | None = None, before: datetime | None = None, after: datetime | None = None
    ) -> Iterator[HistoryPost]:
        """Yield existing posts, newest first unless the face documents another order.

        In: at most `limit` posts; only posts created strictly before `before` and strictly after
        `after` (naive UTC). Out: an iterator of HistoryPost, read lazily page by page.
        """
        raise CapabilityError(
            f"The {self.kind} face cannot read post history.",
            "Import history from a dataset face or a network face.",
        )

    def publish(self, text: str, intent_id: str) -> Published:
        """Post `text`. `intent_id` identifies this publishing intent: publishing the same intent
        twice (a retry) must not create a second post. Out: where the post went."""
        raise CapabilityError(
            f"The {self.kind} face is read-only: it cannot publish.",
            "Publish through a sandbox or network face.",
        )

    def find_published(self, intent_id: str, text: str, since: datetime) -> Published | None:
        """Find a post already made for `intent_id` (or with exactly `text`) since `since` (naive UTC).

        Used before retrying a publish so nothing is posted twice. Out: the post or None.
        """
        raise CapabilityError(
            f"The {self.kind} face is read-only: it has no published posts to find.",
            "Publish through a sandbox or network face.",
        )

    def reactions(self, platform_id: str) -> ReactionSnapshot:
        """Read the current reaction counts of one post. Out: a snapshot taken now."""
        raise CapabilityError(
            f"The {self.kind} face cannot observe reactions.",
            "Collect reactions through a sandbox or network face.",
        )

    def audience_size(self) -> int | None:
        """How many people can see new posts (followers, members, subscribers), or None if unknown."""
        return None

    def prepare(self, on_progress: Callable[[int, int], None] | None = None) -> None:
        """Do the slow set-up a face needs once (a sandbox fits its audience), so that no publish job
        pays for it; on_progress(done, total) follows it. Most faces need none."""

    def health(self) -> FaceHealth:
        """Check the face can work now (credentials, reachability, files). Never raises."""
        return FaceHealth(ok=True, message=f"{self.kind} face ready.")
