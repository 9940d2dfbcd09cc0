"""Where model versions and run checkpoints live: under `artifacts_url`, any fsspec URL.

Layout:
    <artifacts_url>/versions/<version_id>/       a PEFT adapter folder (+ crowdtune_version.json)
    <artifacts_url>/checkpoints/<run_id>/        what a run needs to resume on any worker
    <artifacts_url>/exports/<version_id>-adapter/   a version exported with its model card (or -merged/)

With a local artifacts folder a run checkpoints straight into it. With a remote one (s3://...)
it checkpoints to a local folder and mirrors that folder up after each evaluation, so a run
whose worker died resumes on another machine.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import known_implementations

# object stores whose fsspec package an extra of ours installs: package -> extra
STORE_EXTRAS = {"s3fs": "s3", "gcsfs": "gcs"}


def missing_package(url: str) -> str | None:
    """Why `url` cannot be used here, when its filesystem's package is not installed or its protocol is
    unknown to fsspec (a sentence naming the fix); None when it can. Cheap: nothing is imported."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    protocol = protocol.split("::")[0]
    if protocol in fsspec.registry:  # already imported (memory, file, ...)
        return None
    known = known_implementations.get(protocol)
    if known is None:
        return f"fsspec knows no {protocol}:// filesystem; use a local folder, s3://, gs:// or another fsspec URL"
    package = known["class"].split(".", 1)[0]
    if importlib.util.find_spec(package) is not None:
        return None
    extra = STORE_EXTRAS.get(package)
    fix = f'pip install -e ".[{extra}]"' if extra else f"pip install {package}"
    return f"{protocol}:// URLs need the {package} package, which is not installed: {fix}"


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def version_url(artifacts_url: str, version_id: str) -> str:
    return join(artifacts_url, "versions", version_id)


def checkpoint_url(artifacts_url: str, run_id: str) -> str:
    return join(artifacts_url, "checkpoints", run_id)


def export_url(artifacts_url: str, version_id: str, merged: bool) -> str:
    return join(artifacts_url, "exports", f"{version_id}-{'merged' if merged else 'adapter'}")


def is_local(url: str) -> bool:
    fs, _ = fsspec.core.url_to_fs(url)
    return isinstance(fs, LocalFileSystem)


def local_path(url: str) -> Path:
    _, path = fsspec.core.url_to_fs(url)
    return Path(path)


def mirror_up(local_dir: Path, url: str) -> None:
    """Copy a local folder's files to `url` (overwriting), files first, then a marker of completeness."""
    fs, root = fsspec.core.url_to_fs(url)
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file() and not path.name.endswith(".tmp"):
            remote = join(root, path.relative_to(local_dir).as_posix())
            fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(path), remote)


def mirror_down(url: str, local_dir: Path) -> bool:
    """Fetch a mirrored folder into `local_dir` if it exists remotely; return whether it did."""
    fs, root = fsspec.core.url_to_fs(url)
    if not fs.exists(root):
        return False
    local_dir = Path(local_dir)
    shutil.rmtree(local_dir, ignore_errors=True)
    local_dir.mkdir(parents=True)
    fs.get(root.rstrip("/") + "/", str(local_dir) + "/", recursive=True)
    return True
