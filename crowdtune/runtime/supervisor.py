"""`crowdtune up`: Redis, the store writer, the workers and the app, started and stopped together.

Children run in their own sessions. Each writes its events to a rotated <data_dir>/logs/<name>.jsonl
(crowdtune.runtime.logs; `crowdtune logs` reads them) and its other output (warnings, a crash's
traceback) to <data_dir>/logs/<name>.log; the supervisor's own events go to supervisor.jsonl.
They receive SIGTERM if this process dies (PR_SET_PDEATHSIG); on Ctrl-C or SIGTERM the app stops
first, then the workers (warm, then their whole process trees), then Redis, which persists its queue.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from crowdtune.errors import CrowdtuneError
from crowdtune.runtime.durability import RedisWarning, durability_warnings
from crowdtune.runtime.logs import start_logging
from crowdtune.runtime.queues import connect
from crowdtune.runtime.redis_server import EmbeddedRedis
from crowdtune.settings import Settings, worker_entry
from crowdtune.store.writer import initialise

APP_SCRIPT = Path(__file__).resolve().parents[2] / "app.py"

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """Runs in the child before exec: ask the kernel for SIGTERM when the supervisor dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def check_data_dir(settings: Settings) -> None:
    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CrowdtuneError(
            f"The data folder {data_dir} cannot be written: {exc.strerror or exc}.",
            "Set CROWDTUNE_DATA_DIR to a writable folder, or fix the folder's permissions.",
        ) from None


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1" if host == "localhost" else host, port))
        except OSError:
            raise CrowdtuneError(
                f"Port {port} is already in use (is Crowdtune or another app already running?).",
                f"Stop the program on port {port}, or choose another port: `crowdtune up --port 8502` "
                "or CROWDTUNE_APP_PORT=8502.",
            ) from None


def default_faces(settings: Settings) -> list[dict]:
    """What a new store starts with: the bundled real tweets to learn from, and a simulated
    audience (grounded in those tweets' likes) to publish to. A day passes in 24 minutes."""
    return [
        {"face_id": "tweets", "kind": "dataset", "config": {"source": "trump_tweets"}},
        {"face_id": "sandbox", "kind": "sandbox", "config": {
            "state_url": str((settings.data_dir / "sandbox").absolute()), "time_acceleration": 60.0}},
    ]


def seed_default_faces(settings: Settings) -> None:
    """Add the default faces to a store that has none (never touches a store that has faces)."""
    from crowdtune.store.reads import StoreReader
    from crowdtune.store.writer import apply_write

    if StoreReader(settings.store_path).scalar("SELECT count(*) FROM faces", default=0):
        return
    apply_write(settings.store_path, "default-faces-v1",
                [{"op": "upsert", "table": "faces", "rows": default_faces(settings)}], wait_seconds=30)


@dataclass
class Child:
    name: str
    args: list[str]
    restart: bool
    process: subprocess.Popen | None = None
    restarts: int = 0


class Supervisor:
    def __init__(self, settings: Settings, with_app: bool = True):
        self.settings = settings
        self.with_app = with_app
        self.redis = EmbeddedRedis(settings.redis_dir) if settings.embedded_redis else None
        self.children: list[Child] = []
        self.log_dir = settings.log_dir
        self.redis_warnings: list[RedisWarning] = []
        self._stopping = False

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        s = self.settings
        env["CROWDTUNE_DATA_DIR"] = str(s.data_dir.absolute())
        env["CROWDTUNE_DB_PATH"] = str(s.store_path.absolute())
        env["CROWDTUNE_ARTIFACTS_URL"] = s.artifacts
        env["CROWDTUNE_APP_PORT"] = str(s.app_port)
        if s.redis_url:
            env["REDIS_URL"] = s.redis_url
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _spawn(self, child: Child) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        output = open(self.log_dir / f"{child.name}.log", "ab")
        child.process = subprocess.Popen(
            child.args, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self._env(), start_new_session=True, preexec_fn=_die_with_parent,
        )
        output.close()
        log.info("started %s", child.name, extra={"child": child.name, "child_pid": child.process.pid})

    def plan(self) -> list[Child]:
        python = sys.executable
        # Each worker's events go to its rotated <name>.jsonl; only warnings to its plain output file.
        quiet = ["--console-level", "WARNING"]
        children = [Child("store-worker", [python, "-m", "crowdtune.cli", "worker", "--store",
                                           "--log-name", "store-worker", *quiet], restart=True)]
        for index, entry in enumerate(self.settings.worker_queues, start=1):
            queues, gpu = worker_entry(entry)
            pinned = ["--gpu", str(gpu)] if gpu is not None else []
            children.append(Child(f"worker-{index}", [python, "-m", "crowdtune.cli", "worker", "--queues",
                                                      ",".join(queues), *pinned, "--log-name", f"worker-{index}",
                                                      *quiet], restart=True))
        if self.with_app:
            children.append(Child("app", [
                python, "-m", "streamlit", "run", str(APP_SCRIPT),
                "--server.port", str(self.settings.app_port),
                "--server.address", self.settings.app_host,
                "--server.headless", "true",
                "--browser.gatherUsageStats", "false",
                # The file watcher re-adds watches over every folder below the app (the venv, the data
                # folder being written) and costs about a core per open tab; `streamlit run app.py`
                # during development still watches.
                "--server.fileWatcherType", "none",
                "--client.toolbarMode", "viewer",  # no "Deploy" button: this app is served by `crowdtune up`
            ], restart=False))
        return children

    def start(self) -> None:
        """Check, then start everything; raise CrowdtuneError with a fix on any bad input."""
        check_data_dir(self.settings)
        start_logging(self.settings, "supervisor", console_level=None)  # it prints what people need to see
        if self.with_app:
            check_port_free(self.settings.app_host, self.settings.app_port)
        if self.redis is not None:
            self.redis.start()
        conn = connect(self.settings)  # an unreachable REDIS_URL stops us here, with its message
        self.redis_warnings = durability_warnings(conn, self.settings.redis_display_url)
        for warning in self.redis_warnings:
            log.warning("%s Fix: %s", warning.problem, warning.fix)
        initialise(self.settings.store_path)
        seed_default_faces(self.settings)
        self.children = self.plan()
        for child in self.children:
            self._spawn(child)
        self._prepare_faces()
        if self.with_app:
            self._wait_for_app()

    def _prepare_faces(self) -> None:
        """Queue every face's one-time set-up (a sandbox fits its audience: minutes for a fresh data
        folder) on a generation worker, so that the first post is not held up by it."""
        from crowdtune import actions
        from crowdtune.runtime.queues import connect
        from crowdtune.store.reads import StoreReader
        from faces.registry import needs_set_up

        conn = connect(self.settings)
        for face_id, kind in StoreReader(self.settings.store_path).rows("SELECT face_id, kind FROM faces"):
            if needs_set_up(kind):
                actions.prepare_face(conn, face_id)

    def _wait_for_app(self, timeout: float = 60.0) -> None:
        url = f"http://{self.settings.app_host}:{self.settings.app_port}/_stcore/health"
        deadline = time.monotonic() + timeout
        app = next(c for c in self.children if c.name == "app")
        while time.monotonic() < deadline:
            if app.process.poll() is not None:
                raise CrowdtuneError(
                    "The Streamlit app exited at start.", f"Read {self.log_dir / 'app.log'} for the reason."
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.read().strip() == b"ok":
                        return
            except OSError:
                time.sleep(0.2)
        raise CrowdtuneError(f"The app did not answer on {url} within {timeout:.0f} s.",
                             f"Read {self.log_dir / 'app.log'}.")

    def watch(self, poll: float = 1.0) -> None:
        """Keep workers alive (restart with backoff) until asked to stop or the app exits."""
        while not self._stopping:
            for child in self.children:
                code = child.process.poll() if child.process else None
                if code is None or self._stopping:
                    continue
                if not child.restart:
                    print(f"crowdtune: {child.name} exited (code {code}); stopping. "
                          f"See {self.log_dir}/{child.name}.log")
                    log.warning("%s exited (code %s); stopping", child.name, code, extra={"child": child.name})
                    return
                child.restarts += 1
                print(f"crowdtune: {child.name} exited (code {code}); restarting. See {self.log_dir}/{child.name}.log")
                log.warning("%s exited (code %s); restarting", child.name, code,
                            extra={"child": child.name, "restarts": child.restarts})
                time.sleep(min(30, 2 ** min(child.restarts, 5)))
                if not self._stopping:
                    self._spawn(child)
            time.sleep(poll)

    def request_stop(self, *_args) -> None:
        self._stopping = True

    def stop(self, grace: float = 15.0) -> None:
        """Stop the app, then the workers (and their job processes), then Redis. Leaves no process."""
        self._stopping = True
        order = [c for c in self.children if c.name == "app"] + [c for c in self.children if c.name != "app"]
        trees: list[psutil.Process] = []
        for child in order:
            if child.process and child.process.poll() is None:
                try:
                    proc = psutil.Process(child.process.pid)
                    trees.extend([proc, *proc.children(recursive=True)])
                    proc.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
        _, alive = psutil.wait_procs(trees, timeout=grace)
        for proc in alive:  # a job that did not finish in time: its checkpoint is the recovery point
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for child in self.children:
            if child.process:
                try:
                    child.process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass
        if self.redis is not None:
            self.redis.stop()


def first_steps_text(app_url: str | None) -> str:
    """What to do first, as the Overview's checklist says it, with each step's command."""
    from crowdtune.actions import FIRST_STEPS

    where = f" (the Overview at {app_url} has a button for each)" if app_url else ""
    lines = [f"  First steps{where}:"]
    lines += [f"    {n}. {title}: {command}" for n, (title, command) in enumerate(FIRST_STEPS, start=1)]
    return "\n".join(lines)


def up_banner(settings: Settings, with_app: bool = True, redis_warnings=()) -> str:
    """What `crowdtune up` prints once everything runs (the README's "What you will see" quotes it), with
    each warning about the Redis server (crowdtune.runtime.durability) under the addresses."""
    where = f"http://{settings.app_host}:{settings.app_port}" if with_app else "(no app)"
    return "\n".join([
        f"Crowdtune is up: {where}",
        f"  store: {settings.store_path}   redis: {settings.redis_display_url}   logs: {settings.log_dir}"
        " (`crowdtune logs --follow`)",
        *(f"  Warning: {w.problem}\n    Fix: {w.fix}" for w in redis_warnings),
        first_steps_text(where if with_app else None),
        "  Ctrl-C stops everything.",
    ])


def run_up(settings: Settings, with_app: bool = True) -> None:
    supervisor = Supervisor(settings, with_app=with_app)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    try:
        supervisor.start()
        print(up_banner(settings, with_app, supervisor.redis_warnings), flush=True)
        supervisor.watch()
    finally:
        print("crowdtune: stopping ...", flush=True)
        log.info("stopping")
        supervisor.stop()
        log.info("stopped")
        print("crowdtune: stopped.", flush=True)
