"""Crowdtune's dashboard: `streamlit run app.py` (or `make run`). Builds the navigation over pages/."""

import streamlit as st

from crowdtune.dashboard.page_setup import login_gate

# Material icons ship with Streamlit and render everywhere (emoji need an emoji font).
st.set_page_config(page_title="Crowdtune", page_icon=":material/campaign:", layout="wide")

PAGES = {
    "Crowdtune": [
        st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", url_path="overview", default=True),
        st.Page("pages/training.py", title="Training", icon=":material/model_training:", url_path="training"),
        st.Page("pages/metrics.py", title="Metrics", icon=":material/monitoring:", url_path="metrics"),
        st.Page("pages/posts.py", title="Posts", icon=":material/forum:", url_path="posts"),
        st.Page("pages/review.py", title="Review", icon=":material/rule:", url_path="review"),
        st.Page("pages/playground.py", title="Playground", icon=":material/science:", url_path="playground"),
        st.Page("pages/models.py", title="Models", icon=":material/deployed_code:", url_path="models"),
        st.Page("pages/query.py", title="Query", icon=":material/search:", url_path="query"),
        st.Page("pages/settings.py", title="Settings", icon=":material/settings:", url_path="settings"),
        st.Page("pages/system.py", title="System", icon=":material/monitor_heart:", url_path="system"),
    ],
}

page = st.navigation(PAGES)
login_gate()  # decides whether any page may show
page.run()
