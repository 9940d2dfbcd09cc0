"""Where face tokens come from: environment variables or a TOML secrets file, never the config.

A secret for field `token` of the `mastodon` face is read from `CROWDTUNE_MASTODON_TOKEN`, or from
the `[mastodon]` table of the TOML file named by `CROWDTUNE_SECRETS_FILE`:

    [mastodon]
    token = "..."

The environment wins over the file. Values come back as pydantic SecretStr, whose repr and str
are masked, so a secret cannot end up in a log line or an error message by accident.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import SecretStr

from faces.base import FaceConfigError

SECRETS_FILE_ENV = "CROWDTUNE_SECRETS_FILE"


def secret_env_var(kind: str, field_name: str) -> str:
    """The environment variable holding one secret, e.g. ('mastodon', 'token') -> CROWDTUNE_MASTODON_TOKEN."""
    return f"CROWDTUNE_{kind.upper()}_{field_name.upper()}"


def read_secrets_file(path: Path) -> dict[str, dict[str, str]]:
    """Read a TOML secrets file into {kind: {field: value}}. Errors name the file, never a value."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise FaceConfigError(
            f"The secrets file {path} does not exist.",
            f"Create it (TOML, one [kind] table per face) or unset {SECRETS_FILE_ENV}.",
        ) from None
    except tomllib.TOMLDecodeError as error:
        # The decoder's message gives line and column only, not the offending text.
        raise FaceConfigError(
            f"The secrets file {path} is not valid TOML ({error}).",
            'Fix the file: one [kind] table per face, values as quoted strings, e.g. token = "...".',
        ) from None
    return {kind: table for kind, table in data.items() if isinstance(table, dict)}


def load_face_secrets(
    kind: str,
    field_names: Iterable[str],
    environ: Mapping[str, str] | None = None,
    secrets_file: Path | str | None = None,
) -> dict[str, SecretStr]:
    """Collect the secrets one face needs.

    In: the face kind, the names of its secret config fields, the environment (default os.environ)
    and the TOML file (default: the one named by CROWDTUNE_SECRETS_FILE, if set).
    Out: {field name: SecretStr} for every secret that was found; missing ones are left out so the
    face's config can say which one is required.
    """
    environ = os.environ if environ is None else environ
    if secrets_file is None and environ.get(SECRETS_FILE_ENV):
        secrets_file = environ[SECRETS_FILE_ENV]
    from_file = read_secrets_file(Path(secrets_file)).get(kind, {}) if secrets_file else {}
    found: dict[str, SecretStr] = {}
    for field_name in field_names:
        value = environ.get(secret_env_var(kind, field_name))
        if value is None and field_name in from_file:
            value = str(from_file[field_name])
        if value:
            found[field_name] = SecretStr(value)
    return found
