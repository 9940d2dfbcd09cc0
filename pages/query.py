"""Query: ad-hoc read-only SQL over the store, with caps on rows, bytes, memory and time, and a quick chart."""

import plotly.express as px
import streamlit as st

from crowdtune.dashboard.links import QueryView, from_query_params, seed_widgets, share_box
from crowdtune.dashboard.page_setup import or_stop, show_error, through_app
from crowdtune.errors import CrowdtuneError
from crowdtune.settings import load_settings
from crowdtune.store.sandbox import (
    DEFAULT_BYTE_CAP,
    DEFAULT_MEMORY_CAP,
    DEFAULT_ROW_CAP,
    DEFAULT_TIME_LIMIT,
    run_query,
)

through_app()  # before anything else: this page opens only through app.py's login gate

st.title("Query")
st.caption(f"Read-only SQL over the store (tables in docs/SCHEMA.md). At most {DEFAULT_ROW_CAP:,} rows and "
           f"{DEFAULT_BYTE_CAP >> 20} MB back, {DEFAULT_MEMORY_CAP >> 20} MB of memory, {DEFAULT_TIME_LIMIT:g} s; "
           "no files, URLs, extensions or writes.")

with or_stop():
    settings = load_settings()

view = from_query_params(QueryView, st.query_params)
if not view.sql:
    view.sql = "SELECT face_id, origin, count(*) AS posts, avg(score) AS mean_score FROM posts GROUP BY ALL"
seed_widgets("query", view)

with st.form("query"):
    sql = st.text_area("SQL", key="query_sql", height=140)
    st.form_submit_button("Run", type="primary")

# The query runs on every visit, so a shared link shows its result, not an empty box.
if sql.strip():
    try:
        result = run_query(settings.store_path, sql, wait_seconds=settings.read_retry_seconds)
    except CrowdtuneError as exc:
        show_error(exc)
    else:
        if result.byte_capped:
            note = f" (cut at {DEFAULT_BYTE_CAP >> 20} MB; more rows exist: select fewer or shorter columns)"
        else:
            note = f" (first {DEFAULT_ROW_CAP:,} shown; more rows exist)" if result.truncated else ""
        st.caption(f"{len(result.frame):,} rows in {result.seconds:.2f} s{note}")
        st.dataframe(result.frame, hide_index=True, width="stretch")
        frame = result.frame
        if len(frame.columns) >= 2 and not frame.empty:
            with st.expander("Chart", expanded=True):
                x_col, y_col, kind_col = st.columns(3)
                x = x_col.selectbox("x", list(frame.columns), index=0)
                numeric = [c for c in frame.columns if frame[c].dtype.kind in "iuf"] or list(frame.columns)
                y = y_col.selectbox("y", numeric, index=len(numeric) - 1)
                kind = kind_col.radio("Chart", ["bar", "line", "scatter"], horizontal=True)
                draw = {"bar": px.bar, "line": px.line, "scatter": px.scatter}[kind]
                st.plotly_chart(draw(frame, x=x, y=y, height=320), width="stretch")
        st.download_button("Download CSV", frame.to_csv(index=False), file_name="crowdtune-query.csv",
                           mime="text/csv", on_click="ignore")

share_box("query", QueryView(sql=sql))
