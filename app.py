"""Crowdtune's dashboard: `streamlit run app.py` (or `make run`). Builds the navigation over pages/."""

import streamlit as st

st.set_page_config(page_title="Crowdtune", page_icon="📣", layout="wide")

PAGES = {
    "Crowdtune": [
        st.Page("pages/system.py", title="System", icon="🩺", url_path="system", default=True),
    ],
}

st.navigation(PAGES).run()
