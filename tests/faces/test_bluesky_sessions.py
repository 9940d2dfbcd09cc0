"""Bluesky sessions last across jobs: created once, refreshed when the access token expires, stored
owner-only under the data folder, created anew only when the server refuses them."""

from __future__ import annotations

import time

from pydantic import SecretStr

from faces.bluesky import BlueskyConfig, BlueskyFace
from faces.sessions import SessionFile
from tests.faces.test_bluesky import DID, FAST_RETRY, HANDLE, PASSWORD, FakeBluesky, jwt

SDK_REFRESH_MARGIN = 15 * 60  # the atproto SDK refreshes 15 min before the access token's exp


def bearer(request) -> str:
    headers = {name.lower(): value for name, value in request.headers.items()}  # HTTP names are case-blind
    return headers.get("authorization", "").removeprefix("Bearer ")


class SessionServer(FakeBluesky):
    """FakeBluesky whose tokens expire and are checked, as com.atproto.server documents them."""

    def __init__(self, api, access_seconds: float):
        super().__init__(api)
        self.access_seconds = access_seconds
        self.access: dict[str, float] = {}  # live access token -> when it expires
        self.refresh: set[str] = set()      # refresh tokens not used yet (each is used once)
        self.sessions_created = self.refreshed = self.refused = 0
        api.route("POST", r"/xrpc/com.atproto.server.createSession", self.create_session)
        api.route("POST", r"/xrpc/com.atproto.server.refreshSession", self.refresh_session)
        for method, path, handler in (("POST", "com.atproto.repo.createRecord", self.create_record),
                                      ("GET", "app.bsky.feed.getPosts", self.get_posts),
                                      ("GET", "app.bsky.actor.getProfile", self.get_profile)):
            api.route(method, rf"/xrpc/{path}", self.checked(handler))

    def tokens(self) -> dict:
        now = time.time()
        counter = len(self.access) + len(self.refresh) + self.refreshed + self.sessions_created
        access = jwt({"scope": "com.atproto.appPass", "sub": DID, "iat": int(now), "n": counter,
                      "exp": int(now + SDK_REFRESH_MARGIN + self.access_seconds)})
        refresh = jwt({"scope": "com.atproto.refresh", "sub": DID, "n": counter, "exp": int(now + 90 * 86400)})
        self.access[access] = now + self.access_seconds
        self.refresh.add(refresh)
        return {"did": DID, "handle": HANDLE, "accessJwt": access, "refreshJwt": refresh, "active": True}

    def create_session(self, request, match):
        if request.json().get("password") != PASSWORD:
            return self.api.reply(401, {"error": "AuthenticationRequired", "message": "Invalid identifier or password"})
        self.sessions_created += 1
        return self.api.reply(200, self.tokens())

    def refresh_session(self, request, match):
        token = bearer(request)
        if token not in self.refresh:
            self.refused += 1
            return self.api.reply(400, {"error": "ExpiredToken", "message": "Token has been revoked"})
        self.refresh.discard(token)
        self.refreshed += 1
        return self.api.reply(200, self.tokens())

    def checked(self, handler):
        def serve(request, match):
            if self.access.get(bearer(request), 0) < time.time():
                self.refused += 1
                return self.api.reply(400, {"error": "ExpiredToken", "message": "Token has expired"})
            return handler(request, match)
        return serve

    def revoke_everything(self):
        self.access.clear()
        self.refresh.clear()


def job_face(api) -> BlueskyFace:
    """The face as a job builds it: a new object (in a new process on a real worker) every time."""
    return BlueskyFace(BlueskyConfig(service_url=api.url, handle=HANDLE, app_password=SecretStr(PASSWORD),
                                     retry=FAST_RETRY))


def test_an_hour_of_steady_work_signs_in_once_and_refreshes_as_tokens_expire(fake_api):
    # A simulated hour: 60 jobs, one a "minute" (0.05 s), with access tokens that live 20 "minutes" (1 s).
    server = SessionServer(fake_api, access_seconds=1.0)
    uri = server.uri(list(server.records)[0])
    for minute in range(60):
        face = job_face(fake_api)
        if minute % 3 == 0:
            face.publish(f"post of minute {minute}", intent_id=f"intent-{minute}")
        else:
            assert face.reactions(uri).counts["likes"] == 11
        time.sleep(0.05)
    assert server.sessions_created == 1
    assert server.refreshed >= 2 and server.refused == 0  # refreshed before expiry, never refused
    assert server.created == 20
    path = SessionFile("bluesky", f"{fake_api.url}|{HANDLE}").path
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert PASSWORD not in path.read_text()


def test_a_refused_session_is_created_anew_once_and_the_call_goes_through(fake_api):
    server = SessionServer(fake_api, access_seconds=600.0)
    job_face(fake_api).publish("first", intent_id="intent-a")
    server.revoke_everything()  # e.g. the app password's sessions were revoked on bsky.app
    job_face(fake_api).publish("second", intent_id="intent-b")
    assert server.sessions_created == 2 and server.refused == 1 and server.created == 2
    job_face(fake_api).publish("third", intent_id="intent-c")
    assert server.sessions_created == 2  # the new session is the one kept
