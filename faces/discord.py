"""Discord through hikari's REST client (no gateway): one channel's messages, as a bot.

- History: GET /channels/:id/messages, newest first, paged with `before` (the oldest id seen).
- Publish: POST /channels/:id/messages with a nonce derived from intent_id and enforce_nonce, so
  Discord returns the existing message for a repeated nonce instead of posting again; before any
  retry we also look for our own message with the same text.
- Reactions: one count per emoji, as kinds "emoji:<name>"; audience = the guild's approximate
  member count (GET /guilds/:id/preview).
- Rate limits: hikari itself waits what a 429's retry_after asks (and gives up past
  retry.max_retry_after_seconds); 5xx and connection errors are retried by faces.retry (hikari's
  own 5xx retries are switched off so one policy decides, and find_published runs in between).
  A timeout (no answer within request_timeout) is retried like a 5xx.
- Answers that are not the Discord API (an HTML page, a cut-off body, JSON that hikari cannot read
  into its entities) raise FaceMalformedAnswerError naming what came back, never a KeyError or a
  bare AssertionError from inside hikari (see _classify).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Iterator
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
    FaceRateLimitError,
    HistoryPost,
    PostNotFoundError,
    Published,
    ReactionSnapshot,
    as_naive_utc,
    utc_now,
)
from faces.limits import RequestBudget
from faces.retry import AnswerCheck, Retryable, RetryPolicy, call_with_retries, timed_out

TOKEN_FIX = ("Reset the bot token (Developer Portal > your app > Bot > Reset Token) and save it on the Settings page "
             "(or set CROWDTUNE_FACE_<NAME>_TOKEN or CROWDTUNE_DISCORD_TOKEN).")
MALFORMED_FIX = (
    "Check that api_url in the face config is Discord's API (https://discord.com/api/v10, not a proxy, login or "
    "maintenance page); if it is, Discord may be having trouble (discordstatus.com): try again later."
)
# What hikari raises when JSON it got is not what the API sends: it indexes, converts and asserts
# its way through the payload while building its entities.
UNREADABLE_JSON = (KeyError, TypeError, ValueError, AttributeError, AssertionError)


class CutOffJSON(Exception):
    """A 2xx answer labelled JSON that does not parse (a body cut off in transit)."""


class DiscordConfig(FaceConfig):
    """One Discord channel, posted to by a bot."""

    api_url: str = Field("https://discord.com/api/v10", description="the REST API base")
    token: SecretStr | None = Field(None, description="the bot token (secret: CROWDTUNE_FACE_<NAME>_TOKEN or "
                          "CROWDTUNE_DISCORD_TOKEN)")
    channel_id: int = Field(0, description="the text channel to read and post in")
    guild_id: int | None = Field(None, description="its server, for the member count; None = audience unknown")
    page_size: int = Field(default=100, ge=1, le=100, description="messages per history page (Discord's maximum)")
    request_timeout: float = Field(default=30.0, gt=0, description="seconds per HTTP request")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="see faces.retry")


def nonce_for_intent(intent_id: str) -> str:
    """Discord nonces are at most 25 characters; a hash keeps them unique per intent."""
    return hashlib.sha256(intent_id.encode()).hexdigest()[:25]


class DiscordFace(Face):
    kind = "discord"
    Config = DiscordConfig
    capabilities = Capabilities(fetch_history=True, publish=True, reactions=True)
    secret_fields = ("token",)

    def __init__(self, config: DiscordConfig | None = None):
        super().__init__(config)
        self._answers = AnswerCheck("Discord", self.config.api_url, MALFORMED_FIX)
        self._read_an_answer = False
        bot = self.config.guild_id or self.config.channel_id
        self._budget = RequestBudget("discord", f"{self.config.api_url}|{bot}",
                                     self.config.retry.max_retry_after_seconds)

    # -- client and errors ----------------------------------------------------------------

    def _loads(self, body: bytes):
        # hikari parses 2xx JSON answers with this and keeps nothing of them to name in an error.
        self._answers.note(None, "application/json", body)
        self._read_an_answer = True
        try:
            return json.loads(body)
        except ValueError as error:
            raise CutOffJSON() from error

    async def _with_rest(self, operation: Callable[[object], Awaitable]):
        import hikari
        from hikari.impl.config import HTTPSettings, HTTPTimeoutSettings

        app = hikari.RESTApp(
            url=self.config.api_url,
            http_settings=HTTPSettings(timeouts=HTTPTimeoutSettings(total=self.config.request_timeout)),
            loads=self._loads,
            max_retries=0,
            max_rate_limit=self.config.retry.max_retry_after_seconds,
        )
        self._read_an_answer = False
        await app.start()
        try:
            async with app.acquire(self.config.token.get_secret_value(), hikari.TokenType.BOT) as rest:
                return await operation(rest)
        finally:
            await app.close()

    def _classify(self, error: Exception, action: str) -> Retryable | FaceError | None:
        import hikari

        if isinstance(error, hikari.RateLimitTooLongError):
            return FaceRateLimitError(
                f"Discord rate-limited the bot and asked to wait {error.retry_after:.0f} s, longer than "
                f"the {self.config.retry.max_retry_after_seconds:.0f} s Crowdtune waits.",
                "Try again later, or post and collect less often for this face.",
            )
        if isinstance(error, hikari.UnauthorizedError):
            return FaceAuthError("Discord rejected the bot token (401).", TOKEN_FIX)
        if isinstance(error, hikari.ForbiddenError):
            return FaceAuthError(
                f"Discord refused the bot access to channel {self.config.channel_id} (403).",
                "Invite the bot to the server and give it View Channel, Read Message History and Send Messages there.",
            )
        if isinstance(error, hikari.NotFoundError):
            return PostNotFoundError(
                f"Discord has no such message or channel (channel {self.config.channel_id}).",
                "Check channel_id in the Discord face config and the message id; it may have been deleted.",
            )
        if isinstance(error, hikari.InternalServerError):
            return Retryable(f"HTTP {int(error.status)}")
        if isinstance(error, hikari.HTTPResponseError) and int(error.status) == 429:
            return Retryable("HTTP 429", rate_limited=True)
        if isinstance(error, hikari.HTTPError) and isinstance(error.__cause__, TimeoutError):
            return timed_out("Discord", self.config.request_timeout, "Check Discord is up (discordstatus.com)")
        if isinstance(error, hikari.HTTPError) and error.message.startswith("Expected JSON"):
            # hikari names the content type of a 2xx answer that is not JSON, and keeps no body.
            content_type = re.search(r"content_type='([^']*)'", error.message)
            self._answers.note(None, content_type.group(1) if content_type else None, None)
            return self._answers.not_json()
        if isinstance(error, CutOffJSON):
            return self._answers.not_json()
        if isinstance(error, hikari.HTTPError):
            return Retryable("network error")
        if isinstance(error, UNREADABLE_JSON) and self._read_an_answer:
            detail = f"no field {error.args[0]!r}" if isinstance(error, KeyError) else type(error).__name__
            if str(error) and not isinstance(error, KeyError):
                detail += f": {error}"
            return self._answers.malformed(action, f"JSON hikari could not read ({detail})")
        if isinstance(error, hikari.ClientHTTPResponseError):
            return FaceError(f"Discord refused the request ({error.status}: {error.message}).",
                             "Check the post and the face config.")
        return None

    def _call(self, action: str, operation: Callable[[object], Awaitable], before_retry=None):
        if self.config.token is None:
            raise FaceConfigError("The Discord face has no bot token.", TOKEN_FIX)
        if not self.config.channel_id:
            raise FaceConfigError("The Discord face has no channel_id.",
                                  "Set channel_id (Developer Mode > right-click the channel > Copy ID).")
        def counted():
            self._budget.wait_for_turn("request", action)  # before the request, so it is not refused
            return asyncio.run(self._with_rest(operation))

        return call_with_retries(
            counted,
            classify=lambda error: self._classify(error, action),
            policy=self.config.retry,
            network="Discord",
            action=action,
            before_retry=before_retry,
        )

    def _page(self, before_id: int | None) -> list:
        async def fetch(rest):
            if before_id is None:
                messages = rest.fetch_messages(self.config.channel_id)
            else:
                messages = rest.fetch_messages(self.config.channel_id, before=before_id)
            return [message async for message in messages.limit(self.config.page_size)]

        return self._call("reading channel messages", fetch)

    def _messages(self) -> Iterator:
        before_id = None
        while True:
            page = self._page(before_id)
            yield from page
            if len(page) < self.config.page_size:
                return
            before_id = int(page[-1].id)

    # -- the face -----------------------------------------------------------------------------

    def fetch_history(
        self, limit: int | None = None, before: datetime | None = None, after: datetime | None = None
    ) -> Iterator[HistoryPost]:
        """The channel's messages with text, newest first, paged with `before`."""
        yielded = 0
        for message in self._messages():
            created_at = as_naive_utc(message.timestamp)
            if after is not None and created_at <= after:
                return
            if (before is not None and created_at >= before) or not message.content:
                continue
            yield HistoryPost(
                platform_id=str(int(message.id)),
                text=message.content,
                created_at=created_at,
                url=message.make_link(self.config.guild_id),
                author=message.author.username,
                reactions=self._counts(message),
            )
            yielded += 1
            if limit is not None and yielded >= limit:
                return

    @staticmethod
    def _counts(message) -> dict[str, int]:
        return {f"emoji:{reaction.emoji.name}": int(reaction.count) for reaction in message.reactions}

    def publish(self, text: str, intent_id: str) -> Published:
        """Send the message with nonce + enforce_nonce (see module docstring)."""
        since = utc_now() - timedelta(minutes=10)
        nonce = nonce_for_intent(intent_id)
        message = self._call(
            "sending a message",
            lambda rest: rest.create_message(self.config.channel_id, text, nonce=nonce),
            before_retry=lambda: self.find_published(intent_id, text, since),
        )
        if isinstance(message, Published):
            return message
        return Published(str(int(message.id)), message.make_link(self.config.guild_id), as_naive_utc(message.timestamp))

    def find_published(self, intent_id: str, text: str, since: datetime) -> Published | None:
        """Our bot's message with exactly this text since `since` (history does not echo nonces)."""
        me = self._call("reading the bot's user", lambda rest: rest.fetch_my_user())
        for message in self._messages():
            created_at = as_naive_utc(message.timestamp)
            if created_at < since:
                return None
            if message.author.id == me.id and message.content == text:
                return Published(str(int(message.id)), message.make_link(self.config.guild_id), created_at)
        return None

    def reactions(self, platform_id: str) -> ReactionSnapshot:
        message_id = int(platform_id)
        message = self._call("reading a message's reactions",
                             lambda rest: rest.fetch_message(self.config.channel_id, message_id))
        now = utc_now()
        return ReactionSnapshot(
            platform_id=platform_id,
            observed_at=now,
            counts=self._counts(message),
            audience_size=self.audience_size(),
            post_age_seconds=(now - as_naive_utc(message.timestamp)).total_seconds(),
        )

    def audience_size(self) -> int | None:
        if self.config.guild_id is None:
            return None
        preview = self._call("reading the member count", lambda rest: rest.fetch_guild_preview(self.config.guild_id))
        return int(preview.approximate_member_count)

    def health(self) -> FaceHealth:
        """GET /users/@me (the bot), GET /channels/:id (it may see the channel), and the guild's approximate member
        count when guild_id is set (GET /guilds/:id/preview)."""
        limits = tuple(self._budget.describe())
        try:
            me = self._call("checking the bot token", lambda rest: rest.fetch_my_user())
            channel = self._call("checking the channel", lambda rest: rest.fetch_channel(self.config.channel_id))
            members = self.audience_size()
        except FaceError as error:
            return FaceHealth(False, str(error), limits=limits)
        where = f"#{channel.name}" if getattr(channel, "name", None) else f"channel {self.config.channel_id}"
        return FaceHealth(True, f"Discord bot {me.username} ready for {where} ({self.config.channel_id}).",
                          account=f"bot {me.username} in {where}", audience=members, audience_label="members",
                          limits=limits)
