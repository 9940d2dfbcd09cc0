"""Reddit through praw: the configured user's (or subreddit's) own submissions, self-posts, reactions.

- History: GET /user/<user>/submitted (or /r/<subreddit>/new), newest first, paged with `after`.
  Never a front page: only the configured account's or community's own posts.
- Publish: a self-post in `subreddit`, title = the text's first line (at most 300 characters),
  body = the whole text. Reddit has no idempotency key, so before any retry we look for our own
  submission with the same body since the first attempt.
- Reactions: score -> likes, num_comments -> replies, upvote_ratio -> upvote_ratio_percent;
  audience = the subreddit's subscribers.
- Rate limits and 5xx follow faces.retry. prawcore's own retries are switched off: it would resend
  a submit after a 5xx without checking whether the first one went through. A timeout (no answer
  within request_timeout) is retried like a 5xx.
- praw does the signing in and the HTTP; the answers are read as Reddit's documented JSON here,
  not through praw's objects, which guess a type from whatever keys came (a wrong-shaped answer
  became a dict without `.children`) and fetch a missing attribute with another request. Answers
  that are not the API (an HTML page, a cut-off body, JSON of the wrong shape) raise
  FaceMalformedAnswerError naming what came back (see _classify and faces.retry.AnswerCheck).
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
from faces.limits import RequestBudget
from faces.retry import AnswerCheck, Retryable, RetryPolicy, call_with_retries, retry_after_seconds, timed_out

CREDENTIALS_FIX = (
    "Check the script app at https://www.reddit.com/prefs/apps: set client_id in the Reddit face config, "
    "CROWDTUNE_REDDIT_CLIENT_SECRET, and the account's CROWDTUNE_REDDIT_PASSWORD (username in the config)."
)
MALFORMED_FIX = (
    "Check oauth_url and reddit_url in the Reddit face config (https://oauth.reddit.com and https://www.reddit.com, "
    "not a proxy, login or maintenance page); if they are right, Reddit may be having trouble: try again later."
)
MAX_TITLE_CHARS = 300
# Fields of a submission (a "t3" thing's data) that Reddit always sends and Crowdtune reads.
SUBMISSION_FIELDS = {
    "id": str, "title": str, "selftext": str, "created_utc": (int, float), "permalink": str, "subreddit": str,
    "score": int, "num_comments": int, "upvote_ratio": (int, float),
}


class RedditConfig(FaceConfig):
    """One Reddit account posting to one subreddit (a "script" app)."""

    client_id: str = Field("", description="the script app's id")
    client_secret: SecretStr | None = Field(
        None, description="secret: CROWDTUNE_FACE_<NAME>_CLIENT_SECRET or CROWDTUNE_REDDIT_CLIENT_SECRET")
    username: str = Field("", description="the account that posts")
    password: SecretStr | None = Field(
        None, description="secret: CROWDTUNE_FACE_<NAME>_PASSWORD or CROWDTUNE_REDDIT_PASSWORD")
    subreddit: str = Field("", description="where to post, and whose subscribers are the audience")
    history_of: Literal["user", "subreddit"] = Field(
        "user", description="read the user's own submissions, or the subreddit's new posts")
    user_agent: str = Field("crowdtune/0.1 (by crowdtune)", description="Reddit asks for a descriptive one")
    oauth_url: str = Field("https://oauth.reddit.com", description="API host")
    reddit_url: str = Field("https://www.reddit.com", description="token host")
    page_size: int = Field(default=100, ge=1, le=100, description="submissions per history page (Reddit's maximum)")
    request_timeout: float = Field(default=16.0, gt=0, description="seconds per HTTP request (prawcore's own default)")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="see faces.retry")


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
        self._answers = AnswerCheck("Reddit", self.config.oauth_url, MALFORMED_FIX)
        self._budget = RequestBudget("reddit", f"{self.config.oauth_url}|{self.config.client_id}",
                                     self.config.retry.max_retry_after_seconds)

    # -- client and errors ----------------------------------------------------------------

    def _api(self):
        if self._client is None:
            import praw
            import requests
            from prawcore import Requestor
            from prawcore.sessions import FiniteRetryStrategy

            config = self.config
            if not (config.client_id and config.client_secret and config.username and config.password):
                raise FaceConfigError("The Reddit face needs client_id, client secret, username and password.",
                                      CREDENTIALS_FIX)

            class TimedRequestor(Requestor):
                def request(self, *args, timeout=None, **kwargs):
                    # prawcore passes its own 16 s to every request, so the requestor's is never used otherwise.
                    return super().request(*args, timeout=self.timeout, **kwargs)

            session = requests.Session()
            session.hooks["response"].append(self._remember_answer)
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
                requestor_class=TimedRequestor,
                requestor_kwargs={"session": session, "timeout": config.request_timeout},
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

    def _remember_answer(self, response, *args, **kwargs):
        self._answers.note(response.status_code, response.headers.get("Content-Type"), response.content)
        self._budget.note_answer(response.headers)
        return response

    def _classify(self, error: Exception) -> Retryable | FaceError | None:
        import prawcore
        import requests
        from praw.exceptions import RedditAPIException

        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(error, prawcore.TooManyRequests):
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            return Retryable("HTTP 429", rate_limited=True, retry_after=retry_after)
        if isinstance(error, prawcore.ServerError) or (status is not None and status >= 500):
            return Retryable(f"HTTP {status}")
        if isinstance(error, prawcore.RequestException):
            if isinstance(error.original_exception, requests.Timeout):
                return timed_out("Reddit", self.config.request_timeout, "Check https://www.redditstatus.com")
            return Retryable("network error")
        if isinstance(error, (prawcore.BadJSON, requests.JSONDecodeError)):
            # A 2xx body that is not JSON (prawcore's BadJSON; the token request's raw decode error).
            return self._answers.not_json()
        if isinstance(error, (prawcore.OAuthException, prawcore.InvalidToken)) or status == 401:
            detail = getattr(error, "error_type", None) or status
            return FaceAuthError(f"Reddit rejected the app credentials or the password ({detail}).", CREDENTIALS_FIX)
        if isinstance(error, prawcore.Forbidden):
            return FaceAuthError(
                f"Reddit refused the account access (403) to r/{self.config.subreddit}.",
                "Check the account may post there (banned, private subreddit, karma rules).",
            )
        if isinstance(error, prawcore.NotFound):
            return PostNotFoundError("Reddit has no such submission, user or subreddit (404).",
                                     "Check the ids and names in the face config.")
        if isinstance(error, RedditAPIException) and any(item.error_type == "RATELIMIT" for item in error.items):
            return Retryable("RATELIMIT", rate_limited=True)
        if isinstance(error, RedditAPIException):
            return FaceError(f"Reddit refused the post: {error}.",
                             "Change the post to meet the subreddit's rules, or the config.")
        return None

    def _call(self, action: str, operation, before_retry=None):
        def counted():
            self._budget.wait_for_turn("request", action)  # before the request, so it is not refused
            return operation()

        return call_with_retries(
            counted, classify=self._classify, policy=self.config.retry, network="Reddit", action=action,
            before_retry=before_retry,
        )

    def _get(self, action: str, path: str, params: dict | None = None):
        return self._call(action, lambda: self._api().request(method="GET", path=path, params=params))

    def _submissions(self, answer, action: str) -> tuple[list[dict], str | None]:
        """The submissions of a Listing answer and its `after` cursor, each checked for SUBMISSION_FIELDS."""
        data = self._answers.expect(answer, action, {"data": dict})["data"]
        listing = self._answers.expect(data, action, {"children": list})
        after = listing.get("after")
        if after is not None and not isinstance(after, str):
            raise self._answers.malformed(action, f"a listing whose after is a {type(after).__name__}")
        things = [self._answers.expect(thing, action, {"data": dict})["data"] for thing in listing["children"]]
        return [self._answers.expect(thing, action, SUBMISSION_FIELDS) for thing in things], after

    def _listing(self, path: str) -> Iterator[dict]:
        """Submissions of a listing path, newest first, page by page with `after`."""
        after = None
        while True:
            params = {"limit": self.config.page_size, "sort": "new", "raw_json": 1}
            if after:
                params["after"] = after
            page, after = self._submissions(self._get("reading submissions", path, params), "reading submissions")
            yield from page
            if not after or not page:
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
            created_at = utc_from_epoch(submission["created_utc"])
            if after is not None and created_at <= after:
                return
            if before is not None and created_at >= before:
                continue
            yield HistoryPost(
                platform_id=submission["id"],
                text=submission_text(submission["title"], submission["selftext"]),
                created_at=created_at,
                url=f"https://www.reddit.com{submission['permalink']}",
                author=submission.get("author") or None,
                reactions=self._counts(submission),
                audience_size=submission.get("subreddit_subscribers"),
            )
            yielded += 1
            if limit is not None and yielded >= limit:
                return

    @staticmethod
    def _counts(submission: dict) -> dict[str, int]:
        return {
            "likes": submission["score"],
            "replies": submission["num_comments"],
            "upvote_ratio_percent": round(submission["upvote_ratio"] * 100),
        }

    def publish(self, text: str, intent_id: str) -> Published:
        """Submit a self-post to `subreddit` (see module docstring for title and retries)."""
        if not self.config.subreddit:
            raise FaceConfigError("The Reddit face has no subreddit to post to.",
                                  "Set subreddit in the Reddit face config.")
        since = utc_now() - timedelta(minutes=10)
        # What praw's Subreddit.submit sends for a self-post (prawcore adds api_type=json).
        form = {"sr": self.config.subreddit, "kind": "self", "title": title_for(text), "text": text,
                "nsfw": False, "spoiler": False, "sendreplies": True, "validate_on_submit": True}
        action = "submitting a post"
        answer = self._call(
            action,
            lambda: self._submitted(self._api().request(method="POST", path="api/submit/", data=form)),
            before_retry=lambda: self.find_published(intent_id, text, since),
        )
        if isinstance(answer, Published):
            return answer
        body = self._answers.expect(answer, action, {"json": dict})["json"]
        result = self._answers.expect(body, action, {"data": dict})
        submission_id = self._answers.expect(result["data"], action, {"id": str})["id"]
        return Published(submission_id, f"https://www.reddit.com/comments/{submission_id}/", utc_now())

    @staticmethod
    def _submitted(answer):
        """`answer`, or RedditAPIException (classified in _classify) when Reddit refused the post in it."""
        from praw.exceptions import RedditAPIException

        result = answer.get("json") if isinstance(answer, dict) else None
        errors = result.get("errors") if isinstance(result, dict) else None
        if errors and isinstance(errors, list):
            raise RedditAPIException(errors)
        return answer

    def find_published(self, intent_id: str, text: str, since: datetime) -> Published | None:
        """Our own self-post in `subreddit` with this exact body, submitted since `since`."""
        for submission in self._listing(f"/user/{self.config.username}/submitted"):
            created_at = utc_from_epoch(submission["created_utc"])
            if created_at < since:
                return None
            same_place = submission["subreddit"].lower() == self.config.subreddit.lower()
            if same_place and submission_text(submission["title"], submission["selftext"]) == text:
                return Published(submission["id"], f"https://www.reddit.com{submission['permalink']}", created_at)
        return None

    def reactions(self, platform_id: str) -> ReactionSnapshot:
        action = "reading a submission's reactions"
        found, _ = self._submissions(self._get(action, "/api/info", {"id": f"t3_{platform_id}"}), action)
        if not found:
            raise PostNotFoundError(f"Reddit has no submission {platform_id}.",
                                    "Check the id; it may have been removed.")
        submission = found[0]
        now = utc_now()
        return ReactionSnapshot(
            platform_id=platform_id,
            observed_at=now,
            counts=self._counts(submission),
            audience_size=submission.get("subreddit_subscribers"),
            post_age_seconds=(now - utc_from_epoch(submission["created_utc"])).total_seconds(),
        )

    def audience_size(self) -> int | None:
        action = "reading the subscriber count"
        about = self._answers.expect(self._get(action, f"/r/{self.config.subreddit}/about"), action, {"data": dict})
        return self._answers.expect(about["data"], action, {"subscribers": int})["subscribers"]

    def health(self) -> FaceHealth:
        """GET /api/v1/me (the account), and the subscribers of `subreddit` (GET /r/<subreddit>/about)."""
        action = "checking the credentials"
        try:
            me = self._answers.expect(self._get(action, "/api/v1/me"), action, {"name": str})
            subscribers = self.audience_size() if self.config.subreddit else None
        except FaceError as error:
            return FaceHealth(False, str(error), limits=tuple(self._budget.describe()))
        where = f" posting to r/{self.config.subreddit}" if self.config.subreddit else ""
        return FaceHealth(True, f"Signed in to Reddit as u/{me['name']}.", account=f"u/{me['name']}{where}",
                          audience=subscribers, audience_label=f"subscribers of r/{self.config.subreddit}",
                          limits=tuple(self._budget.describe()))
