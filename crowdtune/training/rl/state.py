"""What an algorithm keeps in `state_dir` across the updates of a face: its JSON state (read_state,
write_state). Embeddings of posts live in the shared cache (crowdtune.embeddings.shared_cache), so
each post is embedded once for offline runs, online updates and publishing alike.
"""

from __future__ import annotations

import json
from pathlib import Path

from crowdtune.training.checkpoints import write_json


def read_state(path: Path, default: dict) -> dict:
    return json.loads(path.read_text()) if path.is_file() else dict(default)


def write_state(path: Path, state: dict) -> None:
    write_json(path, state)
