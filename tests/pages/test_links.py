"""View state <-> query parameters: round trips, defaults left out, bad values tolerated, no secrets."""

import pytest
from pydantic import BaseModel, SecretStr

from crowdtune.dashboard.links import (
    MetricsView,
    PlaygroundView,
    PostsView,
    QueryView,
    app_base_url,
    from_query_params,
    link,
    to_query_params,
)


@pytest.mark.parametrize("view", [
    MetricsView(runs=["offline-1", "offline-2"], metrics=["val_loss"], smoothing=0.6, x="time", range="24h"),
    PostsView(face="tweets", version="v2", origin="generated", q="great, again & 100%", sort="best", page=7,
              post="tweets:123"),
    PlaygroundView(versions=["v1", "v2"]),
    QueryView(sql="SELECT * FROM posts WHERE text ILIKE '%a&b=c%' LIMIT 5"),
    MetricsView(),
])
def test_every_view_survives_a_round_trip_through_query_params(view):
    params = to_query_params(view)
    assert all(isinstance(v, str) for v in params.values())
    assert from_query_params(type(view), params) == view


def test_only_fields_that_differ_from_their_defaults_go_into_the_link():
    assert to_query_params(PostsView()) == {}
    assert to_query_params(PostsView(page=3)) == {"page": "3"}


def test_a_hand_edited_link_with_bad_values_falls_back_to_defaults_for_those_values_only():
    view = from_query_params(PostsView, {"page": "zero", "sort": "sideways", "face": "tweets", "junk": "1"})
    assert view == PostsView(face="tweets")
    assert from_query_params(MetricsView, {"smoothing": "2.5", "x": "time"}) == MetricsView(x="time")


def test_links_are_full_urls_that_reproduce_the_view():
    url = link("http://host:8501", "metrics", MetricsView(runs=["r1"], metrics=["val_loss", "reward_mean"]))
    assert url == "http://host:8501/metrics?runs=r1&metrics=val_loss%2Creward_mean"
    assert link("http://host:8501/", "overview") == "http://host:8501/"
    assert app_base_url("http://host:8501/metrics?runs=r1", "x") == "http://host:8501"
    assert app_base_url("https://proxy/crowdtune/posts", "x") == "https://proxy/crowdtune"
    assert app_base_url(None, "http://fallback:1") == "http://fallback:1"


def test_a_view_that_holds_a_secret_cannot_become_a_link():
    class Leaky(BaseModel):
        token: SecretStr | None = None

    with pytest.raises(TypeError, match="secret"):
        to_query_params(Leaky(token="hunter2"))
