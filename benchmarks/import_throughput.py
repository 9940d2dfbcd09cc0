"""Import throughput: rows per second from a CSV file to rows queryable in the store.

Writes a CSV of --rows posts (id, text, created_at, likes, reposts), then measures in the same run:
  crowdtune: `actions.start_import` on a dataset face, through the real import worker and the single
      store worker (every row validated, batches through Redis, duplicates merged, scores), until
      the job has finished (which it does only once its rows are in the store) and the posts are
      counted in the store;
  plain: one DuckDB process doing `read_csv` + `INSERT` of the same file into the same schema
      (posts and their reaction snapshots), with no validation, queue or scoring: the floor.

Prints figures, then a JSON last line:
  rows, crowdtune_seconds, crowdtune_rows_per_s, plain_seconds, plain_rows_per_s, ratio (crowdtune s / plain s).

Usage: .venv/bin/python benchmarks/import_throughput.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crowdtune.testing.processes import wait_for  # noqa: E402 - after the checkout is on sys.path


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["id", "text", "created_at", "likes", "reposts"])
        for i in range(rows):
            out.writerow([i, f"post number {i}, about {'cats' if i % 2 else 'dogs'} " + "word " * 20,
                          f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00", i % 5000, i % 300])


def measure_crowdtune(settings, conn, path: Path, rows: int, env: dict, logs: Path) -> float:
    from crowdtune import actions
    from crowdtune.store.reads import StoreReader
    from crowdtune.store.writer import initialise

    initialise(settings.store_path)
    procs = [subprocess.Popen([sys.executable, "-m", "crowdtune.cli", "worker", *args], env=env, cwd=ROOT,
                              stdout=open(logs / f"worker-{n}.log", "wb"),  # noqa: SIM115 - held while it runs
                              stderr=subprocess.STDOUT)
             for n, args in enumerate([["--store"], ["--queues", "control,default"]])]
    try:
        from rq import Worker

        wait_for(lambda: len(Worker.all(connection=conn)) == 2, timeout=120, message="the workers")
        reader = StoreReader(settings.store_path)
        actions.save_face(conn, "bench", "dataset", {
            "source": str(path), "reaction_columns": {"likes": "likes", "reposts": "reposts"}})
        wait_for(lambda: reader.scalar("SELECT count(*) FROM faces WHERE face_id = 'bench'"),
                 timeout=60, message="the face")
        start = time.monotonic()
        job = actions.start_import(conn, "bench")
        wait_for(lambda: job.get_status(refresh=True).value in ("finished", "failed"),
                 timeout=3600, message="the import")
        if job.get_status().value != "finished":
            raise SystemExit(f"the import failed: {job.latest_result().exc_string}")
        wait_for(lambda: reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'bench'") == rows,
                 timeout=3600, message="all rows")
        elapsed = time.monotonic() - start
        result = job.latest_result().return_value
        print(f"crowdtune: {result['summary']}")
        return elapsed
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def measure_plain(path: Path, store: Path, rows: int) -> float:
    import duckdb

    from crowdtune.store.writer import initialise

    initialise(store)  # the same schema, empty
    start = time.monotonic()
    con = duckdb.connect(str(store))
    con.execute("BEGIN TRANSACTION")
    con.execute(f"CREATE TEMP TABLE src AS SELECT * FROM read_csv('{path}', header = true)")
    con.execute("""INSERT INTO posts (post_id, face_id, origin, status, platform_id, text, created_at)
                   SELECT 'plain:' || id, 'plain', 'imported', 'imported', id::VARCHAR, text, created_at FROM src""")
    con.execute("""INSERT INTO reaction_snapshots (post_id, observed_at, kind, count)
                   SELECT 'plain:' || id, now()::TIMESTAMP, 'likes', likes FROM src
                   UNION ALL SELECT 'plain:' || id, now()::TIMESTAMP, 'reposts', reposts FROM src""")
    con.execute("COMMIT")
    con.close()
    elapsed = time.monotonic() - start
    with duckdb.connect(str(store), read_only=True) as check:
        assert check.execute("SELECT count(*) FROM posts").fetchone()[0] == rows
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ct-import-"))
    env = {**os.environ, "CROWDTUNE_DATA_DIR": str(tmp / "data"), "CROWDTUNE_CONFIG": str(tmp / "none.toml")}
    os.environ.update(env)
    from crowdtune.runtime.queues import connect
    from crowdtune.runtime.redis_server import EmbeddedRedis
    from crowdtune.settings import load_settings

    path = tmp / "posts.csv"
    write_csv(path, args.rows)
    print(f"file: {args.rows:,} rows, {path.stat().st_size / 1e6:.1f} MB")
    settings = load_settings()
    server = EmbeddedRedis(settings.redis_dir)
    server.start()
    try:
        ours = measure_crowdtune(settings, connect(settings), path, args.rows, env, tmp)
    finally:
        server.stop()
    plain = measure_plain(path, tmp / "plain.duckdb", args.rows)

    print(f"crowdtune import: {ours:.1f} s = {args.rows / ours:,.0f} rows/s, file to queryable rows")
    print(f"plain read_csv + INSERT: {plain:.2f} s = {args.rows / plain:,.0f} rows/s")
    print(json.dumps({
        "rows": args.rows,
        "crowdtune_seconds": round(ours, 2),
        "crowdtune_rows_per_s": round(args.rows / ours, 1),
        "plain_seconds": round(plain, 3),
        "plain_rows_per_s": round(args.rows / plain, 1),
        "ratio": round(ours / plain, 1),
    }))


if __name__ == "__main__":
    main()
