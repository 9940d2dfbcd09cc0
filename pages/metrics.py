"""Metrics: every metric of every run, overlaid, smoothed, against step or time, downloadable."""

import streamlit as st

from crowdtune.charts import metric_figure
from crowdtune.errors import CrowdtuneError
from crowdtune.links import TIME_RANGES, MetricsView, from_query_params, seed_widgets, share_box
from crowdtune.page_setup import or_stop, show_error
from crowdtune.settings import load_settings
from crowdtune.store import views
from crowdtune.store.reads import StoreReader

st.title("Metrics")

with or_stop():
    settings = load_settings()
    reader = StoreReader.from_settings(settings)
    catalog = views.metric_catalog(reader)

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


@st.fragment(run_every=10)
def live_charts():
    try:
        series = views.metric_series(reader, view.runs, view.metrics, x=view.x, time_range=view.range)
    except CrowdtuneError as exc:
        show_error(exc)
        return
    if series.empty:
        st.info("Nothing to draw: choose at least one run and one metric (or widen the time range).")
        return
    series = views.smooth(series, view.smoothing)
    columns = st.columns(2)
    for index, name in enumerate(view.metrics):
        if (series["name"] == name).any():
            with columns[index % 2]:
                st.plotly_chart(metric_figure(series, name, view.x, show_raw=view.smoothing > 0), width="stretch", key=f"chart_{name}")
    downsampled = (series["points"] > 1).any()
    st.caption(("Long series are bucketed in the store to at most "
                f"{views.MAX_POINTS_PER_SERIES} points (mean line, min..max band). " if downsampled else "")
               + "Drag to zoom, double-click to reset.")
    st.download_button("Download CSV", series.to_csv(index=False), file_name="crowdtune-metrics.csv",
                       mime="text/csv", on_click="ignore")


live_charts()
share_box("metrics", view)
