"""Crowdtune's dashboard: `streamlit run app.py` (or `make run`). Builds the navigation over pages/."""

import streamlit as st

from crowdtune.dashboard.access import gate
from crowdtune.errors import CrowdtuneError
from crowdtune.settings import load_settings

st.set_page_config(page_title="Crowdtune", page_icon="📣", layout="wide")

PAGES = {
    "Crowdtune": [
        st.Page("pages/overview.py", title="Overview", icon="📣", url_path="overview", default=True),
        st.Page("pages/training.py", title="Training", icon="🏋️", url_path="training"),
        st.Page("pages/metrics.py", title="Metrics", icon="📈", url_path="metrics"),
        st.Page("pages/posts.py", title="Posts", icon="💬", url_path="posts"),
        st.Page("pages/playground.py", title="Playground", icon="🧪", url_path="playground"),
        st.Page("pages/models.py", title="Models", icon="🧬", url_path="models"),
        st.Page("pages/query.py", title="Query", icon="🔎", url_path="query"),
        st.Page("pages/settings.py", title="Settings", icon="⚙️", url_path="settings"),
        st.Page("pages/system.py", title="System", icon="🩺", url_path="system"),
    ],
}

page = st.navigation(PAGES)
try:
    # Login decides whether any page may show; a settings error is left for the pages to report.
    gate(load_settings())
except CrowdtuneError:
    pass
page.run()
