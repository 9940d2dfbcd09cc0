"""View state <-> URL query parameters, so a link reproduces what its sender saw.

Each page that has state worth sharing describes it as a small pydantic model (the views below).
`to_query_params` writes only the fields that differ from their defaults, as plain strings (lists
comma-separated), and `from_query_params` reads them back; a value that does not parse falls back
to the field's default instead of breaking the page, since links are typed and edited by hand.

A view never holds a secret: `to_query_params` refuses a SecretStr field, so no future view can
leak a token into a URL by accident.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlencode

from pydantic import BaseModel, Field, SecretStr, ValidationError

PAGE_PATHS = {
    "overview": "",
    "training": "training",
    "metrics": "metrics",
    "posts": "posts",
    "playground": "playground",
    "models": "models",
    "query": "query",
    "settings": "settings",
    "system": "system",
}

TIME_RANGES = ("all", "1h", "24h", "7d", "30d")
POST_SORTS = ("newest", "oldest", "best", "worst")
POST_ORIGINS = ("any", "imported", "generated")
POST_REPEATS = ("any", "only", "hide")  # near-duplicates (crowdtune.store.views.NEAR_DUPLICATE_WORDS)


class MetricsView(BaseModel):
    """The Metrics page: which runs and metrics, how smoothed, over what axis and time range."""

    runs: list[str] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=list)
    smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    x: Literal["step", "time"] = "step"
    range: Literal[TIME_RANGES] = "all"  # type: ignore[valid-type]


class PostsView(BaseModel):
    """The Posts page: filters, sort, page number and the post whose reactions are drawn."""

    face: str = ""
    version: str = ""
    origin: Literal[POST_ORIGINS] = "any"  # type: ignore[valid-type]
    q: str = ""
    repeats: Literal[POST_REPEATS] = "any"  # type: ignore[valid-type]
    sort: Literal[POST_SORTS] = "newest"  # type: ignore[valid-type]
    page: int = Field(1, ge=1)
    post: str = ""


class PlaygroundView(BaseModel):
    """The Playground page: the versions compared side by side."""

    versions: list[str] = Field(default_factory=list)


class ModelsView(BaseModel):
    """The Models page: the face whose published version is being chosen."""

    face: str = ""


class QueryView(BaseModel):
    """The Query page: the SQL text."""

    sql: str = ""


class TrainingView(BaseModel):
    """The Training page: the face the offline forms start with, and the face to train online."""

    face: str = ""
    online_face: str = ""


def _is_list(annotation) -> bool:
    return typing.get_origin(annotation) is list


def _holds_secret(annotation) -> bool:
    if annotation is SecretStr:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_holds_secret(a) for a in typing.get_args(annotation))
    return any(_holds_secret(a) for a in typing.get_args(annotation) if a is not type(None))


def to_query_params(view: BaseModel) -> dict[str, str]:
    """The view's non-default fields as query parameters (strings; lists joined by commas)."""
    params: dict[str, str] = {}
    defaults = type(view)()
    for name, field in type(view).model_fields.items():
        if _holds_secret(field.annotation):
            raise TypeError(f"{type(view).__name__}.{name} holds a secret: secrets never go into links")
        value = getattr(view, name)
        if value == getattr(defaults, name):
            continue
        if _is_list(field.annotation):
            params[name] = ",".join(str(v) for v in value)
        elif isinstance(value, float):
            params[name] = f"{value:g}"
        else:
            params[name] = str(value)
    return params


def from_query_params(view_type: type[BaseModel], params: Mapping[str, str]):
    """Build a view from query parameters; unknown keys are ignored, bad values become defaults."""
    values: dict = {}
    for name, field in view_type.model_fields.items():
        if name not in params:
            continue
        raw = params[name]
        values[name] = [part for part in raw.split(",") if part] if _is_list(field.annotation) else raw
    try:
        return view_type(**values)
    except ValidationError as exc:
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        return view_type(**{k: v for k, v in values.items() if k not in bad})


def link(base_url: str, page: str, view: BaseModel | None = None) -> str:
    """The full URL that opens `page` (a key of PAGE_PATHS) showing `view`."""
    base = base_url.rstrip("/")
    path = PAGE_PATHS[page]
    query = urlencode(to_query_params(view)) if view is not None else ""
    url = f"{base}/{path}" if path else f"{base}/"
    return f"{url}?{query}" if query else url


def app_base_url(context_url: str | None, fallback: str) -> str:
    """The app's root URL from the browser's current URL (st.context.url), without page or query."""
    if not context_url:
        return fallback
    from urllib.parse import urlsplit

    parts = urlsplit(context_url)
    segments = [s for s in parts.path.split("/") if s]
    # The last path segment is the page (Overview has none); anything before it is a proxy prefix.
    if segments and segments[-1] in PAGE_PATHS.values():
        segments = segments[:-1]
    prefix = "/" + "/".join(segments) if segments else ""
    return f"{parts.scheme}://{parts.netloc}{prefix}"


def share_box(page: str, view: BaseModel | None) -> str:
    """Write the view into st.query_params and draw the link that reproduces it; return the link."""
    import streamlit as st

    params = to_query_params(view) if view is not None else {}
    if dict(st.query_params.to_dict()) != params:
        st.query_params.from_dict(params)
    from crowdtune.settings import load_settings

    settings = load_settings()
    fallback = f"http://{settings.app_host}:{settings.app_port}"
    url = link(app_base_url(st.context.url, fallback), page, view)
    with st.expander("Link to this view", icon=":material/link:"):
        st.code(url, language=None)
        st.caption("Copy it with the button at the right of the box. It holds the view only, never a secret.")
    return url


def seed_widgets(prefix: str, view: BaseModel) -> None:
    """Give each widget `<prefix>_<field>` its value from the view, once per session and page visit.

    Widgets are created with keys only (no `value=`), so the value set here from the link wins the
    first run and the user's changes win afterwards.
    """
    import streamlit as st

    for name in type(view).model_fields:
        key = f"{prefix}_{name}"
        if key not in st.session_state:
            st.session_state[key] = getattr(view, name)
