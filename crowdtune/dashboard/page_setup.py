"""What every dashboard page does first: report a Crowdtune error with its fix, decide whether its
controls are on (a read-only session or an unreachable Redis turns them off), say when writes wait
on a held store file, and let live fragments skip their store reads while nothing changed."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import redis
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from crowdtune.dashboard.access import gate, readonly_notice
from crowdtune.errors import CrowdtuneError
from crowdtune.settings import Settings, load_settings
from crowdtune.store import changes

T = TypeVar("T")

# Benchmark only (benchmarks/dashboard_idle.py's baseline): set to 1, live fragments read the store
# at every tick, as before the change counter.
ALWAYS_READ_ENV = "CROWDTUNE_DASHBOARD_ALWAYS_READ"
LIVE_MAX_AGE_SECONDS = 60.0  # read again after this even with no store change: "in 3 min" and Redis-only state move
HELD_NOTICE_EVERY_SECONDS = 15  # the held-store banner looks again (one Redis GET) this often on every page


def login_gate() -> None:
    """The login gate (access.gate) over the configured settings. A settings error is left for the page
    to report with its fix."""
    try:
        gate(load_settings())
    except CrowdtuneError:
        pass


def through_app() -> None:
    """Every page's first line: make sure app.py (the navigation and the login gate) runs before it.

    Streamlit runs pages/*.py directly, without app.py, when the first request a server gets is for a
    page's URL: its old pages-folder mode stays on until some run calls st.navigation. That run
    skipped the login, so it switches the mode off and starts again through app.py, which opens the
    same page (its url_path is the file's name) behind the gate. (Only a first page load meets this:
    no click is lost.)"""
    from streamlit.runtime.pages_manager import PagesManager

    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


def show_error(exc: CrowdtuneError) -> None:
    st.error(f"**{exc.problem}**\n\n{exc.fix}")


@contextmanager
def or_stop() -> Iterator[None]:
    """Run the block; a CrowdtuneError in it is shown with its fix and the page ends there.

    Every page enters it first, so the first one of each page run also draws the held-store banner."""
    _held_store_banner_once()
    try:
        yield
    except CrowdtuneError as exc:
        show_error(exc)
        st.stop()


def control_connection(settings: Settings) -> tuple[redis.Redis | None, bool]:
    """(Redis connection or None, whether the page's controls are off), with any notice shown."""
    may_control = readonly_notice(settings)
    try:
        from crowdtune.runtime.queues import connect

        conn = connect(settings)
    except CrowdtuneError as exc:
        conn = None
        show_error(exc)
    return conn, not may_control or conn is None


# --- Redis, for the cheap questions ---------------------------------------------------------------
_clients: dict[str, redis.Redis] = {}


def _redis(settings: Settings) -> redis.Redis | None:
    """One client per Redis URL for the whole app process (its pool reconnects by itself)."""
    from crowdtune.runtime.queues import connect, redis_url

    url = redis_url(settings)
    if url not in _clients:
        try:
            _clients[url] = connect(settings, check=False)
        except CrowdtuneError:
            return None
    return _clients[url]


def _store_version(settings: Settings, tables: Iterable[str] | None) -> int | None:
    conn = _redis(settings)
    if conn is None:
        return None
    try:
        return changes.version(conn, tables)
    except (redis.RedisError, OSError):
        return None


# --- Live fragments read the store only when it changed -----------------------------------------
def is_fragment_rerun() -> bool:
    """Whether this run reruns fragments alone (their run_every timer), not the whole page."""
    ctx = get_script_run_ctx(suppress_warning=True)
    return bool(ctx is not None and ctx.fragment_ids_this_run)


def changed_since(key: str, settings: Settings, tables: Iterable[str] | None = None,
                  max_age: float = LIVE_MAX_AGE_SECONDS) -> bool:
    """Whether the live fragment `key` must read the store now; when it must, the store's change
    counter is remembered in st.session_state as what this read sees.

    True on every whole-page run (the first render, a user's rerun), when the counter (with `tables`:
    theirs only) moved since the last True, when Redis does not answer (the page shows its errors as
    usual), after `max_age` seconds, and always with CROWDTUNE_DASHBOARD_ALWAYS_READ=1. False on
    a fragment's timer rerun while nothing changed: one Redis GET, no store read. (A widget inside a
    fragment also reruns it alone: such a fragment should read its inputs outside what it caches.)"""
    seen_key = f"_store_seen:{key}"
    tables = sorted(tables) if tables is not None else None
    current = _store_version(settings, tables)
    seen = st.session_state.get(seen_key)
    must_read = (os.environ.get(ALWAYS_READ_ENV) == "1" or not is_fragment_rerun() or seen is None
                 or current is None or seen["version"] != current or seen["tables"] != tables
                 or time.monotonic() - seen["at"] > max_age)
    if must_read:
        st.session_state[seen_key] = {"version": current, "tables": tables, "at": time.monotonic()}
    return must_read


def forget_store_reads(key: str) -> None:
    """Make the next changed_since(key) True (a read that failed must be tried again)."""
    st.session_state.pop(f"_store_seen:{key}", None)


def live_reads(key: str, settings: Settings, read: Callable[[], T], tables: Iterable[str] | None = None,
               max_age: float = LIVE_MAX_AGE_SECONDS) -> T:
    """read() when changed_since(key, settings, tables, max_age), else what it returned last time, kept in
    st.session_state. An exception of read() is raised, and the next call reads again."""
    kept = f"_store_reads:{key}"
    if not changed_since(key, settings, tables, max_age) and kept in st.session_state:
        return st.session_state[kept]
    try:
        value = read()
    except Exception:
        forget_store_reads(key)
        raise
    st.session_state[kept] = value
    return value


# --- The held-store banner ------------------------------------------------------------------------
def held_store_notice(settings: Settings) -> None:
    """A warning while writes wait on a store file another program holds (crowdtune.store.changes)."""
    conn = _redis(settings)
    try:
        held = changes.held(conn) if conn is not None else None
    except (redis.RedisError, OSError, ValueError):
        held = None
    if held is None:
        return
    minutes = max(0, round((dt.datetime.now(dt.UTC).replace(tzinfo=None) - held.since).total_seconds() / 60))
    holder = f", {held.holder}" if held.holder else ""
    st.warning(f"**Writes are waiting: the store file is held by another program since {held.since:%H:%M} UTC** "
               f"({minutes} min ago{holder}). Pages show what the store held before; queued writes are kept in "
               f"Redis and land when it lets go. Close the program that holds `{settings.store_path.name}` "
               "(e.g. a `duckdb` shell).", icon=":material/lock_clock:")


@st.fragment(run_every=HELD_NOTICE_EVERY_SECONDS)
def _held_store_fragment(settings: Settings) -> None:
    held_store_notice(settings)


def _held_store_banner_once() -> None:
    """Draw the banner (a fragment that looks again by itself) at the first or_stop of a page run."""
    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None or ctx.fragment_ids_this_run:  # a fragment's own rerun: the banner reruns by itself
        return
    # ctx.cursors is a new dict at each run of the page: it marks the run the banner was drawn in.
    if st.session_state.get("_held_banner_run") is ctx.cursors:
        return
    st.session_state["_held_banner_run"] = ctx.cursors
    try:
        settings = load_settings()
    except CrowdtuneError:  # the page's own or_stop reports it
        return
    _held_store_fragment(settings)
