"""Training: add faces, import their history, start and stop offline and online training, follow the jobs."""

import json

import pandas as pd
import streamlit as st
from pydantic import BaseModel, create_model

from crowdtune import actions
from crowdtune.dashboard.face_picker import Purpose, faces_for, preselected, time_acceleration_of
from crowdtune.dashboard.forms import config_fields, field_help, validate_config
from crowdtune.dashboard.job_board import job_board
from crowdtune.dashboard.links import TrainingView, from_query_params, share_box
from crowdtune.dashboard.page_setup import control_connection, live_reads, or_stop, show_error, through_app
from crowdtune.errors import CrowdtuneError
from crowdtune.online.controller import OnlineConfig, parse_online_config
from crowdtune.runtime.progress import fetch_job, job_progress
from crowdtune.settings import load_settings
from crowdtune.states import ControllerState
from crowdtune.store import views
from crowdtune.store.reads import StoreReader
from crowdtune.training.configs import SFTConfig
from crowdtune.training.rl import ALGORITHMS, DEFAULT_ALGORITHM, algorithm_config
from crowdtune.training.run_files import RunKind, RunRequest, run_file_text
from faces.registry import FACE_KINDS

through_app()  # before anything else: this page opens only through app.py's login gate

# The online form shows the schedule; every other OnlineConfig setting waits in an expander.
ONLINE_SCHEDULE = ("interval_minutes", "jitter_minutes", "min_gap_minutes", "daily_cap", "quiet_hours",
                   "maturity_windows_hours", "posts_per_update")


def online_settings_form_part(names: list[str] | tuple[str, ...]) -> type[BaseModel]:
    """The OnlineConfig fields `names` as a model of their own, so config_fields draws one part of the form
    with OnlineConfig's types, defaults and field help (validation stays with parse_online_config)."""
    fields = OnlineConfig.model_fields
    return create_model("OnlineSettings", **{name: (fields[name].annotation, fields[name]) for name in names})


# What a run costs when no earlier run measured it (tokens/s leave out evaluations): ~180 tokens/s
# were measured for SmolLM2-135M LoRA on 2 CPU cores (8 x 128 tokens, bf16); the GPU figure is a
# rough figure for a small GPU. Loading the base model and the guards takes about a minute first.
DEFAULT_TOKENS_PER_SECOND = {"cpu": 150.0, "gpu": 3000.0}
DEFAULT_EVAL_SECONDS = {"cpu": 40.0, "gpu": 5.0}
SETUP_SECONDS = 60.0


def run_cost(config, versions: pd.DataFrame, base_model: str) -> str:
    """The offline form's estimate: steps x tokens per step / tokens per second + evaluations x their
    time, from the newest version of the same base model that measured them, else the defaults."""
    device = "cpu" if config.on_cpu() else "gpu"
    speed, eval_seconds, source = DEFAULT_TOKENS_PER_SECOND[device], DEFAULT_EVAL_SECONDS[device], "a default"
    same = versions[versions["base_model"] == base_model] if not versions.empty else versions
    for version_id, metrics in zip(same.get("version_id", []), same.get("metrics", []), strict=False):
        measured = json.loads(metrics) if isinstance(metrics, str) else {}  # newest first; a missing one is NaN
        if isinstance(measured, dict) and measured.get("tokens_per_second"):
            speed, source = float(measured["tokens_per_second"]), f"measured by `{version_id}`"
            eval_seconds = float(measured.get("eval_seconds") or eval_seconds)
            break
    tokens = config.batch_size * config.block_size * config.accumulate_grad_batches
    evals = config.max_steps // config.eval_every
    seconds = SETUP_SECONDS + config.max_steps * tokens / speed + evals * eval_seconds
    return (f"Cost before it starts: about **{seconds / 60:.0f} min** on the {device.upper()}: "
            f"{config.max_steps} steps x {tokens:,} tokens at {speed:,.0f} tokens/s ({source}) "
            f"+ {evals} evaluations x {eval_seconds:.0f} s + ~{SETUP_SECONDS / 60:.0f} min to load.")


def publishing_summary(face_id: str, kind: str, config: OnlineConfig) -> str:
    """What starting online training will do, in a sentence or three, for the confirmation."""
    audience = "the simulated audience of this sandbox" if kind == "sandbox" else f"**real people** on {kind}"
    quiet = f", never from {config.quiet_hours[0]}:00 to {config.quiet_hours[1]}:00 UTC" if config.quiet_hours else ""
    faster = (f" Audience time runs {config.time_acceleration:g}x faster than the clock."
              if config.time_acceleration != 1 else "")
    windows = ", ".join(f"{w:g}" for w in config.maturity_windows_hours)
    return (f"**This publishes.** Online training on `{face_id}` with {config.algorithm} posts to {audience}: about "
            f"every {config.interval_minutes:g} min (± {config.jitter_minutes:g}), at least {config.min_gap_minutes:g} "
            f"min apart, at most {config.daily_cap} a day{quiet}. It reads reactions {windows} h after each post and "
            f"updates the model after every {config.posts_per_update} scored posts, until you stop it.{faster}")


st.title("Training")

with or_stop():
    settings = load_settings()
    reader = StoreReader.from_settings(settings)
    faces = views.faces_frame(reader)
    versions = views.model_versions(reader)
    online_states = dict(views.online_controllers(reader)[["face_id", "state"]].itertuples(index=False))

view = from_query_params(TrainingView, st.query_params)
conn, controls_off = control_connection(settings)
face_ids = faces["face_id"].tolist()
history_faces = faces_for(faces, Purpose.HISTORY)  # the bundled dataset first, never a real network by default

# ---- Faces and imports --------------------------------------------------------------------------
st.subheader("Faces")
if faces.empty:
    st.info("No faces yet: add one below (a `dataset` face with source `trump_tweets` gives 20,761 real posts).")
else:
    st.dataframe(faces[["face_id", "kind", "config", "active_version_id"]], hide_index=True, width="stretch")

add_col, import_col = st.columns(2)
with add_col, st.form("add_face"):
    st.markdown("**Add or update a face**")
    new_face_id = st.text_input("Face name", placeholder="tweets")
    kind = st.selectbox("Kind", list(FACE_KINDS))
    config_text = st.text_area("Config (JSON, no secrets: set those on the Settings page)",
                               '{"source": "trump_tweets"}')
    if st.form_submit_button("Save face", disabled=controls_off) and not controls_off:
        face_class = FACE_KINDS[kind]
        try:
            config = json.loads(config_text or "{}")
            secrets_given = sorted(set(config) & set(face_class.secret_fields))
            if not new_face_id.strip():
                st.error("Give the face a name.")
            elif secrets_given:
                st.error(f"Remove {', '.join(secrets_given)} from the config: secrets go on the Settings page.")
            else:
                # Validate without secrets: the face reads those itself when it runs.
                face_class.Config.model_validate({**config, **{f: "x" for f in face_class.secret_fields}})
                actions.save_face(conn, new_face_id.strip(), kind, config)
                then = (" Next: save its credentials on the Settings page and press its Check connection."
                        if face_class.secret_fields else "")
                st.success(f"Face `{new_face_id}` saved (it appears here once the store writer applied it).{then}")
        except ValueError as exc:
            st.error(f"The config is not valid: {str(exc).splitlines()[0]}")

with import_col, st.form("import"):
    st.markdown("**Import a face's history**")
    import_face = st.selectbox("Face", history_faces, index=preselected(history_faces, view.face))
    limit = st.number_input("At most this many posts (0 = all)", min_value=0, value=0, step=1000)
    if st.form_submit_button("Import", disabled=controls_off or not history_faces) and not controls_off:
        job = actions.start_import(conn, import_face, int(limit) or None)
        st.session_state["training_import_job"] = job.id


@st.fragment(run_every=2)
def import_status(job_id: str) -> None:
    """The import's rows WRITTEN to the store while it runs; then what landed, what was refused and why."""
    job = fetch_job(conn, job_id)
    if job is None:
        st.caption(f"Import job `{job_id}` is no longer in Redis.")
        return
    state = job.get_status(refresh=True).value
    meta = job.get_meta(refresh=True)
    progress = meta.get("progress") or {}
    written, read, refused = progress.get("step") or 0, progress.get("read") or 0, progress.get("refused") or 0
    if state == "finished":
        result = job.latest_result().return_value
        st.success(result["summary"])
        if result["problems"]:
            st.caption(f"Rows not imported (the first {len(result['problems'])} of {result['refused']:,}):")
            st.dataframe(pd.DataFrame(result["problems"]), hide_index=True, width="stretch")
    elif state in ("failed", "stopped", "canceled"):
        error = meta.get("error")
        show_error(CrowdtuneError(error["problem"], error["fix"]) if error else CrowdtuneError(
            f"Import job `{job_id}` {state}.", "See the failed job on the System page and the worker's log."))
    else:
        total = progress.get("total")
        st.progress(min(written / total, 1.0) if total else 0.0,
                    text=f"Import `{job_id}` ({state}): {written:,} rows written to the store "
                         f"({read:,} read, {refused:,} refused)")


if conn is not None and st.session_state.get("training_import_job"):
    import_status(st.session_state["training_import_job"])

# ---- Offline training ---------------------------------------------------------------------------
st.subheader("Start offline training")
if not face_ids:
    st.caption("Add a face and import its posts first.")
else:
    with st.form("offline_training"):
        face_col, model_col, parent_col = st.columns(3)
        train_face = face_col.selectbox("Face", history_faces, index=preselected(history_faces, view.face))
        base_model = model_col.text_input("Base model", settings.base_model,
                                          help="A packaged name (smollm2-135m), a hub id or a local folder.")
        version_ids = versions["version_id"].tolist() if not versions.empty else []
        parent = parent_col.selectbox("Continue from version", ["(none: start from the base model)", *version_ids])
        with st.expander("LoRA, optimiser and evaluation settings", expanded=False):
            values = config_fields(SFTConfig, "sft", disabled=controls_off)
        estimate, estimate_problems = validate_config(SFTConfig, values)
        if not estimate_problems:
            st.caption(run_cost(estimate.resolved(), versions, base_model.strip() or settings.base_model))
        start_col, file_col = st.columns(2)
        start = start_col.form_submit_button("Start training", type="primary", disabled=controls_off)
        as_file = file_col.form_submit_button("Settings as a run file",
                                              help="Check these settings and offer them as a TOML file for "
                                                   "`crowdtune train offline --config FILE` (nothing starts)")
        if (start and not controls_off) or as_file:
            config, problems = validate_config(SFTConfig, values)
            if problems:
                st.session_state.pop("training_offline_run_file", None)
                st.error(("Not started; fix" if start else "Fix") + " these settings:\n\n"
                         + "\n".join(f"- {p}" for p in problems))
            else:
                parent_id = None if parent.startswith("(none") else parent
                request = RunRequest(RunKind.OFFLINE, config, train_face, base_model.strip() or None, parent_id)
                st.session_state["training_offline_run_file"] = run_file_text(request)
                if start and not controls_off:
                    run_id, job = actions.start_offline_training(conn, train_face, config.model_dump(mode="json"),
                                                                 base_model=request.base_model,
                                                                 parent_version_id=parent_id)
                    st.session_state["training_last_run"] = run_id
                    st.success(f"Run `{run_id}` queued on the train queue.")
    # Outside the form (a form holds no download button): the settings last checked or started, as a run file.
    if st.session_state.get("training_offline_run_file"):
        st.download_button("Download the run file", st.session_state["training_offline_run_file"],
                           file_name="offline-run.toml", mime="application/toml", on_click="ignore",
                           key="offline_run_file", help="`crowdtune train offline --config offline-run.toml` "
                                                        "starts the same run")

# ---- Online training ----------------------------------------------------------------------------
st.subheader("Start online training")
publishing = faces_for(faces, Purpose.ONLINE)  # the sandbox first: a real network is never preselected
online_face = ""
if not publishing:
    st.caption("To train online, add a face that can publish: a `sandbox` face (a simulated audience) above, "
               "or a network face (mastodon, bluesky, discord, reddit).")
else:
    online_face = st.selectbox("Face to train online", publishing, key="online_face",
                               index=preselected(publishing, view.online_face),
                               help="Sandbox and network faces can publish and read reactions.")
    face_row = faces.set_index("face_id").loc[online_face]
    # The controller's clock must run at the face's own speed: the form follows the chosen face.
    if st.session_state.get("online_acceleration_face") != online_face:
        st.session_state["online_time_acceleration"] = time_acceleration_of(faces, online_face)
        st.session_state["online_acceleration_face"] = online_face
    active_version = face_row["active_version_id"] if isinstance(face_row["active_version_id"], str) else None
    busy = online_states.get(online_face, ControllerState.IDLE) != ControllerState.IDLE
    if busy:
        st.caption(f"`{online_face}` is {online_states[online_face]}: "
                   "stop it (below) before starting another online run.")
    # Outside the form: the algorithm's own settings (in the form) follow the choice at once.
    algorithms = list(ALGORITHMS)
    algorithm = st.selectbox("Algorithm", algorithms, index=algorithms.index(DEFAULT_ALGORITHM),
                             key="online_algorithm", help=field_help(OnlineConfig, "algorithm"))
    with st.form("online_training"):
        base_model = ""
        if active_version:
            st.markdown(f"Starts from the face's active version `{active_version}` (chosen on the Models page).")
        else:
            base_model = st.text_input("Base model", settings.base_model, key="online_base_model",
                                       help=field_help(OnlineConfig, "base_model"))
        st.markdown("**Schedule** (in audience time: minutes, hours of the day in UTC)")
        values = config_fields(online_settings_form_part(ONLINE_SCHEDULE), "online", disabled=controls_off)
        settings_model = ALGORITHMS[algorithm]
        with st.expander(f"{algorithm} settings ({settings_model.__name__}: learning, guards, sampling policy)",
                         expanded=False):
            algorithm_values = config_fields(settings_model, f"online_{algorithm}", disabled=controls_off)
        with st.expander("Reward, generation, retry and offline-phase settings", expanded=False):
            others = [n for n in OnlineConfig.model_fields
                      if n not in (*ONLINE_SCHEDULE, "algorithm", "algorithm_settings", "base_model")]
            values |= config_fields(online_settings_form_part(others), "online", disabled=controls_off)
        if st.form_submit_button("Review and start", type="primary", disabled=controls_off or busy) \
                and not controls_off and not busy:
            try:
                # Only what differs from the defaults is kept in the run's config: it reads as the choices made.
                chosen = algorithm_config(algorithm, algorithm_values).model_dump(mode="json", exclude_defaults=True)
                online = parse_online_config({**values, "algorithm": algorithm, "algorithm_settings": chosen,
                                              "base_model": base_model.strip() or None})
                st.session_state["online_pending"] = {"face": online_face, "config": online.model_dump(mode="json")}
            except CrowdtuneError as exc:
                st.session_state.pop("online_pending", None)
                st.error(f"Not started. {exc.problem}\n\n{exc.fix}")

    # It publishes: nothing starts before the user has read what will happen and said yes.
    pending = st.session_state.get("online_pending")
    if pending:
        kind = faces.set_index("face_id").loc[pending["face"], "kind"]
        st.warning(publishing_summary(pending["face"], kind, OnlineConfig(**pending["config"])))
        yes_col, no_col, file_col = st.columns(3)
        file_col.download_button(
            "Download the run file", run_file_text(RunRequest(RunKind.ONLINE, OnlineConfig(**pending["config"]),
                                                              pending["face"])),
            file_name="online-run.toml", mime="application/toml", on_click="ignore", key="online_run_file",
            help="`crowdtune train online --config online-run.toml` starts the same run")
        if yes_col.button("Yes, start publishing", key="online_confirm", type="primary", disabled=controls_off) \
                and not controls_off:
            try:
                run_id = actions.start_online(conn, pending["face"], pending["config"])
                st.session_state["training_online_run"] = run_id
                del st.session_state["online_pending"]
                st.rerun()
            except CrowdtuneError as exc:
                show_error(exc)
        if no_col.button("Cancel", key="online_cancel"):
            del st.session_state["online_pending"]
            st.rerun()
    if st.session_state.get("training_online_run"):
        st.success(f"Online run `{st.session_state['training_online_run']}` started: its controller publishes on "
                   "schedule (state below).")

# ---- Runs: progress and stop --------------------------------------------------------------------
st.subheader("Runs")


def read_runs() -> tuple[pd.DataFrame, ...]:
    """The store reads of the runs section: active and recent runs, controllers, updates, the job audit."""
    return (views.runs_with_status(reader, ("queued", "running", "stopping")), views.latest_runs(reader, limit=20),
            views.online_controllers(reader), views.online_updates(reader, limit=20), views.training_jobs(reader))


@st.fragment(run_every=5)
def live_runs():
    try:
        # One Redis read when nothing was written since the last tick (the store writer's change counter).
        active, recent, controllers, updates, audit = live_reads("training_runs", settings, read_runs)
    except CrowdtuneError as exc:
        show_error(exc)
        return
    active = active[active["kind"] != "online"]  # an online run stops through its face's controller
    online = controllers[controllers["state"].isin([ControllerState.ONLINE, ControllerState.OFFLINE])]
    if active.empty and online.empty:
        st.caption("No run is queued or training.")
    for run in active.itertuples():
        progress = job_progress(conn, run.job_id) if conn is not None and run.job_id else None
        info_col, stop_col = st.columns([4, 1])
        with info_col:
            if progress is None:
                st.progress(0.0, text=f"`{run.run_id}` on {run.face_id}: {run.status}")
            else:
                stopping = " (stopping)" if run.status == "stopping" else ""
                st.progress(progress.fraction, text=f"`{run.run_id}` on {run.face_id}{stopping}: {progress.summary()}")
        with stop_col, st.popover("Stop", disabled=controls_off):
            st.write("Stop this run? It saves a checkpoint and ends as `stopped`.")
            if st.button("Yes, stop it", key=f"stop_{run.run_id}", type="primary", disabled=controls_off) \
                    and not controls_off:
                actions.stop_run(conn, run.run_id)
                st.session_state["training_stop_requested"] = run.run_id
    for face in online.itertuples():
        info_col, stop_col = st.columns([4, 1])
        paused = f" Paused: {face.paused_reason}" if isinstance(face.paused_reason, str) else ""
        info_col.markdown(f"**{face.face_id}** is {face.state} (run `{face.run_id}`): {face.published} published, "
                          f"{face.scored} scored, {face.updates} RL update{'' if face.updates == 1 else 's'}.{paused}")
        with stop_col, st.popover("Stop", disabled=controls_off):
            st.write(f"Stop online training on {face.face_id}? Nothing new is published; the post being published "
                     "is resolved, a running update stops, and posts already out are still scored.")
            if st.button("Yes, stop publishing", key=f"stop_online_{face.face_id}", type="primary",
                         disabled=controls_off) and not controls_off:
                try:
                    actions.stop_online(conn, face.face_id)
                    st.session_state["online_stop_requested"] = face.face_id
                except CrowdtuneError as exc:
                    show_error(exc)
    # Shown outside the popover, which closes when the fragment reruns.
    if st.session_state.get("training_stop_requested"):
        st.success(f"Stop requested for `{st.session_state['training_stop_requested']}`; "
                   "it saves a checkpoint and stops at its next step.")
    if st.session_state.get("online_stop_requested"):
        st.success(f"Stop requested for `{st.session_state['online_stop_requested']}`: it publishes nothing new "
                   "and goes IDLE once nothing is in flight.")
    if not recent.empty:
        st.dataframe(recent[["run_id", "kind", "face_id", "status", "base_model", "started_at", "ended_at", "error"]],
                     hide_index=True, width="stretch")
    if not controllers.empty:
        st.caption("Online training per face: controller state, current run, its posts published and scored, "
                   "completed RL updates:")
        st.dataframe(controllers, hide_index=True, width="stretch")
    if not updates.empty:
        st.caption("RL updates (each completed one made a model version):")
        st.dataframe(updates, hide_index=True, width="stretch")

    st.subheader("Jobs")
    if conn is not None:
        board = job_board(conn)
        if board:
            st.dataframe(pd.DataFrame([vars(row) for row in board]), hide_index=True, width="stretch")
        else:
            st.caption("No queued, running or recent jobs in Redis.")
    if not audit.empty:
        st.caption("Job audit in the store (every job a Crowdtune worker ran):")
        st.dataframe(audit, hide_index=True, width="stretch")


live_runs()
share_box("training", TrainingView(face=train_face if face_ids else "", online_face=online_face))
