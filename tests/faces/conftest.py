"""A real HTTP server on 127.0.0.1 that plays a social network's API for the network-face tests.

Each test registers routes (method + path regex -> handler) answering with bodies shaped like the
network's documented API, points the real client library at `server.url`, and afterwards asserts
on `server.requests` (what the client really sent).
"""

from __future__ import annotations

import json
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    # The machine is shared; two threads made small matmuls ~35x slower under load.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def own_data_folder(tmp_path, monkeypatch):
    # Faces keep sessions under the data folder (faces.sessions): each test starts with none.
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CROWDTUNE_CONFIG", str(tmp_path / "crowdtune.toml"))


@dataclass
class SeenRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body.decode())


@dataclass
class Reply:
    """An answer: `body` is sent as JSON, or as is when it is bytes (an HTML page, a cut-off body).

    `delay_seconds` holds the answer back first, so a client with a shorter timeout gives up on it.
    """

    status: int = 200
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0


Handler = Callable[[SeenRequest, re.Match], Reply]


class FakeApi:
    """Routes requests to handlers and records every request it saw. `api.reply(...)` builds a Reply."""

    reply = staticmethod(Reply)
    # What a proxy or CDN in front of the API serves when the API behind it is down.
    HTML_ERROR_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"

    def html_page(self) -> Reply:
        """A 200 answer that is an HTML page, not the API."""
        return Reply(200, self.HTML_ERROR_PAGE, {"Content-Type": "text/html"})

    def __init__(self):
        self.routes: list[tuple[str, re.Pattern, Handler]] = []
        self.requests: list[SeenRequest] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, method: str, pattern: str, handler: Handler | Reply | list[Reply]) -> None:
        """Answer `method` requests whose path matches `pattern` (a full-match regex).

        A list of Replies is answered in order, the last one repeating (e.g. [503, 200]).
        """
        if isinstance(handler, Reply):
            reply = handler
            handler = lambda request, match: reply  # noqa: E731
        elif isinstance(handler, list):
            queue = list(handler)
            handler = lambda request, match: queue.pop(0) if len(queue) > 1 else queue[0]  # noqa: E731
        self.routes.insert(0, (method, re.compile(pattern), handler))

    def seen(self, method: str, pattern: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    def check_html_page_is_named(self, method: str, pattern: str, call: Callable, *, action: str, shown: str, fix: str):
        """Prove that `call` fails, once its retries are spent on HTML pages served with 200, naming the
        action, what came back (`shown`, e.g. "HTTP 200, text/html: '<html>") and a fix mentioning `fix`."""
        from faces.base import FaceUnavailableError

        self.route(method, pattern, self.html_page())
        with pytest.raises(FaceUnavailableError) as raised:
            call()
        assert f"kept failing while {action} (an answer that is not JSON ({shown}" in raised.value.problem
        assert fix in raised.value.fix

    def check_timeouts(self, method: str, pattern: str, answer: Reply, call: Callable, *, action: str, network: str,
                       max_attempts: int, timeout: float = 0.3):
        """Prove that `call` (a face with request_timeout=`timeout`) retries an answer held back past the
        timeout, and that one held back every time fails naming the action, the timeout and the setting.

        Out: what `call` returned the first time, when the second answer came in time.
        """
        from faces.base import FaceUnavailableError

        stalled = Reply(answer.status, answer.body, answer.headers, delay_seconds=timeout + 0.7)
        self.route(method, pattern, [stalled, answer])
        result = call()
        assert len(self.seen(method, pattern)) == 2
        self.route(method, pattern, stalled)
        with pytest.raises(FaceUnavailableError) as raised:
            call()
        assert f"kept failing while {action} (no answer within {timeout:g} s)" in raised.value.problem
        assert f"request_timeout in the {network} face config" in raised.value.fix
        assert len(self.seen(method, pattern)) == 2 + max_attempts
        return result

    def _handler_class(self):
        api = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                seen = SeenRequest(self.command, parts.path, parse_qs(parts.query), dict(self.headers), body)
                api.requests.append(seen)
                for method, pattern, handler in api.routes:
                    match = pattern.fullmatch(parts.path)
                    if method == self.command and match:
                        reply = handler(seen, match)
                        break
                else:
                    reply = Reply(404, {"error": f"no fake route for {self.command} {parts.path}"})
                if reply.delay_seconds:
                    time.sleep(reply.delay_seconds)
                if isinstance(reply.body, bytes):
                    payload = reply.body
                else:
                    payload = b"" if reply.body is None else json.dumps(reply.body).encode()
                try:
                    self._send(reply, payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and hung up: what a slow real server sees too

            def _send(self, reply: Reply, payload: bytes) -> None:
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json; charset=utf-8", **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                # One request per connection: no client ever reuses a connection the server dropped.
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        return RequestHandler

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    api = FakeApi()
    yield api
    api.close()


class LeakCheck:
    """Exercise a face (successes and failures) and collect everything it could have shown a user."""

    def __init__(self, caplog):
        caplog.set_level(1)  # every logger, including hikari's TRACE and urllib3/httpx debug lines
        self.caplog = caplog
        self.errors: list[BaseException] = []

    def exercise(self, face) -> list[BaseException]:
        from faces.base import FaceError

        for call in (
            lambda: list(face.fetch_history(limit=3)),
            lambda: face.publish("a post", intent_id="leak-check"),
            lambda: face.reactions("1"),
            lambda: face.audience_size(),
            lambda: face.health(),
        ):
            try:
                call()
            except FaceError as error:
                self.errors.append(error)
        return self.errors

    def everything_shown(self, *faces) -> str:
        shown = [self.caplog.text]
        for face in faces:
            shown += [repr(face), str(face), repr(face.config), str(face.config), face.health().message]
        for error in self.errors:
            shown += [str(error), repr(error), "".join(traceback.format_exception(error))]
        return "\n".join(shown)


@pytest.fixture
def leak_check(caplog) -> LeakCheck:
    return LeakCheck(caplog)
