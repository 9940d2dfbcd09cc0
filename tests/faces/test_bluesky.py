"""BlueskyFace against a local server answering like the AT Protocol XRPC API (docs.bsky.app)."""

from __future__ import annotations

import base64
import json
import time
from datetime import datetime, timedelta

import pytest
from pydantic import SecretStr

from faces import limits
from faces.base import FaceAuthError, FaceMalformedAnswerError
from faces.bluesky import BlueskyConfig, BlueskyFace, record_key_for_intent
from faces.retry import RetryPolicy

HANDLE = "crowd.bsky.social"
DID = "did:plc:crowdtune0000000000000"
PASSWORD = "bsky-app-password-7c1e"
CID = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_seconds=0.01, max_delay_seconds=0.05)


def jwt(payload: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'ES256K', 'typ': 'at+jwt'})}.{part(payload)}.c2lnbmF0dXJl"


class FakeBluesky:
    def __init__(self, api, posts: int = 5):
        self.api = api
        start = datetime(2026, 11, 1, 12, 0, 0)
        self.records: dict[str, dict] = {}  # rkey -> record, oldest first
        for i in range(posts):
            self.records[f"3l{i:011d}"] = {
                "$type": "app.bsky.feed.post", "text": f"sky post {i}",
                "createdAt": (start + timedelta(hours=i)).isoformat() + ".000Z",
            }
        self.created, self.profile_reads = 0, 0
        api.route("POST", r"/xrpc/com.atproto.server.createSession", self.create_session)
        api.route("GET", r"/xrpc/app.bsky.feed.getAuthorFeed", self.author_feed)
        api.route("POST", r"/xrpc/com.atproto.repo.createRecord", self.create_record)
        api.route("GET", r"/xrpc/com.atproto.repo.getRecord", self.get_record)
        api.route("GET", r"/xrpc/app.bsky.feed.getPosts", self.get_posts)
        api.route("GET", r"/xrpc/app.bsky.actor.getProfile", self.get_profile)

    def uri(self, rkey: str) -> str:
        return f"at://{DID}/app.bsky.feed.post/{rkey}"

    def post_view(self, rkey: str) -> dict:
        return {
            "uri": self.uri(rkey), "cid": CID,
            "author": {"did": DID, "handle": HANDLE},
            "record": self.records[rkey], "indexedAt": self.records[rkey]["createdAt"],
            "likeCount": 11, "repostCount": 3, "replyCount": 2, "quoteCount": 1,
        }

    def create_session(self, request, match):
        body = request.json()
        if body.get("identifier") != HANDLE or body.get("password") != PASSWORD:
            return self.api.reply(401, {"error": "AuthenticationRequired", "message": "Invalid identifier or password"})
        token = jwt({"scope": "com.atproto.appPass", "sub": DID,
                     "iat": int(time.time()), "exp": int(time.time()) + 7200})
        session = {"did": DID, "handle": HANDLE, "accessJwt": token, "refreshJwt": token, "active": True}
        return self.api.reply(200, session)

    def author_feed(self, request, match):
        limit = int(request.query["limit"][0])
        offset = int(request.query.get("cursor", ["0"])[0])
        newest_first = list(self.records)[::-1]
        page = newest_first[offset : offset + limit]
        body = {"feed": [{"post": self.post_view(rkey)} for rkey in page]}
        if offset + limit < len(newest_first):
            body["cursor"] = str(offset + limit)
        return self.api.reply(200, body)

    def store(self, request) -> dict:
        body = request.json()
        assert body["repo"] == DID and body["collection"] == "app.bsky.feed.post"
        rkey = body["rkey"]
        if rkey in self.records:
            return None
        self.records[rkey] = body["record"]
        self.created += 1
        return {"uri": self.uri(rkey), "cid": CID, "validationStatus": "valid"}

    def create_record(self, request, match):
        stored = self.store(request)
        if stored is None:
            return self.api.reply(400, {"error": "InvalidRequest", "message": "Record already exists"})
        return self.api.reply(200, stored)

    def get_record(self, request, match):
        rkey = request.query["rkey"][0]
        if rkey not in self.records:
            return self.api.reply(400, {"error": "RecordNotFound", "message": "Could not locate record"})
        return self.api.reply(200, {"uri": self.uri(rkey), "cid": CID, "value": self.records[rkey]})

    def get_posts(self, request, match):
        rkeys = [uri.rsplit("/", 1)[-1] for uri in request.query["uris"]]
        return self.api.reply(200, {"posts": [self.post_view(rkey) for rkey in rkeys if rkey in self.records]})

    def get_profile(self, request, match):
        self.profile_reads += 1
        profile = {"did": DID, "handle": HANDLE, "followersCount": 321, "followsCount": 5, "postsCount": 5}
        # The AppView's answers carry the IP's limit (docs.bsky.app, rate limits): 3000 per 5 minutes.
        return self.api.reply(200, profile, {"RateLimit-Limit": "3000", "RateLimit-Remaining": "2990",
                                             "RateLimit-Reset": str(int(time.time()) + 300),
                                             "RateLimit-Policy": "3000;w=300"})


def make_face(api, password=PASSWORD, page_size=50) -> BlueskyFace:
    return BlueskyFace(
        BlueskyConfig(service_url=api.url, handle=HANDLE, app_password=SecretStr(password), page_size=page_size,
                      retry=FAST_RETRY)
    )


def test_history_pages_with_cursor_newest_first(fake_api):
    FakeBluesky(fake_api, posts=5)
    posts = list(make_face(fake_api, page_size=2).fetch_history())
    assert [p.text for p in posts] == [f"sky post {i}" for i in (4, 3, 2, 1, 0)]
    assert posts[0].reactions == {"likes": 11, "reposts": 3, "replies": 2, "quotes": 1}
    assert posts[0].created_at == datetime(2026, 11, 1, 16, 0)
    pages = fake_api.seen("GET", r"/xrpc/app.bsky.feed.getAuthorFeed")
    assert [p.query.get("cursor") for p in pages] == [None, ["2"], ["4"]]
    assert all(p.query["actor"] == [HANDLE] for p in pages)


def test_publish_uses_a_record_key_derived_from_the_intent(fake_api):
    server = FakeBluesky(fake_api)
    published = make_face(fake_api).publish("hello sky", intent_id="intent-1")
    rkey = record_key_for_intent("intent-1")
    assert rkey == record_key_for_intent("intent-1") != record_key_for_intent("intent-2")
    assert len(rkey) == 13 and rkey[0] in "234567abcdefghij"
    assert published.platform_id == f"at://{DID}/app.bsky.feed.post/{rkey}"
    assert server.records[rkey]["text"] == "hello sky" and server.created == 1
    (create,) = fake_api.seen("POST", r"/xrpc/com.atproto.repo.createRecord")
    assert create.headers["Authorization"].startswith("Bearer ")


def test_reactions_and_audience(fake_api):
    server = FakeBluesky(fake_api)
    uri = server.uri(list(server.records)[0])
    snapshot = make_face(fake_api).reactions(uri)
    assert snapshot.counts == {"likes": 11, "reposts": 3, "replies": 2, "quotes": 1}
    assert snapshot.audience_size == 321


def test_rate_limit_waits_for_retry_after(fake_api):
    server = FakeBluesky(fake_api)
    replies = [fake_api.reply(429, {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
                              {"Retry-After": "0.3"})]
    fake_api.route("GET", r"/xrpc/app.bsky.feed.getAuthorFeed",
                   lambda r, m: replies.pop() if replies else server.author_feed(r, m))
    started = time.monotonic()
    posts = list(make_face(fake_api).fetch_history(limit=2))
    assert time.monotonic() - started >= 0.3 and len(posts) == 2
    assert len(fake_api.seen("GET", r"/xrpc/app.bsky.feed.getAuthorFeed")) == 2


def test_server_error_after_the_record_was_written_does_not_post_twice(fake_api):
    server = FakeBluesky(fake_api)
    attempts = []

    def written_but_500(request, match):
        attempts.append(request)
        server.store(request)
        return fake_api.reply(500, {"error": "InternalServerError", "message": "Internal Server Error"})

    fake_api.route("POST", r"/xrpc/com.atproto.repo.createRecord", written_but_500)
    published = make_face(fake_api).publish("exactly one", intent_id="intent-9")
    assert server.created == 1 and len(attempts) == 1
    assert published.platform_id.endswith(record_key_for_intent("intent-9"))


def test_server_error_before_writing_retries_with_the_same_key(fake_api):
    server = FakeBluesky(fake_api)
    failures = [fake_api.reply(503, {"error": "ServiceUnavailable"})]
    fake_api.route(
        "POST", r"/xrpc/com.atproto.repo.createRecord",
        lambda r, m: failures.pop() if failures else server.create_record(r, m),
    )
    make_face(fake_api).publish("second try", intent_id="intent-10")
    creates = fake_api.seen("POST", r"/xrpc/com.atproto.repo.createRecord")
    assert len(creates) == 2 and server.created == 1
    assert {c.json()["rkey"] for c in creates} == {record_key_for_intent("intent-10")}


def test_invalid_app_password_names_the_problem_and_the_fix(fake_api):
    FakeBluesky(fake_api)
    face = make_face(fake_api, password="wrong")
    with pytest.raises(FaceAuthError) as raised:
        list(face.fetch_history())
    assert "rejected the handle or app password (401)" in str(raised.value)
    assert "CROWDTUNE_BLUESKY_APP_PASSWORD" in str(raised.value)


def test_the_app_password_never_shows_in_reprs_errors_or_logs(fake_api, leak_check, monkeypatch):
    # Seven sign-ins in a row would wait ~11 s each for Bluesky's 30 per 5 min (tests/faces/test_limits.py
    # proves those waits); here the buckets' clock runs 1,000 times faster.
    monkeypatch.setattr(limits, "_budget", limits.LocalBuckets(clock=lambda: time.monotonic() * 1000))
    server = FakeBluesky(fake_api)
    good, wrong = make_face(fake_api), make_face(fake_api, password=PASSWORD + "-wrong")
    leak_check.exercise(good)
    leak_check.exercise(wrong)
    assert server.created == 1 and leak_check.errors
    assert PASSWORD not in leak_check.everything_shown(good, wrong)


# -- timeouts and answers that are not the XRPC API ----------------------------------------------


def make_impatient_face(api, timeout=0.3) -> BlueskyFace:
    return BlueskyFace(BlueskyConfig(
        service_url=api.url, handle=HANDLE, app_password=SecretStr(PASSWORD), request_timeout=timeout, retry=FAST_RETRY,
    ))


def test_a_timeout_is_retried_and_a_lasting_one_names_the_timeout_and_the_setting(fake_api):
    server = FakeBluesky(fake_api)
    rkey = list(server.records)[0]
    snapshot = fake_api.check_timeouts(
        "GET", r"/xrpc/app.bsky.feed.getPosts", fake_api.reply(200, {"posts": [server.post_view(rkey)]}),
        lambda: make_impatient_face(fake_api).reactions(server.uri(rkey)),
        action="reading a post's reactions", network="Bluesky", max_attempts=FAST_RETRY.max_attempts,
    )
    assert snapshot.counts["likes"] == 11


def test_a_publish_that_times_out_after_the_record_was_created_is_not_sent_again(fake_api):
    server = FakeBluesky(fake_api)

    def created_then_stalled(request, match):
        return fake_api.reply(200, server.store(request), delay_seconds=1.0)

    fake_api.route("POST", r"/xrpc/com.atproto.repo.createRecord", created_then_stalled)
    published = make_impatient_face(fake_api).publish("slow but there", intent_id="intent-11")
    assert server.created == 1 and len(fake_api.seen("POST", r"/xrpc/com.atproto.repo.createRecord")) == 1
    assert published.platform_id == server.uri(record_key_for_intent("intent-11"))


def test_an_html_page_or_a_cut_off_body_is_retried_and_a_lasting_one_is_named(fake_api):
    server = FakeBluesky(fake_api)
    garbage = [fake_api.html_page(), fake_api.reply(200, b'{"feed": [{"po')]
    fake_api.route("GET", r"/xrpc/app.bsky.feed.getAuthorFeed",
                   lambda r, m: garbage.pop(0) if garbage else server.author_feed(r, m))
    assert len(list(make_face(fake_api).fetch_history())) == 5
    assert len(fake_api.seen("GET", r"/xrpc/app.bsky.feed.getAuthorFeed")) == 3

    fake_api.check_html_page_is_named(
        "GET", r"/xrpc/app.bsky.feed.getAuthorFeed", lambda: list(make_face(fake_api).fetch_history()),
        action="reading the author feed", shown="HTTP 200, text/html: '<html><head><title>502 Bad", fix="service_url",
    )


def wrong_post(server, rkey, **changes):
    return {"posts": [{**server.post_view(rkey), **changes}]}


@pytest.mark.parametrize("answer, named", [
    (lambda server, rkey: {"error": "upstream said no"}, "JSON of another shape (posts: Field required)"),
    (lambda server, rkey: {"posts": "none"}, "JSON of another shape (posts: Input should be a valid list)"),
    (lambda server, rkey: wrong_post(server, rkey, uri=None), "JSON of another shape (posts.0.uri:"),
    (lambda server, rkey: wrong_post(server, rkey, record={"text": "no date"}),
     "a post record without text and a readable createdAt"),
    (lambda server, rkey: wrong_post(server, rkey, record={**server.records[rkey], "createdAt": "yesterday"}),
     "readable createdAt"),
    (lambda server, rkey: wrong_post(server, rkey, record=7), "JSON of another shape (posts.0.record"),
])
def test_wrong_shaped_reactions_name_what_is_wrong_and_are_not_retried(fake_api, answer, named):
    server = FakeBluesky(fake_api)
    rkey = list(server.records)[0]
    fake_api.route("GET", r"/xrpc/app.bsky.feed.getPosts", fake_api.reply(200, answer(server, rkey)))
    with pytest.raises(FaceMalformedAnswerError) as raised:
        make_face(fake_api).reactions(server.uri(rkey))
    assert "answered reading a post's reactions with" in raised.value.problem and named in raised.value.problem
    assert "that is not the Bluesky API" in raised.value.problem
    assert "(HTTP 200, application/json: '{" in raised.value.problem
    assert "service_url" in raised.value.fix
    assert len(fake_api.seen("GET", r"/xrpc/app.bsky.feed.getPosts")) == 1


def test_a_wrong_shaped_feed_sign_in_or_publish_answer_is_named_not_a_model_error(fake_api):
    server = FakeBluesky(fake_api)
    fake_api.route("GET", r"/xrpc/app.bsky.feed.getAuthorFeed", fake_api.reply(200, {"feed": 5}))
    expected = r"reading the author feed with JSON of another shape \(feed: Input should be a valid list"
    with pytest.raises(FaceMalformedAnswerError, match=expected):
        list(make_face(fake_api).fetch_history())
    fake_api.route("GET", r"/xrpc/app.bsky.feed.getAuthorFeed", fake_api.reply(200, {"feed": [{"post": {"uri": "at://x"}}]}))
    expected = r"reading the author feed with JSON of another shape \(feed.0.post.author: Field required"
    with pytest.raises(FaceMalformedAnswerError, match=expected):
        list(make_face(fake_api).fetch_history())

    def created_but_answered_oddly(request, match):
        server.store(request)
        return fake_api.reply(200, {"validationStatus": "valid"})

    fake_api.route("POST", r"/xrpc/com.atproto.repo.createRecord", created_but_answered_oddly)
    expected = r"publishing a post with JSON of another shape \(cid: Field required; uri: Field required\)"
    with pytest.raises(FaceMalformedAnswerError, match=expected):
        make_face(fake_api).publish("odd answer", intent_id="intent-12")
    assert server.created == 1  # not retried: the job's own retry asks find_published first
    found = make_face(fake_api).find_published("intent-12", "odd answer", datetime(2020, 1, 1))
    assert found.platform_id == server.uri(record_key_for_intent("intent-12"))

    fake_api.route("POST", r"/xrpc/com.atproto.server.createSession", fake_api.reply(200, {"ok": True}))
    expected = r"Bluesky \(http://127.0.0.1:\d+\) answered signing in with JSON of another shape"
    with pytest.raises(FaceMalformedAnswerError, match=expected):  # other credentials: no stored session fits
        list(make_face(fake_api, password="another-app-password").fetch_history())


def test_the_health_check_reads_the_profile_with_the_session_and_names_account_followers_and_limits(fake_api):
    server = FakeBluesky(fake_api)
    health = make_face(fake_api).health()
    assert health.ok and health.account == f"{HANDLE} ({DID}) on {fake_api.url}"
    assert (health.audience, health.audience_label) == (321, "followers")
    assert health.limits[0] == "3,000 requests per 5 min per IP (https://docs.bsky.app/docs/advanced-guides/rate-limits)"
    assert "30 sign-ins per 5 min per account" in health.limits[1]
    assert health.limits[-1] == "now: the server reports 2,990 of 3,000 requests left in its current window"
    # A stored session signs in without a request: the check still asks the server, so it proves the session works.
    again = make_face(fake_api).health()
    assert again.ok and server.profile_reads == 2
    assert len(fake_api.seen("POST", r"/xrpc/com.atproto.server.createSession")) == 1
    refused = make_face(fake_api, password="wrong").health()
    assert not refused.ok and refused.audience is None and "App passwords" in refused.message
