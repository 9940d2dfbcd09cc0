"""Offline training job (queue `train`): supervised LoRA fine-tuning on a face's imported posts.

Reports progress in the job's meta (`progress`: step, total, loss, eta_seconds, phase), writes
metrics and the resulting model version through the store queue, stops gracefully on a control
flag (the run is `stopping` from the request until its version is written), and resumes from its
checkpoint when it runs again after its worker was killed. The version's metrics carry the run's
measured speed (tokens_per_second, eval_seconds), which the Training page's cost estimate reads.
"""

from __future__ import annotations

import logging
import shutil

from pydantic import ValidationError
from rq import get_current_job

from crowdtune import artifacts
from crowdtune.errors import CrowdtuneError, RedisUnavailable, StoreUnavailable, failure_message
from crowdtune.runtime import stop_flags
from crowdtune.runtime.progress import progress_reporter
from crowdtune.runtime.queues import connect
from crowdtune.settings import load_settings
from crowdtune.states import RunStatus
from crowdtune.store.remote import read_rows_via_store_worker
from crowdtune.store.writes import StoreWriter, alert_op, metrics_op, update_op, upsert_op, utc_now
from crowdtune.training.loggers import StoreLogger, run_trackers
from crowdtune.training.models import save_version
from crowdtune.training.sft import SFTConfig, train_sft

log = logging.getLogger(__name__)


def train_offline(run_id: str, face_id: str, config: dict, base_model: str | None = None,
                  parent_version_id: str | None = None) -> dict:
    """Train, register the best adapter as a model version, and return a summary of the run."""
    settings = load_settings()
    conn = connect(settings)
    writer = StoreWriter(conn)
    job = get_current_job()
    base_model = base_model or settings.base_model
    # a stop asked while the run was queued (or before a retry) still shows until it is honoured
    starting = RunStatus.STOPPING if stop_flags.stop_requested(conn, run_id) else RunStatus.RUNNING
    writer.submit([update_op("runs", {"run_id": run_id}, {"status": starting, "started_at": utc_now(),
                                                          "error": None})])
    try:
        sft_config = SFTConfig(**config)
        posts = read_rows_via_store_worker(conn, "training_posts", face_id=face_id)
        if not posts:
            raise CrowdtuneError(f"The face {face_id!r} has no imported posts to train on.",
                                 f"Import its history first: `crowdtune import --face {face_id}` or the Training page.")

        remote_checkpoints = artifacts.checkpoint_url(settings.artifacts, run_id)
        if artifacts.is_local(remote_checkpoints):
            checkpoint_dir, mirrored = artifacts.local_path(remote_checkpoints), False
        else:
            checkpoint_dir, mirrored = settings.data_dir / "checkpoints" / run_id, True
            if not (checkpoint_dir / "last.ckpt").exists():
                artifacts.mirror_down(remote_checkpoints, checkpoint_dir)
        resumed = (checkpoint_dir / "last.ckpt").exists()

        mirrored_checkpoint: list[float] = []  # mtime of the last.ckpt mirrored last

        def mirror() -> None:  # after each evaluation's metrics: its checkpoint is complete by then
            last = checkpoint_dir / "last.ckpt"
            stamp = last.stat().st_mtime if last.exists() else 0.0
            if mirrored_checkpoint[-1:] == [stamp]:
                return  # a batch of step figures between evaluations: the checkpoint has not changed
            artifacts.mirror_up(checkpoint_dir, remote_checkpoints)
            mirrored_checkpoint[:] = [stamp]

        # the store (exactly once per step, see StoreLogger), then the trackers the `loggers` setting names
        loggers = [StoreLogger(writer, run_id, after_write=mirror if mirrored else None),
                   *run_trackers(settings, face_id, run_id)]
        on_progress = progress_reporter(job)

        result = train_sft(
            sft_config, posts, base_model,
            model_cache_dir=settings.data_dir / "models",
            loggers=loggers, on_progress=on_progress,
            should_stop=lambda: stop_flags.stop_requested(conn, run_id),
            checkpoint_dir=checkpoint_dir, resume=True, device=settings.device,
        )

        version_id = f"{run_id}-step{result.best_step if result.best_step is not None else result.steps}"
        url = artifacts.version_url(settings.artifacts, version_id)
        best = next((m for m in result.metrics if m.get("step") == result.best_step), {})
        speed = {"tokens_per_second": result.tokens_per_second, "eval_seconds": result.eval_seconds}
        save_version(result.adapter_dir, url, base_model=base_model,
                     metadata={"version_id": version_id, "run_id": run_id, "parent_version_id": parent_version_id,
                               # what a model card says it learnt from (posts are oldest first)
                               "face_id": face_id, "posts": len(posts),
                               "data_span": [posts[0]["created_at"], posts[-1]["created_at"]]})
        writer.submit([
            # a resumed run that had nothing left to do measured nothing: no zero speed row
            *([metrics_op(run_id, result.steps, speed)] if all(speed.values()) else []),
            upsert_op("model_versions", [{
                "version_id": version_id, "run_id": run_id, "parent_version_id": parent_version_id,
                "base_model": base_model, "artifact_url": url, "step": result.best_step or result.steps,
                "metrics": {**{k: v for k, v in best.items() if k != "step"}, **speed},
                "note": f"offline {result.stopped_reason}",
            }]),
            update_op("runs", {"run_id": run_id}, {"status": RunStatus(result.stopped_reason), "ended_at": utc_now()}),
            _resolve_retry_alert(run_id),
        ], write_id=f"finish:{run_id}")
        stop_flags.clear_stop(conn, run_id)
        if mirrored:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        return {"run_id": run_id, "version_id": version_id, "resumed": resumed, "artifact_url": url,
                "stopped_reason": result.stopped_reason, "steps": result.steps, "best_step": result.best_step,
                "best_val_loss": result.best_val_loss, "tokens_per_second": result.tokens_per_second,
                "eval_seconds": result.eval_seconds, "data": result.data}
    except Exception as exc:
        _record_failure(writer, job, run_id, face_id, exc)
        raise


def _record_failure(writer: StoreWriter, job, run_id: str, face_id: str, exc: Exception) -> None:
    """A bad setting or missing data fails the run at once; anything else (a full or read-only
    disk, a lost connection, memory) is worth another try: RQ runs the job again after the next
    retry wait and it resumes from its checkpoint. Either way the run row and an alert say why."""
    message = failure_message(exc)
    source, alert_id = f"offline {face_id}", f"run-failed:{run_id}"
    permanent = (isinstance(exc, (CrowdtuneError, ValidationError))
                 and not isinstance(exc, (RedisUnavailable, StoreUnavailable)))
    if permanent and job is not None:
        job.retries_left = 0  # the worker reads this very object: no retry can fix a bad setting
    if job is not None and job.should_retry:
        wait = job.get_retry_interval()
        note = (f"{message} - retrying in {wait} s from the last checkpoint "
                f"({job.retries_left} attempt(s) left)")
        writer.submit([
            update_op("runs", {"run_id": run_id}, {"status": RunStatus.QUEUED, "error": note[:2000]}),
            alert_op(f"offline-retry:{run_id}", "warning", source, f"Offline run {run_id}: {note}"),
        ])
        return
    writer.submit([
        update_op("runs", {"run_id": run_id},
                  {"status": RunStatus.FAILED, "ended_at": utc_now(), "error": message[:2000]}),
        alert_op(alert_id, "error", source, f"Offline run {run_id} failed: {message}"),
        _resolve_retry_alert(run_id),
    ])


def _resolve_retry_alert(run_id: str) -> dict:
    """An earlier attempt's retry warning is over once a later attempt ended, either way."""
    return update_op("alerts", {"alert_id": f"offline-retry:{run_id}"}, {"resolved_at": utc_now()})
