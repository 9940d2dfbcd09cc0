"""Jobs about the system itself."""

from __future__ import annotations

import os
import platform
import socket


def probe_worker() -> dict:
    """Report what the worker that runs this job can do: host, devices, library versions.

    `ready_at` is the wall-clock time at which the job had its libraries and could start real
    work: benchmarks/dispatch.py measures dispatch latency up to that moment.
    """
    import time

    import peft
    import pytorch_lightning
    import torch
    import transformers

    ready_at = time.time()
    cuda = torch.cuda.is_available()
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "lightning": pytorch_lightning.__version__,
        "cuda": cuda,
        "devices": torch.cuda.device_count() if cuda else 0,
        "cpu_threads": torch.get_num_threads(),
        "ready_at": ready_at,
    }


def prepare_face(face_id: str) -> dict:
    """Do a face's one-time set-up now (a sandbox fits its audience), reporting progress in the job's
    meta, so that no publish job pays for it. Out: the face and the seconds it took."""
    import time

    from rq import get_current_job

    from crowdtune.runtime.progress import progress_reporter
    from crowdtune.runtime.queues import connect
    from crowdtune.settings import load_settings
    from crowdtune.store.remote import read_via_store_worker
    from faces.registry import build_face

    record = read_via_store_worker(connect(load_settings()), "face_record", face_id=face_id)
    if record is None:
        return {"face_id": face_id, "outcome": "no such face"}
    report, started = progress_reporter(get_current_job()), time.monotonic()
    build_face(record["kind"], record["config"], name=face_id).prepare(
        lambda done, total: report(done, total, None, None, f"setting up: embedding {done:,} of {total:,} posts"))
    return {"face_id": face_id, "seconds": round(time.monotonic() - started, 2)}


def check_face(face_id: str) -> dict:
    """Run the face's health check here, with this worker's secrets (the Settings page's "Check connection").

    Out: {"face_id", "kind", "checked_at"} and faces.base.FaceHealth's fields as plain data (ok, message,
    account, audience, audience_label, limits); a face that is not in the store or cannot be built (an invalid
    config) is not ok, its message the problem and the fix."""
    from dataclasses import asdict

    from crowdtune.errors import CrowdtuneError
    from crowdtune.runtime.queues import connect
    from crowdtune.settings import load_settings
    from crowdtune.store.remote import read_via_store_worker
    from crowdtune.store.writes import utc_now
    from faces.base import FaceHealth
    from faces.registry import build_face

    record = read_via_store_worker(connect(load_settings()), "face_record", face_id=face_id)
    if record is None:
        health = FaceHealth(False, str(CrowdtuneError(f"There is no face called {face_id!r}.",
                                                      "Add it on the Training page (\"Add or update a face\").")))
    else:
        try:
            health = build_face(record["kind"], record["config"], name=face_id).health()
        except CrowdtuneError as exc:
            health = FaceHealth(False, str(exc))
    return {"face_id": face_id, "kind": record["kind"] if record else None, "checked_at": utc_now().isoformat(),
            **asdict(health)}


def random_draws() -> list[float]:
    """Three draws from each seeded generator (random, numpy, torch): shows how a job was seeded."""
    import random

    import numpy as np
    import torch

    return [random.random(), float(np.random.rand()), float(torch.rand(1).item())]
