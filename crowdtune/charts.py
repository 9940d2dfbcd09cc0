"""Plotly figures the dashboard draws from views' frames (shared by the pages and the latency benchmark)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go


def metric_figure(series: pd.DataFrame, name: str, x: str = "step", show_raw: bool = False) -> go.Figure:
    """One metric, a line per run over a band of each bucket's min..max.

    In: views.metric_series output with a `smoothed` column (views.smooth). `show_raw` adds the
    unsmoothed line faintly behind the smoothed one.
    """
    figure = go.Figure()
    x_column = "time" if x == "time" else "step"
    for run_id, run_points in series[series["name"] == name].groupby("run_id", sort=False):
        if (run_points["points"] > 1).any():
            figure.add_trace(go.Scatter(x=run_points[x_column], y=run_points["high"], mode="lines", line_width=0,
                                        showlegend=False, hoverinfo="skip", legendgroup=run_id))
            figure.add_trace(go.Scatter(x=run_points[x_column], y=run_points["low"], mode="lines", line_width=0,
                                        fill="tonexty", opacity=0.2, showlegend=False, hoverinfo="skip",
                                        legendgroup=run_id))
        if show_raw:
            figure.add_trace(go.Scatter(x=run_points[x_column], y=run_points["value"], mode="lines", opacity=0.25,
                                        name=f"{run_id} (raw)", legendgroup=run_id, showlegend=False))
        figure.add_trace(go.Scatter(x=run_points[x_column], y=run_points["smoothed"], mode="lines", name=run_id,
                                    legendgroup=run_id))
    figure.update_layout(title=name, height=320, margin=dict(l=10, r=10, t=40, b=10), xaxis_title=x,
                         legend=dict(orientation="h"))
    return figure


def reactions_figure(snapshots: pd.DataFrame) -> go.Figure:
    """Reaction counts of one post over its age, a line per kind (views.reactions_over_age output)."""
    figure = px.line(snapshots, x="age_hours", y="count", color="kind", markers=True, height=320)
    figure.update_layout(margin=dict(l=10, r=10, t=20, b=10), xaxis_title="hours since posted")
    return figure
