"""At start, a Redis that would lose queued work is named with the fix: no append-only file, an evicting
memory policy, or settings it will not tell (managed services that refuse CONFIG). Real valkey servers."""

import json
import os
import subprocess
import sys

import pytest
import redis

from crowdtune.runtime.durability import durability_warnings
from crowdtune.runtime.redis_server import server_binary
from crowdtune.testing.processes import wait_for
from tests.conftest import ROOT


@pytest.fixture
def valkey(tmp_path):
    """Start a valkey server with the given options on a unix socket; returns (client, url)."""
    started = []

    def start(*options: str) -> tuple[redis.Redis, str]:
        sock = tmp_path / f"valkey-{len(started)}.sock"
        proc = subprocess.Popen([str(server_binary()), "--port", "0", "--unixsocket", str(sock), "--save", "",
                                 "--dir", str(tmp_path), *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        conn = redis.Redis(unix_socket_path=str(sock))

        def answers() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                return bool(sock.exists() and conn.ping())
            except redis.ConnectionError:
                return False

        wait_for(answers, timeout=10, message="valkey to start")
        return conn, f"unix://{sock}"

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def limited_user(conn: redis.Redis, sock_url: str, *denied: str) -> redis.Redis:
    """A client logged in as a user who may run everything but `denied`, as on a managed service."""
    conn.acl_setuser("app", enabled=True, passwords=["+secret"], keys=["*"], channels=["*"],
                     commands=["+@all", *(f"-{c}" for c in denied)])
    return redis.Redis.from_url(sock_url, username="app", password="secret")


def text(warnings) -> str:
    return "\n".join(str(w) for w in warnings)


def test_the_embedded_server_persists_and_never_evicts(redis_conn, settings):
    assert durability_warnings(redis_conn, settings.redis_display_url) == []


def test_a_server_without_aof_that_evicts_is_named_with_both_fixes(valkey):
    conn, _ = valkey("--appendonly", "no", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")

    warnings = durability_warnings(conn, "redis://:***@cache:6379/0")

    assert len(warnings) == 2
    said = text(warnings)
    assert "Redis at redis://:***@cache:6379/0 does not persist its data (appendonly no)" in said
    assert "CONFIG SET appendonly yes" in said
    assert "maxmemory-policy allkeys-lru) once it reaches maxmemory" in said
    assert "CONFIG SET maxmemory-policy noeviction" in said


def refusing(valkey, how: str, *commands: str) -> tuple[redis.Redis, str]:
    """A valkey with appendonly no whose client may not run `commands`: renamed away (ERR unknown
    command) or denied to its user by an ACL (NOPERM), the two ways managed services refuse them."""
    if how == "renamed":
        renames = [arg for command in commands for arg in ("--rename-command", command.upper(), "")]
        return valkey("--appendonly", "no", *renames)
    conn, url = valkey("--appendonly", "no")
    return limited_user(conn, url, *commands), url


@pytest.mark.parametrize("how", ["renamed", "acl"])
def test_without_config_the_check_goes_through_info(valkey, how):
    conn, url = refusing(valkey, how, "config")
    with pytest.raises(redis.ResponseError):
        conn.config_get("appendonly")

    assert "appendonly no" in text(durability_warnings(conn, url))


@pytest.mark.parametrize("how", ["renamed", "acl"])
def test_a_server_that_refuses_info_and_config_is_said_to_be_unchecked(valkey, how):
    conn, url = refusing(valkey, how, "config", "info")

    warnings = durability_warnings(conn, url)

    assert len(warnings) == 1  # its appendonly no goes unseen: said to be unchecked, never said to be fine
    said = text(warnings)
    assert f"Could not check whether Redis at {url} persists and never evicts" in said
    assert "managed services often disable CONFIG" in said
    assert "appendonly yes (AOF persistence) and maxmemory-policy noeviction" in said


def test_a_worker_started_on_a_redis_that_evicts_warns_on_stderr_and_in_its_event_log(valkey, settings):
    _, url = valkey("--appendonly", "yes", "--maxmemory-policy", "volatile-lru")
    env = {**os.environ, "REDIS_URL": url}

    done = subprocess.run([sys.executable, "-m", "crowdtune.cli", "worker", "--store", "--burst"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)

    assert done.returncode == 0, done.stderr[-2000:]
    assert "may delete keys to make room (maxmemory-policy volatile-lru)" in done.stderr
    events = [json.loads(line) for line in (settings.log_dir / "store-worker.jsonl").read_text().splitlines()]
    warned = [e for e in events if e["level"] == "WARNING" and "volatile-lru" in e["event"]]
    assert warned and "Fix: Set `CONFIG SET maxmemory-policy noeviction`" in warned[0]["event"]
    assert warned[0]["process"] == "store-worker"
