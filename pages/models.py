"""Models: every saved version with its lineage and metrics; choose what publishes, or roll back."""

import streamlit as st

from crowdtune import actions
from crowdtune.dashboard.links import ModelsView, from_query_params, share_box
from crowdtune.dashboard.page_setup import control_connection, or_stop
from crowdtune.dashboard.tables import metrics_for_display
from crowdtune.settings import load_settings
from crowdtune.store import views
from crowdtune.store.reads import StoreReader

BASE_MODEL_CHOICE = "(base model, no adapter)"

st.title("Models")

with or_stop():
    settings = load_settings()
    reader = StoreReader.from_settings(settings)
    versions = views.model_versions(reader)
    faces = views.faces_frame(reader)

if versions.empty:
    st.info("No model versions yet: start offline training on the Training page; each run saves its best adapter here.")
else:
    st.subheader("Versions")
    st.dataframe(versions, hide_index=True, width="stretch")
    metrics = views.version_metrics(versions)
    if len(metrics.columns) > 1:
        st.caption("Metrics at save time (— where a version has none or stored NaN):")
        st.dataframe(metrics_for_display(metrics), hide_index=True, width="stretch")
    inspect = st.selectbox("Lineage of", versions["version_id"].tolist())
    st.write(" ← ".join(f"`{v}`" for v in views.lineage(versions, inspect)) + " ← base model")

st.subheader("Choose the version that publishes")
view = from_query_params(ModelsView, st.query_params)
face_ids = faces["face_id"].tolist()
if not face_ids:
    st.caption("No faces yet: add one on the Training page.")
    share_box("models", None)
    st.stop()

conn, controls_off = control_connection(settings)

face = st.selectbox("Face", face_ids, index=face_ids.index(view.face) if view.face in face_ids else 0)
active = faces.set_index("face_id").loc[face, "active_version_id"]
active = active if isinstance(active, str) and active else None
st.write(f"Publishing now: `{active or BASE_MODEL_CHOICE}`")
version_ids = versions["version_id"].tolist() if not versions.empty else []
options = [BASE_MODEL_CHOICE, *version_ids]
with st.form("choose_version"):
    chosen = st.selectbox("Version", options, index=options.index(active) if active in options else 0,
                          key="models_choice")
    # Versions are listed newest first: anything after the active one is a rollback.
    older = active in version_ids and chosen in version_ids and version_ids.index(chosen) > version_ids.index(active)
    confirmed = st.checkbox("Yes, publish with this version from now on (the next posts use it)",
                            key="models_confirm")
    if st.form_submit_button("Use this version", type="primary", disabled=controls_off) and not controls_off:
        if not confirmed:
            st.warning("Tick the confirmation first: this changes what the face publishes.")
        else:
            actions.set_active_version(conn, face, None if chosen == BASE_MODEL_CHOICE else chosen)
            st.success(f"`{face}` will publish with `{chosen}`"
                       + (" (a rollback to an older version)." if older else ".")
                       + " The change shows here once the store writer applied it.")

chain = views.lineage(versions, active) if active else []
if len(chain) > 1:
    with st.form("rollback"):
        st.markdown(f"**Roll back** `{face}` from `{active}` to its parent `{chain[1]}`")
        confirmed = st.checkbox("Yes, roll back (the next posts use the parent version)", key="models_confirm_rollback")
        if st.form_submit_button("Roll back", disabled=controls_off) and not controls_off:
            if not confirmed:
                st.warning("Tick the confirmation first.")
            else:
                actions.set_active_version(conn, face, chain[1])
                st.success(f"`{face}` rolls back to `{chain[1]}`.")

share_box("models", ModelsView(face=face))
