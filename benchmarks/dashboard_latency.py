"""How long the Metrics and Posts views take to load and draw on a big store, against the naive way.

Fills a store (through the real writer) with 1,000,000 metric points (5 runs x 4 metrics x 50,000
steps) and 100,000 posts with 3 reaction snapshots each, then times, over several repetitions:

Both sides include serialising what the page hands to Streamlit (figure.to_json(), as
st.plotly_chart does; Arrow IPC for tables, as st.dataframe does), since that is part of the cost.

- metrics view: the page's code path (views.metric_catalog + views.metric_series, bucketed in
  DuckDB, + views.smooth + charts.metric_figure per metric) for every run and metric, against
  loading every point into pandas and plotting them all;
- posts view: views.count_posts + views.post_page (sorted, searched, one page in SQL) +
  views.reactions_over_age + charts.reactions_figure, against loading every post and snapshot into
  pandas, filtering, sorting and paging there.

    .venv/bin/python benchmarks/dashboard_latency.py [--repeat 15] [--keep DIR]

The last line is JSON: median and p95 seconds of each, and naive/view ratios.
Goal: p95 < 0.5 s and >= 10x faster than naive.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crowdtune.charts import metric_figure, reactions_figure  # noqa: E402
from crowdtune.store import views  # noqa: E402
from crowdtune.store.reads import StoreReader  # noqa: E402
from crowdtune.store.writer import apply_write, initialise  # noqa: E402

RUNS = [f"run-{i}" for i in range(5)]
METRICS = ["train_loss", "val_loss", "reward_mean", "copy_rate"]
STEPS = 50_000
POSTS = 100_000
START = dt.datetime(2026, 1, 1)


def fill(path: Path) -> None:
    """Write the metric points and posts in batches of 100-200k rows through the store writer."""
    initialise(path)
    batch = 0
    for run_index, run in enumerate(RUNS):
        for name in METRICS:
            rows = [{"run_id": run, "name": name, "step": step, "value": 3.0 / (1 + step / 1000) + run_index * 0.1
                     + (step % 17) * 0.01, "recorded_at": START + dt.timedelta(seconds=step * 2)}
                    for step in range(STEPS)]
            apply_write(path, f"bench-metrics-{batch}", [{"op": "insert", "table": "metrics", "rows": rows}], 60)
            batch += 1
    for chunk in range(0, POSTS, 50_000):
        posts, snapshots = [], []
        for i in range(chunk, chunk + 50_000):
            created = START + dt.timedelta(minutes=i)
            posts.append({"post_id": f"bench:{i}", "face_id": f"face-{i % 3}", "origin": "imported",
                          "status": "imported", "text": f"post {i} about {'cats' if i % 7 == 0 else 'news'}",
                          "url": f"https://example.org/{i}", "created_at": created, "score": (i * 7919 % 1000) / 100})
            for hours in (1, 6, 24):
                snapshots.append({"post_id": f"bench:{i}", "observed_at": created + dt.timedelta(hours=hours),
                                  "kind": "likes", "count": (i % 500) * hours, "age_seconds": hours * 3600})
        apply_write(path, f"bench-posts-{chunk}", [{"op": "insert", "table": "posts", "rows": posts},
                                                   {"op": "insert", "table": "reaction_snapshots", "rows": snapshots}],
                    60)


def table_bytes(frame: pd.DataFrame) -> int:
    """Serialise a table as st.dataframe does (Arrow IPC), the work a page pays to send it."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    table = pa.Table.from_pandas(frame)
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return sink.getvalue().size


def metrics_view(reader: StoreReader) -> int:
    catalog = views.metric_catalog(reader)
    runs, names = list(dict.fromkeys(catalog["run_id"])), sorted(set(catalog["name"]))
    series = views.smooth(views.metric_series(reader, runs, names), 0.6)
    figures = [metric_figure(series, name, "step", show_raw=True) for name in names]
    return sum(len(figure.to_json()) for figure in figures)


def metrics_naive(reader: StoreReader) -> int:
    frame = reader.frame("SELECT run_id, name, step, value, recorded_at FROM metrics")
    points = 0
    for name, of_metric in frame.groupby("name"):
        figure = go.Figure()
        for run_id, of_run in of_metric.groupby("run_id"):
            of_run = of_run.sort_values("step")
            smoothed = of_run["value"].ewm(alpha=0.4).mean()
            figure.add_trace(go.Scatter(x=of_run["step"], y=smoothed, mode="lines", name=run_id))
        points += len(figure.to_json())
    return points


def posts_view(reader: StoreReader) -> int:
    filters = views.PostFilters(face="face-1", text="cats")
    total = views.count_posts(reader, filters)
    page = views.post_page(reader, filters, "best", page=3, page_size=25)
    figure = reactions_figure(views.reactions_over_age(reader, page["post_id"].iloc[0]))
    return total + table_bytes(page) + len(figure.to_json())


def posts_naive(reader: StoreReader) -> int:
    posts = reader.frame("SELECT * FROM posts")
    snapshots = reader.frame("SELECT * FROM reaction_snapshots")
    chosen = posts[(posts["face_id"] == "face-1") & posts["text"].str.contains("cats", case=False)]
    page = chosen.sort_values("score", ascending=False).iloc[50:75]
    latest = snapshots.sort_values("observed_at").groupby(["post_id", "kind"]).tail(1)
    page = page.merge(latest.pivot(index="post_id", columns="kind", values="count"), left_on="post_id",
                      right_index=True, how="left")
    one = snapshots[snapshots["post_id"] == page["post_id"].iloc[0]].assign(age_hours=lambda f: f["age_seconds"] / 3600)
    figure = reactions_figure(one)
    # A page without SQL paging hands every matching post to st.dataframe.
    return len(chosen) + table_bytes(chosen) + len(figure.to_json())


def timed(function, reader: StoreReader, repeat: int) -> list[float]:
    function(reader)  # warm-up: imports, DuckDB's first open
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        function(reader)
        seconds.append(time.perf_counter() - started)
    return seconds


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--naive-repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="reuse/keep the filled store in this folder")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="crowdtune-bench-"))
    path = folder / "crowdtune.duckdb"
    if not path.exists():
        started = time.perf_counter()
        fill(path)
        print(f"filled {path} in {time.perf_counter() - started:.1f} s", flush=True)
    reader = StoreReader(path)
    sent = {"metrics": (metrics_view(reader), metrics_naive(reader)), "posts": (posts_view(reader), posts_naive(reader))}
    print(f"metrics view sends {sent['metrics'][0]:,} bytes of figures; naive {sent['metrics'][1]:,}", flush=True)
    result = {}
    for name, fast, naive in (("metrics", metrics_view, metrics_naive), ("posts", posts_view, posts_naive)):
        fast_times = timed(fast, reader, args.repeat)
        naive_times = timed(naive, reader, args.naive_repeat)
        result[name] = {
            "view_median_s": round(statistics.median(fast_times), 4), "view_p95_s": round(p95(fast_times), 4),
            "naive_median_s": round(statistics.median(naive_times), 4), "naive_p95_s": round(p95(naive_times), 4),
            "speedup_median": round(statistics.median(naive_times) / statistics.median(fast_times), 1),
            # What reaches the browser (and must be drawn there): figures' JSON / table bytes.
            "view_bytes": sent[name][0], "naive_bytes": sent[name][1],
        }
        print(f"{name}: view median {result[name]['view_median_s']:.3f} s, p95 {result[name]['view_p95_s']:.3f} s; "
              f"naive median {result[name]['naive_median_s']:.3f} s; {result[name]['speedup_median']}x", flush=True)
    result["goal_met"] = all(r["view_p95_s"] < 0.5 and r["speedup_median"] >= 10 for r in result.values())
    result["rows"] = {"metrics": len(RUNS) * len(METRICS) * STEPS, "posts": POSTS, "snapshots": POSTS * 3}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
