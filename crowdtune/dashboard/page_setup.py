"""What every dashboard page does first: report a Crowdtune error with its fix, and decide
whether its controls are on (a read-only session or an unreachable Redis turns them off)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
import streamlit as st

from crowdtune.dashboard.access import readonly_notice
from crowdtune.errors import CrowdtuneError
from crowdtune.settings import Settings


def show_error(exc: CrowdtuneError) -> None:
    st.error(f"**{exc.problem}**\n\n{exc.fix}")


@contextmanager
def or_stop() -> Iterator[None]:
    """Run the block; a CrowdtuneError in it is shown with its fix and the page ends there."""
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
