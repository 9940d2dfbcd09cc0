"""Mastodon through Mastodon.py: the account's own statuses, publishing, and their reactions.

- History: GET /api/v1/accounts/:id/statuses, newest first, paged with max_id (reblogs left out).
- Publish: POST /api/v1/statuses with an Idempotency-Key header = intent_id, so the server itself
  drops a repeated attempt; before any retry we also look for the status among our own.
- Reactions: favourites -> likes, reblogs -> reposts, replies -> replies; audience = followers_count.
- Requests wait for their turn under the documented limits (faces.limits) before they are sent.
- Rate limits and 5xx follow faces.retry (Mastodon.py's own waiting is switched off with
  ratelimit_method="throw" so there is one retry policy, and a 429's Retry-After is read from
  the response). A timeout (no answer within request_timeout) is retried like a 5xx.
- Answers that are not the Mastodon API (an HTML page, a cut-off body, JSON of the wrong shape)
  raise FaceMalformedAnswerError naming what came back, never a KeyError (see _classify).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from html.parser import HTMLParser
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
    as_naive_utc,
    utc_now,
)
from faces.limits import Covers, RequestBudget
from faces.retry import AnswerCheck, Retryable, RetryPolicy, call_with_retries, retry_after_seconds, timed_out

TOKEN_FIX = ("Create a new token with scopes read write (Preferences > Development) and save it on the Settings page "
             "(or set CROWDTUNE_FACE_<NAME>_TOKEN or CROWDTUNE_MASTODON_TOKEN).")
MALFORMED_FIX = (
    "Check that api_base_url in the face config is the Mastodon instance itself (https://your.instance, not a "
    "proxy, login or maintenance page); if it is, the instance may be mid-upgrade: try again later."
)
# Fields the Mastodon API documents as always present, and the ones Crowdtune reads.
STATUS_FIELDS = ("id", "created_at", "content", "account", "favourites_count", "reblogs_count", "replies_count")
ACCOUNT_FIELDS = ("id", "acct", "followers_count")


class MastodonConfig(FaceConfig):
    """One Mastodon account."""

    api_base_url: str = Field("https://mastodon.social", description="the instance")
    token: SecretStr | None = Field(
        None, description="access token with scopes read write (secret: CROWDTUNE_FACE_<NAME>_TOKEN or "
                          "CROWDTUNE_MASTODON_TOKEN)")
    account_id: str | None = Field(None, description="whose statuses to read; None = the token's own account")
    visibility: Literal["public", "unlisted", "private"] = Field(
        "public", description="of published statuses: public | unlisted | private")
    page_size: int = Field(default=40, ge=1, le=40, description="statuses per history page (Mastodon's maximum)")
    request_timeout: float = Field(default=30.0, gt=0, description="seconds per HTTP request")
    find_window_minutes: float = Field(
        default=10.0, ge=0, description="how far back find_published looks before the first attempt")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="see faces.retry")


class StatusText(HTMLParser):
    """Mastodon serves status content as HTML; this turns it back into the text that was posted."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "br":
            self.parts.append("\n")
        elif tag == "p" and self.parts:
            self.parts.append("\n\n")

    def handle_data(self, data):
        self.parts.append(data)


def status_text(content: str) -> str:
    """Plain text of a status's HTML content."""
    if "<" not in content:
        return html.unescape(content)
    parser = StatusText()
    parser.feed(content)
    return "".join(parser.parts).strip()


def same_text(a: str, b: str) -> bool:
    return re.sub(r"\s+", " ", a).strip() == re.sub(r"\s+", " ", b).strip()


class MastodonFace(Face):
    kind = "mastodon"
    Config = MastodonConfig
    capabilities = Capabilities(fetch_history=True, publish=True, reactions=True)
    secret_fields = ("token",)

    def __init__(self, config: MastodonConfig | None = None):
        super().__init__(config)
        self._client = None
        self._account_id: str | None = self.config.account_id
        self._last_retry_after: float | None = None
        self._answers = AnswerCheck("Mastodon", self.config.api_base_url, MALFORMED_FIX)
        self._budget = RequestBudget("mastodon", f"{self.config.api_base_url}|{self.config.account_id or 'token'}",
                                     self.config.retry.max_retry_after_seconds)

    # -- client and errors ----------------------------------------------------------------

    def _api(self):
        if self._client is None:
            import requests
            from mastodon import Mastodon

            if self.config.token is None:
                raise FaceConfigError("The Mastodon face has no access token.", TOKEN_FIX)
            session = requests.Session()
            session.hooks["response"].append(self._remember_answer)
            self._client = Mastodon(
                access_token=self.config.token.get_secret_value(),
                api_base_url=self.config.api_base_url,
                ratelimit_method="throw",
                version_check_mode="none",
                request_timeout=self.config.request_timeout,
                session=session,
            )
        return self._client

    def _remember_answer(self, response, *args, **kwargs):
        # Mastodon.py's errors do not carry the response: keep what a message needs from it, the
        # start of the body (an unparseable answer is named by it) and the wait a 429 asked for.
        self._answers.note(response.status_code, response.headers.get("Content-Type"), response.content)
        self._budget.note_answer(response.headers)
        if response.status_code == 429:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            reset = response.headers.get("X-RateLimit-Reset")
            if wait is None and reset:
                try:
                    wait = max(0.0, (as_naive_utc(datetime.fromisoformat(reset)) - utc_now()).total_seconds())
                except ValueError:
                    wait = None
            self._last_retry_after = wait
        return response

    def _classify(self, error: Exception) -> Retryable | FaceError | None:
        import requests
        from mastodon import errors

        if isinstance(error, errors.MastodonRatelimitError):
            return Retryable("HTTP 429", rate_limited=True, retry_after=self._last_retry_after)
        if isinstance(error, errors.MastodonServerError):
            return Retryable(f"HTTP {error.args[1]}")
        if isinstance(error, errors.MastodonNetworkError):
            if isinstance(error.__context__, requests.Timeout):  # Mastodon.py raises it inside `except`
                return timed_out("Mastodon", self.config.request_timeout, "Check the instance is up (its status page)")
            return Retryable("network error")
        if isinstance(error, errors.MastodonUnauthorizedError):
            return FaceAuthError(f"Mastodon ({self.config.api_base_url}) rejected the access token (401).", TOKEN_FIX)
        if isinstance(error, errors.MastodonAPIError) and not (len(error.args) > 1 and isinstance(error.args[1], int)):
            # Mastodon.py raises an error without an HTTP status only when a 2xx body is not JSON.
            return self._answers.not_json()
        if isinstance(error, errors.MastodonNotFoundError):
            return PostNotFoundError(
                f"Mastodon ({self.config.api_base_url}) has no such status or account (404).",
                "Check the status id, or account_id in the Mastodon face config; the status may have been deleted.",
            )
        if isinstance(error, errors.MastodonAPIError) and len(error.args) > 1 and error.args[1] == 403:
            return FaceAuthError(
                f"Mastodon ({self.config.api_base_url}) refused the request (403): the token lacks a scope.",
                TOKEN_FIX,
            )
        if isinstance(error, errors.MastodonAPIError):
            return FaceError(
                f"Mastodon ({self.config.api_base_url}) refused the request: {error.args[1:]}.",
                "Check the post (length, visibility) and the face config.",
            )
        return None

    def _call(self, action: str, operation, before_retry=None, covers: Covers = "request"):
        def counted():
            self._budget.wait_for_turn(covers, action)  # before the request, so it is not refused
            return operation()

        return call_with_retries(
            counted,
            classify=self._classify,
            policy=self.config.retry,
            network="Mastodon",
            action=action,
            before_retry=before_retry,
        )

    def _verify_credentials(self, action: str) -> dict:
        me = self._call(action, lambda: self._api().account_verify_credentials())
        return self._answers.expect(me, action, ACCOUNT_FIELDS)

    def _own_account_id(self) -> str:
        if self._account_id is None:
            self._account_id = str(self._verify_credentials("reading the token's account")["id"])
        return self._account_id

    # -- the face -----------------------------------------------------------------------------

    def _statuses(self) -> Iterator[dict]:
        """Own statuses newest first, page by page with max_id."""
        account_id = self._own_account_id()
        max_id = None
        while True:
            page = self._call(
                "reading statuses",
                lambda max_id=max_id: self._api().account_statuses(
                    account_id, max_id=max_id, limit=self.config.page_size, exclude_reblogs=True
                ),
            )
            if not self._answers.expect_list(page, "reading statuses", "statuses"):
                return
            # Mastodon.py turns a date it cannot read into None, so expect() names it as missing.
            statuses = [self._answers.expect(status, "reading statuses", STATUS_FIELDS) for status in page]
            yield from statuses
            max_id = statuses[-1]["id"]

    def fetch_history(
        self, limit: int | None = None, before: datetime | None = None, after: datetime | None = None
    ) -> Iterator[HistoryPost]:
        """The account's statuses, newest first (see Face.fetch_history)."""
        yielded = 0
        for status in self._statuses():
            created_at = as_naive_utc(status["created_at"])
            if after is not None and created_at <= after:
                return  # newest first: everything further is older still
            if before is not None and created_at >= before:
                continue
            yield HistoryPost(
                platform_id=str(status["id"]),
                text=status_text(status["content"]),
                created_at=created_at,
                url=status.get("url"),
                author=status["account"].get("acct"),
                reactions=self._counts(status),
                audience_size=status["account"].get("followers_count"),
            )
            yielded += 1
            if limit is not None and yielded >= limit:
                return

    @staticmethod
    def _counts(status) -> dict[str, int]:
        return {
            "likes": int(status["favourites_count"]),
            "reposts": int(status["reblogs_count"]),
            "replies": int(status["replies_count"]),
        }

    def publish(self, text: str, intent_id: str) -> Published:
        """Post a status; retries carry the same Idempotency-Key and are preceded by find_published."""
        since = utc_now() - timedelta(minutes=self.config.find_window_minutes)
        status = self._call(
            "publishing a status",
            lambda: self._api().status_post(text, idempotency_key=intent_id, visibility=self.config.visibility),
            before_retry=lambda: self.find_published(intent_id, text, since), covers="post",
        )
        if isinstance(status, Published):
            return status
        status = self._answers.expect(status, "publishing a status", STATUS_FIELDS)
        return Published(str(status["id"]), status.get("url"), as_naive_utc(status["created_at"]))

    def find_published(self, intent_id: str, text: str, since: datetime) -> Published | None:
        """Our own status with exactly this text created since `since` (Mastodon does not echo the key)."""
        for status in self._statuses():
            created_at = as_naive_utc(status["created_at"])
            if created_at < since:
                return None
            if same_text(status_text(status["content"]), text):
                return Published(str(status["id"]), status.get("url"), created_at)
        return None

    def reactions(self, platform_id: str) -> ReactionSnapshot:
        action = "reading a status's reactions"
        answer = self._call(action, lambda: self._api().status(platform_id))
        status = self._answers.expect(answer, action, STATUS_FIELDS)
        now = utc_now()
        created_at = as_naive_utc(status["created_at"])
        return ReactionSnapshot(
            platform_id=platform_id,
            observed_at=now,
            counts=self._counts(status),
            audience_size=status["account"].get("followers_count"),
            post_age_seconds=(now - created_at).total_seconds(),
        )

    def audience_size(self) -> int | None:
        return int(self._verify_credentials("reading the follower count")["followers_count"])

    def health(self) -> FaceHealth:
        """GET /api/v1/accounts/verify_credentials: the token's account and its followers_count."""
        try:
            me = self._verify_credentials("checking the token")
        except FaceError as error:
            return FaceHealth(False, str(error), limits=tuple(self._budget.describe()))
        return FaceHealth(True, f"Signed in to {self.config.api_base_url} as @{me['acct']}.",
                          account=f"@{me['acct']} on {self.config.api_base_url}", audience=int(me["followers_count"]),
                          audience_label="followers", limits=tuple(self._budget.describe()))
