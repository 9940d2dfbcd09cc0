"""DiscordFace against a local server answering like the Discord REST API v10 (discord.com/developers/docs)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from pydantic import SecretStr

from faces.base import FaceAuthError, FaceMalformedAnswerError, FaceUnavailableError
from faces.discord import DiscordConfig, DiscordFace, nonce_for_intent
from faces.retry import RetryPolicy

TOKEN = "discord-bot-token-55aa"
CHANNEL = 111222333444555666
GUILD = 999888777666555444
BOT_ID = "700000000000000001"
DISCORD_EPOCH_MS = 1420070400000
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_seconds=0.01, max_delay_seconds=0.05)


def snowflake(moment: datetime, sequence: int = 0) -> str:
    return str(((int(moment.timestamp() * 1000) - DISCORD_EPOCH_MS) << 22) | sequence)


class FakeDiscord:
    def __init__(self, api, messages: int = 5):
        self.api = api
        start = datetime(2026, 11, 1, 12, 0, 0)
        self.messages = [self.message(f"channel message {i}", start + timedelta(hours=i), author_id="42")
                         for i in range(messages)]
        self.created = 0
        self.nonces: dict[str, dict] = {}
        api.route("GET", rf"/api/v10/channels/{CHANNEL}/messages", self.list_messages)
        api.route("GET", rf"/api/v10/channels/{CHANNEL}/messages/(\d+)", self.get_message)
        api.route("POST", rf"/api/v10/channels/{CHANNEL}/messages", self.post_message)
        api.route("GET", r"/api/v10/users/@me", self.me)
        api.route("GET", rf"/api/v10/guilds/{GUILD}/preview", self.preview)
        api.route("GET", rf"/api/v10/channels/{CHANNEL}", self.channel)

    def message(self, content: str, moment: datetime, author_id: str) -> dict:
        return {
            "id": snowflake(moment, len(content) % 7), "channel_id": str(CHANNEL), "guild_id": str(GUILD),
            "author": {"id": author_id, "username": "crowdbot" if author_id == BOT_ID else "someone",
                       "discriminator": "0", "avatar": None, "global_name": None, "public_flags": 0},
            "content": content, "timestamp": moment.isoformat() + "+00:00", "edited_timestamp": None,
            "tts": False, "mention_everyone": False, "mentions": [], "mention_roles": [],
            "attachments": [], "embeds": [], "pinned": False, "type": 0, "flags": 0,
            "reactions": [
                {"count": 4, "count_details": {"burst": 0, "normal": 4}, "me": False, "me_burst": False,
                 "emoji": {"id": None, "name": "👍"}, "burst_colors": []},
                {"count": 1, "count_details": {"burst": 0, "normal": 1}, "me": False, "me_burst": False,
                 "emoji": {"id": None, "name": "🔥"}, "burst_colors": []},
            ],
        }

    def authorized(self, request) -> bool:
        return request.headers.get("Authorization") == f"Bot {TOKEN}"

    def unauthorized(self):
        return self.api.reply(401, {"message": "401: Unauthorized", "code": 0})

    def list_messages(self, request, match):
        if not self.authorized(request):
            return self.unauthorized()
        limit = int(request.query.get("limit", ["50"])[0])
        before = request.query.get("before", [None])[0]
        newest_first = sorted(self.messages, key=lambda m: int(m["id"]), reverse=True)
        older = [m for m in newest_first if before is None or int(m["id"]) < int(before)]
        return self.api.reply(200, older[:limit])

    def get_message(self, request, match):
        found = [m for m in self.messages if m["id"] == match.group(1)]
        if found:
            return self.api.reply(200, found[0])
        return self.api.reply(404, {"message": "Unknown Message", "code": 10008})

    def create(self, request) -> dict:
        body = request.json()
        if body.get("enforce_nonce") and body.get("nonce") in self.nonces:
            return self.nonces[body["nonce"]]
        self.created += 1
        message = self.message(body["content"], datetime.utcnow(), author_id=BOT_ID)
        message["id"] = str(int(message["id"]) + self.created)
        message["reactions"] = []
        self.messages.append(message)
        self.nonces[body.get("nonce")] = message
        return message

    def post_message(self, request, match):
        return self.api.reply(200, self.create(request))

    def me(self, request, match):
        if not self.authorized(request):
            return self.unauthorized()
        return self.api.reply(200, {"id": BOT_ID, "username": "crowdbot", "discriminator": "0", "avatar": None,
                                    "bot": True, "mfa_enabled": False, "flags": 0, "verified": True})

    def channel(self, request, match):
        if not self.authorized(request):
            return self.unauthorized()
        return self.api.reply(200, {"id": str(CHANNEL), "type": 0, "guild_id": str(GUILD), "name": "general",
                                    "position": 0, "permission_overwrites": [], "nsfw": False, "topic": None,
                                    "last_message_id": None, "rate_limit_per_user": 0, "parent_id": None,
                                    "flags": 0})

    def preview(self, request, match):
        return self.api.reply(200, {"id": str(GUILD), "name": "Crowd", "icon": None, "splash": None,
                                    "discovery_splash": None, "emojis": [], "features": [],
                                    "approximate_member_count": 1234, "approximate_presence_count": 56,
                                    "description": None, "stickers": []})


def make_face(api, token=TOKEN, page_size=100) -> DiscordFace:
    return DiscordFace(DiscordConfig(api_url=f"{api.url}/api/v10", token=SecretStr(token), channel_id=CHANNEL,
                                     guild_id=GUILD, page_size=page_size, retry=FAST_RETRY))


def test_history_pages_with_before_newest_first(fake_api):
    FakeDiscord(fake_api, messages=5)
    posts = list(make_face(fake_api, page_size=2).fetch_history())
    assert [p.text for p in posts] == [f"channel message {i}" for i in (4, 3, 2, 1, 0)]
    assert posts[0].reactions == {"emoji:👍": 4, "emoji:🔥": 1}
    assert posts[0].created_at == datetime(2026, 11, 1, 16, 0)
    pages = fake_api.seen("GET", rf"/api/v10/channels/{CHANNEL}/messages")
    befores = [p.query.get("before", [None])[0] for p in pages]
    # hikari asks for 100 per request; our pages of 2 continue before the oldest message seen.
    assert befores[0] is None
    assert posts[1].platform_id in befores and posts[3].platform_id in befores


def test_publish_sends_nonce_with_enforce_nonce(fake_api):
    server = FakeDiscord(fake_api)
    published = make_face(fake_api).publish("hello channel", intent_id="intent-3")
    (sent,) = fake_api.seen("POST", rf"/api/v10/channels/{CHANNEL}/messages")
    assert sent.json()["nonce"] == nonce_for_intent("intent-3") and sent.json()["enforce_nonce"] is True
    assert server.created == 1 and published.platform_id == server.messages[-1]["id"]


def test_reactions_by_emoji_and_member_count(fake_api):
    server = FakeDiscord(fake_api)
    snapshot = make_face(fake_api).reactions(server.messages[0]["id"])
    assert snapshot.counts == {"emoji:👍": 4, "emoji:🔥": 1}
    assert snapshot.audience_size == 1234


def test_rate_limit_waits_for_retry_after(fake_api):
    server = FakeDiscord(fake_api)
    limited = [fake_api.reply(429, {"message": "You are being rate limited.", "retry_after": 0.3, "global": False},
                              {"Retry-After": "1"})]
    fake_api.route("GET", rf"/api/v10/channels/{CHANNEL}/messages/(\d+)",
                   lambda r, m: limited.pop() if limited else server.get_message(r, m))
    started = time.monotonic()
    snapshot = make_face(fake_api).reactions(server.messages[0]["id"])
    assert time.monotonic() - started >= 0.3 and snapshot.counts["emoji:👍"] == 4
    assert len(fake_api.seen("GET", rf"/api/v10/channels/{CHANNEL}/messages/\d+")) == 2


def test_server_error_after_sending_does_not_post_twice(fake_api):
    server = FakeDiscord(fake_api)
    attempts = []

    def sent_but_502(request, match):
        attempts.append(request)
        server.create(request)
        return fake_api.reply(502, {"message": "Bad Gateway"})

    fake_api.route("POST", rf"/api/v10/channels/{CHANNEL}/messages", sent_but_502)
    published = make_face(fake_api).publish("only once", intent_id="intent-4")
    assert server.created == 1 and len(attempts) == 1
    assert published.platform_id == server.messages[-1]["id"]


def test_server_error_before_sending_retries_and_posts_once(fake_api):
    server = FakeDiscord(fake_api)
    failures = [fake_api.reply(500, {"message": "Internal Server Error"})]
    fake_api.route("POST", rf"/api/v10/channels/{CHANNEL}/messages",
                   lambda r, m: failures.pop() if failures else server.post_message(r, m))
    make_face(fake_api).publish("retry me", intent_id="intent-5")
    assert len(fake_api.seen("POST", rf"/api/v10/channels/{CHANNEL}/messages")) == 2 and server.created == 1


def test_invalid_token_names_the_problem_and_the_fix(fake_api):
    FakeDiscord(fake_api)
    face = make_face(fake_api, token="wrong")
    with pytest.raises(FaceAuthError) as raised:
        list(face.fetch_history())
    assert "Discord rejected the bot token (401)" in str(raised.value)
    assert "CROWDTUNE_DISCORD_TOKEN" in str(raised.value)
    assert not face.health().ok


def test_the_health_check_names_the_bot_and_channel_the_members_and_the_limit(fake_api):
    FakeDiscord(fake_api)
    health = make_face(fake_api).health()
    assert health.ok and health.account == "bot crowdbot in #general"
    assert (health.audience, health.audience_label) == (1234, "members")
    assert health.limits == ("50 requests per second per bot (https://discord.com/developers/docs/topics/rate-limits)",)
    fake_api.route("GET", rf"/api/v10/channels/{CHANNEL}",
                   fake_api.reply(403, {"message": "Missing Access", "code": 50001}))
    refused = make_face(fake_api).health()
    assert not refused.ok and "(403)" in refused.message and "Invite the bot" in refused.message


def test_the_bot_token_never_shows_in_reprs_errors_or_logs(fake_api, leak_check):
    server = FakeDiscord(fake_api)
    good, wrong = make_face(fake_api), make_face(fake_api, token=TOKEN + "-wrong")
    leak_check.exercise(good)
    leak_check.exercise(wrong)
    assert server.created == 1 and leak_check.errors
    assert TOKEN not in leak_check.everything_shown(good, wrong)


# -- timeouts and answers that are not the Discord API -------------------------------------------


def make_impatient_face(api, timeout=0.3) -> DiscordFace:
    return DiscordFace(DiscordConfig(api_url=f"{api.url}/api/v10", token=SecretStr(TOKEN), channel_id=CHANNEL,
                                     request_timeout=timeout, retry=FAST_RETRY))


def test_a_timeout_is_retried_and_a_lasting_one_names_the_timeout_and_the_setting(fake_api):
    server = FakeDiscord(fake_api)
    snapshot = fake_api.check_timeouts(
        "GET", rf"/api/v10/channels/{CHANNEL}/messages/(\d+)", fake_api.reply(200, server.messages[0]),
        lambda: make_impatient_face(fake_api).reactions(server.messages[0]["id"]),
        action="reading a message's reactions", network="Discord", max_attempts=FAST_RETRY.max_attempts,
    )
    assert snapshot.counts["emoji:👍"] == 4


def test_a_send_that_times_out_after_the_message_was_created_is_not_sent_again(fake_api):
    server = FakeDiscord(fake_api)

    def created_then_stalled(request, match):
        return fake_api.reply(200, server.create(request), delay_seconds=1.0)

    fake_api.route("POST", rf"/api/v10/channels/{CHANNEL}/messages", created_then_stalled)
    published = make_impatient_face(fake_api).publish("slow but there", intent_id="intent-6")
    assert server.created == 1 and len(fake_api.seen("POST", rf"/api/v10/channels/{CHANNEL}/messages")) == 1
    assert published.platform_id == server.messages[-1]["id"]


def test_an_html_page_or_a_cut_off_body_is_retried_and_a_lasting_one_is_named(fake_api):
    server = FakeDiscord(fake_api)
    garbage = [fake_api.html_page(), fake_api.reply(200, b'[{"id": "12')]
    fake_api.route("GET", rf"/api/v10/channels/{CHANNEL}/messages",
                   lambda r, m: garbage.pop(0) if garbage else server.list_messages(r, m))
    assert len(list(make_face(fake_api).fetch_history())) == 5 and not garbage

    fake_api.check_html_page_is_named(
        "GET", rf"/api/v10/channels/{CHANNEL}/messages", lambda: list(make_face(fake_api).fetch_history()),
        action="reading channel messages", shown="text/html))", fix="api_url",  # hikari keeps no status or body
    )

    fake_api.route("GET", rf"/api/v10/channels/{CHANNEL}/messages", fake_api.reply(200, b'[{"id": "12'))
    with pytest.raises(FaceUnavailableError, match="""not JSON \\(application/json: '\\[\\{"id": "12'\\)"""):
        list(make_face(fake_api).fetch_history())


def without(message: dict, *names: str) -> dict:
    return {key: value for key, value in message.items() if key not in names}


@pytest.mark.parametrize("answer, named", [
    (lambda message: without(message, "author"), "JSON hikari could not read (no field 'author')"),
    (lambda message: {**message, "timestamp": "yesterday"}, "JSON hikari could not read (ValueError"),
    (lambda message: {**message, "reactions": 3}, "JSON hikari could not read (TypeError"),
    (lambda message: [message], "JSON hikari could not read (AssertionError)"),
    (lambda message: {"message": "upstream said no"}, "JSON hikari could not read (no field"),
])
def test_wrong_shaped_reactions_name_what_is_wrong_and_are_not_retried(fake_api, answer, named):
    server = FakeDiscord(fake_api)
    message_id = server.messages[0]["id"]
    fake_api.route("GET", rf"/api/v10/channels/{CHANNEL}/messages/(\d+)",
                   fake_api.reply(200, answer(server.messages[0])))
    with pytest.raises(FaceMalformedAnswerError) as raised:
        make_face(fake_api).reactions(message_id)
    assert "answered reading a message's reactions with" in raised.value.problem and named in raised.value.problem
    assert "that is not the Discord API" in raised.value.problem and "(application/json: '" in raised.value.problem
    assert "api_url" in raised.value.fix
    assert len(fake_api.seen("GET", rf"/api/v10/channels/{CHANNEL}/messages/\d+")) == 1


def test_a_wrong_shaped_page_or_send_answer_is_named_not_a_key_error(fake_api):
    server = FakeDiscord(fake_api)
    fake_api.route("GET", rf"/api/v10/channels/{CHANNEL}/messages", fake_api.reply(200, {"messages": []}))
    with pytest.raises(FaceMalformedAnswerError, match="reading channel messages with JSON hikari could not read"):
        list(make_face(fake_api).fetch_history())
    fake_api.route("GET", rf"/api/v10/channels/{CHANNEL}/messages",
                   fake_api.reply(200, [without(server.messages[0], "id")]))
    expected = "reading channel messages with JSON hikari could not read \\(no field 'id'\\)"
    with pytest.raises(FaceMalformedAnswerError, match=expected):
        list(make_face(fake_api).fetch_history())
    fake_api.route("GET", rf"/api/v10/channels/{CHANNEL}/messages", server.list_messages)

    def created_but_answered_oddly(request, match):
        return fake_api.reply(200, without(server.create(request), "id"))

    fake_api.route("POST", rf"/api/v10/channels/{CHANNEL}/messages", created_but_answered_oddly)
    expected = "sending a message with JSON hikari could not read \\(no field 'id'\\)"
    with pytest.raises(FaceMalformedAnswerError, match=expected):
        make_face(fake_api).publish("odd answer", intent_id="intent-7")
    assert server.created == 1  # not retried, and no "None" id: the job's own retry asks find_published first
    found = make_face(fake_api).find_published("intent-7", "odd answer", datetime(2020, 1, 1))
    assert found.platform_id == server.messages[-1]["id"]
