"""Request budgets: faces wait before a limit would be broken, and workers share one limit in Redis."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import SecretStr

from crowdtune.runtime import defaults
from faces import limits
from faces.base import FaceRateLimitError
from faces.limits import NETWORK_LIMITS, LocalBuckets, RateLimit, RedisBuckets, RequestBudget, use_budget
from faces.mastodon import MastodonConfig, MastodonFace
from tests.faces.test_mastodon import FAST_RETRY, TOKEN, FakeMastodon


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times))


@pytest.fixture
def local_budget():
    use_budget(LocalBuckets())
    yield
    use_budget(LocalBuckets())


def test_two_workers_sharing_redis_never_exceed_one_limit_together(redis_conn, settings):
    limit = RateLimit("request", 20, 0.5, "account", "a test limit")
    # Two "workers": separate connections and bucket objects, one account.
    from crowdtune.runtime.queues import connect

    workers = [RedisBuckets(connect(settings), defaults.RATE_LIMIT_PREFIX) for _ in range(2)]
    sent: list[float] = []

    def work(buckets):
        for _ in range(20):
            while (wait := buckets.take(["mastodon:shared:request"], [limit])) > 0:
                time.sleep(wait)
            sent.append(time.monotonic())

    threads = [threading.Thread(target=work, args=(buckets,)) for buckets in workers for _ in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sent) == 80
    assert most_in_any_window(sent, 0.5) <= 20
    assert time.monotonic() - started >= (80 - limit.capacity) / limit.rate * 0.9  # they did wait for each other
    assert any(key.startswith(defaults.RATE_LIMIT_PREFIX.encode()) for key in redis_conn.scan_iter())


def test_a_face_waits_before_the_server_would_refuse_it(fake_api, monkeypatch, local_budget):
    """The server allows 5 requests per 0.5 s window and answers 429 beyond; the face never meets a 429."""
    server = FakeMastodon(fake_api)
    window: list[float] = []
    refused = []

    def counted(handler):
        def serve(request, match):
            now = time.monotonic()
            window[:] = [t for t in window if t > now - 0.5] + [now]
            if len(window) > 5:
                refused.append(request.path)
                return fake_api.reply(429, {"error": "Too many requests"}, {"Retry-After": "0.5"})
            return handler(request, match)
        return serve

    fake_api.route("POST", r"/api/v1/statuses", counted(server.post_status))
    fake_api.route("GET", r"/api/v1/statuses/(\d+)", counted(server.get_status))
    monkeypatch.setitem(NETWORK_LIMITS, "mastodon", (RateLimit("request", 5, 0.5, "account", "the fake's limit"),))
    face = MastodonFace(MastodonConfig(api_base_url=fake_api.url, token=SecretStr(TOKEN), retry=FAST_RETRY))
    started = time.monotonic()
    for i in range(8):
        published = face.publish(f"post {i}", intent_id=f"intent-{i}")
        face.reactions(published.platform_id)
    assert refused == [] and server.created == 8
    assert time.monotonic() - started >= 1.0  # 16 requests at 5 per 0.5 s: it waited instead


def test_a_wait_longer_than_the_face_accepts_fails_at_once_naming_the_limit_and_its_source(local_budget):
    budget = RequestBudget("bluesky", "a-handle", max_wait_seconds=5, sleep=lambda s: None)
    for _ in range(3):  # the sign-in bucket holds 3 of the 30 per 5 minutes
        budget.wait_for_turn("session", "signing in")
    with pytest.raises(FaceRateLimitError) as raised:
        budget.wait_for_turn("session", "signing in")
    assert "100 sign-ins per day per account" in raised.value.problem
    assert limits.BLUESKY_DOCS in raised.value.problem
    assert budget.wait_for_turn("request", "reading a feed") == 0.0  # other calls are not held up
