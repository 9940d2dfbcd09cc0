"""Soak: the whole system under load for a while, with faults injected on a schedule, then an exact
accounting of what it did. Nothing may be lost and nothing doubled.

Real parts, as `crowdtune up` runs them: the embedded Redis, the store writer and several workers
as `crowdtune worker` processes, a dashboard process rendering pages (Streamlit's AppTest, the
same code path as a browser session), and the online loop on a sandbox face with an accelerated
audience (an audience hour in two wall seconds), publishing posts written by a tiny GPT-2 and
training it with RL updates. The soak is the supervisor: it restarts any process that exits, as
`crowdtune up` does.

Faults, one at a time, every `--fault-every` seconds (kinds in a seeded round-robin, so a short
run sees every kind):
    kill_worker        SIGKILL a random worker (or the store writer) with its job, then restart it
    kill_redis         SIGKILL the Redis server, then start it again (its append-only file persists)
    hold_store         an outside read-only DuckDB session holds the store file (`--hold-seconds`)
    read_only_artifacts  the artifact folder becomes read-only (`--read-only-seconds`); as root the
                       workers run without CAP_DAC_OVERRIDE so that permission bits bind them
A fault is survived when the loop publishes again (or completes an update) after it ended, before
the soak ends (no fault starts in the last minute, or quarter of a short soak); one that is not,
stalled the loop (`stalled_s`). If a fault left the online run paused (an update failed on the
read-only disk), the soak applies the documented recovery, stop and start the run, and counts that
as survived with one command.

Every `--sample-every` seconds it samples the memory of every process (psutil: RSS, and PSS of a
worker with its job and scheduler children, which share pages) and of Redis (INFO used_memory and
its key count), and prints figures. When the soak ends (before the loop is stopped) it also weighs
what Redis holds by kind of job (MEMORY USAGE of each job hash and its results): `redis` in the JSON.
Redis keeps an applied store write for `store_result_ttl_seconds` (10 minutes); a short soak can
shrink it with `--store-result-ttl` so that the steady state shows within the run.
At the end it stops the loop, waits for the state to settle (controller IDLE, posts scored, the
store queue drained) and runs the exact accounting of crowdtune.testing.accounting: generated =
published + rejected + failed, every published post has reaction snapshots, every model version
loads, the sandbox's posts are exactly the published rows, no duplicate keys.

    .venv/bin/python benchmarks/soak.py --minutes 3 --fault-every 25     # a quick proof
    .venv/bin/python benchmarks/soak.py                                   # 30 minutes
    .venv/bin/python benchmarks/soak.py --minutes 6 --kinds hold_store --fault-every 75   # minute-long holds
    .venv/bin/python benchmarks/soak.py --minutes 3 --kinds none --store-result-ttl 60   # Redis memory only

Prints figures as it goes and a JSON last line. Exit status: 1 if anything was lost or doubled,
2 if the accounting found another problem (e.g. a post stuck in `publishing`), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


for _name, _value in {"OMP_NUM_THREADS": "1", "CROWDTUNE_TORCH_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                      "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}.items():
    os.environ.setdefault(_name, _value)

FAULT_KINDS = ("kill_worker", "kill_redis", "hold_store", "read_only_artifacts")

# An outside read-only session, like a user's `duckdb -readonly`, who retries until the store
# writer lets go of the file for a moment (the writer opens it per batch).
PERSISTENT_HOLDER = """
import sys, time, duckdb
deadline = time.monotonic() + 30
while True:
    try:
        con = duckdb.connect(sys.argv[1], read_only=True)
        break
    except duckdb.IOException:
        if time.monotonic() > deadline:
            print("gave up", flush=True)
            sys.exit(0)
        time.sleep(0.05)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""
MB = 1024 * 1024


def redis_figures(conn, weigh: bool = False) -> dict:
    """Redis's memory (INFO used_memory) and key count; with `weigh`, also the bytes and count of the job
    hashes (rq:job:*) with their results (rq:results:*) by what the jobs are (the first two words of
    their description: "store write", "store read", "publish post" ...), and of the other keys by prefix."""
    info = conn.info("memory")
    figures = {"used_memory_mb": round(info["used_memory"] / MB, 2), "keys": conn.dbsize()}
    if not weigh:
        return figures
    jobs = [k for k in conn.scan_iter(match="rq:job:*", count=1000) if k.count(b":") == 2]
    pipe = conn.pipeline(transaction=False)
    for key in jobs:
        pipe.hget(key, "description")
        pipe.memory_usage(key)
        pipe.memory_usage(b"rq:results:" + key[len(b"rq:job:"):])
    answers = pipe.execute()
    by_kind: dict[str, dict] = {}
    for i in range(len(jobs)):
        description, job_bytes, result_bytes = answers[3 * i: 3 * i + 3]
        what = " ".join((description or b"?").decode(errors="replace").split()[:2])
        row = by_kind.setdefault(what, {"jobs": 0, "mb": 0.0})
        row["jobs"] += 1
        row["mb"] += ((job_bytes or 0) + (result_bytes or 0)) / MB
    other: dict[str, dict] = {}
    for key in conn.scan_iter(count=1000):
        if key.startswith((b"rq:job:", b"rq:results:")) and key.count(b":") == 2:
            continue
        prefix = b":".join(key.split(b":")[:2]).decode(errors="replace")
        row = other.setdefault(prefix, {"keys": 0, "mb": 0.0})
        row["keys"] += 1
        row["mb"] += (conn.memory_usage(key) or 0) / MB
    def heaviest(rows: dict, n: int) -> dict:
        ranked = sorted(rows.items(), key=lambda kv: -kv[1]["mb"])[:n]
        return {name: {**row, "mb": round(row["mb"], 3)} for name, row in ranked}

    return {**figures, "jobs": len(jobs), "job_mb_by_kind": heaviest(by_kind, 20), "other_keys": heaviest(other, 12)}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Processes


@dataclass
class Role:
    """One supervised process (restarted whenever it exits) and its memory over time."""

    name: str
    args: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    refused: int = 0          # starts that exited within seconds (e.g. the store lease still held)
    down_since: float | None = None
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # (t, pid, RSS, PSS of the tree)


class Supervisor:
    def __init__(self, work: Path, env: dict[str, str], drop_dac_override: bool):
        self.work, self.env, self.drop = work, env, drop_dac_override
        self.roles: dict[str, Role] = {}
        (work / "logs").mkdir(parents=True, exist_ok=True)

    def add(self, name: str, args: list[str]) -> Role:
        role = self.roles[name] = Role(name, args)
        self.spawn(role)
        return role

    def spawn(self, role: Role) -> None:
        from crowdtune.testing.faults import drop_dac_override

        with open(self.work / "logs" / f"{role.name}.log", "ab") as out:
            role.process = subprocess.Popen(role.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self.env, cwd=ROOT, start_new_session=True,
                                            preexec_fn=drop_dac_override if self.drop else None)
        role.started_at = time.monotonic()
        role.down_since = None

    def kill(self, role: Role) -> None:
        from crowdtune.testing.processes import kill_tree

        if role.process is not None:
            kill_tree(role.process.pid)
            role.process.wait()

    def watch(self) -> list[str]:
        """Restart processes that exited (after a second, as `crowdtune up` does); return their names."""
        restarted = []
        now = time.monotonic()
        for role in self.roles.values():
            if role.process is None or role.process.poll() is None:
                continue
            if role.down_since is None:
                role.down_since = now
                if now - role.started_at < 15:
                    role.refused += 1
                continue
            if now - role.down_since >= 1.0:
                role.restarts += 1
                self.spawn(role)
                restarted.append(role.name)
        return restarted

    def sample(self, extra: dict[str, int]) -> None:
        """RSS of each process, and the PSS of it with its children (a job being run, the RQ scheduler):
        forked children share most pages with their parent, which PSS counts once."""
        import psutil

        t = time.monotonic()
        pids = {name: role.process.pid for name, role in self.roles.items()
                if role.process is not None and role.process.poll() is None}
        pids.update(extra)
        for name, pid in pids.items():
            try:
                proc = psutil.Process(pid)
                main = proc.memory_info().rss
                children = [] if name in extra else proc.children(recursive=True)
                tree = sum(p.memory_full_info().pss for p in [proc, *children])
            except psutil.Error:
                continue
            role = self.roles.setdefault(name, Role(name, []))
            role.samples.append((t, pid, main, tree))

    def stop_all(self) -> None:
        import psutil

        procs = []
        for role in self.roles.values():
            if role.process is not None and role.process.poll() is None:
                try:
                    proc = psutil.Process(role.process.pid)
                    procs += [proc, *proc.children(recursive=True)]
                    proc.send_signal(signal.SIGTERM)
                except psutil.Error:
                    pass
        _, alive = psutil.wait_procs(procs, timeout=15)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        for role in self.roles.values():
            if role.process is not None:
                try:
                    role.process.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    pass


def memory_figures(role: Role) -> dict:
    """Peak memory (PSS of the process with its job/scheduler children), and the growth of its
    longest-lived incarnation: median RSS of the main process over the last third of its life minus
    over the first third (None when it lived less than a minute)."""
    if not role.samples:
        return {}
    peak = max(s[3] for s in role.samples) / MB
    by_pid: dict[int, list[tuple[float, int]]] = {}
    for t, pid, main, _ in role.samples:
        by_pid.setdefault(pid, []).append((t, main))
    longest = max(by_pid.values(), key=lambda rows: rows[-1][0] - rows[0][0])
    span = longest[-1][0] - longest[0][0]
    growth = None
    if len(longest) >= 6 and span >= 60:
        third = len(longest) // 3
        first, last = longest[:third], longest[-third:]
        growth = (statistics.median(m for _, m in last) - statistics.median(m for _, m in first)) / MB
    return {"peak_mb": round(peak, 1), "last_mb": round(role.samples[-1][3] / MB, 1),
            "peak_rss_mb": round(max(s[2] for s in role.samples) / MB, 1),
            "growth_mb": None if growth is None else round(growth, 1), "growth_span_s": round(span),
            "incarnations": len(by_pid), "restarts": role.restarts, "refused_starts": role.refused}


# --------------------------------------------------------------------------------------------
# The dashboard: pages rendered in their own process, as a browser session would run them


def dashboard_loop(interval: float, out: Path) -> None:
    from streamlit.testing.v1 import AppTest

    pages = ["pages/posts.py", "pages/metrics.py", "pages/training.py", "pages/system.py"]
    i = 0
    while True:
        started = time.monotonic()
        errors: list[str] = []
        try:
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
            at.run()  # the Overview, the default page
            errors += [str(e.value)[:300] for e in at.exception]
            at.switch_page(pages[i % len(pages)])
            at.run()
            errors += [str(e.value)[:300] for e in at.exception]
        except Exception as exc:  # noqa: BLE001 - a render that raises is what we count
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
        with open(out, "a") as f:
            f.write(json.dumps({"at": time.time(), "page": pages[i % len(pages)],
                                "seconds": time.monotonic() - started, "errors": errors}) + "\n")
        i += 1
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def dashboard_figures(path: Path) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    seconds = [r["seconds"] for r in rows]
    errors = [e for r in rows for e in r["errors"]]
    return {"renders": len(rows), "errors": len(errors), "first_errors": errors[:3],
            "median_s": round(statistics.median(seconds), 2) if seconds else None,
            "max_s": round(max(seconds), 2) if seconds else None}


# --------------------------------------------------------------------------------------------
# The soak


@dataclass
class Fault:
    kind: str
    target: str
    started: float
    ends: float
    ended: float | None = None
    progress_mark: tuple[int, int] = (0, 0)   # (published, updates) when it ended
    survived: str | None = None               # "by itself" | "with one command"
    needed_command: bool = False              # the run had to be stopped and started again
    stalled_s: float | None = None            # no progress from its end until the soak ended
    recovery_s: float | None = None
    holder: subprocess.Popen | None = None


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="crowdtune-soak-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.data = self.work / "data"
        self.faults: list[Fault] = []
        self.active: Fault | None = None
        self.next_fault_at = 0.0
        self.kinds: list[str] = []
        self.operator_actions = 0
        self.redis = None
        self.sup: Supervisor | None = None
        self.conn = None
        self.run_ids: list[str] = []
        self.last_figures: dict = {}
        self.redis_samples: list[dict] = []  # {"t": seconds into the soak, "used_memory_mb", "keys"}

    # set-up ---------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """Point this process and every child at the soak's own data folder and embedded Redis."""
        for name in ("REDIS_URL", "CROWDTUNE_REDIS_URL", "CROWDTUNE_DB_PATH", "CROWDTUNE_ARTIFACTS_URL"):
            os.environ.pop(name, None)
        os.environ.update({"CROWDTUNE_DATA_DIR": str(self.data), "CROWDTUNE_CONFIG": str(self.work / "crowdtune.toml"),
                           "CROWDTUNE_WORKER_MAINTENANCE_SECONDS": "5"})
        if self.args.store_result_ttl is not None:
            os.environ["CROWDTUNE_STORE_RESULT_TTL_SECONDS"] = str(self.args.store_result_ttl)
        return dict(os.environ)

    def worker_command(self, *args: str) -> list[str]:
        script = Path(sys.executable).parent / "crowdtune"
        if script.exists():
            return [str(script), "worker", *args]
        return [sys.executable, "-m", "crowdtune.cli", "worker", *args]

    def set_up(self) -> None:
        import torch

        torch.set_num_threads(1)
        from crowdtune.runtime.queues import connect
        from crowdtune.runtime.redis_server import EmbeddedRedis
        from crowdtune.settings import load_settings
        from crowdtune.testing.faults import permissions_bind
        from crowdtune.testing.sandbox_run import add_face, build_tiny_base, real_tweets

        env = self.environment()
        self.settings = load_settings()
        posts = real_tweets()
        self.model_dir = self.work / "tiny-model"
        if not (self.model_dir / "config.json").is_file():
            log("building the tiny model ...")
            build_tiny_base(self.model_dir, posts)
        self.sandbox_dir = self.work / "sandbox"
        probe = self.work / "probe"
        probe.mkdir(exist_ok=True)
        drop = permissions_bind(probe)
        if not drop:
            log("note: cannot start processes bound by permission bits; read_only_artifacts faults are skipped")
        self.kinds_allowed = [k for k in self.args.kinds.split(",")
                              if k != "none" and (k != "read_only_artifacts" or drop)]
        self.redis = EmbeddedRedis(self.settings.redis_dir)
        self.redis.start()
        self.conn = connect(self.settings)
        add_face(self.settings, str(self.sandbox_dir), posts[2000:2000 + self.args.history])
        Path(self.settings.artifacts).mkdir(parents=True, exist_ok=True)
        self.sup = Supervisor(self.work, env, drop)
        self.sup.add("store-worker", self.worker_command("--store"))
        for i in range(self.args.workers):
            queues = "train,default" if i % 2 == 0 else "control,default"
            self.sup.add(f"worker-{i + 1}", self.worker_command("--queues", queues))
        self.sup.add("dashboard", [sys.executable, str(Path(__file__).resolve()), "--dashboard-loop",
                                   "--dashboard-every", str(self.args.dashboard_every),
                                   "--work", str(self.work)])
        log(f"work folder {self.work}; {self.args.workers} workers + store writer + dashboard; waiting for workers")
        from rq import Worker

        deadline = time.monotonic() + 180
        while len(Worker.all(connection=self.conn)) < self.args.workers + 1 and time.monotonic() < deadline:
            time.sleep(0.5)

    def online_config(self) -> dict:
        from crowdtune.testing.sandbox_run import online_config

        return online_config(str(self.model_dir), posts_per_update=self.args.posts_per_update, seed=self.args.seed)

    def start_online(self) -> str:
        from crowdtune import actions
        from crowdtune.testing.sandbox_run import FACE

        run_id = actions.start_online(self.conn, FACE, self.online_config())
        self.run_ids.append(run_id)
        return run_id

    # figures --------------------------------------------------------------------------------

    def reader(self):
        from crowdtune.store.reads import StoreReader

        return StoreReader(self.settings.store_path, wait_seconds=30)

    def figures(self) -> dict:
        """Quick counts for progress lines (the full accounting runs at the end)."""
        try:
            rows = self.reader().rows("""
                SELECT (SELECT count(*) FROM posts WHERE origin = 'generated' AND status <> 'candidate'),
                       (SELECT count(*) FROM posts WHERE status = 'published'),
                       (SELECT count(*) FROM reaction_snapshots),
                       (SELECT count(*) FROM online_updates WHERE status = 'completed'),
                       (SELECT count(*) FROM model_versions),
                       (SELECT count(*) FROM applied_writes),
                       (SELECT coalesce(sum(row_count), 0) FROM applied_writes),
                       (SELECT max(paused_reason) FROM controllers)""")
        except Exception as exc:  # noqa: BLE001 - the store may be held right now
            return {**self.last_figures, "stale": f"{type(exc).__name__}"}
        keys = ("generated", "published", "reactions", "updates", "versions", "batches", "rows_written", "paused")
        self.last_figures = dict(zip(keys, rows[0], strict=True))
        return self.last_figures

    def queues(self) -> dict:
        from crowdtune.runtime.queues import ALL_QUEUES, queue

        try:
            return {name: queue(name, self.conn).count for name in ALL_QUEUES}
        except Exception:  # noqa: BLE001 - Redis may be down right now
            return {}

    # faults ---------------------------------------------------------------------------------

    def next_kind(self) -> str:
        if not self.kinds:
            self.kinds = list(self.kinds_allowed)
            self.rng.shuffle(self.kinds)
        return self.kinds.pop()

    def inject(self, now: float) -> None:
        kind = self.next_kind()
        fault = Fault(kind, "", now, now)
        if kind == "kill_worker":
            role = self.rng.choice([r for n, r in self.sup.roles.items() if "worker" in n and r.process is not None])
            fault.target = role.name
            self.sup.kill(role)          # the supervisor loop restarts it
            fault.ends = now + 1.0
        elif kind == "kill_redis":
            fault.target = "redis"
            self.redis.kill()
            time.sleep(1.0)
            self.redis.start()
            fault.ends = time.monotonic()
        elif kind == "hold_store":
            seconds = min(self.args.hold_seconds, 0.8 * self.args.fault_every)
            fault.target = f"{seconds:.0f} s"
            fault.holder = subprocess.Popen([sys.executable, "-c", PERSISTENT_HOLDER, str(self.settings.store_path),
                                             str(seconds)], stdout=subprocess.PIPE, env=self.sup.env)
            if fault.holder.stdout.readline().strip() != b"holding":
                # the writer had the file for all of the holder's tries: nothing was held, so no fault
                log("hold_store: the outside session never got the file; not counted as a fault")
                fault.holder.wait()
                self.active = None
                return
            fault.ends = time.monotonic() + seconds
        elif kind == "read_only_artifacts":
            from crowdtune.testing.faults import set_read_only

            seconds = min(self.args.read_only_seconds, 0.8 * self.args.fault_every)
            fault.target = f"{seconds:.0f} s"
            set_read_only(Path(self.settings.artifacts), True)
            fault.ends = now + seconds
        self.faults.append(fault)
        self.active = fault
        log(f"FAULT {len(self.faults)}: {kind} {fault.target}")

    def end_active(self, now: float, figures: dict) -> None:
        fault = self.active
        if fault.kind == "hold_store" and fault.holder is not None:
            fault.holder.wait(timeout=60)
        if fault.kind == "read_only_artifacts":
            from crowdtune.testing.faults import set_read_only

            set_read_only(Path(self.settings.artifacts), False)
        fault.ended = now
        fault.progress_mark = (figures.get("published", 0), figures.get("updates", 0))
        self.active = None
        self.next_fault_at = now + self.args.fault_every * self.rng.uniform(0.8, 1.2)
        log(f"fault {len(self.faults)} ({fault.kind}) over")

    def check_recoveries(self, now: float, figures: dict, act: bool = True) -> None:
        progress = (figures.get("published", 0), figures.get("updates", 0))
        for fault in self.faults:
            if fault.ended is None or fault.survived is not None:
                continue
            if progress[0] > fault.progress_mark[0] or progress[1] > fault.progress_mark[1]:
                fault.survived = "with one command" if fault.needed_command else "by itself"
                fault.recovery_s = round(now - fault.ended, 1)
                log(f"fault {self.faults.index(fault) + 1} ({fault.kind}) survived {fault.survived} "
                    f"after {fault.recovery_s} s")
        paused = figures.get("paused")
        recent = self.faults[-1] if self.faults else None
        if act and paused and self.active is None and recent is not None and recent.survived is None:
            # The documented recovery of a paused run (the alert says so): stop it and start it again.
            from crowdtune import actions
            from crowdtune.testing.sandbox_run import FACE

            log(f"the online run is paused ({paused[:120]}); stopping and starting it again")
            try:
                actions.stop_online(self.conn, FACE)
                self.wait_idle(timeout=240)
                self.start_online()
                self.operator_actions += 1
                for fault in self.faults:
                    if fault.survived is None:
                        fault.needed_command = True
            except Exception as exc:  # noqa: BLE001
                log(f"could not restart the online run: {type(exc).__name__}: {exc}")

    def wait_idle(self, timeout: float) -> bool:
        from crowdtune.testing.sandbox_run import FACE

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sup.watch()
            try:
                if self.reader().scalar("SELECT state FROM controllers WHERE face_id = ?", [FACE]) == "IDLE":
                    return True
            except Exception:  # noqa: BLE001
                pass
            time.sleep(1)
        return False

    # the run --------------------------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        self.set_up()
        run_id = self.start_online()
        log(f"online run {run_id} started")
        t0 = self.t0 = time.monotonic()
        setup_s = t0 - started
        until = t0 + self.args.minutes * 60
        self.next_fault_at = t0 + min(self.args.fault_every, 30)
        # No new fault in the last stretch, so that the last ones can show whether the loop recovers.
        last_fault_at = until - min(60.0, self.args.minutes * 60 / 4)
        next_sample = next_print = t0
        first_batches = None
        while time.monotonic() < until:
            now = time.monotonic()
            for name in self.sup.watch():
                log(f"restarted {name}")
            if now >= next_sample:
                redis_pid = {"redis": self.redis.process.pid} if self.redis.process else {}
                self.sup.sample({"soak": os.getpid(), **redis_pid})
                try:
                    self.redis_samples.append({"t": round(now - t0), **redis_figures(self.conn)})
                except Exception:  # noqa: BLE001 - Redis may be down right now (a kill_redis fault)
                    pass
                figures = self.figures()
                if first_batches is None and "batches" in figures:
                    first_batches = (figures["rows_written"], figures["batches"])
                self.check_recoveries(now, figures)
                next_sample = now + self.args.sample_every
            if self.active is not None and now >= self.active.ends:
                self.end_active(now, self.figures())
            elif self.active is None and self.kinds_allowed and self.next_fault_at <= now <= last_fault_at:
                self.inject(now)
            if now >= next_print:
                f = self.last_figures
                recent = [r.samples[-1] for r in self.sup.roles.values() if r.samples and r.samples[-1][0] >= now - 10]
                pss = sum(sample[3] for sample in recent) / MB
                log(f"{(now - t0) / 60:5.1f} min: posts {f.get('published', 0)}/{f.get('generated', 0)} published, "
                    f"{f.get('reactions', 0)} reactions, {f.get('updates', 0)} updates, "
                    f"{f.get('versions', 0)} versions, {f.get('batches', 0)} batches; queues {self.queues()}; "
                    f"faults {len(self.faults)}; memory {pss:.0f} MB; redis "
                    f"{(self.redis_samples or [{}])[-1].get('used_memory_mb')} MB, "
                    f"{(self.redis_samples or [{}])[-1].get('keys')} keys")
                next_print = now + self.args.print_every
            time.sleep(0.2)
        if self.active is not None:
            self.end_active(time.monotonic(), self.figures())
        soak_s = time.monotonic() - t0
        return self.finish(soak_s, setup_s, first_batches)

    def finish(self, soak_s: float, setup_s: float, first_batches) -> int:
        from crowdtune import actions
        from crowdtune.testing.accounting import account, store_settled
        from crowdtune.testing.sandbox_run import FACE

        end_figures = self.figures()
        t_end = time.monotonic()
        try:
            redis_end = redis_figures(self.conn, weigh=True)
        except Exception as exc:  # noqa: BLE001
            redis_end = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"redis at the end: {redis_end.get('used_memory_mb')} MB, {redis_end.get('keys')} keys; "
            f"job hashes by kind: {json.dumps(redis_end.get('job_mb_by_kind'))}")
        self.check_recoveries(t_end, end_figures, act=False)
        log("stopping the online loop and waiting for the state to settle ...")
        settled, notes = True, []
        try:
            actions.stop_online(self.conn, FACE)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"stop_online: {type(exc).__name__}: {exc}")
        if not self.wait_idle(timeout=self.args.settle_seconds):
            settled = False
            notes.append("the controller did not go IDLE")
        deadline = time.monotonic() + self.args.settle_seconds
        while time.monotonic() < deadline:
            self.sup.watch()
            try:
                unscored = self.reader().scalar("SELECT count(*) FROM posts "
                                                "WHERE status IN ('published', 'publishing') "
                                                "AND score IS NULL AND origin = 'generated'")
                if unscored == 0 and store_settled(self.conn):
                    break
            except Exception:  # noqa: BLE001
                pass
            time.sleep(1)
        else:
            settled = False
            notes.append("posts still unscored or store writes pending")
        for fault in self.faults:  # no progress seen after it, until the loop was stopped: it stalled the loop
            if fault.survived is None and fault.ended is not None:
                fault.stalled_s = round(t_end - fault.ended, 1)
        figures = account(self.settings, load_versions=True)
        failed = {}
        try:
            from rq.registry import FailedJobRegistry

            from crowdtune.runtime.queues import ALL_QUEUES, queue

            failed = {name: FailedJobRegistry(queue=queue(name, self.conn)).count for name in ALL_QUEUES}
        except Exception:  # noqa: BLE001
            pass
        reader = self.reader()
        alerts = [r[0] for r in reader.rows("SELECT alert_id FROM alerts ORDER BY created_at")]
        total_rows, total_batches = reader.rows("SELECT coalesce(sum(row_count), 0), count(*) FROM applied_writes")[0]
        rows_written = total_rows - (first_batches[0] if first_batches else 0)
        batches_written = total_batches - (first_batches[1] if first_batches else 0)
        self.sup.stop_all()
        self.redis.stop()

        by_kind: dict[str, int] = {}
        recovery: dict[str, list[float]] = {}
        for fault in self.faults:
            by_kind[fault.kind] = by_kind.get(fault.kind, 0) + 1
            if fault.recovery_s is not None:
                recovery.setdefault(fault.kind, []).append(fault.recovery_s)
        memory = {name: memory_figures(role) for name, role in self.sup.roles.items() if role.samples}
        summary = {
            "benchmark": "soak", "minutes": self.args.minutes, "soak_seconds": round(soak_s),
            "setup_seconds": round(setup_s),
            "workers": self.args.workers, "seed": self.args.seed, "fault_every_s": self.args.fault_every,
            "time_acceleration": self.online_config()["time_acceleration"],
            "faults": by_kind, "faults_injected": len(self.faults),
            "faults_survived": sum(1 for f in self.faults if f.survived),
            "faults_survived_by_itself": sum(1 for f in self.faults if f.survived == "by itself"),
            "faults_survived_with_one_command": sum(1 for f in self.faults if f.survived == "with one command"),
            "recovery_seconds": {k: {"median": statistics.median(v), "max": max(v)} for k, v in recovery.items()},
            "fault_log": [{"kind": f.kind, "target": f.target, "at_s": round(f.started - self.t0),
                           "survived": f.survived, "recovery_s": f.recovery_s, "stalled_s": f.stalled_s}
                          for f in self.faults],
            "faults_not_survived": {k: sum(1 for f in self.faults if f.kind == k and not f.survived) for k in by_kind},
            "operator_actions": self.operator_actions, "online_runs": len(self.run_ids),
            "posts": figures["posts"], "sandbox_posts": figures["sandbox_posts"], "reactions": figures["reactions"],
            "observed_posts": figures["observed_posts"], "versions": figures["versions"], "updates": figures["updates"],
            "rows": figures["rows"], "rows_by_table": figures["rows_by_table"],
            "lost": figures["lost"], "duplicates": figures["duplicates"], "problems": figures["problems"],
            "settled": settled, "settle_notes": notes,
            "store_rows_per_s": round(rows_written / max(soak_s, 1), 1),
            "store_batches_per_s": round(batches_written / max(soak_s, 1), 2),
            "posts_per_min": round(end_figures.get("published", 0) / max(soak_s / 60, 1e-9), 1),
            "failed_jobs": failed, "alerts": len(alerts), "alert_kinds": sorted({a.split(":")[0] for a in alerts}),
            "dashboard": dashboard_figures(self.work / "dashboard.jsonl"),
            "peak_memory_mb": {k: v["peak_mb"] for k, v in memory.items()},
            "memory_growth_mb": {k: v["growth_mb"] for k, v in memory.items()},
            "memory": memory, "work": str(self.work),
            "redis": {**redis_end, "peak_used_memory_mb": max((r["used_memory_mb"] for r in self.redis_samples),
                                                              default=None),
                      "store_result_ttl": self.args.store_result_ttl, "timeline": self.redis_samples[::6]},
        }
        timeline = self.work / "memory.jsonl"
        with open(timeline, "w") as f:
            for name, role in self.sup.roles.items():
                for t, pid, main, tree in role.samples:
                    f.write(json.dumps({"role": name, "t": round(t, 1), "pid": pid, "rss_mb": round(main / MB, 1),
                                        "tree_mb": round(tree / MB, 1)}) + "\n")
        for name, m in memory.items():
            log(f"memory {name:13s} peak {m['peak_mb']:7.1f} MB, growth {m['growth_mb']} MB "
                f"over {m['growth_span_s']} s, {m['incarnations']} incarnation(s)")
        log(f"faults {by_kind}: {summary['faults_survived']}/{len(self.faults)} survived "
            f"({summary['faults_survived_with_one_command']} with one command); lost {figures['lost']}, "
            f"duplicates {figures['duplicates']}; settled {settled}")
        for problem in figures["problems"]:
            log(f"PROBLEM: {problem}")
        if self.args.out:
            Path(self.args.out).write_text(json.dumps(summary, indent=2, default=str))
        print(json.dumps(summary, default=str), flush=True)
        if not self.args.keep and not self.args.work and figures["lost"] == 0 and figures["duplicates"] == 0:
            shutil.rmtree(self.work, ignore_errors=True)
        if figures["lost"] or figures["duplicates"]:
            return 1
        return 2 if figures["problems"] or not settled else 0

    def abort(self) -> None:
        """Leave nothing running and nothing read-only."""
        if self.active is not None and self.active.kind == "read_only_artifacts":
            from crowdtune.testing.faults import set_read_only

            set_read_only(Path(self.settings.artifacts), False)
        if self.active is not None and self.active.holder is not None:
            self.active.holder.kill()
        if self.sup is not None:
            self.sup.stop_all()
        if self.redis is not None:
            self.redis.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=3,
                        help="workers besides the store writer (odd ones serve train,default)")
    parser.add_argument("--fault-every", type=float, default=60.0, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the summary JSON here")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (logs, store, memory.jsonl)")
    parser.add_argument("--hold-seconds", type=float, default=60.0,
                        help="how long hold_store holds the file (at most 0.8 x --fault-every)")
    parser.add_argument("--kinds", default=",".join(FAULT_KINDS),
                        help="fault kinds to inject, comma-separated; `none`: no faults")
    parser.add_argument("--read-only-seconds", type=float, default=30.0)
    parser.add_argument("--posts-per-update", type=int, default=3)
    parser.add_argument("--history", type=int, default=50,
                        help="imported posts of the sandbox face (what publishing and updates read as training posts)")
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--print-every", type=float, default=20.0)
    parser.add_argument("--dashboard-every", type=float, default=15.0)
    parser.add_argument("--settle-seconds", type=float, default=300.0)
    parser.add_argument("--store-result-ttl", type=int, default=None,
                        help="seconds Redis keeps an applied store write (the store_result_ttl_seconds setting)")
    parser.add_argument("--dashboard-loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = set(args.kinds.split(",")) - set(FAULT_KINDS) - {"none"}
    if unknown:
        parser.error(f"unknown fault kind(s) {sorted(unknown)}; choose among {', '.join(FAULT_KINDS)}")
    if args.dashboard_loop:
        dashboard_loop(args.dashboard_every, args.work / "dashboard.jsonl")
        return 0
    soak = Soak(args)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return soak.run()
    except BaseException:
        traceback.print_exc()
        soak.abort()
        return 3


if __name__ == "__main__":
    sys.exit(main())
