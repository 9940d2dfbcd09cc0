"""Models: every saved version with its lineage and metrics; choose what publishes, or roll back;
each face's reward model and how well it predicts."""

import math

import streamlit as st

from crowdtune import actions
from crowdtune.dashboard.charts import reward_model_figure
from crowdtune.dashboard.links import ModelsView, from_query_params, share_box
from crowdtune.dashboard.page_setup import control_connection, is_fragment_rerun, or_stop, through_app
from crowdtune.dashboard.tables import metrics_for_display
from crowdtune.errors import SettingsError, traceback_message
from crowdtune.runtime.progress import fetch_job
from crowdtune.settings import load_settings
from crowdtune.store import views
from crowdtune.store.reads import StoreReader
from crowdtune.training.rl.configs import DEFAULT_ALGORITHM, algorithm_config
from crowdtune.training.rl.predictor import agreement_pause

through_app()  # before anything else: this page opens only through app.py's login gate

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
    with or_stop():
        gallery = views.version_gallery(reader, inspect)
    st.markdown(f"**What `{inspect}` wrote over time**")
    if gallery.empty:
        st.caption("No posts of this version yet: its run's evaluation samples and the posts it publishes "
                   "appear here.")
    else:
        st.dataframe(gallery, hide_index=True, width="stretch",
                     column_config={"text": st.column_config.TextColumn("text", width="large")})
        st.caption("Newest first: the posts its run sampled at each evaluation (step), then those it published "
                   "or drafted as candidates, with their score once scored.")

st.subheader("Rejected on review")
with or_stop():
    reviews = views.review_by_version(reader)
if reviews.empty:
    st.caption("No review decisions yet: on a face with `review` approve or pick, each decision on the Review page "
               "counts here under the version that drafted the post.")
else:
    total, rejected = int(reviews["reviewed"].sum()), int(reviews["rejected"].sum())
    st.caption(f"{rejected} of {total} reviewed posts rejected. Each rejection and pick also trains the next "
               "online update (a rejection as the worst reward, a pick as a preference).")
    st.dataframe(reviews, hide_index=True, width="stretch", column_config={
        "rejected_share": st.column_config.ProgressColumn("Rejected", format="percent", min_value=0.0,
                                                          max_value=1.0)})

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

st.subheader("Export a version")
if not version_ids:
    st.caption("Nothing to export yet: versions appear here once a run saved one.")
else:
    with st.form("export"):
        to_export = st.selectbox("Version", version_ids, key="models_export_version")
        merged = st.checkbox("Merge the adapter into the base model (loads with plain transformers, no peft)",
                             key="models_export_merged")
        hub_repo = st.text_input("Also push to the hub repo (optional, e.g. me/my-channel; the worker needs HF_TOKEN)",
                                 key="models_export_hub")
        if st.form_submit_button("Export", disabled=controls_off) and not controls_off:
            job = actions.export_version(conn, to_export, merged, hub_repo.strip() or None)
            st.session_state["models_export_job"] = job.id
    st.caption("A worker on the default queue writes the folder, with its model card, under "
               f"`{settings.artifacts}/exports/`; `crowdtune export VERSION --out DIR [--merged]` does it here.")
    export_job = st.session_state.get("models_export_job")
    finished = st.session_state.setdefault("models_export_done", {})  # job id -> (state, what to show)

    def export_outcome(job_id: str) -> tuple[str, str]:
        """(state, message) of the export job: finished or failed with what to say, else still waiting."""
        job = fetch_job(conn, job_id)
        if job is None:
            return "expired", "The export job expired; export again."
        state = getattr(job.get_status(refresh=True), "value", "queued")
        result = job.latest_result() if state in ("finished", "failed") else None
        if state == "finished" and result is not None:
            done = result.return_value
            return state, (f"Exported `{done['version_id']}` to `{done['export_url']}`"
                           + (f", pushed to {done['hub_url']}." if done.get("hub_url") else "."))
        if state == "failed":
            why = traceback_message(result.exc_string if result else None, default="see the System page")
            return state, f"The export failed: {why}"
        return state, f"Exporting… ({state}; a worker on the default queue picks it up)"

    # Polls Redis only while the export runs; once it ended, the page reruns once without the timer.
    @st.fragment(run_every=3 if export_job and export_job not in finished and conn is not None else None)
    def export_status():
        if not export_job or conn is None:
            return
        state, message = finished.get(export_job) or export_outcome(export_job)
        {"finished": st.success, "failed": st.error, "expired": st.warning}.get(state, st.caption)(message)
        if state in ("finished", "failed", "expired") and export_job not in finished:
            finished[export_job] = (state, message)
            if is_fragment_rerun():
                st.rerun()

    export_status()


def agreement_rule(agreement, posts, online: dict | None) -> str | None:
    """What guided's pause rule makes of the newest online agreement, under the face's newest online run's
    settings (guided's defaults when it has none); None before there is an agreement."""
    if agreement is None or math.isnan(agreement):
        return None
    algorithm = (online or {}).get("algorithm", DEFAULT_ALGORITHM)
    try:
        rule = algorithm_config("guided", (online or {}).get("algorithm_settings") if algorithm == "guided" else None)
    except SettingsError:
        rule = algorithm_config("guided")
    posts = None if posts is None or math.isnan(posts) else int(posts)
    bound, pause = agreement_pause(float(agreement), posts, rule.agreement_threshold, rule.agreement_confidence)
    verdict = (f"guided pauses the face: its upper {rule.agreement_confidence:.0%} bound {bound:.2f} is below the "
               f"threshold {rule.agreement_threshold:.2f}" if pause else
               f"guided trains on: it pauses only when the upper {rule.agreement_confidence:.0%} bound (here "
               f"{bound:.2f}) is below the threshold {rule.agreement_threshold:.2f}")
    if online is None:
        used = " (guided's default settings: the face has no online run yet)"
    elif algorithm == "guided":
        used = ""
    else:
        used = f" (the face's online run uses `{algorithm}`, which does not pause on this figure: guided's defaults)"
    return f"Online agreement {float(agreement):.2f} on {posts or 0} posts: {verdict}{used}."


st.subheader(f"Reward model of `{face}`")
with or_stop():
    fits = views.reward_model_fits(reader, face)
if fits.empty:
    st.caption("No reward model yet: one is fitted once the face has 16 scored posts (an import with reactions, "
               "or online posts as they mature), and again whenever new scores mature.")
else:
    latest = fits.iloc[-1]

    def shown(value, form="{:.2f}") -> str:
        return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else form.format(value)

    columns = st.columns(5)
    columns[0].metric("Posts fitted (history / generated)",
                      f"{int(latest.history_posts):,} / {int(latest.generated_posts):,}")
    columns[1].metric("Time-split Spearman", shown(latest.validation_spearman),
                      help=f"on the newest {int(latest.validation_posts or 0)} posts, by a model fitted on the older")
    columns[2].metric("MAE (reward units)", shown(latest.validation_mae))
    columns[3].metric("Coverage (2 std)", shown(latest.validation_coverage, "{:.0%}"))
    columns[4].metric("Online agreement", shown(latest.online_agreement),
                      help="Spearman of the predictions made at publishing against the real rewards, over the "
                           f"newest {int(latest.online_agreement_posts or 0)} predicted posts (– with fewer than 8)")
    st.caption(f"`{latest.model_id}`, fitted at {latest.fitted_at:%Y-%m-%d %H:%M} UTC "
               f"on {int(latest.scored_posts or 0):,} scored posts.")
    with or_stop():
        online = views.latest_online_config(reader, face)
    rule = agreement_rule(latest.online_agreement, latest.online_agreement_posts, online)
    if rule:
        st.caption(rule)
    st.plotly_chart(reward_model_figure(fits), width="stretch")

share_box("models", ModelsView(face=face))
