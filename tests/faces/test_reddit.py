"""RedditFace against a local server answering like Reddit's OAuth API (reddit.com/dev/api)."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timedelta

import pytest
from pydantic import SecretStr

from faces.base import FaceAuthError, FaceError, FaceMalformedAnswerError, FaceUnavailableError
from faces.reddit import RedditConfig, RedditFace
from faces.retry import RetryPolicy

CLIENT_ID = "script-app-id"
CLIENT_SECRET = "reddit-client-secret-9b2d"
PASSWORD = "reddit-password-1e8f"
USER = "crowdbot"
SUBREDDIT = "crowdtune"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_seconds=0.01, max_delay_seconds=0.05)


class FakeReddit:
    def __init__(self, api, submissions: int = 5):
        self.api = api
        start = datetime(2026, 11, 1, 12, 0, 0)
        self.submissions = [self.submission(f"r{i}", f"reddit post {i}", start + timedelta(hours=i))
                            for i in range(submissions)]
        self.created = 0
        api.route("POST", r"/api/v1/access_token/?", self.access_token)
        api.route("GET", rf"/user/{USER}/submitted/?", self.submitted)
        api.route("POST", r"/api/submit/?", self.submit)
        api.route("GET", r"/api/info/?", self.info)
        api.route("GET", rf"/r/{SUBREDDIT}/about/?", self.about)
        api.route("GET", r"/api/v1/me/?", self.me)

    def submission(self, submission_id: str, text: str, created_at: datetime) -> dict:
        return {
            "id": submission_id, "name": f"t3_{submission_id}", "title": text.splitlines()[0], "selftext": text,
            "created_utc": (created_at - datetime(1970, 1, 1)).total_seconds(),
            "permalink": f"/r/{SUBREDDIT}/comments/{submission_id}/post/", "author": USER, "subreddit": SUBREDDIT,
            "score": 17, "num_comments": 4, "upvote_ratio": 0.93, "subreddit_subscribers": 4321, "is_self": True,
        }

    def listing(self, children: list[dict], after: str | None) -> dict:
        return {"kind": "Listing", "data": {"after": after, "before": None, "dist": len(children),
                                            "children": [{"kind": "t3", "data": c} for c in children]}}

    def access_token(self, request, match):
        expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return self.api.reply(401, {"message": "Unauthorized", "error": 401})
        form = request.form()
        if form.get("password") != [PASSWORD]:
            return self.api.reply(200, {"error": "invalid_grant"})
        token = {"access_token": "oauth-access", "token_type": "bearer", "expires_in": 86400, "scope": "*"}
        return self.api.reply(200, token)

    def submitted(self, request, match):
        limit = int(request.query["limit"][0])
        after = request.query.get("after", [None])[0]
        newest_first = self.submissions[::-1]
        start = 0 if after is None else [s["name"] for s in newest_first].index(after) + 1
        page = newest_first[start : start + limit]
        more = start + limit < len(newest_first)
        return self.api.reply(200, self.listing(page, page[-1]["name"] if more and page else None))

    def create(self, request) -> dict:
        form = {k: v[0] for k, v in request.form().items()}
        assert form["kind"] == "self" and form["sr"] == SUBREDDIT
        self.created += 1
        submission = self.submission(f"new{self.created}", form["text"], datetime.utcnow())
        submission["title"] = form["title"]
        self.submissions.append(submission)
        return submission

    def submit(self, request, match):
        submission = self.create(request)
        return self.api.reply(200, {"json": {"errors": [], "data": {
            "url": f"https://www.reddit.com{submission['permalink']}", "drafts_count": 0,
            "id": submission["id"], "name": submission["name"]}}})

    def info(self, request, match):
        wanted = request.query["id"][0]
        return self.api.reply(200, self.listing([s for s in self.submissions if s["name"] == wanted], None))

    def me(self, request, match):
        # Every OAuth answer says how much of the 10-minute window is used and left (the Data API wiki).
        return self.api.reply(200, {"name": USER, "id": "abc12", "link_karma": 10, "comment_karma": 3},
                              {"X-Ratelimit-Used": "4", "X-Ratelimit-Remaining": "996.0", "X-Ratelimit-Reset": "412"})

    def about(self, request, match):
        subreddit = {"display_name": SUBREDDIT, "subscribers": 4321, "id": "2abc", "name": "t5_2abc"}
        return self.api.reply(200, {"kind": "t5", "data": subreddit})


def make_face(api, password=PASSWORD, page_size=100) -> RedditFace:
    return RedditFace(RedditConfig(
        client_id=CLIENT_ID, client_secret=SecretStr(CLIENT_SECRET), username=USER, password=SecretStr(password),
        subreddit=SUBREDDIT, oauth_url=api.url, reddit_url=api.url, page_size=page_size, retry=FAST_RETRY,
    ))


def test_history_reads_the_users_own_submissions_paged_with_after(fake_api):
    FakeReddit(fake_api, submissions=5)
    posts = list(make_face(fake_api, page_size=2).fetch_history())
    assert [p.text for p in posts] == [f"reddit post {i}" for i in (4, 3, 2, 1, 0)]
    assert posts[0].reactions == {"likes": 17, "replies": 4, "upvote_ratio_percent": 93}
    assert posts[0].created_at == datetime(2026, 11, 1, 16, 0) and posts[0].audience_size == 4321
    pages = fake_api.seen("GET", rf"/user/{USER}/submitted/?")
    assert [p.query.get("after") for p in pages] == [None, ["t3_r3"], ["t3_r1"]]


def test_publish_submits_a_self_post(fake_api):
    server = FakeReddit(fake_api)
    published = make_face(fake_api).publish("A title line\nand a body", intent_id="intent-1")
    (sent,) = fake_api.seen("POST", r"/api/submit/?")
    form = {k: v[0] for k, v in sent.form().items()}
    assert form["title"] == "A title line" and form["text"] == "A title line\nand a body"
    assert server.created == 1 and published.platform_id == "new1"


def test_reactions_score_comments_ratio_and_subscribers(fake_api):
    FakeReddit(fake_api)
    face = make_face(fake_api)
    snapshot = face.reactions("r2")
    assert snapshot.counts == {"likes": 17, "replies": 4, "upvote_ratio_percent": 93}
    assert snapshot.audience_size == 4321 and face.audience_size() == 4321


def test_rate_limit_waits_for_retry_after(fake_api):
    server = FakeReddit(fake_api)
    limited = [fake_api.reply(429, {"message": "Too Many Requests", "error": 429}, {"Retry-After": "0.3"})]
    fake_api.route("GET", r"/api/info/?", lambda r, m: limited.pop() if limited else server.info(r, m))
    started = time.monotonic()
    snapshot = make_face(fake_api).reactions("r1")
    assert time.monotonic() - started >= 0.3 and snapshot.counts["likes"] == 17
    assert len(fake_api.seen("GET", r"/api/info/?")) == 2


def test_server_error_after_submitting_does_not_post_twice(fake_api):
    server = FakeReddit(fake_api)
    attempts = []

    def submitted_but_502(request, match):
        attempts.append(request)
        server.create(request)
        return fake_api.reply(502, {"message": "Bad Gateway", "error": 502})

    fake_api.route("POST", r"/api/submit/?", submitted_but_502)
    published = make_face(fake_api).publish("just once", intent_id="intent-2")
    assert server.created == 1 and len(attempts) == 1 and published.platform_id == "new1"


def test_server_error_before_submitting_retries_and_posts_once(fake_api):
    server = FakeReddit(fake_api)
    failures = [fake_api.reply(503, {"message": "Service Unavailable", "error": 503})]
    fake_api.route("POST", r"/api/submit/?", lambda r, m: failures.pop() if failures else server.submit(r, m))
    make_face(fake_api).publish("try again", intent_id="intent-3")
    assert len(fake_api.seen("POST", r"/api/submit/?")) == 2 and server.created == 1


def test_invalid_password_names_the_problem_and_the_fix(fake_api):
    FakeReddit(fake_api)
    face = make_face(fake_api, password="wrong")
    with pytest.raises(FaceAuthError) as raised:
        list(face.fetch_history())
    assert "Reddit rejected the app credentials or the password" in str(raised.value)
    assert "CROWDTUNE_REDDIT_PASSWORD" in str(raised.value)
    assert not face.health().ok


def test_the_health_check_names_the_user_the_subreddits_subscribers_and_the_limits_left(fake_api):
    FakeReddit(fake_api)
    health = make_face(fake_api).health()
    assert health.ok and health.account == f"u/{USER} posting to r/{SUBREDDIT}"
    assert (health.audience, health.audience_label) == (4321, f"subscribers of r/{SUBREDDIT}")
    assert health.limits[0].startswith("1,000 requests per 10 min per app")
    assert health.limits[-1] == "now: the server reports 996 of 1,000 requests left in its current window"


def test_the_secret_and_password_never_show_in_reprs_errors_or_logs(fake_api, leak_check):
    server = FakeReddit(fake_api)
    good, wrong = make_face(fake_api), make_face(fake_api, password=PASSWORD + "-wrong")
    leak_check.exercise(good)
    leak_check.exercise(wrong)
    assert server.created == 1 and leak_check.errors
    shown = leak_check.everything_shown(good, wrong)
    assert PASSWORD not in shown and CLIENT_SECRET not in shown


# -- timeouts and answers that are not Reddit's API ----------------------------------------------


def make_impatient_face(api, timeout=0.3) -> RedditFace:
    return RedditFace(RedditConfig(
        client_id=CLIENT_ID, client_secret=SecretStr(CLIENT_SECRET), username=USER, password=SecretStr(PASSWORD),
        subreddit=SUBREDDIT, oauth_url=api.url, reddit_url=api.url, request_timeout=timeout, retry=FAST_RETRY,
    ))


def test_a_timeout_is_retried_and_a_lasting_one_names_the_timeout_and_the_setting(fake_api):
    server = FakeReddit(fake_api)
    snapshot = fake_api.check_timeouts(
        "GET", r"/api/info/?", fake_api.reply(200, server.listing([server.submissions[1]], None)),
        lambda: make_impatient_face(fake_api).reactions("r1"),
        action="reading a submission's reactions", network="Reddit", max_attempts=FAST_RETRY.max_attempts,
    )
    assert snapshot.counts["likes"] == 17


def test_a_submit_that_times_out_after_the_post_was_created_is_not_sent_again(fake_api):
    server = FakeReddit(fake_api)

    def created_then_stalled(request, match):
        server.create(request)
        submitted = {"json": {"errors": [], "data": {"id": "new1", "name": "t3_new1"}}}
        return fake_api.reply(200, submitted, delay_seconds=1.0)

    fake_api.route("POST", r"/api/submit/?", created_then_stalled)
    published = make_impatient_face(fake_api).publish("slow but there", intent_id="intent-4")
    assert server.created == 1 and len(fake_api.seen("POST", r"/api/submit/?")) == 1
    assert published.platform_id == "new1"


def test_an_html_page_or_a_cut_off_body_is_retried_and_a_lasting_one_is_named(fake_api):
    server = FakeReddit(fake_api)
    garbage = [fake_api.html_page(), fake_api.reply(200, b'{"kind": "Listing", "da')]
    fake_api.route("GET", rf"/user/{USER}/submitted/?",
                   lambda r, m: garbage.pop(0) if garbage else server.submitted(r, m))
    assert len(list(make_face(fake_api).fetch_history())) == 5
    assert len(fake_api.seen("GET", rf"/user/{USER}/submitted/?")) == 3

    fake_api.check_html_page_is_named(
        "GET", rf"/user/{USER}/submitted/?", lambda: list(make_face(fake_api).fetch_history()),
        action="reading submissions", shown="HTTP 200, text/html: '<html><head><title>502 Bad", fix="oauth_url",
    )

    fake_api.route("POST", r"/api/v1/access_token/?", fake_api.html_page())
    with pytest.raises(FaceUnavailableError, match="not JSON \\(HTTP 200, text/html"):
        list(make_face(fake_api).fetch_history())


@pytest.mark.parametrize("answer, named", [
    (lambda listing: {"error": "upstream said no"}, "an object without data"),
    (lambda listing: {"kind": "Listing", "data": {"children": {}}}, "an object whose children is a dict"),
    (lambda listing: [listing], "a value of type list where an object belongs"),
    (lambda listing: {"data": {"children": [{"kind": "t3", "data": {"id": "r1"}}]}},
     "an object without title, selftext, created_utc"),
    (lambda listing: {"data": {"children": [
        {"kind": "t3", "data": {**listing["data"]["children"][0]["data"], "created_utc": "yesterday"}}]}},
     "an object whose created_utc is a str"),
    (lambda listing: {"data": {"children": ["t3_r1"]}}, "a value of type str where an object belongs"),
])
def test_wrong_shaped_reactions_name_what_is_wrong_and_are_not_retried(fake_api, answer, named):
    server = FakeReddit(fake_api)
    fake_api.route("GET", r"/api/info/?", fake_api.reply(200, answer(server.listing([server.submissions[1]], None))))
    with pytest.raises(FaceMalformedAnswerError) as raised:
        make_face(fake_api).reactions("r1")
    assert "answered reading a submission's reactions with" in raised.value.problem and named in raised.value.problem
    assert "that is not the Reddit API" in raised.value.problem
    assert "(HTTP 200, application/json: '" in raised.value.problem
    assert "oauth_url" in raised.value.fix
    assert len(fake_api.seen("GET", r"/api/info/?")) == 1


def test_a_wrong_shaped_listing_or_submit_answer_is_named_not_an_attribute_error(fake_api):
    server = FakeReddit(fake_api)
    fake_api.route("GET", rf"/user/{USER}/submitted/?",
                   fake_api.reply(200, {"kind": "Listing", "data": {"children": [], "after": 5}}))
    with pytest.raises(FaceMalformedAnswerError, match="reading submissions with a listing whose after is a int"):
        list(make_face(fake_api).fetch_history())
    fake_api.route("GET", rf"/user/{USER}/submitted/?", fake_api.reply(200, {"children": []}))
    with pytest.raises(FaceMalformedAnswerError, match="reading submissions with an object without data"):
        list(make_face(fake_api).fetch_history())
    fake_api.route("GET", rf"/r/{SUBREDDIT}/about/?",
                   fake_api.reply(200, {"kind": "t5", "data": {"subscribers": None}}))
    with pytest.raises(FaceMalformedAnswerError,
                       match="reading the subscriber count with an object without subscribers"):
        make_face(fake_api).audience_size()

    def created_but_answered_oddly(request, match):
        server.create(request)
        return fake_api.reply(200, {"json": {"errors": [], "data": {"url": "https://www.reddit.com/r/crowdtune/"}}})

    fake_api.route("POST", r"/api/submit/?", created_but_answered_oddly)
    with pytest.raises(FaceMalformedAnswerError, match="submitting a post with an object without id"):
        make_face(fake_api).publish("odd answer", intent_id="intent-5")
    assert server.created == 1  # not retried, and no "None" id: the job's own retry asks find_published first
    fake_api.route("GET", rf"/user/{USER}/submitted/?", server.submitted)
    assert make_face(fake_api).find_published("intent-5", "odd answer", datetime(2020, 1, 1)).platform_id == "new1"


def test_a_post_reddit_refuses_in_its_answer_is_named(fake_api):
    FakeReddit(fake_api)
    refused = {"json": {"errors": [["SUBREDDIT_NOEXIST", "that subreddit doesn't exist", "sr"]]}}
    fake_api.route("POST", r"/api/submit/?", fake_api.reply(200, refused))
    with pytest.raises(FaceError, match="Reddit refused the post: SUBREDDIT_NOEXIST"):
        make_face(fake_api).publish("nowhere", intent_id="intent-6")
    assert len(fake_api.seen("POST", r"/api/submit/?")) == 1
