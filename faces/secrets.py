"""Where face tokens come from: environment variables or a TOML secrets file, never the config.

Each face looks for its secrets under its own name first, then under its kind, so two accounts of
one network can run side by side and a single account needs nothing more than before. For the field
`token` of the face `work-masto` (kind `mastodon`), strongest first:

1. `CROWDTUNE_FACE_WORK_MASTO_TOKEN` (the name upper-cased, anything but letters and digits -> `_`)
2. the `[faces.work-masto]` table of the secrets file
3. `CROWDTUNE_MASTODON_TOKEN`
4. the `[mastodon]` table of the secrets file

    [faces.work-masto]
    token = "..."

    [mastodon]          # every Mastodon face without a token of its own
    token = "..."

The secrets file is the one named by `CROWDTUNE_SECRETS_FILE` (which must then exist), else
`<data_dir>/secrets.toml` if it exists (the Settings page creates it, readable by its owner only).
Values come back as pydantic SecretStr, whose repr and str are masked, so a secret cannot end up
in a log line or an error message by accident.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import SecretStr

from faces.base import FaceConfigError

SECRETS_FILE_ENV = "CROWDTUNE_SECRETS_FILE"
FACES_TABLE = "faces"


def secret_env_var(kind: str, field_name: str) -> str:
    """The per-kind environment variable of one secret, e.g. ('mastodon', 'token') -> CROWDTUNE_MASTODON_TOKEN."""
    return f"CROWDTUNE_{kind.upper()}_{field_name.upper()}"


def face_env_var(face_name: str, field_name: str) -> str:
    """The per-face environment variable, e.g. ('work-masto', 'token') -> CROWDTUNE_FACE_WORK_MASTO_TOKEN."""
    return f"CROWDTUNE_FACE_{re.sub(r'[^A-Za-z0-9]', '_', face_name).upper()}_{field_name.upper()}"


def secret_sources(kind: str, field_name: str, face_name: str | None = None) -> list[str]:
    """Where one secret is looked for, strongest first, as a person would write each place."""
    kind_places = [f"`{secret_env_var(kind, field_name)}`", f"`[{kind}]` in the secrets file"]
    if face_name is None:
        return kind_places
    return [f"`{face_env_var(face_name, field_name)}`", f"`[{FACES_TABLE}.{toml_key(face_name)}]` in the secrets file",
            *kind_places]


def configured_secrets_file(environ: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The secrets file and whether it was named explicitly (CROWDTUNE_SECRETS_FILE, or `secrets_file`
    in crowdtune.toml): an explicit one must exist; the default, `<data_dir>/secrets.toml`, is used
    when it does."""
    environ = os.environ if environ is None else environ
    if environ.get(SECRETS_FILE_ENV):
        return Path(environ[SECRETS_FILE_ENV]), True
    from crowdtune.settings import load_settings

    settings = load_settings()
    return settings.secrets_path, settings.secrets_file is not None


def read_secrets_file(path: Path) -> dict[str, dict]:
    """Read a TOML secrets file into {kind: {field: value}, "faces": {name: {field: value}}}.
    Errors name the file, never a value."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise FaceConfigError(
            f"The secrets file {path} does not exist.",
            f"Create it (TOML, one [faces.NAME] or [kind] table per account) or unset {SECRETS_FILE_ENV}.",
        ) from None
    except tomllib.TOMLDecodeError as error:
        # The decoder's message gives line and column only, not the offending text.
        raise FaceConfigError(
            f"The secrets file {path} is not valid TOML ({error}).",
            'Fix the file: one [faces.NAME] or [kind] table per account, values as quoted strings, e.g. token = "...".',
        ) from None
    return {kind: table for kind, table in data.items() if isinstance(table, dict)}


def load_face_secrets(
    kind: str,
    field_names: Iterable[str],
    environ: Mapping[str, str] | None = None,
    secrets_file: Path | str | None = None,
    face_name: str | None = None,
) -> dict[str, SecretStr]:
    """Collect the secrets one face needs, in the order of the module docstring.

    In: the face kind, the names of its secret config fields, the environment (default os.environ),
    the TOML file (default: configured_secrets_file) and the face's name (None: per-kind names only).
    Out: {field name: SecretStr} for every secret that was found; missing ones are left out so the
    face's config can say which one is required.
    """
    environ = os.environ if environ is None else environ
    if secrets_file is None:
        path, explicit = configured_secrets_file(environ)
        data = read_secrets_file(path) if explicit or path.is_file() else {}
    else:
        data = read_secrets_file(Path(secrets_file))
    own = (data.get(FACES_TABLE) or {}).get(face_name, {}) if face_name is not None else {}
    shared = data.get(kind, {})
    found: dict[str, SecretStr] = {}
    for field_name in field_names:
        candidates = [environ.get(secret_env_var(kind, field_name)), shared.get(field_name)]
        if face_name is not None:
            candidates = [environ.get(face_env_var(face_name, field_name)), own.get(field_name), *candidates]
        value = next((str(c) for c in candidates if c), None)
        if value:
            found[field_name] = SecretStr(value)
    return found


def toml_key(key: str) -> str:
    """A TOML key as written: bare when it may be, else a quoted string (JSON's escapes are TOML's)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def write_secret(path: Path, field_name: str, value: str, *, kind: str | None = None,
                 face_name: str | None = None) -> None:
    """Merge one secret into the TOML secrets file, creating it (and its folder) if needed.

    In: the file, the field and its value, and where it belongs: the face's own table (`face_name`)
    or its kind's (`kind`). The file is replaced atomically and is readable by its owner only (0600),
    also when it existed with wider permissions.
    """
    if (kind is None) == (face_name is None):
        raise ValueError("write_secret needs exactly one of kind and face_name")
    data = read_secrets_file(path) if path.exists() else {}
    if face_name is not None:
        data.setdefault(FACES_TABLE, {}).setdefault(face_name, {})[field_name] = value
    else:
        data.setdefault(kind, {})[field_name] = value
    lines: list[str] = []
    for table, values in data.items():
        if table == FACES_TABLE:
            for name, fields in values.items():
                lines += [f"[{FACES_TABLE}.{toml_key(name)}]", *_pairs(fields), ""]
        else:
            lines += [f"[{toml_key(table)}]", *_pairs(values), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600; the rename makes a reader see the old file or the new one, never half.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secrets-", suffix=".toml")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write("\n".join(lines))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _pairs(values: Mapping[str, object]) -> list[str]:
    return [f"{toml_key(key)} = {json.dumps(str(value))}" for key, value in values.items()
            if not isinstance(value, dict)]
