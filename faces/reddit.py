"""Reddit through praw: the configured user's (or subreddit's) own submissions, self-posts, reactions.

- History: GET /user/<user>/submitted (or /r/<subreddit>/new), newest first, paged with `after`.
  Never a front page: only the configured account's or community's own posts.
- Publish: a self-post in `subreddit`, title = the text's first line (at most 300 characters),
  body = the whole text. Reddit has no idempotency key, so before any retry we look for our own
  submission with the same body since the first attempt.
- Reactions: score -> likes, num_comments -> replies, upvote_ratio -> upvote_ratio_percent;
  audience = the subreddit's subscribers.
- Rate limits and 5xx follow faces.retry. prawcore's own retries are switched off: it would resend
  a submit after a 5xx without checking whether the first one went through.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Literal

from pydantic import Field, SecretStr

from faces.base import (
    Capabilities,
    Face,
    FaceAuthError,
    FaceConfig,
    FaceConfigError,
    FaceError,
    FaceHealth,
    HistoryPost,
    PostNotFoundError,
    Published,
    ReactionSnapshot,
    utc_now,
)
from faces.retry import RetryPolicy, Retryable, call_with_retries, retry_after_seconds

CREDENTIALS_FIX = (
    "Check the script app at https://www.reddit.com/prefs/apps: set client_id in the Reddit face config, "
    "CROWDTUNE_REDDIT_CLIENT_SECRET, and the account's CROWDTUNE_REDDIT_PASSWORD (username in the config)."
)
MAX_TITLE_CHARS = 300


class RedditConfig(FaceConfig):
    """One Reddit account posting to one subreddit (a "script" app).

    Defaults:
        client_id = ""                  the script app's id
        client_secret = None            secret: CROWDTUNE_REDDIT_CLIENT_SECRET
        username = ""                   the account that posts
        password = None                 secret: CROWDTUNE_REDDIT_PASSWORD
        subreddit = ""                  where to post, and whose subscribers are the audience
        history_of = "user"             read the user's own submissions, or the subreddit's new posts
        user_agent = "crowdtune/0.1 (by crowdtune)"   Reddit asks for a descriptive one
        oauth_url = "https://oauth.reddit.com"         API host
        reddit_url = "https://www.reddit.com"          token host
        page_size = 100                 submissions per history page (Reddit's maximum)
        retry = RetryPolicy()           see faces.retry
    """

    client_id: str = ""
    client_secret: SecretStr | None = None
    username: str = ""
    password: SecretStr | None = None
    subreddit: str = ""
    history_of: Literal["user", "subreddit"] = "user"
    user_agent: str = "crowdtune/0.1 (by crowdtune)"
    oauth_url: str = "https://oauth.reddit.com"
    reddit_url: str = "https://www.reddit.com"
    page_size: int = Field(default=100, ge=1, le=100)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


def title_for(text: str) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else text
    return first_line[:MAX_TITLE_CHARS]


def submission_text(title: str, selftext: str) -> str:
    """The post's text: the body when it starts with the title (how we publish), else title + body."""
    if not selftext:
        return title
    if selftext.startswith(title):
        return selftext
    return f"{title}\n\n{selftext}"


def utc_from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


class RedditFace(Face):
    kind = "reddit"
    Config = RedditConfig
    capabilities = Capabilities(fetch_history=True, publish=True, reactions=True)
    secret_fields = ("client_secret", "password")

    def __init__(self, config: RedditConfig | None = None):
        super().__init__(config)
        self._client = None

    # -- client and errors ----------------------------------------------------------------

    def _api(self):
        if self._client is None:
            import praw
            from prawcore.sessions import FiniteRetryStrategy

            config = self.config
            if not (config.client_id and config.client_secret and config.username and config.password):
                raise FaceConfigError("The Reddit face needs client_id, client secret, username and password.", CREDENTIALS_FIX)
            reddit = praw.Reddit(
                client_id=config.client_id,
                client_secret=config.client_secret.get_secret_value(),
                username=config.username,
                password=config.password.get_secret_value(),
                user_agent=config.user_agent,
                oauth_url=config.oauth_url,
                reddit_url=config.reddit_url,
                check_for_updates=False,
                check_for_async=False,
            )
            class NoPrawcoreRetries(FiniteRetryStrategy):
                def _sleep_seconds(self) -> None:
                    return None  # prawcore otherwise sleeps 2-4 s before a first request it counts as a retry

            # prawcore has no public switch for its retries; see the module docstring for why they go.
            for core in (reddit._core, reddit._authorized_core, reddit._read_only_core):
                if core is not None:
                    core._retry_strategy_class = partial(NoPrawcoreRetries, retries=0)
            self._client = reddit
        return self._client

    def _classify(self, error: Exception) -> Retryable | FaceError | None:
        import prawcore
        from praw.exceptions import RedditAPIException

        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(error, prawcore.TooManyRequests):
            return Retryable("HTTP 429", rate_limited=True, retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if isinstance(error, prawcore.ServerError) or (status is not None and status >= 500):
            return Retryable(f"HTTP {status}")
        if isinstance(error, prawcore.RequestException):
            return Retryable("network error")
        if isinstance(error, (prawcore.OAuthException, prawcore.InvalidToken)) or status == 401:
            detail = getattr(error, "error_type", None) or status
            return FaceAuthError(f"Reddit rejected the app credentials or the password ({detail}).", CREDENTIALS_FIX)
        if isinstance(error, prawcore.Forbidden):
            return FaceAuthError(
                f"Reddit refused the account access (403) to r/{self.config.subreddit}.",
                "Check the account may post there (banned, private subreddit, karma rules).",
            )
        if isinstance(error, prawcore.NotFound):
            return PostNotFoundError("Reddit has no such submission, user or subreddit (404).", "Check the ids and names in the face config.")
        if isinstance(error, RedditAPIException):
            return FaceError(f"Reddit refused the post: {error}.", "Change the post to meet the subreddit's rules, or the config.")
        return None

    def _call(self, action: str, operation, before_retry=None):
        return call_with_retries(
            operation, classify=self._classify, policy=self.config.retry, network="Reddit", action=action, before_retry=before_retry
        )

    def _listing(self, path: str) -> Iterator:
        """Submissions of a listing path, newest first, page by page with `after`."""
        after = None
        while True:
            params = {"limit": self.config.page_size, "sort": "new", "raw_json": 1}
            if after:
                params["after"] = after
            page = self._call("reading submissions", lambda: self._api().get(path, params=params))
            yield from page.children
            after = page.after
            if not after or not page.children:
                return

    def _history_path(self) -> str:
        if self.config.history_of == "subreddit":
            return f"/r/{self.config.subreddit}/new"
        return f"/user/{self.config.username}/submitted"

    # -- the face -----------------------------------------------------------------------------

    def fetch_history(
        self, limit: int | None = None, before: datetime | None = None, after: datetime | None = None
    ) -> Iterator[HistoryPost]:
        yielded = 0
        for submission in self._listing(self._history_path()):
            created_at = utc_from_epoch(submission.created_utc)
            if after is not None and created_at <= after:
                return
            if before is not None and created_at >= before:
                continue
            yield HistoryPost(
                platform_id=submission.id,
                text=submission_text(submission.title, submission.selftext),
                created_at=created_at,
                url=f"https://www.reddit.com{submission.permalink}",
                author=str(submission.author) if submission.author else None,
                reactions=self._counts(submission),
                audience_size=getattr(submission, "subreddit_subscribers", None),
            )
            yielded += 1
            if limit is not None and yielded >= limit:
                return

    @staticmethod
    def _counts(submission) -> dict[str, int]:
        return {
            "likes": int(submission.score),
            "replies": int(submission.num_comments),
            "upvote_ratio_percent": round(float(submission.upvote_ratio) * 100),
        }

    def publish(self, text: str, intent_id: str) -> Published:
        """Submit a self-post to `subreddit` (see module docstring for title and retries)."""
        if not self.config.subreddit:
            raise FaceConfigError("The Reddit face has no subreddit to post to.", "Set subreddit in the Reddit face config.")
        since = utc_now() - timedelta(minutes=10)
        submission = self._call(
            "submitting a post",
            lambda: self._api().subreddit(self.config.subreddit).submit(title_for(text), selftext=text),
            before_retry=lambda: self.find_published(intent_id, text, since),
        )
        if isinstance(submission, Published):
            return submission
        return Published(submission.id, f"https://www.reddit.com/comments/{submission.id}/", utc_now())

    def find_published(self, intent_id: str, text: str, since: datetime) -> Published | None:
        """Our own self-post in `subreddit` with this exact body, submitted since `since`."""
        for submission in self._listing(f"/user/{self.config.username}/submitted"):
            created_at = utc_from_epoch(submission.created_utc)
            if created_at < since:
                return None
            same_place = str(submission.subreddit).lower() == self.config.subreddit.lower()
            if same_place and submission_text(submission.title, submission.selftext) == text:
                return Published(submission.id, f"https://www.reddit.com{submission.permalink}", created_at)
        return None

    def reactions(self, platform_id: str) -> ReactionSnapshot:
        listing = self._call(
            "reading a submission's reactions", lambda: self._api().get("/api/info", params={"id": f"t3_{platform_id}"})
        )
        if not listing.children:
            raise PostNotFoundError(f"Reddit has no submission {platform_id}.", "Check the id; it may have been removed.")
        submission = listing.children[0]
        now = utc_now()
        return ReactionSnapshot(
            platform_id=platform_id,
            observed_at=now,
            counts=self._counts(submission),
            audience_size=getattr(submission, "subreddit_subscribers", None),
            post_age_seconds=(now - utc_from_epoch(submission.created_utc)).total_seconds(),
        )

    def audience_size(self) -> int | None:
        about = self._call("reading the subscriber count", lambda: self._api().get(f"/r/{self.config.subreddit}/about"))
        return int(about.subscribers)

    def health(self) -> FaceHealth:
        try:
            me = self._call("checking the credentials", lambda: self._api().user.me())
        except FaceError as error:
            return FaceHealth(False, str(error))
        return FaceHealth(True, f"Signed in to Reddit as u/{me}.")
