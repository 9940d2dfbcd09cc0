"""MastodonFace against a local server answering like the Mastodon REST API (docs.joinmastodon.org)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from pydantic import SecretStr

from faces.base import FaceAuthError, FaceMalformedAnswerError, FaceRateLimitError
from faces.mastodon import MastodonConfig, MastodonFace, status_text
from faces.retry import RetryPolicy

TOKEN = "mastodon-test-token-3f9a"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_seconds=0.01, max_delay_seconds=0.05)


class FakeMastodon:
    """The account, its statuses and the endpoints the face uses."""

    def __init__(self, api, statuses: int = 5, token: str = TOKEN):
        self.api, self.token = api, token
        self.account = {"id": "109", "username": "crowd", "acct": "crowd", "followers_count": 250}
        start = datetime(2026, 11, 1, 12, 0, 0)
        # Mastodon ids are snowflakes that grow with time; newest first like the API.
        self.statuses = [self.status(str(1000 + i), f"post number {i}", start + timedelta(hours=i))
                         for i in range(statuses)][::-1]
        self.created, self.requests_left = 0, 300
        api.route("GET", r"/api/v1/accounts/verify_credentials", self.verify_credentials)
        api.route("GET", r"/api/v1/accounts/109/statuses", self.account_statuses)
        api.route("GET", r"/api/v1/statuses/(\d+)", self.get_status)
        api.route("POST", r"/api/v1/statuses", self.post_status)

    def status(self, status_id: str, text: str, created_at: datetime) -> dict:
        return {
            "id": status_id,
            "created_at": created_at.isoformat() + ".000Z",
            "content": f"<p>{text.replace('&', '&amp;')}</p>",
            "url": f"https://example.social/@crowd/{status_id}",
            "uri": f"https://example.social/users/crowd/statuses/{status_id}",
            "visibility": "public",
            "account": self.account,
            "favourites_count": 7,
            "reblogs_count": 2,
            "replies_count": 1,
            "reblog": None,
            "media_attachments": [],
        }

    def authorized(self, request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def verify_credentials(self, request, match):
        if not self.authorized(request):
            return self.api.reply(401, {"error": "The access token is invalid"})
        # Every answer of a real instance tells the account's limit and what is left of it (docs: rate-limits).
        self.requests_left -= 1
        return self.api.reply(200, self.account, {"X-RateLimit-Limit": "300",
                                                  "X-RateLimit-Remaining": str(self.requests_left),
                                                  "X-RateLimit-Reset": "2026-11-01T12:05:00.000Z"})

    def account_statuses(self, request, match):
        limit = int(request.query.get("limit", ["20"])[0])
        max_id = request.query.get("max_id", [None])[0]
        older = [s for s in self.statuses if max_id is None or int(s["id"]) < int(max_id)]
        return self.api.reply(200, older[:limit])

    def get_status(self, request, match):
        found = [s for s in self.statuses if s["id"] == match.group(1)]
        return self.api.reply(200, found[0]) if found else self.api.reply(404, {"error": "Record not found"})

    def create(self, request) -> dict:
        fields = request.json() if request.body.startswith(b"{") else {k: v[0] for k, v in request.form().items()}
        self.created += 1
        status = self.status(str(2000 + self.created), fields["status"], datetime.utcnow().replace(microsecond=0))
        self.statuses.insert(0, status)
        return status

    def post_status(self, request, match):
        if not self.authorized(request):
            return self.api.reply(401, {"error": "The access token is invalid"})
        return self.api.reply(200, self.create(request))


def make_face(api, token=TOKEN, page_size=40) -> MastodonFace:
    return MastodonFace(MastodonConfig(api_base_url=api.url, token=SecretStr(token), page_size=page_size,
                                       retry=FAST_RETRY))


def test_history_pages_with_max_id_newest_first(fake_api):
    server = FakeMastodon(fake_api, statuses=5)
    posts = list(make_face(fake_api, page_size=2).fetch_history())
    assert [p.text for p in posts] == [f"post number {i}" for i in (4, 3, 2, 1, 0)]
    assert posts[0].reactions == {"likes": 7, "reposts": 2, "replies": 1}
    assert posts[0].audience_size == 250 and posts[0].created_at == datetime(2026, 11, 1, 16, 0)
    pages = fake_api.seen("GET", r"/api/v1/accounts/109/statuses")
    assert [p.query.get("max_id") for p in pages] == [None, ["1003"], ["1001"], ["1000"]]
    assert all(p.query["exclude_reblogs"] == ["1"] or p.query["exclude_reblogs"] == ["true"] for p in pages)
    assert server.created == 0


def test_history_respects_limit_and_time_window(fake_api):
    FakeMastodon(fake_api, statuses=5)
    face = make_face(fake_api, page_size=2)
    assert [p.text for p in face.fetch_history(limit=2)] == ["post number 4", "post number 3"]
    window = face.fetch_history(before=datetime(2026, 11, 1, 15, 0), after=datetime(2026, 11, 1, 12, 0))
    assert [p.text for p in window] == ["post number 2", "post number 1"]


def test_publish_sends_idempotency_key_and_returns_the_status(fake_api):
    server = FakeMastodon(fake_api)
    published = make_face(fake_api).publish("Hello & welcome", intent_id="intent-42")
    (post,) = fake_api.seen("POST", r"/api/v1/statuses")
    assert post.headers["Idempotency-Key"] == "intent-42"
    assert published.platform_id == "2001" and published.url.endswith("/2001")
    assert server.created == 1 and status_text(server.statuses[0]["content"]) == "Hello & welcome"


def test_reactions_map_favourites_reblogs_replies(fake_api):
    FakeMastodon(fake_api)
    snapshot = make_face(fake_api).reactions("1002")
    assert snapshot.counts == {"likes": 7, "reposts": 2, "replies": 1}
    assert snapshot.audience_size == 250 and snapshot.post_age_seconds > 0


def test_rate_limit_waits_for_retry_after_then_succeeds(fake_api):
    server = FakeMastodon(fake_api)
    fake_api.route(
        "GET", r"/api/v1/statuses/1002",
        [fake_api.reply(429, {"error": "Too many requests"}, {"Retry-After": "0.3"}),
         fake_api.reply(200, server.statuses[2])],
    )
    started = time.monotonic()
    snapshot = make_face(fake_api).reactions("1002")
    assert time.monotonic() - started >= 0.3
    assert snapshot.counts["likes"] == 7
    assert len(fake_api.seen("GET", r"/api/v1/statuses/1002")) == 2


def test_rate_limit_that_never_ends_gives_a_clear_error(fake_api):
    FakeMastodon(fake_api)
    fake_api.route("GET", r"/api/v1/statuses/1002",
                   fake_api.reply(429, {"error": "Too many requests"}, {"Retry-After": "0.01"}))
    with pytest.raises(FaceRateLimitError, match="kept rate-limiting"):
        make_face(fake_api).reactions("1002")
    assert len(fake_api.seen("GET", r"/api/v1/statuses/1002")) == FAST_RETRY.max_attempts


def test_server_error_after_the_post_was_created_does_not_post_twice(fake_api):
    server = FakeMastodon(fake_api)
    attempts = []

    def created_but_502(request, match):
        attempts.append(request)
        server.create(request)  # the status exists, but the proxy answered 502
        return fake_api.reply(502, {"error": "Bad gateway"})

    fake_api.route("POST", r"/api/v1/statuses", created_but_502)
    published = make_face(fake_api).publish("only once please", intent_id="intent-7")
    assert server.created == 1 and len(attempts) == 1
    assert published.platform_id == server.statuses[0]["id"]


def test_server_error_before_the_post_was_created_retries_once_and_posts_once(fake_api):
    server = FakeMastodon(fake_api)
    replies = iter([fake_api.reply(503, {"error": "Unavailable"})])
    fake_api.route("POST", r"/api/v1/statuses",
                   lambda request, match: next(replies, None) or server.post_status(request, match))
    published = make_face(fake_api).publish("second time lucky", intent_id="intent-8")
    posts = fake_api.seen("POST", r"/api/v1/statuses")
    assert len(posts) == 2 and server.created == 1
    assert {p.headers["Idempotency-Key"] for p in posts} == {"intent-8"}
    assert status_text(server.statuses[0]["content"]) == "second time lucky" and published.platform_id == "2001"


def test_invalid_token_names_the_problem_and_the_fix(fake_api):
    FakeMastodon(fake_api)
    face = make_face(fake_api, token="wrong-token")
    with pytest.raises(FaceAuthError) as raised:
        list(face.fetch_history())
    message = str(raised.value)
    assert "rejected the access token (401)" in message
    assert "scopes read write" in message and "CROWDTUNE_MASTODON_TOKEN" in message
    health = face.health()
    assert not health.ok and "401" in health.message


def test_the_health_check_names_the_account_its_followers_and_the_limits_with_what_is_left_of_them(fake_api):
    FakeMastodon(fake_api)
    health = make_face(fake_api).health()
    assert health.ok and health.message == f"Signed in to {fake_api.url} as @crowd."
    assert health.account == f"@crowd on {fake_api.url}"
    assert (health.audience, health.audience_label) == (250, "followers")
    assert health.limits == ("300 requests per 5 min per account (https://docs.joinmastodon.org/api/rate-limits/)",
                             "now: the server reports 299 of 300 requests left in its current window")
    refused = make_face(fake_api, token="wrong").health()
    assert not refused.ok and refused.account is None and refused.audience is None
    assert "Fix: Create a new token" in refused.message and refused.limits[0].startswith("300 requests per 5 min")


def test_the_token_never_shows_in_reprs_errors_or_logs(fake_api, leak_check):
    server = FakeMastodon(fake_api)
    fake_api.route("GET", r"/api/v1/statuses/1", fake_api.reply(503, {"error": "down"}))
    good, wrong = make_face(fake_api), make_face(fake_api, token=TOKEN + "-wrong")
    leak_check.exercise(good)
    leak_check.exercise(wrong)
    assert server.created == 1 and len(leak_check.errors) >= 3
    assert TOKEN not in leak_check.everything_shown(good, wrong)


# -- timeouts and answers that are not the Mastodon API ------------------------------------------

def make_impatient_face(api, timeout=0.3) -> MastodonFace:
    return MastodonFace(MastodonConfig(api_base_url=api.url, token=SecretStr(TOKEN), request_timeout=timeout,
                                       retry=FAST_RETRY))


def test_a_timeout_is_retried_and_a_lasting_one_names_the_timeout_and_the_setting(fake_api):
    server = FakeMastodon(fake_api)
    snapshot = fake_api.check_timeouts(
        "GET", r"/api/v1/statuses/1002", fake_api.reply(200, server.statuses[2]),
        lambda: make_impatient_face(fake_api).reactions("1002"),
        action="reading a status's reactions", network="Mastodon", max_attempts=FAST_RETRY.max_attempts,
    )
    assert snapshot.counts["likes"] == 7


def test_a_publish_that_times_out_after_the_status_was_created_is_not_sent_again(fake_api):
    server = FakeMastodon(fake_api)

    def created_then_stalled(request, match):
        return fake_api.reply(200, server.create(request), delay_seconds=1.0)

    fake_api.route("POST", r"/api/v1/statuses", created_then_stalled)
    published = make_impatient_face(fake_api).publish("slow but there", intent_id="intent-9")
    assert server.created == 1 and len(fake_api.seen("POST", r"/api/v1/statuses")) == 1
    assert published.platform_id == server.statuses[0]["id"] == "2001"


def test_an_html_page_served_with_200_is_retried_and_a_lasting_one_is_named(fake_api):
    server = FakeMastodon(fake_api)
    page = fake_api.html_page()
    fake_api.route("GET", r"/api/v1/statuses/1002", [page, fake_api.reply(200, server.statuses[2])])
    assert make_face(fake_api).reactions("1002").counts["likes"] == 7

    fake_api.check_html_page_is_named(
        "GET", r"/api/v1/statuses/1002", lambda: make_face(fake_api).reactions("1002"),
        action="reading a status's reactions", shown="HTTP 200, text/html: '<html><head><title>502 Bad Gateway",
        fix="api_base_url",
    )


def test_a_publish_answered_with_a_cut_off_body_after_the_status_was_created_posts_once(fake_api):
    server = FakeMastodon(fake_api)

    def created_then_cut_off(request, match):
        server.create(request)
        return fake_api.reply(200, b'{"id": "20')

    fake_api.route("POST", r"/api/v1/statuses", created_then_cut_off)
    published = make_face(fake_api).publish("cut short", intent_id="intent-10")
    assert server.created == 1 and len(fake_api.seen("POST", r"/api/v1/statuses")) == 1
    assert published.platform_id == "2001"


@pytest.mark.parametrize("answer, named", [
    (lambda status: {"error": "upstream said no"}, "an object without id, created_at, content, account"),
    (lambda status: {**status, "created_at": "yesterday"}, "an object without created_at ("),
    (lambda status: {**status, "favourites_count": None}, "an object without favourites_count"),
    (lambda status: [status], "a value of type list where an object belongs"),
    (lambda status: "ok", "a value of type str where an object belongs"),
])
def test_json_of_the_wrong_shape_names_what_is_wrong_and_is_not_retried(fake_api, answer, named):
    server = FakeMastodon(fake_api)
    fake_api.route("GET", r"/api/v1/statuses/1002", fake_api.reply(200, answer(server.statuses[2])))
    with pytest.raises(FaceMalformedAnswerError) as raised:
        make_face(fake_api).reactions("1002")
    assert named in raised.value.problem and "that is not the Mastodon API" in raised.value.problem
    assert "api_base_url" in raised.value.fix
    assert len(fake_api.seen("GET", r"/api/v1/statuses/1002")) == 1


def test_a_wrong_shaped_page_of_statuses_or_publish_answer_is_named_not_a_key_error(fake_api):
    server = FakeMastodon(fake_api)
    fake_api.route("GET", r"/api/v1/accounts/109/statuses", fake_api.reply(200, 5))
    with pytest.raises(FaceMalformedAnswerError,
                       match="reading statuses with a value of type int where a list of statuses belongs"):
        list(make_face(fake_api).fetch_history())
    fake_api.route("GET", r"/api/v1/accounts/109/statuses", fake_api.reply(200, {"statuses": []}))
    with pytest.raises(FaceMalformedAnswerError,
                       match="reading statuses with a value of type str where an object belongs"):
        list(make_face(fake_api).fetch_history())  # Mastodon.py made a list of the object's keys

    def created_but_answered_oddly(request, match):
        server.create(request)
        return fake_api.reply(200, {"id": None})

    fake_api.route("POST", r"/api/v1/statuses", created_but_answered_oddly)
    with pytest.raises(FaceMalformedAnswerError, match="publishing a status with an object without id"):
        make_face(fake_api).publish("odd answer", intent_id="intent-11")
    assert server.created == 1  # not retried: the job's own retry asks find_published first
