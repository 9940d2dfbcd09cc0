"""Bluesky through the atproto SDK: the configured handle's feed, publishing, and reactions.

- History: app.bsky.feed.getAuthorFeed of the handle (posts only, no reposts), paged by cursor.
- Publish: com.atproto.repo.createRecord with a record key chosen by us, derived from intent_id.
  A repeated attempt names the same record, so it cannot create a second post; before any retry
  we also ask for that record (com.atproto.repo.getRecord).
- Reactions: likeCount, repostCount, replyCount, quoteCount of app.bsky.feed.getPosts;
  audience = followersCount of app.bsky.actor.getProfile.
- Sessions: one per account, reused by every job (faces.sessions keeps its tokens in a file under the
  data folder, owner-only); the SDK refreshes the access token with refreshSession before it
  expires, and a session the server refuses is created anew once (createSession).
- Requests, sign-ins and posts wait for their turn under the documented limits (faces.limits).
- Rate limits and 5xx follow faces.retry; a 429's Retry-After (or ratelimit-reset) is honoured.
  A timeout (no answer within request_timeout) is retried like a 5xx.
- Answers that are not the XRPC API (an HTML page, a cut-off body, JSON the SDK's models refuse, a
  date that is not a date) raise FaceMalformedAnswerError naming what came back, never the SDK's
  ModelError (see _classify).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta

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
    as_naive_utc,
    utc_now,
)
from faces.limits import Covers, RequestBudget
from faces.retry import AnswerCheck, Retryable, RetryPolicy, call_with_retries, retry_after_seconds, timed_out
from faces.sessions import SessionFile

POST_COLLECTION = "app.bsky.feed.post"
TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"
# Record keys of posts must be TIDs: 53 bits of microseconds since 1970 + 10 bits of clock id.
TID_EPOCH_START_US = int(datetime(2023, 1, 1).timestamp() * 1_000_000)
TID_SPREAD_US = 365 * 24 * 3600 * 1_000_000
PASSWORD_FIX = (
    "Create an app password (Settings > Privacy and security > App passwords) and set "
    "CROWDTUNE_FACE_<NAME>_APP_PASSWORD or CROWDTUNE_BLUESKY_APP_PASSWORD (or save it on the Settings page); "
    "check `handle` in the Bluesky face config."
)
MALFORMED_FIX = (
    "Check that service_url in the face config is your PDS or https://bsky.social itself (not a proxy, login or "
    "maintenance page); if it is, the service may be mid-upgrade: try again later."
)


class BlueskyConfig(FaceConfig):
    """One Bluesky account."""

    service_url: str = Field("https://bsky.social", description="the PDS / entryway (xrpc is appended)")
    handle: str = Field("", description='the account, e.g. "crowdtune.bsky.social"')
    app_password: SecretStr | None = Field(
        None, description="an app password (secret: CROWDTUNE_FACE_<NAME>_APP_PASSWORD or "
                                "CROWDTUNE_BLUESKY_APP_PASSWORD)")
    page_size: int = Field(default=50, ge=1, le=100, description="posts per history page (Bluesky allows up to 100)")
    request_timeout: float = Field(default=30.0, gt=0, description="seconds per HTTP request")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="see faces.retry")


def record_key_for_intent(intent_id: str) -> str:
    """A valid TID record key that is a pure function of intent_id.

    Its timestamp part lies in 2023 (a plausible TID), the rest comes from a hash of the intent,
    so every retry of one intent addresses the same record.
    """
    digest = int.from_bytes(hashlib.sha256(intent_id.encode()).digest()[:16], "big")
    timestamp_us = TID_EPOCH_START_US + digest % TID_SPREAD_US
    clock_id = (digest >> 64) % 1024
    value = (timestamp_us << 10) | clock_id
    return "".join(TID_ALPHABET[(value >> shift) & 31] for shift in range(60, -1, -5))


def parse_time(value: str) -> datetime:
    """An AT Protocol datetime (ISO 8601, `Z` or an offset) as naive UTC; ValueError if it is none."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a date")
    return as_naive_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))


class BlueskyFace(Face):
    kind = "bluesky"
    Config = BlueskyConfig
    capabilities = Capabilities(fetch_history=True, publish=True, reactions=True)
    secret_fields = ("app_password",)

    def __init__(self, config: BlueskyConfig | None = None):
        super().__init__(config)
        self._client = None
        self._did: str | None = None
        self._answers = AnswerCheck("Bluesky", self.config.service_url, MALFORMED_FIX)
        self._sessions = SessionFile("bluesky", f"{self.config.service_url}|{self.config.handle}")
        self._reused_session = False
        self._budget = RequestBudget("bluesky", f"{self.config.service_url}|{self.config.handle}",
                                     self.config.retry.max_retry_after_seconds)

    # -- client and errors ----------------------------------------------------------------

    def _api(self):
        if self._client is None:
            from atproto import Client
            from atproto_client.request import Request

            if not self.config.handle or self.config.app_password is None:
                raise FaceConfigError("The Bluesky face needs a handle and an app password.", PASSWORD_FIX)
            request = Request(timeout=self.config.request_timeout, event_hooks={"response": [self._remember_answer]})
            client = Client(base_url=self.config.service_url, request=request)
            # The SDK refreshes the access token itself (refreshSession, 15 min before it expires) and
            # tells us, so every new pair of tokens is stored for the next job (faces.sessions).
            client.on_session_change(lambda event, session: self._sessions.save(
                session.encode(), self.config.app_password.get_secret_value()))
            stored = self._sessions.load(self.config.app_password.get_secret_value())
            if stored is not None:
                client.login(session_string=stored, fetch_bsky_profile=False)  # no request: the tokens are kept
                self._reused_session, self._did = True, client._session.did
            else:
                self._create_session(client)
            self._client = client
        return self._client

    def _create_session(self, client) -> None:
        """com.atproto.server.createSession: the one call Bluesky limits hardest (30 per 5 min, 300 a day)."""
        self._call(
            "signing in",
            lambda: client.login(self.config.handle, self.config.app_password.get_secret_value(),
                                 fetch_bsky_profile=False),
            signed_in=False, limit="session",
        )
        self._reused_session = False
        self._did = client._session.did  # the repo we write to; the SDK keeps it on the session
        if not self._did:
            raise self._answers.malformed("signing in", "a session without a did")

    def _remember_answer(self, response) -> None:
        # The SDK's ModelError does not carry the response: keep what a message needs from it.
        response.read()
        self._answers.note(response.status_code, response.headers.get("content-type"), response.content)
        self._budget.note_answer(response.headers)

    def _classify(self, error: Exception, action: str) -> Retryable | FaceError | None:
        from atproto_client import exceptions
        from pydantic import ValidationError

        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        content = getattr(response, "content", None)
        code = getattr(content, "error", None) or ""
        if isinstance(error, exceptions.RateLimitExceededError) or status == 429:
            headers = getattr(response, "headers", {}) or {}
            wait = retry_after_seconds(headers.get("retry-after"))
            if wait is None and headers.get("ratelimit-reset"):
                wait = max(0.0, float(headers["ratelimit-reset"]) - utc_now().timestamp())
            return Retryable("HTTP 429", rate_limited=True, retry_after=wait)
        if (isinstance(error, exceptions.UnauthorizedError)
                or code in {"AuthenticationRequired", "ExpiredToken", "InvalidToken"}):
            return FaceAuthError(
                f"Bluesky ({self.config.service_url}) rejected the handle or app password ({status}).", PASSWORD_FIX
            )
        if status is not None and status >= 500:
            return Retryable(f"HTTP {status}")
        if isinstance(error, exceptions.InvokeTimeoutError):
            return timed_out("Bluesky", self.config.request_timeout, "Check the service is up (status.bsky.app)")
        if isinstance(error, exceptions.NetworkError):
            return Retryable(f"HTTP {status}" if status else "network error")
        if isinstance(error, exceptions.ModelError) and isinstance(error.__cause__, ValidationError):
            # JSON the SDK's models refuse: not retried, a server that speaks another API keeps doing so.
            problems = "; ".join(
                f"{'.'.join(str(part) for part in problem['loc']) or 'the answer'}: {problem['msg']}"
                for problem in error.__cause__.errors()[:3]
            )
            return self._answers.malformed(action, f"JSON of another shape ({problems})")
        if isinstance(error, (exceptions.ModelError, ValueError)):
            # A 2xx body that is not JSON: the SDK says so with a ModelError, or pydantic's JSON
            # parser raises ValueError on a body cut off in transit.
            return self._answers.not_json()
        if code == "RecordNotFound" or status == 404:
            return PostNotFoundError(
                f"Bluesky ({self.config.service_url}) has no such post.",
                "Check the post's at:// URI; the post may have been deleted.",
            )
        if isinstance(error, exceptions.RequestErrorBase):
            return FaceError(
                f"Bluesky ({self.config.service_url}) refused the request ({status} {code}).",
                "Check the post (at most 300 characters) and the face config.",
            )
        return None

    def _call(self, action: str, operation, before_retry=None, signed_in: bool = True, limit: Covers = "request"):
        if signed_in:
            self._api()

        def counted():
            self._budget.wait_for_turn(limit, action)  # before the request, so it is not refused
            return operation()

        def attempt():
            return call_with_retries(
                counted,
                classify=lambda error: self._classify(error, action),
                policy=self.config.retry,
                network="Bluesky",
                action=action,
                before_retry=before_retry,
            )

        try:
            return attempt()
        except FaceAuthError:
            if not (signed_in and self._reused_session):
                raise
            # The stored session was refused (revoked, or its refresh token already used by another
            # worker): sign in anew, once, on the same client that the operation holds.
            self._sessions.forget()
            self._create_session(self._client)
            return attempt()

    # -- the face -----------------------------------------------------------------------------

    def fetch_history(
        self, limit: int | None = None, before: datetime | None = None, after: datetime | None = None
    ) -> Iterator[HistoryPost]:
        """The handle's own posts (no reposts), newest first, page by page with the feed's cursor."""
        cursor = None
        yielded = 0
        while True:
            params = {"actor": self.config.handle, "limit": self.config.page_size, "filter": "posts_no_replies"}
            if cursor:
                params["cursor"] = cursor
            page = self._call("reading the author feed",
                              lambda params=params: self._api().app.bsky.feed.get_author_feed(params=params))
            for item in page.feed:
                if item.reason is not None:  # a repost of someone else's post
                    continue
                post = item.post
                text, created_at = self._post_record(post.record, "reading the author feed")
                if after is not None and created_at <= after:
                    return
                if before is not None and created_at >= before:
                    continue
                yield HistoryPost(
                    platform_id=post.uri,
                    text=text,
                    created_at=created_at,
                    url=self._web_url(post.uri, post.author.handle),
                    author=post.author.handle,
                    reactions=self._counts(post),
                )
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            cursor = page.cursor
            if not cursor or not page.feed:
                return

    def _post_record(self, record, action: str) -> tuple[str, datetime]:
        """The text and creation time of a post record. The SDK keeps a record it cannot read as a
        loose dict (or whatever value came), so this is where a wrong-shaped post is named."""
        text = getattr(record, "text", None)
        try:
            created_at = parse_time(getattr(record, "created_at", None))
        except ValueError:
            created_at = None
        if not isinstance(text, str) or created_at is None:
            raise self._answers.malformed(action, "a post record without text and a readable createdAt")
        return text, created_at

    @staticmethod
    def _web_url(uri: str, handle: str) -> str:
        return f"https://bsky.app/profile/{handle}/post/{uri.rsplit('/', 1)[-1]}"

    @staticmethod
    def _counts(post) -> dict[str, int]:
        return {
            "likes": post.like_count or 0,
            "reposts": post.repost_count or 0,
            "replies": post.reply_count or 0,
            "quotes": post.quote_count or 0,
        }

    def publish(self, text: str, intent_id: str) -> Published:
        """Create the post under the record key derived from intent_id (see module docstring)."""
        client = self._api()
        rkey = record_key_for_intent(intent_id)
        created_at = utc_now()
        record = {"$type": POST_COLLECTION, "text": text,
                  "createdAt": created_at.isoformat(timespec="milliseconds") + "Z"}
        data = {"repo": self._did, "collection": POST_COLLECTION, "rkey": rkey, "record": record}
        since = created_at - timedelta(days=1)
        response = self._call(
            "publishing a post",
            lambda: client.com.atproto.repo.create_record(data=data),
            before_retry=lambda: self.find_published(intent_id, text, since), limit="post",
        )
        if isinstance(response, Published):
            return response
        return Published(response.uri, self._web_url(response.uri, self.config.handle), created_at)

    def find_published(self, intent_id: str, text: str, since: datetime) -> Published | None:
        """The record this intent's key names, if it exists and was created since `since`."""
        client = self._api()
        params = {"repo": self._did, "collection": POST_COLLECTION, "rkey": record_key_for_intent(intent_id)}
        try:
            found = self._call("looking up a published post", lambda: client.com.atproto.repo.get_record(params=params))
        except PostNotFoundError:
            return None
        _, created_at = self._post_record(found.value, "looking up a published post")
        if created_at < since:
            return None
        return Published(found.uri, self._web_url(found.uri, self.config.handle), created_at)

    def reactions(self, platform_id: str) -> ReactionSnapshot:
        client = self._api()
        page = self._call("reading a post's reactions",
                          lambda: client.app.bsky.feed.get_posts(params={"uris": [platform_id]}))
        if not page.posts:
            raise PostNotFoundError(f"Bluesky has no post {platform_id}.",
                                    "Check the at:// URI; it may have been deleted.")
        post = page.posts[0]
        _, created_at = self._post_record(post.record, "reading a post's reactions")
        now = utc_now()
        return ReactionSnapshot(
            platform_id=platform_id,
            observed_at=now,
            counts=self._counts(post),
            audience_size=self.audience_size(),
            post_age_seconds=(now - created_at).total_seconds(),
        )

    def audience_size(self) -> int | None:
        client = self._api()
        profile = self._call("reading the follower count",
                             lambda: client.app.bsky.actor.get_profile(params={"actor": self.config.handle}))
        return profile.followers_count

    def health(self) -> FaceHealth:
        """Sign in (or reuse the stored session), then app.bsky.actor.getProfile: a request the session must pass,
        and the account's followersCount."""
        try:
            profile = self._call("checking the session", lambda: self._api().app.bsky.actor.get_profile(
                params={"actor": self.config.handle}))
        except FaceError as error:
            return FaceHealth(False, str(error), limits=tuple(self._budget.describe()))
        return FaceHealth(True, f"Signed in to {self.config.service_url} as {profile.handle}.",
                          account=f"{profile.handle} ({profile.did}) on {self.config.service_url}",
                          audience=profile.followers_count, audience_label="followers",
                          limits=tuple(self._budget.describe()))
