"""Dispatch latency and store write throughput.

Prints figures, then a JSON last line:
  preloaded_median_s / plain_median_s: median time from enqueue until the job has torch,
      transformers, peft and Lightning and can start real work (jobs.system.probe_worker's ready_at),
      with Crowdtune's PreloadedWorker and with a plain `rq worker`, measured in the same run;
  speedup: plain / preloaded;
  store_rows_per_s: rows applied per second by the single store writer with 3 concurrent producers.

Usage: .venv/bin/python benchmarks/dispatch.py [--preloaded-jobs 15] [--plain-jobs 5] [--batches 60 --rows 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crowdtune.testing.processes import wait_for  # noqa: E402 - after the checkout is on sys.path


def measure_dispatch(conn, worker_args: list[str], jobs: int, env: dict, log: Path) -> list[float]:
    from rq import Worker

    from crowdtune.runtime.queues import enqueue

    before = {w.name for w in Worker.all(connection=conn)}
    proc = subprocess.Popen(worker_args, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)
    try:
        wait_for(lambda: len({w.name for w in Worker.all(connection=conn)} - before) == 1,
                 timeout=120, interval=0.01, message="the worker")
        latencies = []
        for _ in range(jobs + 1):  # the first job warms the worker's own connections; not counted
            enqueued = time.time()
            job = enqueue(conn, "default", "jobs.system.probe_worker")
            wait_for(lambda job=job: job.get_status(refresh=True).value in ("finished", "failed"),
                     timeout=300, interval=0.01, message="a probe job")
            result = job.latest_result()
            if result is None or result.return_value is None:
                raise SystemExit(f"probe job failed: {result.exc_string if result else '?'}")
            latencies.append(result.return_value["ready_at"] - enqueued)
        return latencies[1:]
    finally:
        proc.kill()
        proc.wait()


PRODUCER = textwrap.dedent("""
    import sys
    from crowdtune.runtime.queues import connect
    from crowdtune.settings import load_settings
    from crowdtune.store.writes import StoreWriter
    name, batches, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    writer = StoreWriter(connect(load_settings()))
    for b in range(batches):
        writer.insert("metrics", [{"run_id": name, "name": "loss", "step": b * rows + i, "value": i * 0.5}
                                  for i in range(rows)])
""")


def measure_store(settings, conn, batches: int, rows: int, env: dict, log: Path) -> dict:
    from crowdtune.store.reads import StoreReader
    from crowdtune.store.writer import initialise

    initialise(settings.store_path)
    writer = subprocess.Popen([sys.executable, "-m", "crowdtune.cli", "worker", "--store"], env=env,
                              stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        reader = StoreReader(settings.store_path)
        expected = 3 * batches * rows
        start = time.time()
        producers = [subprocess.Popen([sys.executable, "-c", PRODUCER, f"p{i}", str(batches), str(rows)], env=env)
                     for i in range(3)]
        for p in producers:
            p.wait()
        wait_for(lambda: reader.scalar("SELECT count(*) FROM metrics") == expected,
                 timeout=600, interval=0.01, message="all rows")
        elapsed = time.time() - start
        return {"rows": expected, "seconds": round(elapsed, 2), "rows_per_s": round(expected / elapsed, 1),
                "batches_per_s": round(3 * batches / elapsed, 1)}
    finally:
        writer.kill()
        writer.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preloaded-jobs", type=int, default=15)
    parser.add_argument("--plain-jobs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--rows", type=int, default=100)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ct-dispatch-"))
    env = {**os.environ, "CROWDTUNE_DATA_DIR": str(tmp / "data"), "CROWDTUNE_CONFIG": str(tmp / "none.toml")}
    os.environ.update(env)
    from crowdtune.runtime.queues import connect, redis_url
    from crowdtune.runtime.redis_server import EmbeddedRedis
    from crowdtune.settings import load_settings

    settings = load_settings()
    server = EmbeddedRedis(settings.redis_dir)
    server.start()
    try:
        conn = connect(settings)
        preloaded = measure_dispatch(conn, [sys.executable, "-m", "crowdtune.cli", "worker", "--queues", "default"],
                                     args.preloaded_jobs, env, tmp / "preloaded.log")
        plain = measure_dispatch(conn, [str(Path(sys.executable).parent / "rq"), "worker", "-u", redis_url(settings),
                                        "-S", "json", "default"], args.plain_jobs, env, tmp / "plain.log")
        store = measure_store(settings, conn, args.batches, args.rows, env, tmp / "store.log")
    finally:
        server.stop()

    pre_median, plain_median = statistics.median(preloaded), statistics.median(plain)
    print(f"preloaded worker: median {pre_median:.3f} s over {len(preloaded)} jobs "
          f"(min {min(preloaded):.3f}, max {max(preloaded):.3f})")
    print(f"plain rq worker:  median {plain_median:.3f} s over {len(plain)} jobs "
          f"(min {min(plain):.3f}, max {max(plain):.3f})")
    print(f"store: {store['rows']} rows in {store['seconds']} s from 3 producers = {store['rows_per_s']} rows/s")
    print(json.dumps({
        "preloaded_median_s": round(pre_median, 4),
        "plain_median_s": round(plain_median, 4),
        "speedup": round(plain_median / pre_median, 1),
        "goal_met": pre_median < 0.3 and plain_median / pre_median >= 10,
        "store_rows_per_s": store["rows_per_s"],
        "store_batches_per_s": store["batches_per_s"],
        "store_rows": store["rows"],
    }))


if __name__ == "__main__":
    main()
