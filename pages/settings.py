"""Settings: face credentials (write-only) and the app's settings (read-only)."""

import json
import os
import tomllib
from pathlib import Path

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
from faces.secrets import SECRETS_FILE_ENV, load_face_secrets, secret_env_var

st.title("Settings")

with or_stop():
    settings = load_settings()
    faces = views.faces_frame(StoreReader.from_settings(settings))


def write_secret(path: Path, kind: str, field: str, value: str) -> None:
    """Merge one secret into the TOML secrets file, readable by its owner only."""
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    data.setdefault(kind, {})[field] = value
    # JSON strings are valid TOML basic strings (same escapes), so no TOML writer is needed.
    text = "".join(f"[{table}]\n" + "".join(f"{key} = {json.dumps(str(v))}\n" for key, v in values.items()) + "\n"
                   for table, values in data.items() if isinstance(values, dict))
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def save_credentials(kind: str, fields: tuple[str, ...], may_control: bool) -> None:
    """Form callback: store what was typed, then empty the boxes so no secret stays in the session."""
    typed = {f: st.session_state.get(f"secret_{kind}_{f}") or "" for f in fields}
    for f in fields:
        st.session_state[f"secret_{kind}_{f}"] = ""
    new = {f: v for f, v in typed.items() if v}
    secrets_file = os.environ.get(SECRETS_FILE_ENV)
    if not may_control:
        result = ("warn", "Read-only: log in to change credentials.")
    elif not new:
        result = ("warn", "Nothing typed: nothing changed.")
    elif secrets_file:
        for field, value in new.items():
            write_secret(Path(secrets_file), kind, field, value)
        result = ("ok", f"Saved {', '.join(new)} to the secrets file. "
                        "Restart the workers (`make run`) so they read it.")
    else:
        result = ("warn", "No secrets file is configured, so the app cannot store this. Either set "
                  + ", ".join(f"`{secret_env_var(kind, f)}`" for f in new)
                  + f" in the workers' environment, or set `{SECRETS_FILE_ENV}` to a file path "
                  "(for the app and the workers) and save here again.")
    st.session_state[f"secrets_message_{kind}"] = result


st.subheader("Face credentials")
may_control = readonly_notice(settings)
secrets_file = os.environ.get(SECRETS_FILE_ENV)
kinds_in_use = set(faces["kind"]) if not faces.empty else set()
# Every kind that needs credentials, those in use first: tokens can be set before adding the face.
kinds_with_secrets = sorted((k for k, face in FACE_KINDS.items() if face.secret_fields),
                            key=lambda k: (k not in kinds_in_use, k))
for kind in kinds_with_secrets:
    fields = FACE_KINDS[kind].secret_fields
    try:
        found = load_face_secrets(kind, fields)
    except CrowdtuneError as exc:
        show_error(exc)
        found = {}
    with st.form(f"secrets_{kind}"):
        st.markdown(f"**{kind}**{' (in use)' if kind in kinds_in_use else ''}: " + ", ".join(
            f"`{f}` {'✅ set' if f in found else '⚠️ not set'}" for f in fields))
        # Write-only: never pre-filled, never shown back; a blank box leaves the secret as it is.
        for f in fields:
            st.text_input(f, type="password", key=f"secret_{kind}_{f}", placeholder="type a new value to replace it")
        st.form_submit_button("Save credentials", disabled=not may_control, on_click=save_credentials,
                              args=(kind, fields, may_control))
    message = st.session_state.pop(f"secrets_message_{kind}", None)
    if message:
        (st.success if message[0] == "ok" else st.warning)(message[1])
st.caption(f"Secrets file: `{secrets_file}`" if secrets_file else
           f"Secrets come from environment variables (`CROWDTUNE_<KIND>_<FIELD>`); set `{SECRETS_FILE_ENV}` "
           "to let this page write them to a file.")

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
