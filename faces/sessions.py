"""Sessions a network face keeps between jobs: a file under the data folder, readable by its owner only.

Bluesky limits how often an account may sign in (createSession: 30 per 5 minutes, 300 per day), and
every job of a worker runs in a fresh process, so a session kept only in memory would be created
anew by every job. The session (its access and refresh tokens) is kept in
`<data_dir>/sessions/<network>-<key>.json` (mode 0600, folder 0700), never in Redis or the store, so
it never leaves the machine; each machine keeps its own.

A session belongs to the credentials it was made with: the file holds a salted hash of them, and a
face whose password changed does not use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from pathlib import Path


def sessions_folder() -> Path:
    """`<data_dir>/sessions` of the current settings."""
    from crowdtune.settings import load_settings

    return load_settings().data_dir / "sessions"


class SessionFile:
    """One account's stored session. In: the network's name and what identifies the account (its
    server and handle), hashed into the file name."""

    def __init__(self, network: str, account: str, folder: Path | None = None):
        key = hashlib.sha256(account.encode()).hexdigest()[:20]
        self.path = (folder or sessions_folder()) / f"{network}-{key}.json"

    @staticmethod
    def _check(salt: str, credential: str) -> str:
        return hashlib.sha256(f"{salt}:{credential}".encode()).hexdigest()

    def load(self, credential: str) -> str | None:
        """The stored session if it was made with `credential`, else None (none, unreadable, or other credentials)."""
        try:
            data = json.loads(self.path.read_text())
            if secrets.compare_digest(data["check"], self._check(data["salt"], credential)):
                return str(data["session"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def save(self, session: str, credential: str) -> None:
        """Store `session` (replacing the file atomically, owner-only) as made with `credential`."""
        salt = secrets.token_hex(8)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".session-")  # created 0600
        try:
            with os.fdopen(descriptor, "w") as handle:
                json.dump({"salt": salt, "check": self._check(salt, credential), "session": session}, handle)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)
