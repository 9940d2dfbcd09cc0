"""Settings: face credentials (write-only), each network face's Check connection, the app's settings (read-only)."""

import pandas as pd
import streamlit as st

from crowdtune import actions
from crowdtune.dashboard.access import readonly_notice
from crowdtune.dashboard.links import share_box
from crowdtune.dashboard.page_setup import is_fragment_rerun, or_stop, show_error, through_app
from crowdtune.errors import CrowdtuneError, traceback_message
from crowdtune.runtime.progress import fetch_job
from crowdtune.settings import load_settings
from crowdtune.store import views
from crowdtune.store.reads import StoreReader
from faces.registry import FACE_KINDS
from faces.secrets import configured_secrets_file, load_face_secrets, secret_sources, write_secret

through_app()  # before anything else: this page opens only through app.py's login gate

st.title("Settings")

with or_stop():
    settings = load_settings()
    faces = views.faces_frame(StoreReader.from_settings(settings))


def save_credentials(form: str, kind: str, face_name: str | None, may_control: bool) -> None:
    """Form callback: store what was typed in the face's own table (or its kind's when `face_name` is
    None), then empty the boxes so no secret stays in the session."""
    fields = FACE_KINDS[kind].secret_fields
    typed = {f: st.session_state.get(f"secret_{form}_{f}") or "" for f in fields}
    for f in fields:
        st.session_state[f"secret_{form}_{f}"] = ""
    new = {f: v for f, v in typed.items() if v}
    if not may_control:
        result = ("warn", "Read-only: log in to change credentials.")
    elif not new:
        result = ("warn", "Nothing typed: nothing changed.")
    else:
        path, _ = configured_secrets_file()
        for field, value in new.items():
            write_secret(path, field, value, kind=None if face_name else kind, face_name=face_name)
        result = ("ok", f"Saved {', '.join(new)} to the secrets file. The next job of this face uses it: "
                        "press Check connection to try it now.")
    st.session_state[f"secrets_message_{form}"] = result


def credentials_form(form: str, kind: str, face_name: str | None, title: str, may_control: bool) -> None:
    """One write-only form: which secrets are set (and where they are looked for), boxes never pre-filled."""
    fields = FACE_KINDS[kind].secret_fields
    try:
        found = load_face_secrets(kind, fields, face_name=face_name)
    except CrowdtuneError as exc:
        show_error(exc)
        found = {}
    with st.form(f"secrets_{form}"):
        marks = {True: ":material/check_circle: set", False: ":material/warning: not set"}  # emoji need a font
        st.markdown(f"**{title}**: " + ", ".join(f"`{f}` {marks[f in found]}" for f in fields))
        for f in fields:
            st.text_input(f, type="password", key=f"secret_{form}_{f}", placeholder="type a new value to replace it",
                          help="Looked for in " + ", then ".join(secret_sources(kind, f, face_name)) + ".")
        st.form_submit_button("Save credentials", disabled=not may_control, on_click=save_credentials,
                              args=(form, kind, face_name, may_control))
    message = st.session_state.pop(f"secrets_message_{form}", None)
    if message:
        (st.success if message[0] == "ok" else st.warning)(message[1])


CHECKS = "settings_checks"  # face_id -> the job id of its latest Check connection
CHECKED = "settings_checked"  # job id -> (state, what to show) once it ended: never asked again


def redis_or_none():
    """The Redis connection the checks go through, or None (then Check connection says what to start)."""
    from crowdtune.runtime.queues import connect

    try:
        return connect(settings)
    except CrowdtuneError:
        return None


def start_check(face_id: str) -> None:
    """The Check connection button's click: queue the face's health check on a worker (jobs run, pages draw)."""
    st.session_state.setdefault(CHECKS, {})[face_id] = actions.check_face(conn, face_id).id


def check_outcome(job_id: str) -> tuple[str, object]:
    """(state, what to show) of a check job: ("finished", its result dict), ("failed", the error with its
    problem), ("expired", None), or (a waiting or running state, None)."""
    job = fetch_job(conn, job_id)
    if job is None:
        return "expired", None
    state = getattr(job.get_status(refresh=True), "value", "queued")
    if state in ("finished", "failed"):
        result = job.latest_result()
        if state == "finished":
            return state, result.return_value if result is not None else None
        return state, traceback_message(result.exc_string if result else None, default="see the System page")
    return state, None


def show_health(health: dict) -> None:
    """A finished check: who the face acts as, its audience, the limits it keeps; or what is wrong and the fix."""
    message = health["message"].replace("\nFix:", "\n\n**Fix:**")
    if health["ok"]:
        account = f": {health['account']}" if health.get("account") else ""
        audience = (f" · **{health['audience']:,}** {health['audience_label']}"
                    if health.get("audience") is not None else " · audience size not given by the network")
        st.success(f"**Connected**{account}{audience}\n\n{message}")
    else:
        st.error(message)
    if health.get("limits"):
        st.markdown("Limits it keeps (it waits before a request the network would refuse):\n"
                    + "\n".join(f"- {line}" for line in health["limits"]))
    st.caption(f"Checked at {str(health.get('checked_at', ''))[:19].replace('T', ' ')} UTC by a worker, "
               "with the secrets that worker reads.")


def connection_check(face_id: str) -> None:
    """The face's latest check, polled every 2 s while its job waits or runs, and drawn once when it ended."""
    checks, checked = st.session_state.get(CHECKS, {}), st.session_state.setdefault(CHECKED, {})
    job_id = checks.get(face_id)
    if job_id is None or conn is None:
        return

    @st.fragment(run_every=None if job_id in checked else 2)
    def latest_check():
        state, shown = checked[job_id] if job_id in checked else check_outcome(job_id)
        if state in ("finished", "failed", "expired"):
            checked[job_id] = (state, shown)
        if state == "finished" and isinstance(shown, dict):
            show_health(shown)
        elif state == "failed":
            st.error(f"The check itself failed: {shown}")
        elif state == "expired":
            st.warning("The check's job expired; check again.")
        else:
            st.caption(f"Checking… ({state}; a worker on the control queue runs it: `make run` starts them)")
        if is_fragment_rerun() and job_id in checked:
            st.rerun()  # the whole page: the fragment is declared again, without its timer

    latest_check()


st.subheader("Face credentials")
may_control = readonly_notice(settings)
conn = redis_or_none()
secrets_path, _ = configured_secrets_file()
network_faces = faces[faces["kind"].map(lambda k: bool(getattr(FACE_KINDS.get(k), "secret_fields", ())))] \
    if not faces.empty else faces
if network_faces.empty:
    st.caption("No face needs credentials yet. Add a Mastodon, Bluesky, Discord or Reddit face on the Training "
               "page (\"Add or update a face\"), then give it its token here.")
# Each face's own credentials first: two accounts of one network each keep theirs.
for face in network_faces.itertuples():
    credentials_form(f"face_{face.face_id}", face.kind, face.face_id, f"{face.face_id} ({face.kind})", may_control)
    st.button("Check connection", key=f"check_{face.face_id}", disabled=not may_control or conn is None,
              on_click=start_check, args=(face.face_id,),
              help="A worker signs in with the saved credentials and reads the account, its audience and the "
                   "limits it keeps." + ("" if conn is not None else " Needs Redis and a worker: `make run`."))
    connection_check(face.face_id)
with st.expander("Shared by every face of a kind (used when a face has none of its own)"):
    for kind in sorted(k for k, face_class in FACE_KINDS.items() if face_class.secret_fields):
        credentials_form(kind, kind, None, kind, may_control)
st.caption(f"Secrets file: `{secrets_path}` ({'exists' if secrets_path.exists() else 'created on the first save'}, "
           "readable by its owner only). Environment variables `CROWDTUNE_FACE_<NAME>_<FIELD>` and "
           "`CROWDTUNE_<KIND>_<FIELD>` win over it.")

st.subheader("App settings (read-only)")
shown = settings.model_dump()
shown["redis_url"] = settings.redis_display_url
shown["login_password"] = "set" if settings.login_password else "not set"
shown["db_path"] = str(settings.store_path)
shown["artifacts_url"] = settings.artifacts
st.dataframe(pd.DataFrame([{"setting": k, "value": str(v)} for k, v in shown.items()]), hide_index=True,
             width="stretch")
st.caption("Change them with `CROWDTUNE_<NAME>` environment variables or `crowdtune.toml`, then restart.")
share_box("settings", None)
