"""Which face a form preselects: the one that fits the form, never a real network by default.

Import and offline training want a face with history: the bundled dataset first, then other
datasets, then the sandbox, real networks last. Online training wants a face that can publish and
read reactions: the sandbox first. A face named in the page's link wins when it fits.
"""

from __future__ import annotations

import json
from enum import StrEnum

import pandas as pd

from faces.registry import FACE_KINDS

BUNDLED_SOURCES = ("trump_tweets", "hutto_tweets")


class Purpose(StrEnum):
    HISTORY = "history"  # import, offline training
    ONLINE = "online"    # publish and read reactions


def face_config(faces: pd.DataFrame, face_id: str) -> dict:
    """The face's stored config as a dict (the store keeps it as JSON text)."""
    raw = faces.set_index("face_id").loc[face_id, "config"]
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {}


def _rank(kind: str, config: dict, purpose: Purpose) -> int | None:
    """Lower is preferred; None = the face does not fit the purpose."""
    face = FACE_KINDS.get(kind)
    if face is None:
        return None
    caps = face.capabilities
    if purpose is Purpose.ONLINE:
        if not (caps.publish and caps.reactions):
            return None
        return 0 if kind == "sandbox" else 1
    if not caps.fetch_history:
        return None
    if kind == "dataset":
        return 0 if config.get("source", "trump_tweets") in BUNDLED_SOURCES else 1
    return 2 if kind == "sandbox" else 3


def faces_for(faces: pd.DataFrame, purpose: Purpose) -> list[str]:
    """The face ids that fit `purpose`, the one to preselect first (then by name)."""
    ranked = []
    for face_id, kind in zip(faces["face_id"], faces["kind"], strict=True):
        rank = _rank(kind, face_config(faces, face_id), purpose)
        if rank is not None:
            ranked.append((rank, face_id))
    return [face_id for _, face_id in sorted(ranked)]


def preselected(options: list[str], wanted: str | None) -> int:
    """The index to preselect in `options`: the linked face when it is one of them, else the first."""
    return options.index(wanted) if wanted in options else 0


def time_acceleration_of(faces: pd.DataFrame, face_id: str) -> float:
    """How much faster than the clock the face's audience lives (a sandbox's setting; 1 for real networks)."""
    kind = faces.set_index("face_id").loc[face_id, "kind"]
    face = FACE_KINDS.get(kind)
    fields = getattr(getattr(face, "Config", None), "model_fields", {})
    if "time_acceleration" not in fields:
        return 1.0
    value = face_config(faces, face_id).get("time_acceleration", fields["time_acceleration"].default)
    return float(value)
