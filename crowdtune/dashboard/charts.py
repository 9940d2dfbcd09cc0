"""Plotly figures the dashboard draws from views' frames (shared by the pages and the latency benchmark).

Figures are built as plain dicts of numpy arrays and wrapped in go.Figure without plotly's
per-property validation (`_validate=False`): validating costs ~2.5 ms a chart, more than building
it, and st.plotly_chart re-validates a dict but not a Figure. The dicts only use the properties
below, and tests/test_charts.py checks every variant against the validating constructor.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

_FALLBACK_COLOURS = ("#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880")


def _colours() -> tuple[str, ...]:
    """The default template's colour sequence: one colour per run, shared by its line, raw line and
    band. Under Streamlit that is its theme's placeholders ("#000001", ...), which the browser swaps
    for the theme's chart colours."""
    colourway = pio.templates[pio.templates.default].layout.colorway if pio.templates.default else None
    return tuple(colourway) if colourway else _FALLBACK_COLOURS


def _figure(spec: dict) -> go.Figure:
    return go.Figure(spec, _validate=False)


def metric_figure(series: pd.DataFrame, name: str, x: str = "step", show_raw: bool = False) -> go.Figure:
    """One metric, a line per run over a band of each bucket's min..max.

    In: views.metric_series output with a `smoothed` column (views.smooth). `show_raw` adds the
    unsmoothed line faintly behind the smoothed one.
    """
    x_column = "time" if x == "time" else "step"
    colours, data = _colours(), []
    for index, (run_id, run_points) in enumerate(series[series["name"] == name].groupby("run_id", sort=False)):
        colour = colours[index % len(colours)]
        xs = run_points[x_column].to_numpy()
        if (run_points["points"] > 1).any():
            # One closed shape: along the highs, back along the lows.
            data.append({"type": "scatter", "x": np.concatenate([xs, xs[::-1]]),
                         "y": np.concatenate([run_points["high"].to_numpy(), run_points["low"].to_numpy()[::-1]]),
                         "mode": "lines", "fill": "toself", "fillcolor": colour, "opacity": 0.2,
                         "line": {"width": 0, "color": colour}, "showlegend": False, "hoverinfo": "skip",
                         "legendgroup": run_id})
        if show_raw:
            data.append({"type": "scatter", "x": xs, "y": run_points["value"].to_numpy(), "mode": "lines",
                         "opacity": 0.3, "line": {"color": colour}, "name": f"{run_id} (raw)",
                         "legendgroup": run_id, "showlegend": False})
        # A line needs two points: a series of one (a short run's first evaluation) is a marker.
        data.append({"type": "scatter", "x": xs, "y": run_points["smoothed"].to_numpy(),
                     "mode": "lines" if len(xs) > 1 else "markers", "marker": {"color": colour, "size": 9},
                     "line": {"color": colour}, "name": run_id, "legendgroup": run_id})
    return _figure({"data": data, "layout": {
        "title": {"text": name}, "height": 320, "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "xaxis": {"title": {"text": x}}, "legend": {"orientation": "h"}}})


def small_line_figure(frame: pd.DataFrame, x: str, y: str, group: str, title: str) -> go.Figure:
    """A small chart for the Overview: a line per `group` value (a run, an origin), in the frame's order;
    a group of one point (a run's first evaluation, the first day of scores) is a marker, not a line of
    nothing."""
    colours, data = _colours(), []
    for index, (name, points) in enumerate(frame.groupby(group, sort=False)):
        data.append({"type": "scatter", "x": points[x].to_numpy(), "y": points[y].to_numpy(dtype=float),
                     "mode": "lines" if len(points) > 1 else "markers", "name": str(name),
                     "line": {"color": colours[index % len(colours)]},
                     "marker": {"color": colours[index % len(colours)], "size": 9}})
    return _figure({"data": data, "layout": {
        "title": {"text": title}, "height": 240, "margin": {"l": 10, "r": 10, "t": 40, "b": 10},
        "showlegend": False}})


def reactions_figure(snapshots: pd.DataFrame) -> go.Figure:
    """Reaction counts of one post over its age, a line per kind (views.reactions_over_age output)."""
    data = [{"type": "scatter", "x": of_kind["age_hours"].to_numpy(), "y": of_kind["count"].to_numpy(),
             "mode": "lines+markers", "name": kind, "legendgroup": kind}
            for kind, of_kind in snapshots.groupby("kind", sort=True)]
    return _figure({"data": data, "layout": {
        "height": 320, "margin": {"l": 10, "r": 10, "t": 20, "b": 10},
        "xaxis": {"title": {"text": "hours since posted"}}, "yaxis": {"title": {"text": "count"}},
        "showlegend": True, "legend": {"title": {"text": "kind"}}}})


def reward_histogram(history: pd.DataFrame, clip: float, bins: int = 24) -> go.Figure:
    """How a face's scored posts are rewarded (views.history_rewards output): a bar per bin of
    [-clip, clip], imported and generated posts side by side. Binned here, so a history of 20,000
    posts sends 2 x `bins` numbers to the browser, not 20,000."""
    edges = np.linspace(-clip, clip, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    data = [{"type": "bar", "x": centres, "y": np.histogram(of_origin["reward"].to_numpy(dtype=float), edges)[0],
             "name": origin, "width": edges[1] - edges[0]}
            for origin, of_origin in history.groupby("origin", sort=True)]
    return _figure({"data": data, "layout": {
        "height": 280, "margin": {"l": 10, "r": 10, "t": 20, "b": 10}, "barmode": "overlay",
        "xaxis": {"title": {"text": "reward (against the posts of its era)"}}, "yaxis": {"title": {"text": "posts"}},
        "legend": {"orientation": "h"}}})


def reward_model_figure(fits: pd.DataFrame) -> go.Figure:
    """A face's reward-model quality over its fits (views.reward_model_fits output): the time-split
    validation Spearman and the online agreement, against the scored posts each fit had."""
    xs = fits["scored_posts"].to_numpy()
    mode = "lines+markers" if len(fits) > 1 else "markers"
    data = [{"type": "scatter", "x": xs, "y": fits[column].to_numpy(dtype=float), "mode": mode, "name": name,
             "marker": {"size": 8}}
            for column, name in (("validation_spearman", "time-split Spearman"),
                                 ("online_agreement", "online agreement"))]
    return _figure({"data": data, "layout": {
        "height": 280, "margin": {"l": 10, "r": 10, "t": 20, "b": 10},
        "xaxis": {"title": {"text": "scored posts at the fit"}}, "yaxis": {"title": {"text": "Spearman"},
                                                                        "range": [-1, 1]},
        "legend": {"orientation": "h"}}})
