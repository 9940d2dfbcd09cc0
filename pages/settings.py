"""Settings: face credentials (write-only) and the app's settings (read-only)."""

import pandas as pd
import streamlit as st

from crowdtune.dashboard.access import readonly_notice
from crowdtune.dashboard.links import share_box
from crowdtune.dashboard.page_setup import or_stop, show_error
from crowdtune.errors import CrowdtuneError
from crowdtune.settings import load_settings
from crowdtune.store import views
from crowdtune.store.reads import StoreReader
from faces.registry import FACE_KINDS
from faces.secrets import configured_secrets_file, load_face_secrets, secret_sources, write_secret

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
        result = ("ok", f"Saved {', '.join(new)} to the secrets file. The next job of this face uses it.")
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


st.subheader("Face credentials")
may_control = readonly_notice(settings)
secrets_path, _ = configured_secrets_file()
network_faces = faces[faces["kind"].map(lambda k: bool(getattr(FACE_KINDS.get(k), "secret_fields", ())))] \
    if not faces.empty else faces
if network_faces.empty:
    st.caption("No face needs credentials yet. Add a Mastodon, Bluesky, Discord or Reddit face on the Training "
               "page (\"Add or update a face\"), then give it its token here.")
# Each face's own credentials first: two accounts of one network each keep theirs.
for face in network_faces.itertuples():
    credentials_form(f"face_{face.face_id}", face.kind, face.face_id, f"{face.face_id} ({face.kind})", may_control)
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
