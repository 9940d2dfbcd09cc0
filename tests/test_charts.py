"""The dashboard's figures: built without plotly's validation, so checked against it here."""

import datetime as dt

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from crowdtune.dashboard.charts import (
    metric_figure,
    reactions_figure,
    reward_histogram,
    reward_model_figure,
    small_line_figure,
)


def series(points: int) -> pd.DataFrame:
    steps = np.arange(10)
    frame = pd.DataFrame({
        "run_id": np.repeat(["run-a", "run-b"], 10), "name": "loss", "step": np.tile(steps, 2),
        "time": [dt.datetime(2026, 1, 1) + dt.timedelta(minutes=int(s)) for s in np.tile(steps, 2)],
        "value": np.linspace(1, 0, 20), "points": points})
    frame["low"], frame["high"] = frame["value"] - 0.1, frame["value"] + 0.1
    frame["smoothed"] = frame["value"]
    return frame


def validated(figure: go.Figure) -> go.Figure:
    """Check what st.plotly_chart sends (to_dict) with plotly's validating constructor, which raises
    on any invalid property; return the figure itself (its arrays unencoded, for assertions)."""
    go.Figure(figure.to_dict())
    return figure


@pytest.mark.parametrize("points, show_raw, x", [(1, False, "step"), (5, True, "step"), (5, True, "time")])
def test_metric_figures_are_valid_plotly_with_a_band_raw_line_and_line_per_run(points, show_raw, x):
    figure = validated(metric_figure(series(points), "loss", x, show_raw=show_raw))
    per_run = 1 + (points > 1) + show_raw
    assert len(figure.data) == 2 * per_run
    lines = [t for t in figure.data if t.showlegend is not False]
    assert [t.name for t in lines] == ["run-a", "run-b"]
    assert lines[0].line.color != lines[1].line.color
    if points > 1:
        band = figure.data[0]
        assert band.fill == "toself" and len(band.x) == 20  # along the highs, back along the lows
    assert figure.layout.title.text == "loss" and figure.layout.xaxis.title.text == x


def test_reactions_figure_is_valid_plotly_with_a_line_per_kind():
    snapshots = pd.DataFrame({"kind": ["likes", "likes", "reposts"], "age_hours": [1.0, 6.0, 1.0],
                              "count": [3, 9, 1]})
    figure = validated(reactions_figure(snapshots))
    assert [t.name for t in figure.data] == ["likes", "reposts"]
    assert list(figure.data[0].y) == [3, 9]
    assert figure.layout.xaxis.title.text == "hours since posted"


def test_a_metric_with_one_point_is_drawn_as_a_marker_not_an_invisible_line():
    one = series(1).groupby("run_id").head(1)  # each run has a single evaluation so far
    figure = validated(metric_figure(one, "loss"))
    lines = [t for t in figure.data if t.showlegend is not False]
    assert [t.mode for t in lines] == ["markers", "markers"] and len(lines[0].x) == 1
    assert {t.mode for t in metric_figure(series(1), "loss").data} == {"lines"}


def test_the_overview_s_small_charts_draw_a_lone_point_as_a_marker():
    # a run with one evaluation beside one with three; the first day of generated posts' scores
    values = pd.DataFrame({"run_id": ["run-a", "run-b", "run-b", "run-b"], "step": [30, 10, 20, 30],
                           "value": [2.0, 3.0, 2.5, 2.2]})
    figure = validated(small_line_figure(values, "step", "value", "run_id", "val_loss"))
    assert [(t.name, t.mode, len(t.x)) for t in figure.data] == [("run-a", "markers", 1), ("run-b", "lines", 3)]
    assert figure.data[0].line.color != figure.data[1].line.color and figure.layout.title.text == "val_loss"
    day = pd.DataFrame({"day": [dt.datetime(2026, 12, 1)], "origin": ["generated"], "score": [1.5]})
    assert validated(small_line_figure(day, "day", "score", "origin", "scores")).data[0].mode == "markers"


def test_the_reward_histogram_bins_each_origin_over_the_clip_range():
    history = pd.DataFrame({"origin": ["imported"] * 5 + ["generated"], "reward": [-3.0, -1, 0, 0.1, 3, 2]})
    figure = validated(reward_histogram(history, clip=3.0, bins=6))
    assert [t.name for t in figure.data] == ["generated", "imported"]
    assert list(figure.data[1].y) == [1, 0, 1, 2, 0, 1] and sum(figure.data[0].y) == 1  # 3.0 in the last bin
    assert figure.data[0].x[0] == -2.5 and figure.data[0].x[-1] == 2.5


def test_the_reward_model_figure_shows_both_spearmans_over_the_fits():
    fits = pd.DataFrame({"scored_posts": [160, 170], "validation_spearman": [0.3, 0.4],
                         "online_agreement": [float("nan"), 0.2]})
    figure = validated(reward_model_figure(fits))
    assert [t.name for t in figure.data] == ["time-split Spearman", "online agreement"]
    assert list(figure.data[0].y) == [0.3, 0.4] and figure.data[0].mode == "lines+markers"
