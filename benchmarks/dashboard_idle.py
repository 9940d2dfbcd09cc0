"""What an open dashboard tab costs the app process, with the data folder being written as in training.

Starts Crowdtune on a fresh data folder under benchmarks/out/ (below the app, as `data/` is in a
default install, so a file watcher sees it being written), and a background writer that submits
metric rows of a running run through the store queue every second, as offline training does. Then,
with one headless Chromium tab (Playwright, Debian's /usr/bin/chromium) open on each of Overview,
Training and Metrics in turn, it sums the CPU seconds of the Streamlit process and its children
(psutil cpu_times, user + system) over:

- `training`: `--seconds` while the writer writes (the pages' data changes every second), and
- `quiet`: `--quiet-seconds` with the writer paused (nothing changes: the goal's case),

in two set-ups:

- `up`: the app as `crowdtune up` starts it (`--server.fileWatcherType none`), with the live
  fragments' change-counter skipping (crowdtune.dashboard.page_setup.live_reads);
- `baseline`: `crowdtune up --no-app` plus `streamlit run app.py` with the file watcher on (its
  default) and CROWDTUNE_DASHBOARD_ALWAYS_READ=1 (benchmark only: fragments read at every tick).

    python benchmarks/dashboard_idle.py [--seconds 60] [--quiet-seconds 30] [--only up] [--pages metrics,training]

`--python` is the interpreter that runs Crowdtune (default: this one). Streamlit's watcher watches
every imported module below the app's folder, so its cost depends on where the venv is: pass the
clone's `.venv/bin/python` (where `make setup` puts it) to measure a default install.

Prints each measurement (with how often the store's change counter moved meanwhile), then as its
last line JSON: CPU seconds per minute for each set-up, page and phase, the baseline/up ratios and
the load average. Goal: `up` quiet under 3 CPU s per minute.
Needs `apt-get install -y chromium` and playwright (no browser download).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crowdtune.runtime.queues import connect, queue  # noqa: E402
from crowdtune.settings import QUEUE_STORE, load_settings  # noqa: E402
from crowdtune.store import changes  # noqa: E402
from crowdtune.store.writes import StoreWriter  # noqa: E402

PAGES = {"overview": "Overview", "training": "Training", "metrics": "Metrics"}  # url path: title
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SETTLE_SECONDS = 5  # after the page drew: its first render is not the idle cost
RUN_ID = "bench-idle-run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
            return r.read() == b"ok"
    except OSError:
        return False


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of `process` and its living children."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


class TrainingWriter(threading.Thread):
    """Submits a running run's metric rows through the store queue every second while not paused."""

    def __init__(self, conn):
        super().__init__(daemon=True, name="training-writer")
        self.writer, self.step = StoreWriter(conn), 0
        self.writing, self.done = threading.Event(), threading.Event()
        self.batches = 0

    def run(self) -> None:
        self.writer.upsert("runs", [{"run_id": RUN_ID, "kind": "offline", "face_id": "tweets", "status": "running",
                                     "started_at": dt.datetime.now(dt.UTC).replace(tzinfo=None)}])
        while not self.done.wait(1.0):
            if not self.writing.is_set():
                continue
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            losses = (("train_loss", 3.0 / (1 + self.step / 50)), ("val_loss", 3.2 / (1 + self.step / 60)))
            self.writer.upsert("metrics", [{"run_id": RUN_ID, "name": name, "step": self.step, "value": value,
                                            "recorded_at": now} for name, value in losses])
            self.step += 1
            self.batches += 1


class Crowdtune:
    """`crowdtune up` on the data folder: with its app (mode up), or without plus `streamlit run` (baseline)."""

    def __init__(self, mode: str, data_dir: Path, port: int, python: str):
        self.mode, self.port, self.data_dir, self.python = mode, port, data_dir, python
        self.env = {**os.environ, "CROWDTUNE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        self.env.pop("CROWDTUNE_DB_PATH", None)
        self.log = open(data_dir.parent / f"{mode}.log", "wb")
        self.up: subprocess.Popen | None = None
        self.app: subprocess.Popen | None = None

    def start(self) -> psutil.Process:
        """Start everything; the app's process."""
        args = [self.python, "-m", "crowdtune.cli", "up", "--port", str(self.port)]
        if self.mode == "baseline":
            args.append("--no-app")
        self.up = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if self.mode == "baseline":
            wait_until(lambda: (self.data_dir / "crowdtune.duckdb").exists(), 120, "crowdtune up --no-app")
            # `streamlit run app.py` as in development: the file watcher on, and no change-counter skipping.
            self.app = subprocess.Popen(
                [self.python, "-m", "streamlit", "run", "app.py", "--server.port", str(self.port),
                 "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                cwd=ROOT, env={**self.env, "CROWDTUNE_DASHBOARD_ALWAYS_READ": "1"},
                stdout=self.log, stderr=subprocess.STDOUT)
        wait_until(lambda: healthy(self.port), 120, f"the app on port {self.port}")
        if self.app is not None:
            return psutil.Process(self.app.pid)
        up = psutil.Process(self.up.pid)
        return next(p for p in up.children(recursive=True) if "streamlit" in " ".join(p.cmdline()))

    def stop(self) -> None:
        for proc in (self.app, self.up):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # Ctrl-C: `crowdtune up` stops its children
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.log.close()


def drained(conn) -> bool:
    """No store write waits or runs: what was submitted has landed."""
    store = queue(QUEUE_STORE, conn)
    return store.count == 0 and store.started_job_registry.count == 0


def measure_mode(mode: str, seconds: float, quiet_seconds: float, out: Path, python: str,
                 screenshots: bool = False, pages: list[str] | None = None) -> dict:
    """{page: {"training": CPU s/min, "quiet": CPU s/min}} for one set-up, on a fresh data folder;
    `pages` (url paths of PAGES) are visited in that order, in one app process (default: all)."""
    from playwright.sync_api import sync_playwright

    data_dir = out / mode / "data"
    shutil.rmtree(data_dir.parent, ignore_errors=True)
    data_dir.mkdir(parents=True)
    os.environ["CROWDTUNE_DATA_DIR"] = str(data_dir)
    os.environ.pop("CROWDTUNE_DB_PATH", None)
    port = free_port()
    crowdtune = Crowdtune(mode, data_dir, port, python)
    results: dict[str, dict[str, float]] = {}
    try:
        app = crowdtune.start()
        conn = connect(load_settings())
        writer = TrainingWriter(conn)
        writer.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            for path in pages or list(PAGES):
                title = PAGES[path]
                writer.writing.set()
                tab = browser.new_page()
                tab.goto(f"http://127.0.0.1:{port}/{path}")
                tab.get_by_role("heading", name=title).first.wait_for(timeout=120_000)
                time.sleep(SETTLE_SECONDS)
                label = path if path not in results else f"{path}-again"  # e.g. metrics,training,metrics
                results[label] = {}
                for phase, length in (("training", seconds), ("quiet", quiet_seconds)):
                    if length <= 0:
                        continue
                    if phase == "quiet":
                        writer.writing.clear()
                        time.sleep(1.5)  # the writer's current batch is submitted
                        wait_until(lambda: drained(conn), 300, "the store queue to drain")
                        time.sleep(3)  # the last batch is drawn
                    before, moves, started = cpu_seconds(app), changes.version(conn), time.monotonic()
                    time.sleep(length)
                    used, elapsed = cpu_seconds(app) - before, time.monotonic() - started
                    moves = changes.version(conn) - moves
                    results[label][phase] = round(used / elapsed * 60, 2)
                    print(f"{mode:8s} {label:9s} {phase:8s}: {used:6.2f} CPU s in {elapsed:5.1f} s "
                          f"= {used / elapsed * 60:6.2f} CPU s/min; store changed {moves} times "
                          f"(load {os.getloadavg()[0]:.2f})", flush=True)
                if screenshots:  # what the tab showed at the end, to check the page drew (--keep)
                    tab.screenshot(path=str(out / mode / f"{path}.png"), full_page=True)
                tab.close()
            browser.close()
        writer.done.set()
        print(f"{mode:8s} writer: {writer.batches} metric batches submitted", flush=True)
    finally:
        crowdtune.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="length of each page's `training` phase")
    parser.add_argument("--quiet-seconds", type=float, default=30, help="length of each page's `quiet` phase")
    parser.add_argument("--only", choices=["up", "baseline"], help="measure one set-up only")
    parser.add_argument("--pages", type=lambda text: text.split(","), default=list(PAGES),
                        help=f"the pages to visit, in this order, comma-separated (default: {','.join(PAGES)}); "
                             "a page's cost can depend on what an earlier one imported into the app process")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs Crowdtune (see above)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data folders, logs and a screenshot of each page under benchmarks/out/")
    args = parser.parse_args()
    unknown = sorted(set(args.pages) - set(PAGES))
    if unknown:
        raise SystemExit(f"unknown page(s) {unknown}; choose from {', '.join(PAGES)}")
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    out = ROOT / "benchmarks" / "out" / f"dashboard-idle-{os.getpid()}"
    load_before = os.getloadavg()
    modes = [args.only] if args.only else ["up", "baseline"]
    try:
        results = {mode: measure_mode(mode, args.seconds, args.quiet_seconds, out, args.python, args.keep, args.pages)
                   for mode in modes}
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    ratios = {}
    if len(results) == 2:
        ratios = {page: {phase: round(results["baseline"][page][phase] / max(value, 0.01), 1)
                         for phase, value in phases.items()} for page, phases in results["up"].items()}
    quiet_up = [phases.get("quiet") for phases in results.get("up", {}).values() if "quiet" in phases]
    print(json.dumps({
        "cpu_seconds_per_minute": results, "baseline_over_up": ratios,
        "goal_quiet_under_3": bool(quiet_up) and max(quiet_up) < 3,
        "pages": args.pages, "seconds": args.seconds, "quiet_seconds": args.quiet_seconds, "python": args.python,
        "cores": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
