"""Metrics: every metric of every run, overlaid, smoothed, against step or time, downloadable."""

import streamlit as st

from crowdtune.dashboard.charts import metric_figure
from crowdtune.dashboard.links import TIME_RANGES, MetricsView, from_query_params, seed_widgets, share_box
from crowdtune.dashboard.page_setup import live_reads, or_stop, show_error, through_app
from crowdtune.errors import CrowdtuneError
from crowdtune.settings import load_settings
from crowdtune.store import views
from crowdtune.store.reads import StoreReader

through_app()  # before anything else: this page opens only through app.py's login gate

st.title("Metrics")
METRICS_TABLES = ("metrics",)  # the charts' series and catalog are metrics (and their rollup, written with them)

with or_stop():
    settings = load_settings()
    reader = StoreReader.from_settings(settings)


def read_series(session, view: MetricsView, catalog):
    """The chosen series, bucketed in DuckDB within the ranges of `catalog` (read on the same open)."""
    return views.metric_series(session, view.runs, view.metrics, x=view.x, time_range=view.range, catalog=catalog)


# One read-only open for the catalog and the charts' first draw: the catalog's ranges bound the
# series' buckets, which saves the series a scan of their own.
with or_stop(), reader.session() as session:
    catalog = views.metric_catalog(session)
    if catalog.empty:
        st.info("No metrics yet: start offline training on the Training page; its runs log val_loss and more here.")
        share_box("metrics", None)
        st.stop()

    all_runs = list(dict.fromkeys(catalog["run_id"]))
    all_metrics = sorted(set(catalog["name"]))
    view = from_query_params(MetricsView, st.query_params)
    # Links may name runs that no longer exist; keep what does, default to the newest run and every metric.
    view.runs = [r for r in view.runs if r in all_runs] or all_runs[:1]
    view.metrics = [m for m in view.metrics if m in all_metrics] or all_metrics
    seed_widgets("metrics", view)

    pick_runs, pick_metrics = st.columns(2)
    runs = pick_runs.multiselect("Runs", all_runs, key="metrics_runs")
    metrics = pick_metrics.multiselect("Metrics", all_metrics, key="metrics_metrics")
    smooth_col, x_col, range_col = st.columns(3)
    smoothing = smooth_col.slider("Smoothing (EMA)", 0.0, 0.99, step=0.01, key="metrics_smoothing")
    x_axis = x_col.radio("X axis", ["step", "time"], horizontal=True, key="metrics_x")
    time_range = range_col.selectbox("Time range", TIME_RANGES, key="metrics_range",
                                     format_func=lambda r: "all time" if r == "all" else f"last {r}")
    view = MetricsView(runs=runs, metrics=metrics, smoothing=smoothing, x=x_axis, range=time_range)
    # Handed to live_charts' first run below; its live refreshes read again.
    st.session_state["metrics_first_draw"] = (view, read_series(session, view, catalog))


def read_live_series():
    """The series for `view`: the page's first draw, else catalog and series afresh, on one open."""
    first_draw = st.session_state.pop("metrics_first_draw", None)
    if first_draw is not None and first_draw[0] == view:
        return first_draw[1]
    with reader.session() as live:
        return read_series(live, view, views.metric_catalog(live))


@st.fragment(run_every=10)
def live_charts():
    # A live refresh reads the store only when a metrics batch landed since (one Redis GET to know).
    try:
        series = live_reads("metrics", settings, read_live_series, tables=METRICS_TABLES)
    except CrowdtuneError as exc:
        show_error(exc)
        return
    if series.empty:
        st.info("Nothing to draw: choose at least one run and one metric (or widen the time range).")
        return
    # Redrawing the same reads (nothing changed) reuses their smoothing, figures and CSV: building them is the cost.
    drawn = st.session_state.get("metrics_drawn")
    if drawn is None or drawn["read"] is not series or drawn["view"] != view:
        smoothed = views.smooth(series, view.smoothing)
        drawn = {"read": series, "view": view, "series": smoothed, "csv": smoothed.to_csv(index=False), "figures": {
            name: metric_figure(smoothed, name, view.x, show_raw=view.smoothing > 0)
            for name in view.metrics if (smoothed["name"] == name).any()}}
        st.session_state["metrics_drawn"] = drawn
    columns = st.columns(2)
    for index, name in enumerate(view.metrics):
        if name in drawn["figures"]:
            with columns[index % 2]:
                st.plotly_chart(drawn["figures"][name], width="stretch", key=f"chart_{name}")
    downsampled = (drawn["series"]["points"] > 1).any()
    st.caption(("Long series are bucketed in the store to at most "
                f"{views.MAX_POINTS_PER_SERIES} points (mean line, min..max band). " if downsampled else "")
               + "Drag to zoom, double-click to reset.")
    st.download_button("Download CSV", drawn["csv"], file_name="crowdtune-metrics.csv",
                       mime="text/csv", on_click="ignore")

live_charts()

# The runs and their settings, as a tracker's runs table: "differences only" keeps the settings that vary.
st.subheader("Runs and their settings")
with or_stop():
    runs_table = views.runs_settings(reader)
charted_col, differences_col = st.columns(2)
only_charted = charted_col.toggle("Only the runs on the charts", key="metrics_runs_charted")
differences = differences_col.toggle("Differences only", key="metrics_runs_differences")
if only_charted:
    runs_table = runs_table[runs_table["run_id"].isin(view.runs)]
shown = views.differing_settings(runs_table) if differences else runs_table
if differences and len(shown.columns) == len(views.RUN_IDENTITY):
    st.caption("These runs share every setting." if len(shown) > 1 else "Pick two runs or more to compare.")
st.dataframe(shown, hide_index=True, width="stretch")
share_box("metrics", view)
