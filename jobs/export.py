"""Export job (queue `default`): a model version as a shippable folder under `<artifacts_url>/exports/`.

Runs where the artifacts are reachable (any worker, also with s3:// artifacts): read the version's card
facts through the store worker, write the export (crowdtune.training.export), upload it under
artifacts_url when that is remote, push it to a hub repo when asked.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from crowdtune import artifacts
from crowdtune.errors import CrowdtuneError
from crowdtune.runtime.queues import connect
from crowdtune.settings import load_settings
from crowdtune.store.remote import read_via_store_worker
from crowdtune.training.export import VersionCard, push_to_hub, write_export


def export_version(version_id: str, merged: bool = False, hub_repo: str | None = None) -> dict:
    """Export `version_id` (the adapter, or merged when `merged`) with its model card; push to `hub_repo` if given.
    Returns {"version_id", "export_url", "hub_url" (None unless pushed)}."""
    settings = load_settings()
    answer = read_via_store_worker(connect(settings), "version_card", version_id=version_id)
    if answer is None:
        raise CrowdtuneError(f"There is no model version {version_id!r}.", "Pick one from the Models page.")
    card = VersionCard.from_read(answer)
    url = artifacts.export_url(settings.artifacts, version_id, merged)
    with tempfile.TemporaryDirectory(prefix="crowdtune-export-") as tmp:
        local = artifacts.local_path(url) if artifacts.is_local(url) else Path(tmp)
        write_export(answer["version"]["artifact_url"], local, card, merged=merged,
                     cache_dir=settings.data_dir / "models")
        if not artifacts.is_local(url):
            artifacts.mirror_up(local, url)
        hub_url = push_to_hub(local, hub_repo) if hub_repo else None
    return {"version_id": version_id, "export_url": url, "hub_url": hub_url}
