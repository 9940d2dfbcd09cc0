"""Who may control Crowdtune from the dashboard.

With `login_password` unset, everyone who reaches the app may control it (a local tool). With it
set, control (starting/stopping training, choosing versions, changing faces and secrets) needs a
login that lasts for the browser session; without one, pages open read-only when
`allow_readonly_links` is true (a shared link shows the view, its buttons are disabled), and show
only the login form otherwise.
"""

from __future__ import annotations

import hmac

from crowdtune.settings import Settings

SESSION_FLAG = "crowdtune_logged_in"


def password_matches(settings: Settings, attempt: str) -> bool:
    """True if `attempt` is the configured password (compared in constant time)."""
    if not settings.login_password:
        return False
    return hmac.compare_digest(attempt.encode(), settings.login_password.encode())


def login_required(settings: Settings) -> bool:
    return bool(settings.login_password)


def can_control(settings: Settings) -> bool:
    """May this browser session start, stop or change anything?"""
    import streamlit as st

    return not login_required(settings) or bool(st.session_state.get(SESSION_FLAG))


def reviewer_name(settings: Settings) -> str:
    """Who a review decision from this browser session is recorded as: the login has no user names, so
    "dashboard (logged in)" behind a login, "dashboard" without one (the CLI records "cli")."""
    return "dashboard (logged in)" if login_required(settings) and can_control(settings) else "dashboard"


def login_form(settings: Settings) -> None:
    """Draw the login form; a right password sets the session flag for this browser session."""
    import streamlit as st

    with st.form("login", clear_on_submit=True):
        attempt = st.text_input("Password", type="password", key="login_password")
        if st.form_submit_button("Log in"):
            if password_matches(settings, attempt):
                st.session_state[SESSION_FLAG] = True
                st.rerun()
            else:
                st.error("Wrong password.")


def gate(settings: Settings) -> None:
    """Run before any page: without read-only links, ask for a login first; offer a logout once in."""
    import streamlit as st

    if not login_required(settings):
        return
    if st.session_state.get(SESSION_FLAG):
        if st.sidebar.button("Log out"):
            st.session_state[SESSION_FLAG] = False
            st.rerun()
        return
    if not settings.allow_readonly_links:
        st.title("Crowdtune")
        st.info("Log in to open the dashboard.")
        login_form(settings)
        st.stop()


def readonly_notice(settings: Settings) -> bool:
    """Show why controls are disabled, if they are; return whether the session may control."""
    import streamlit as st

    allowed = can_control(settings)
    if not allowed:
        st.info("Read-only: log in to use the controls on this page.", icon=":material/lock:")
        with st.expander("Log in"):
            login_form(settings)
    return allowed
