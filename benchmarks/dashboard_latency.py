"""How long the Metrics and Posts views take to load and draw on a big store, against the naive way.

Fills a store (through the real writer) with 1,000,000 metric points (5 runs x 4 metrics x 50,000
steps) and 100,000 posts with 3 reaction snapshots each, then times, over several repetitions:

- metrics view: what pages/metrics.py runs on a full run, for every run and metric: one read of the
  file (attached afresh each repetition, as on every page load; see store/connection.py) for
  views.metric_catalog (the series' summary rows) + views.metric_series (buckets merged from a level
  of the metrics rollup that the writer kept while filling), then views.smooth +
  charts.metric_figure per metric; against loading every point into pandas (one query) and plotting
  them all, each run's line smoothed;
- posts view: what pages/posts.py runs: one open for views.post_filter_choices + views.posts_page
  (count, one sorted and searched page in SQL with each post's latest reactions, which the writer
  keeps on the post, and the reaction snapshots of the page's first post), then
  charts.reactions_figure for that post; against loading every post and snapshot into pandas,
  filtering, sorting and paging there, and handing every matching post to st.dataframe.

Nothing is cached between repetitions: each one opens the file, reads and builds from scratch, as a
new browser session would on a store that may have changed.

Both sides include serialising what the page hands to Streamlit, the way Streamlit does it
(st.plotly_chart: plotly.tools.return_figure_from_figure_or_data + plotly.io.to_json; st.dataframe:
Arrow IPC), since that is part of the cost, with plotly's default template what it is in the app
(Streamlit's, set when streamlit.elements.plotly_chart is imported). What the browser then receives and must draw is
reported too (`*_bytes`, `*_points`): the naive metrics figures carry every point.

    .venv/bin/python benchmarks/dashboard_latency.py [--repeat 15] [--keep DIR]

Prints a breakdown of the views' stages, then as its last line JSON: median and p95 seconds of
each, naive/view ratios, bytes and points sent. Goal: p95 < 0.5 s and >= 10x faster than naive.
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
import plotly
import plotly.graph_objects as go
import plotly.io
import plotly.tools

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit.elements.plotly_chart  # noqa: E402,F401  (as in the app: plotly's default template is Streamlit's)

from crowdtune.dashboard.charts import metric_figure, reactions_figure  # noqa: E402
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


def chart_json(figure) -> str:
    """Serialise a figure as st.plotly_chart does (Streamlit 1.67: figure or dict in, JSON spec out)."""
    return plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(figure, validate_figure=True),
                             validate=False)


def points_of(figure: go.Figure) -> int:
    """How many x values the figure's traces carry (what the browser draws)."""
    return sum(len(trace.x) for trace in figure.data if trace.x is not None)


def metrics_read(reader: StoreReader) -> tuple[pd.DataFrame, list[str]]:
    with reader.session() as session:
        catalog = views.metric_catalog(session)
        runs, names = list(dict.fromkeys(catalog["run_id"])), sorted(set(catalog["name"]))
        return views.metric_series(session, runs, names, catalog=catalog), names


def metrics_figures(series: pd.DataFrame, names: list[str]) -> list[go.Figure]:
    series = views.smooth(series, 0.6)
    return [metric_figure(series, name, "step", show_raw=True) for name in names]


def metrics_view(reader: StoreReader) -> int:
    return sum(len(chart_json(figure)) for figure in metrics_figures(*metrics_read(reader)))


def metrics_naive_figures(reader: StoreReader) -> list[go.Figure]:
    frame = reader.frame("SELECT run_id, name, step, value, recorded_at FROM metrics")
    figures = []
    for _name, of_metric in frame.groupby("name"):
        figure = go.Figure()
        for run_id, of_run in of_metric.groupby("run_id"):
            of_run = of_run.sort_values("step")
            smoothed = of_run["value"].ewm(alpha=0.4).mean()
            figure.add_trace(go.Scatter(x=of_run["step"], y=smoothed, mode="lines", name=run_id))
        figures.append(figure)
    return figures


def metrics_naive(reader: StoreReader) -> int:
    return sum(len(chart_json(figure)) for figure in metrics_naive_figures(reader))


FILTERS = views.PostFilters(face="face-1", text="cats")


def posts_read(reader: StoreReader) -> tuple[int, pd.DataFrame, pd.DataFrame]:
    with reader.session() as session:
        views.post_filter_choices(session)
        shown = views.posts_page(session, FILTERS, "best", page=3, page_size=25)
    return shown.total, shown.posts, shown.reactions


def posts_view(reader: StoreReader) -> int:
    total, page, snapshots = posts_read(reader)
    return total + table_bytes(page) + len(chart_json(reactions_figure(snapshots)))


def posts_naive(reader: StoreReader) -> int:
    # Every column a user would get from SELECT * before schema 4 (not the view's derived latest_reactions).
    posts = reader.frame("SELECT * EXCLUDE (latest_reactions) FROM posts")
    snapshots = reader.frame("SELECT * FROM reaction_snapshots")
    chosen = posts[(posts["face_id"] == "face-1") & posts["text"].str.contains("cats", case=False)]
    page = chosen.sort_values("score", ascending=False).iloc[50:75]
    latest = snapshots.sort_values("observed_at").groupby(["post_id", "kind"]).tail(1)
    page = page.merge(latest.pivot(index="post_id", columns="kind", values="count"), left_on="post_id",
                      right_index=True, how="left")
    one = snapshots[snapshots["post_id"] == page["post_id"].iloc[0]].assign(age_hours=lambda f: f["age_seconds"] / 3600)
    figure = reactions_figure(one)
    # A page without SQL paging hands every matching post to st.dataframe.
    return len(chosen) + table_bytes(chosen) + len(chart_json(figure))


CHROMIUM = Path("/usr/bin/chromium")


def browser_draw_seconds(specs_by_side: dict[str, list[str]], repeat: int = 3) -> dict[str, float]:
    """Median seconds headless Chromium takes to parse and draw each side's figure specs with
    plotly.js (the bundle shipped with plotly.py), one chart element each, until the next paint.
    Transfer over the network is not included."""
    from playwright.sync_api import sync_playwright

    bundle = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    draw = """async (specs) => {
        const started = performance.now();
        for (const [index, text] of specs.entries()) {
            const spec = JSON.parse(text);
            const element = document.createElement("div");
            element.id = "chart" + index;
            element.style.width = "700px";
            document.body.appendChild(element);
            await Plotly.newPlot(element, spec.data, spec.layout);
        }
        await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
        const seconds = (performance.now() - started) / 1000;
        document.body.innerHTML = "";
        return seconds;
    }"""
    out = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=flags)
        page = browser.new_page()
        page.set_content("<html><body></body></html>")
        page.add_script_tag(path=str(bundle))
        for side, specs in specs_by_side.items():
            page.evaluate(draw, specs)  # warm-up
            out[side] = round(statistics.median(page.evaluate(draw, specs) for _ in range(repeat)), 3)
        browser.close()
    return out


def open_close(reader: StoreReader) -> None:
    with reader.session():
        pass


def stages(reader: StoreReader, repeat: int = 7) -> dict[str, float]:
    """Median milliseconds of each stage of the two views (where the time goes)."""
    import duckdb

    spent: dict[str, list[float]] = {}

    def clock(name, function, *args):
        started = time.perf_counter()
        out = function(*args)
        spent.setdefault(name, []).append(time.perf_counter() - started)
        return out

    for _ in range(repeat):
        clock("duckdb.connect + close", lambda: duckdb.connect(str(reader.path), read_only=True).close())
        clock("reader.session() open + close", open_close, reader)
        series, names = clock("metrics: open + catalog + series SQL", metrics_read, reader)
        smoothed = clock("metrics: smooth", views.smooth, series, 0.6)
        figures = clock("metrics: figures", lambda smoothed=smoothed, names=names: [
            metric_figure(smoothed, n, "step", show_raw=True) for n in names])
        clock("metrics: st.plotly_chart JSON", lambda figures=figures: [chart_json(f) for f in figures])
        total, page, snapshots = clock("posts: open + 4 queries", posts_read, reader)
        figure = clock("posts: figure", reactions_figure, snapshots)
        clock("posts: JSON + Arrow", lambda figure=figure, page=page: (chart_json(figure), table_bytes(page)))
    return {name: round(statistics.median(values) * 1000, 1) for name, values in spent.items()}


def timed(fast, naive, reader: StoreReader, repeat: int, naive_repeat: int) -> tuple[list[float], list[float]]:
    """Seconds of each run of `fast` and `naive`, interleaved so that load from other jobs on the
    machine falls on both alike (a naive run after every repeat/naive_repeat fast ones)."""
    fast(reader), naive(reader)  # warm-up: imports, DuckDB's first open
    every = max(1, repeat // max(naive_repeat, 1))
    seconds: tuple[list[float], list[float]] = ([], [])
    for index in range(repeat):
        runs = [(0, fast)] + ([(1, naive)] if index % every == every - 1 and len(seconds[1]) < naive_repeat else [])
        for side, function in runs:
            started = time.perf_counter()
            function(reader)
            seconds[side].append(time.perf_counter() - started)
    return seconds


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--naive-repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="reuse/keep the filled store in this folder")
    parser.add_argument("--browser", action="store_true",
                        help=f"also time drawing the metrics figures in headless Chromium ({CHROMIUM})")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="crowdtune-bench-"))
    path = folder / "crowdtune.duckdb"
    if not path.exists():
        started = time.perf_counter()
        fill(path)
        print(f"filled {path} in {time.perf_counter() - started:.1f} s", flush=True)
    reader = StoreReader(path)
    for name, ms in stages(reader).items():
        print(f"  {name:40s} {ms:7.1f} ms", flush=True)
    sent = {
        "metrics": (metrics_view(reader), metrics_naive(reader)),
        "posts": (posts_view(reader), posts_naive(reader)),
    }
    points = {"metrics": (sum(points_of(f) for f in metrics_figures(*metrics_read(reader))),
                          sum(points_of(f) for f in metrics_naive_figures(reader)))}
    print(f"metrics view sends {sent['metrics'][0]:,} bytes of figures ({points['metrics'][0]:,} points); "
          f"naive {sent['metrics'][1]:,} ({points['metrics'][1]:,} points)", flush=True)
    result = {}
    for name, fast, naive in (("metrics", metrics_view, metrics_naive), ("posts", posts_view, posts_naive)):
        fast_times, naive_times = timed(fast, naive, reader, args.repeat, args.naive_repeat)
        result[name] = {
            "view_median_s": round(statistics.median(fast_times), 4), "view_p95_s": round(p95(fast_times), 4),
            "naive_median_s": round(statistics.median(naive_times), 4), "naive_p95_s": round(p95(naive_times), 4),
            "speedup_median": round(statistics.median(naive_times) / statistics.median(fast_times), 1),
            # What reaches the browser (and must be drawn there): figures' JSON / table bytes.
            "view_bytes": sent[name][0], "naive_bytes": sent[name][1],
        }
        if name in points:
            result[name]["view_points"], result[name]["naive_points"] = points[name]
        print(f"{name}: view median {result[name]['view_median_s']:.3f} s, p95 {result[name]['view_p95_s']:.3f} s; "
              f"naive median {result[name]['naive_median_s']:.3f} s; {result[name]['speedup_median']}x", flush=True)
    if args.browser:
        drawn = browser_draw_seconds({
            "view": [chart_json(f) for f in metrics_figures(*metrics_read(reader))],
            "naive": [chart_json(f) for f in metrics_naive_figures(reader)]})
        result["metrics"]["browser_view_s"], result["metrics"]["browser_naive_s"] = drawn["view"], drawn["naive"]
        print(f"metrics figures drawn in Chromium: view {drawn['view']:.3f} s, naive {drawn['naive']:.3f} s",
              flush=True)
    result["goal_met"] = all(r["view_p95_s"] < 0.5 and r["speedup_median"] >= 10 for r in result.values())
    result["rows"] = {"metrics": len(RUNS) * len(METRICS) * STEPS, "posts": POSTS, "snapshots": POSTS * 3}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
