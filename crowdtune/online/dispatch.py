"""Carrying out a controller decision: the store writes and the jobs it implies.

`carry_out` is what a tick does with `crowdtune.online.controller.decide`'s answer. Every job id
and write id is deterministic, so carrying out the same decision twice (a tick re-run after a
crash) enqueues and writes nothing new.
"""

from __future__ import annotations

import redis
from rq import Retry

from crowdtune.actions import start_offline_training
from crowdtune.online import records
from crowdtune.online.controller import ControllerSnapshot, Decision, OnlineConfig
from crowdtune.online.reward_fits import ensure_reward_fit
from crowdtune.online.schedule import ensure_job, safe_id, schedule_tick
from crowdtune.runtime import defaults, stop_flags
from crowdtune.runtime.queues import JobKind
from crowdtune.settings import QUEUE_CONTROL, QUEUE_DEFAULT, QUEUE_TRAIN
from crowdtune.states import UpdateStatus
from crowdtune.store.writes import StoreWriter, controller_op


def carry_out(conn: redis.Redis, raw: dict, snap: ControllerSnapshot, decision: Decision) -> dict:
    """Turn a decision into store writes and jobs; return what was handed out (for the tick's result)."""
    writer = StoreWriter(conn)
    cfg, face_id, run_id = snap.config, snap.face_id, snap.run_id
    active = (raw.get("face") or {}).get("active_version_id")
    done: dict = {"collect": [collect_job(conn, cfg, face_id, post) for post in decision.collect],
                  "publish": None, "update": None}
    # Before any publish job: on the `default` queue a fresh reward model is ready for the slot.
    if decision.fit_reward_model is not None:
        done["fit_reward_model"] = ensure_reward_fit(conn, face_id, decision.fit_reward_model)

    for post, reason, decided_by in decision.skip_reviews:
        writer.submit(records.review_skipped(face_id, post, reason, decided_by),
                      write_id=f"review-skipped:{post.post_id}")
    if decision.review_overdue is not None:
        waiting, oldest = decision.review_overdue
        writer.submit([records.review_overdue(face_id, waiting, oldest)], write_id=f"review-overdue:{oldest}")
    if decision.resume_slot is not None:
        publish_job(conn, cfg, face_id, run_id, decision.resume_slot)
    if decision.publish_slot is not None:
        slot = decision.publish_slot
        writer.submit([controller_op(face_id, publish_slot=slot + 1)], write_id=f"slot:{run_id}:{slot}")
        publish_job(conn, cfg, face_id, run_id, slot)
        done["publish"] = slot

    for update_id in decision.resume_updates:
        update_job(conn, update_id, run_id, face_id)
    if decision.update is not None:
        plan = decision.update
        writer.submit(records.update_planned(plan, run_id, face_id, active), write_id=f"update-plan:{plan.update_id}")
        update_job(conn, plan.update_id, run_id, face_id)
        done["update"] = plan.update_id

    if decision.go_offline:
        run = raw.get("run") or {}
        offline_run_id, _ = start_offline_training(conn, face_id, cfg.offline, base_model=run.get("base_model"),
                                                   parent_version_id=active)
        completed = sum(1 for u in snap.updates if u.status == UpdateStatus.COMPLETED)
        writer.submit(records.offline_started(face_id, offline_run_id, completed, decision.go_offline),
                      write_id=f"go-offline:{run_id}:{completed}")
        done["offline_run_id"] = offline_run_id

    if decision.end_offline:
        writer.submit(records.offline_ended(face_id, snap.offline_run_id, snap.offline_version_id,
                                            completed=decision.end_offline == "completed"),
                      write_id=f"end-offline:{snap.offline_run_id}")
        schedule_tick(conn, face_id)

    if decision.finish_stop:
        writer.submit(records.run_stopped(face_id, run_id), write_id=f"stopped:{run_id}")
        stop_flags.clear_stop(conn, run_id)
        done["stopped"] = run_id
    return done


def collect_job(conn: redis.Redis, cfg: OnlineConfig, face_id: str, post) -> str:
    """Read one post's reactions at its next maturity window (retried with the publishing backoff)."""
    intervals = [max(1, round(cfg.wall_seconds(m * 60))) for m in cfg.publish_retry_minutes]
    ensure_job(conn, QUEUE_CONTROL, "jobs.online.collect_reactions", face_id, post.post_id, post.platform_id,
               cfg.maturity_seconds, job_id=f"collect-{safe_id(post.post_id)}-{len(post.observed_ages)}",
               retry=Retry(max=3, interval=intervals), timeout=defaults.COLLECT_TIMEOUT,
               kind=JobKind.CONTROL, description=f"reactions of {post.post_id}")
    return post.post_id


def publish_job(conn: redis.Redis, cfg: OnlineConfig, face_id: str, run_id: str, slot: int) -> None:
    intervals = cfg.publish_retry_intervals()
    ensure_job(conn, QUEUE_DEFAULT, "jobs.online.publish_post", face_id, run_id, slot,
               job_id=f"publish-{safe_id(run_id)}-{slot}", timeout=defaults.JOB_TIMEOUT,
               retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
               description=f"publish post {slot} of {run_id} on {face_id}")


def update_job(conn: redis.Redis, update_id: str, run_id: str | None = None, face_id: str | None = None) -> None:
    ensure_job(conn, QUEUE_TRAIN, "jobs.online.rl_update", update_id, job_id=safe_id(update_id),
               timeout=defaults.UPDATE_TIMEOUT, retry=Retry(max=1, interval=5), description=f"RL update {update_id}",
               meta={"run_id": run_id, "face_id": face_id})  # for the event log (crowdtune.runtime.logs)
