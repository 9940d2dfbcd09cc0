"""The online loop on a Mastodon face whose server misbehaves, then behaves: nothing lost, nothing doubled.

Real Redis, real workers, the real store and the tiny model; only Mastodon is faked, by a real HTTP
server on 127.0.0.1 (tests/faces/conftest.py) that the face reaches through Mastodon.py as it would
a real instance. The server answers publishes and reaction reads with a scripted run of faults:
429 with Retry-After, 500 and 503, no answer within the client's timeout (once after it did create
the status), an HTML page served with 200, a body cut off mid-JSON and JSON of the wrong shape.
Then it behaves. The face's own retries absorb some faults; others outlast them and reach the job's
retry, the controller's re-dispatch, or a `failed` post with an alert.

Time runs at wall speed (a network reports real ages), with the loop's intervals set in fractions of
minutes and hours: a post every ~3 s, mature after 3.6 s.
"""

from __future__ import annotations

import threading
from collections import Counter, deque

import pytest

from crowdtune import actions
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import initialise
from crowdtune.testing.accounting import store_settled
from crowdtune.testing.processes import wait_for
from crowdtune.testing.sandbox_run import online_config
from tests.faces.conftest import FakeApi, Reply
from tests.faces.test_mastodon import TOKEN, FakeMastodon
from tests.reliability.test_faults import assert_accounts

pytestmark = pytest.mark.slow

FACE = "masto"
CLIENT_TIMEOUT = 1.0   # the face's request_timeout, seconds
STALL = 2.0            # a stalled answer comes this late: after the client gave up
FACE_RETRY = {"max_attempts": 4, "base_delay_seconds": 0.05, "max_delay_seconds": 0.2}
HTML_ERROR_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


class ScriptedMastodon(FakeMastodon):
    """FakeMastodon whose publishes, and reads of the first status, first answer with scripted faults.

    A fault is a function of the request returning the Reply; those named `..._after_creating`
    create the status first, as a server does that fails after the work was done. Every created
    status is counted by its Idempotency-Key, so a double post shows however it came about.
    Reads of other statuses always behave, so which collect job meets the read faults is certain.
    """

    FIRST_STATUS_ID = "2001"

    def __init__(self, api, publish_faults, read_faults):
        super().__init__(api, statuses=0)
        self.faults = {"publish": deque(publish_faults), "read": deque(read_faults)}
        self.served: list[str] = []
        self.created_keys: Counter[str] = Counter()
        self.lock = threading.Lock()

    def next_fault(self, endpoint: str):
        with self.lock:
            return self.faults[endpoint].popleft() if self.faults[endpoint] else None

    def faults_left(self) -> int:
        return sum(len(f) for f in self.faults.values())

    def publish_attempts(self, intent_id: str) -> int:
        return sum(r.headers.get("Idempotency-Key") == intent_id for r in self.api.seen("POST", r"/api/v1/statuses"))

    def create(self, request) -> dict:
        with self.lock:
            status = super().create(request)
            self.created_keys[request.headers.get("Idempotency-Key")] += 1
            text_length = len(status["content"])  # reactions that differ by post, so rewards do too
            status.update(favourites_count=text_length % 9 + 1, reblogs_count=text_length % 3, replies_count=1)
            return status

    def post_status(self, request, match):
        fault = self.next_fault("publish")
        if fault is None:
            return super().post_status(request, match)
        self.served.append(f"publish: {fault.__name__}")
        return fault(self, request)

    def get_status(self, request, match):
        fault = self.next_fault("read") if match.group(1) == self.FIRST_STATUS_ID else None
        if fault is None:
            return super().get_status(request, match)
        self.served.append(f"read: {fault.__name__}")
        return fault(self, request)


# The faults, as the server answers them.

def rate_limited(server, request):
    return Reply(429, {"error": "Too many requests"}, {"Retry-After": "1"})


def rate_limited_briefly(server, request):
    return Reply(429, {"error": "Too many requests"}, {"Retry-After": "0.2"})


def internal_error(server, request):
    return Reply(500, {"error": "Internal server error"})


def unavailable(server, request):
    return Reply(503, {"error": "Service unavailable"})


def stalled(server, request):
    return Reply(504, {"error": "too late"}, delay_seconds=STALL)


def stalled_after_creating(server, request):
    return Reply(200, server.create(request), delay_seconds=STALL)


def html_page(server, request):
    return Reply(200, HTML_ERROR_PAGE, {"Content-Type": "text/html"})


def cut_off_after_creating(server, request):
    server.create(request)
    return Reply(200, b'{"id": "20')


def wrong_shape(server, request):
    return Reply(200, {"result": "ok"})


def wrong_shape_after_creating(server, request):
    server.create(request)
    return Reply(200, {"result": "ok"})


# Publishing goes slot by slot, so the script maps onto posts (face retries: 4 attempts per job run;
# job retries: 2, one second apart):
PUBLISH_FAULTS = [
    rate_limited, unavailable, stalled_after_creating,  # post 1: the face's retries absorb it all; find_published
                                                        # finds the status the stalled attempt created
    html_page, wrong_shape_after_creating,              # post 2: a retried HTML page, then created but answered
                                                        # with the wrong shape (not retried): the job's retry finds it
    *[stalled] * 4, cut_off_after_creating,             # post 3: timeouts past the face's attempts, then in the
                                                        # job's retry created but cut off: the face's retry finds it
    *[unavailable] * 12,                                # post 4: 503 past every retry: failed, with an alert
]
# Reads of the first post (its collect job: 1 + 3 RQ retries): each run fails in another way, the last
# is alerted on, and the controller reads the post again later.
READ_FAULTS = [
    rate_limited, internal_error, stalled, html_page,  # run 1: four retryable faults: out of attempts
    wrong_shape,                                       # run 2: not retried by the face
    *[unavailable] * 4,                                # run 3
    *[rate_limited_briefly] * 4,                       # run 4, the last: alerted on
]


@pytest.fixture
def mastodon():
    api = FakeApi()
    yield ScriptedMastodon(api, PUBLISH_FAULTS, READ_FAULTS)
    api.close()


def count(reader, sql, *params) -> int:
    return int(reader.scalar(sql, list(params)) or 0)


def test_a_mastodon_face_answering_429_5xx_timeouts_and_garbage_loses_nothing_and_posts_nothing_twice(
        settings, redis_conn, workers, mastodon, monkeypatch, tiny_model_dir):  # noqa: F811  (fixture imported above)
    monkeypatch.setenv("CROWDTUNE_MASTODON_TOKEN", TOKEN)  # the workers' environment, as in production
    initialise(settings.store_path)
    workers.start_together(("--store",), ("--queues", "control,default"), ("--queues", "train"), conn=redis_conn)
    reader = StoreReader(settings.store_path)
    actions.save_face(redis_conn, FACE, "mastodon", {  # review off: this test is about the network's faults
        "api_base_url": mastodon.api.url, "request_timeout": CLIENT_TIMEOUT, "retry": FACE_RETRY, "review": "off"})
    wait_for(lambda: count(reader, "SELECT count(*) FROM faces WHERE face_id = ?", FACE), message="the face")
    run_id = actions.start_online(redis_conn, FACE, online_config(
        tiny_model_dir, time_acceleration=1.0, interval_minutes=0.05, jitter_minutes=0.01, min_gap_minutes=0.025,
        daily_cap=100, maturity_windows_hours=[0.001], posts_per_update=2, publish_retries=2,
        publish_retry_minutes=[1 / 60]))

    published = "SELECT count(*) FROM posts WHERE run_id = ? AND status = 'published'"
    wait_for(lambda: mastodon.faults_left() == 0 and count(reader, published, run_id) >= 4
             and count(reader, "SELECT count(*) FROM online_updates WHERE status = 'completed'") >= 1,
             timeout=240, interval=0.5, message="every fault served, 4 posts out and an update")
    assert actions.stop_online(redis_conn, FACE) == run_id
    wait_for(lambda: reader.scalar("SELECT state FROM controllers WHERE face_id = ?", [FACE]) == "IDLE",
             timeout=120, message="the controller to go IDLE")
    wait_for(lambda: count(reader, published + " AND score IS NULL", run_id) == 0, timeout=120,
             message="every published post to be scored (no reaction lost)")
    wait_for(lambda: store_settled(redis_conn), timeout=60, message="the store queue to drain")

    # The exact accounting: generated = published + rejected + failed, every published post has its
    # snapshots and score, every version loads, no duplicate keys.
    figures = assert_accounts(settings, scored=True)
    assert figures["posts"]["failed"] == 1 and figures["versions"] >= 1

    # The server created one status per published intent and none for the failed one: no double post.
    rows = reader.rows("SELECT post_id, status, intent_id, platform_id FROM posts WHERE run_id = ? "
                       "AND status NOT IN ('rejected', 'candidate') ORDER BY publish_slot", [run_id])
    out = {intent: platform_id for _, status, intent, platform_id in rows if status == "published"}
    assert dict(mastodon.created_keys) == {intent: 1 for intent in out}
    assert sorted(out.values()) == sorted(s["id"] for s in mastodon.statuses)
    first, second, third, fourth = rows[:4]
    assert [r[1] for r in rows[:4]] == ["published", "published", "published", "failed"], rows
    assert mastodon.publish_attempts(fourth[2]) == 12  # 3 job runs x 4 face attempts, each a 503
    assert mastodon.publish_attempts(first[2]) == 3 and mastodon.publish_attempts(third[2]) == 5

    # Alerts name what happened.
    alerts = dict(reader.rows("SELECT alert_id, message FROM alerts WHERE source = ?", [f"online {FACE}"]))
    assert "answered publishing a status with an object without id" in alerts[f"publish-retry:{second[2]}"]
    assert "(no answer within 1 s) for 4 attempts" in alerts[f"publish-retry:{third[2]}"]
    assert "failed after 3 attempt(s)" in alerts[f"publish-failed:{fourth[2]}"]
    assert "kept failing while publishing a status (HTTP 503) for 4 attempts" in alerts[f"publish-failed:{fourth[2]}"]
    assert "kept rate-limiting reading a status's reactions" in alerts[f"collect-failed:{first[0]}"]
    # The first post's reactions were read after every run of its collect job had failed: reading went on,
    # and every snapshot holds what the server said.
    assert count(reader, "SELECT count(*) FROM reaction_snapshots WHERE post_id = ?", first[0]) >= 1
    likes = {s["id"]: s["favourites_count"] for s in mastodon.statuses}
    observed = reader.rows("SELECT p.platform_id, s.count FROM reaction_snapshots s JOIN posts p USING (post_id) "
                           "WHERE s.kind = 'likes'")
    assert {platform_id for platform_id, _ in observed} == set(likes)
    assert all(n == likes[platform_id] for platform_id, n in observed), (observed, likes)
