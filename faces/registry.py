"""Every face by its kind name, and one way to build a face from plain settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from faces.base import Face, FaceConfigError
from faces.bluesky import BlueskyFace
from faces.dataset import DatasetFace
from faces.discord import DiscordFace
from faces.mastodon import MastodonFace
from faces.reddit import RedditFace
from faces.sandbox import SandboxFace
from faces.secrets import load_face_secrets

FACE_KINDS: dict[str, type[Face]] = {
    face.kind: face for face in (DatasetFace, SandboxFace, MastodonFace, BlueskyFace, DiscordFace, RedditFace)
}


def needs_set_up(kind: str) -> bool:
    """Whether faces of this kind have one-time set-up to do (Face.prepare overridden: the sandbox)."""
    return kind in FACE_KINDS and FACE_KINDS[kind].prepare is not Face.prepare


def build_face(kind: str, config: Mapping[str, Any], secrets: Mapping[str, str] | None = None, *,
               name: str | None = None) -> Face:
    """Build a face.

    In: the kind name (a key of FACE_KINDS), its config as plain data (e.g. from TOML or a form),
    its secrets by config field name, and the face's name (its face_id); when `secrets` is None they
    are loaded from the environment / secrets file, the face's own before its kind's (faces.secrets).
    Out: the face, not yet connected.
    Raises FaceConfigError naming the valid kinds, or every invalid field and why (never its value).
    """
    face_class = FACE_KINDS.get(kind)
    if face_class is None:
        raise FaceConfigError(f"There is no face of kind {kind!r}.", f"Use one of: {', '.join(sorted(FACE_KINDS))}.")
    if secrets is None:
        secrets = load_face_secrets(kind, face_class.secret_fields, face_name=name)
    unknown_secrets = set(secrets) - set(face_class.secret_fields)
    if unknown_secrets:
        raise FaceConfigError(
            f"The {kind} face has no secret called {', '.join(sorted(unknown_secrets))}.",
            f"Its secrets are: {', '.join(face_class.secret_fields) or 'none'}.",
        )
    try:
        face_config = face_class.Config.model_validate({**dict(config), **dict(secrets)})
    except ValidationError as error:
        # Only field names and messages: an input value could be a token.
        problems = "; ".join(
            f"{'.'.join(str(part) for part in detail['loc']) or '(config)'}: {detail['msg']}"
            for detail in error.errors()
        )
        raise FaceConfigError(
            f"The {kind} face config is invalid: {problems}.",
            f"Fix those fields; `crowdtune config-docs {face_class.Config.__name__}` lists each field and its default.",
        ) from None
    return face_class(face_config)
