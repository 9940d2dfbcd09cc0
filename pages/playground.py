"""Playground: sample posts from model versions side by side, without publishing anything."""

import streamlit as st

from crowdtune import actions
from crowdtune.dashboard.forms import config_fields, validate_config
from crowdtune.dashboard.links import PlaygroundView, from_query_params, seed_widgets, share_box
from crowdtune.dashboard.page_setup import control_connection, is_fragment_rerun, or_stop, through_app
from crowdtune.dashboard.tables import sample_blocks
from crowdtune.errors import traceback_message
from crowdtune.runtime.progress import fetch_job
from crowdtune.settings import load_settings
from crowdtune.store import views
from crowdtune.store.reads import StoreReader
from crowdtune.training.configs import GenerationConfig

through_app()  # before anything else: this page opens only through app.py's login gate

BASE_MODEL_CHOICE = "(base model)"

st.title("Playground")
st.caption("Samples appear here only: nothing is published.")

with or_stop():
    settings = load_settings()
    reader = StoreReader.from_settings(settings)
    versions = views.model_versions(reader)

conn, controls_off = control_connection(settings)

choices = [BASE_MODEL_CHOICE, *(versions["version_id"].tolist() if not versions.empty else [])]
if len(choices) == 1:
    st.info("No model versions yet: train one on the Training page. Meanwhile you can sample from a base model.")
view = from_query_params(PlaygroundView, st.query_params)
view.versions = [v for v in view.versions if v in choices] or choices[1:2] or [BASE_MODEL_CHOICE]
seed_widgets("playground", view)

with st.form("generate"):
    chosen = st.multiselect("Versions side by side", choices, key="playground_versions")
    base_col, count_col = st.columns([3, 1])
    base_model = base_col.text_input("Base model (for the base-model column)", settings.base_model)
    count = count_col.number_input("Samples each", min_value=1, max_value=64, value=4)
    prompts_text = st.text_area("Prompts (optional, one per line: each sample continues one)", "")
    with st.expander("Sampling settings"):
        values = config_fields(GenerationConfig, "generation", disabled=controls_off)
    if st.form_submit_button("Generate", type="primary", disabled=controls_off) and not controls_off:
        generation, problems = validate_config(GenerationConfig, values)
        if problems:
            st.error("Fix these settings:\n\n" + "\n".join(f"- {p}" for p in problems))
        else:
            prompts = [line.strip() for line in prompts_text.splitlines() if line.strip()]
            st.session_state["playground_jobs"] = {
                choice: actions.generate_samples(
                    conn, None if choice == BASE_MODEL_CHOICE else choice,
                    base_model.strip() or None if choice == BASE_MODEL_CHOICE else None,
                    int(count), generation.model_dump(mode="json"), prompts).id
                for choice in chosen
            }


def job_outcome(job_id: str) -> tuple[str, object]:
    """(state, what to show) of one sampling job: ("finished", rows), ("failed", last error line),
    ("expired", None), or (a waiting or running state, None)."""
    job = fetch_job(conn, job_id)
    if job is None:
        return "expired", None
    state = job.get_status(refresh=True)
    state = getattr(state, "value", state)
    if state == "finished":
        result = job.latest_result()
        return state, result.return_value if result is not None else None
    if state == "failed":
        result = job.latest_result()
        return state, traceback_message(result.exc_string if result else None, default="see the System page")
    return state, None


DONE_STATES = ("finished", "failed", "expired")
jobs = st.session_state.get("playground_jobs") or {}
done = st.session_state.setdefault("playground_done", {})  # job id -> (state, what to show): never asked again
for old_job in set(done) - set(jobs.values()):  # an earlier Generate's
    del done[old_job]


# Polls Redis only while a job is pending: once all are done, the page reruns once with a fragment
# that has no timer, so a page of finished samples costs nothing.
@st.fragment(run_every=2 if any(job_id not in done for job_id in jobs.values()) else None)
def samples():
    if not jobs:
        st.caption("Choose versions and press Generate; samples from each appear in its own column.")
        return
    if conn is None:
        return
    for column, (choice, job_id) in zip(st.columns(len(jobs)), jobs.items(), strict=True):
        with column:
            st.markdown(f"**{choice}**")
            state, shown = done[job_id] if job_id in done else job_outcome(job_id)
            if state in DONE_STATES:
                done[job_id] = (state, shown)
            if state == "expired":
                st.warning("The sampling job expired; generate again.")
            elif state == "finished" and shown:
                for text, note in sample_blocks(shown):  # in full: a post is short, a cut one says nothing
                    st.text(text, width="stretch")  # as written: "$5 and $10" is no formula, "#1" no heading
                    st.caption(note)
            elif state == "finished":
                st.caption("The job returned no samples.")
            elif state == "failed":
                st.error(f"Sampling failed: {shown}")
            else:
                st.caption(f"Sampling… ({state}; a worker on the default queue picks it up)")
    if is_fragment_rerun() and all(job_id in done for job_id in jobs.values()):
        st.rerun()  # the whole page: samples() is declared again, without its timer


samples()
share_box("playground", PlaygroundView(versions=chosen))
