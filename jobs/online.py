"""The online loop's jobs: the controller's tick and the work it hands out.

    tick(face_id)              queue `default`, scheduled with enqueue_at: read the store, decide
                               (crowdtune.controller.decide), carry the decision out, schedule the next tick
    publish_post(face, run, slot)   queue `default`: generate with the active version, guard, record the
                               intent, publish; a retry first asks the face whether the post went out
    collect_reactions(...)     queue `default`: one reaction snapshot of a post; its score at maturity
    rl_update(update_id)       queue `train`: one RL update -> a new model version, made active unless paused
    reconcile()                queue `store`: schedule a tick for every face with work (store worker start-up)

Redis holds only the queues and the schedule. Everything a tick decides from is in the store, every
job has a deterministic id and every write a deterministic write id, so a tick after any loss (a
killed worker, a restarted Redis) rebuilds the missing jobs and nothing happens twice.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime, timedelta, timezone

import redis
from rq import Retry, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from crowdtune import control
from crowdtune.controller import (
    IDLE, OFFLINE, ONLINE, STOPPING, ControllerSnapshot, Decision, OnlineConfig, decide,
)
from crowdtune.job_board import progress_reporter
from crowdtune.queue import connect, queue
from crowdtune.settings import QUEUE_DEFAULT, QUEUE_STORE, QUEUE_TRAIN, load_settings
from crowdtune.store.remote import read_via_store_worker
from crowdtune.store.writes import StoreWriter, alert_op, utc_now

log = logging.getLogger(__name__)

_TICK = "crowdtune:tick:{face_id}"            # the next scheduled tick: job id and time
_TICK_LOCK = "crowdtune:tick-lock:{face_id}"  # one tick per face at a time
_INTENT_LOCK = "crowdtune:intent:{intent_id}"  # one attempt at a publishing intent at a time
_RECONCILE = "crowdtune:reconcile"
_ALIVE = ("queued", "started", "scheduled", "deferred")
_SHORT_TTL = 3600          # results of ticks and collections: nobody reads them after an hour
_UPDATE_TIMEOUT = 24 * 3600


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _job_status(conn: redis.Redis, job_id: str) -> str | None:
    try:
        status = Job.fetch(job_id, connection=conn, serializer=JSONSerializer).get_status(refresh=False)
    except NoSuchJobError:
        return None
    return getattr(status, "value", status)


def _enqueue(conn: redis.Redis, queue_name: str, func: str, *args, job_id: str, at: datetime | None = None,
             retry: Retry | None = None, timeout: int = 1800, result_ttl: int = 7 * 24 * 3600,
             description: str | None = None, meta: dict | None = None):
    q = queue(queue_name, conn)
    options = dict(job_id=job_id, job_timeout=timeout, retry=retry, result_ttl=result_ttl,
                   failure_ttl=30 * 24 * 3600, description=description, meta=meta)
    if at is not None and at > utc_now():
        return q.enqueue_at(_aware(at), func, *args, **options)
    return q.enqueue(func, *args, **options)


def ensure_job(conn: redis.Redis, queue_name: str, func: str, *args, job_id: str, **options) -> bool:
    """Enqueue the job unless a job with this id is already waiting or running; return whether it did."""
    if _job_status(conn, job_id) in _ALIVE:
        return False
    _enqueue(conn, queue_name, func, *args, job_id=job_id, **options)
    return True


def schedule_tick(conn: redis.Redis, face_id: str, at: datetime | None = None) -> str:
    """Make sure the face's controller ticks at `at` (naive UTC; None = now) or earlier. Returns the job id.

    One pending tick per face: an earlier or equal pending tick is kept, a later one is replaced.
    """
    at = at or utc_now()
    key = _TICK.format(face_id=face_id)
    current = conn.hgetall(key)
    if current:
        job_id = current[b"job_id"].decode()
        status = _job_status(conn, job_id)
        if status in ("queued", "scheduled", "deferred") and float(current[b"at"]) <= _aware(at).timestamp() + 0.5:
            return job_id
        if status == "scheduled":
            try:
                Job.fetch(job_id, connection=conn, serializer=JSONSerializer).cancel()
            except Exception:  # it may just have been moved to the queue: then two ticks run, harmlessly
                log.debug("could not cancel tick %s", job_id)
    job = _enqueue(conn, QUEUE_DEFAULT, "jobs.online.tick", face_id, job_id=f"tick-{_safe(face_id)}-{uuid.uuid4().hex[:12]}",
                   at=at, timeout=600, result_ttl=_SHORT_TTL, description=f"online controller tick of {face_id}")
    conn.hset(key, mapping={"job_id": job.id, "at": _aware(at).timestamp()})
    conn.expire(key, 7 * 24 * 3600)
    return job.id


def request_reconcile(conn: redis.Redis) -> None:
    """Ask for one reconcile job soon (the store worker does when it starts; several requests make one).

    It runs on the store queue because it reads the store: the store worker has the file, so the
    job never waits for an answer the way a job on another queue would when no store worker runs.
    """
    if conn.set(_RECONCILE, "1", nx=True, ex=10):
        _enqueue(conn, QUEUE_STORE, "jobs.online.reconcile", job_id=f"reconcile-{uuid.uuid4().hex[:12]}",
                 timeout=600, result_ttl=_SHORT_TTL, description="reschedule the online controllers")


def reconcile() -> list[str]:
    """Schedule a tick for every face whose controller has work (rebuilds a schedule Redis lost)."""
    from crowdtune.store.reads import StoreReader, online_faces

    settings = load_settings()
    conn = connect(settings)
    faces = online_faces(StoreReader(settings.store_path, wait_seconds=settings.store_lock_wait_seconds))
    for face_id in faces:
        schedule_tick(conn, face_id)
    return faces


# --------------------------------------------------------------------------------------------
# The tick


def tick(face_id: str) -> dict:
    """Decide what the face's controller does now and hand it out; schedule the next tick."""
    conn = connect(load_settings())
    job = get_current_job()
    lock = _TICK_LOCK.format(face_id=face_id)
    token = job.id if job is not None else uuid.uuid4().hex
    # a requeued run of a killed tick has the same job id: it may take over its own lock
    if not conn.set(lock, token, nx=True, ex=300) and conn.get(lock) != token.encode():
        schedule_tick(conn, face_id, utc_now() + timedelta(seconds=1))
        return {"face_id": face_id, "skipped": "another tick is running"}
    try:
        raw = read_via_store_worker(conn, "online_snapshot", face_id=face_id)
        if raw is None:
            return {"face_id": face_id, "skipped": "no controller"}
        snap = ControllerSnapshot.from_read(raw)
        now = utc_now()
        decision = decide(snap, now)
        done = carry_out(conn, raw, snap, decision)
        if decision.wake_at is not None:
            schedule_tick(conn, face_id, decision.wake_at)
        return {"face_id": face_id, "state": snap.state, **done,
                "wake_at": decision.wake_at.isoformat() if decision.wake_at else None, "notes": decision.notes}
    finally:
        if conn.get(lock) == token.encode():
            conn.delete(lock)


def carry_out(conn: redis.Redis, raw: dict, snap: ControllerSnapshot, decision: Decision) -> dict:
    """Turn a decision into store writes and jobs. Every id is deterministic: repeating this is harmless."""
    writer = StoreWriter(conn)
    cfg, face_id, run_id = snap.config, snap.face_id, snap.run_id
    done: dict = {"collect": [], "publish": None, "update": None}

    for post in decision.collect:
        job_id = f"collect-{_safe(post.post_id)}-{len(post.observed_ages)}"
        intervals = [max(1, round(cfg.wall_seconds(m * 60))) for m in cfg.publish_retry_minutes]
        ensure_job(conn, QUEUE_DEFAULT, "jobs.online.collect_reactions", face_id, post.post_id, post.platform_id,
                   cfg.maturity_seconds, job_id=job_id, retry=Retry(max=3, interval=intervals), timeout=600,
                   result_ttl=_SHORT_TTL, description=f"reactions of {post.post_id}")
        done["collect"].append(post.post_id)

    if decision.resume_slot is not None:
        _publish_job(conn, cfg, face_id, run_id, decision.resume_slot)
    if decision.publish_slot is not None:
        slot = decision.publish_slot
        writer.update("controllers", {"face_id": face_id}, {"publish_slot": slot + 1}, write_id=f"slot:{run_id}:{slot}")
        _publish_job(conn, cfg, face_id, run_id, slot)
        done["publish"] = slot

    for update_id in decision.resume_updates:
        _update_job(conn, update_id)
    if decision.update is not None:
        plan = decision.update
        active = (raw.get("face") or {}).get("active_version_id")
        writer.submit([
            {"op": "insert", "table": "online_updates", "rows": [{
                "update_id": plan.update_id, "run_id": run_id, "face_id": face_id, "step": plan.step,
                "status": "queued", "post_ids": plan.post_ids, "parent_version_id": active}]},
            *({"op": "update", "table": "posts", "where": {"post_id": pid}, "set": {"update_id": plan.update_id}}
              for pid in plan.post_ids),
        ], write_id=f"update-plan:{plan.update_id}")
        _update_job(conn, plan.update_id)
        done["update"] = plan.update_id

    if decision.go_offline:
        from crowdtune.actions import start_offline_training

        run = raw.get("run") or {}
        active = (raw.get("face") or {}).get("active_version_id")
        offline_run_id, _ = start_offline_training(conn, face_id, cfg.offline, base_model=run.get("base_model"),
                                                   parent_version_id=active)
        completed = sum(1 for u in snap.updates if u.status == "completed")
        writer.submit([
            {"op": "update", "table": "controllers", "where": {"face_id": face_id},
             "set": {"state": OFFLINE, "offline_run_id": offline_run_id, "updates_at_offline": completed}},
            alert_op(f"offline-phase:{offline_run_id}", "info", f"online {face_id}",
                   f"{face_id} switched to offline training ({offline_run_id}): {decision.go_offline}."),
        ], write_id=f"go-offline:{run_id}:{completed}")
        done["offline_run_id"] = offline_run_id

    if decision.end_offline:
        ops = [{"op": "update", "table": "controllers", "where": {"face_id": face_id},
                "set": {"state": ONLINE, "offline_run_id": None}}]
        if decision.end_offline == "completed":
            ops.append({"op": "update", "table": "faces", "where": {"face_id": face_id},
                        "set": {"active_version_id": snap.offline_version_id}})
        else:
            ops.append(alert_op(f"offline-failed:{snap.offline_run_id}", "warning", f"online {face_id}",
                              f"The offline phase {snap.offline_run_id} of {face_id} failed; "
                              "online training goes on with the previous version."))
        writer.submit(ops, write_id=f"end-offline:{snap.offline_run_id}")
        schedule_tick(conn, face_id)

    if decision.finish_stop:
        writer.submit([
            {"op": "update", "table": "runs", "where": {"run_id": run_id}, "set": {"status": "stopped", "ended_at": utc_now()}},
            {"op": "update", "table": "controllers", "where": {"face_id": face_id},
             "set": {"state": IDLE, "offline_run_id": None}},
        ], write_id=f"stopped:{run_id}")
        control.clear_stop(conn, run_id)
        done["stopped"] = run_id
    return done


def _publish_job(conn, cfg: OnlineConfig, face_id: str, run_id: str, slot: int) -> None:
    intervals = cfg.publish_retry_intervals()
    ensure_job(conn, QUEUE_DEFAULT, "jobs.online.publish_post", face_id, run_id, slot,
               job_id=f"publish-{_safe(run_id)}-{slot}", timeout=1800,
               retry=Retry(max=len(intervals), interval=intervals) if intervals else None,
               description=f"publish post {slot} of {run_id} on {face_id}")


def _update_job(conn, update_id: str) -> None:
    ensure_job(conn, QUEUE_TRAIN, "jobs.online.rl_update", update_id, job_id=_safe(update_id),
               timeout=_UPDATE_TIMEOUT, retry=Retry(max=1, interval=5), description=f"RL update {update_id}")


# --------------------------------------------------------------------------------------------
# Publishing


def _resolve(face_id: str, slot: int) -> dict:
    """The store op that records a slot's outcome (so the controller may schedule the next one)."""
    return {"op": "update", "table": "controllers", "where": {"face_id": face_id},
            "set": {"resolved_slot": slot, "last_resolved_at": utc_now()}}


def publish_post(face_id: str, run_id: str, slot: int) -> dict:
    """Publish the post of one slot of an online run, at most once.

    First run: sample with the active version (or the base model), drop empty posts and copies of
    training posts (each rejected sample is logged with its reason), record the post as
    `publishing` with its intent id through the store queue, then call face.publish. A re-run (RQ
    retry, a requeue after a crash, a tick finding the slot unresolved) finds that row and asks
    face.find_published first; only a post the face does not know is sent again, with the same
    intent id. Final failure: the post is `failed` and an alert says why.
    """
    settings = load_settings()
    conn = connect(settings)
    writer = StoreWriter(conn)
    job = get_current_job()
    inputs = read_via_store_worker(conn, "publish_inputs", face_id=face_id, run_id=run_id, slot=slot)
    controller = inputs["controller"]
    resolved = controller.get("resolved_slot") if controller else None
    if controller is None or controller["run_id"] != run_id or (resolved is not None and resolved >= slot):
        return {"slot": slot, "outcome": "already resolved"}
    cfg = OnlineConfig(**controller["config"])
    intent_id, post_id = f"{run_id}:{slot}", f"{run_id}:p{slot}"
    lock, token = _INTENT_LOCK.format(intent_id=intent_id), (job.id if job else uuid.uuid4().hex)
    # a requeued run of a killed publish job has the same job id: it may take over its own lock
    if not conn.set(lock, token, nx=True, ex=900) and conn.get(lock) != token.encode():
        raise RuntimeError(f"another job is publishing {intent_id} right now; trying again later")
    row = next((p for p in inputs["slot_posts"] if p["post_id"] == post_id), None)
    outcome = "published"
    try:
        from faces.registry import build_face

        face_record = inputs["face"]
        publishing = controller["state"] == ONLINE and not controller.get("paused_reason")
        if row is not None and row["status"] in ("published", "failed"):
            writer.submit([_resolve(face_id, slot)], write_id=f"resolve:{intent_id}")
            return {"slot": slot, "outcome": f"already {row['status']}"}
        if row is None and not publishing:
            writer.submit([_resolve(face_id, slot)], write_id=f"resolve:{intent_id}")
            return {"slot": slot, "outcome": f"skipped ({controller['state']})"}
        face = build_face(face_record["kind"], face_record["config"])
        if row is None:
            row = _generate(conn, writer, inputs, cfg, settings, face_id, run_id, slot, intent_id, post_id)
            if row is None:
                writer.submit([_resolve(face_id, slot)], write_id=f"resolve:{intent_id}")
                return {"slot": slot, "outcome": "every sample was rejected"}
        else:
            since = datetime.fromisoformat(str(row["inserted_at"])) - timedelta(days=1)
            found = face.find_published(intent_id, row["text"], since)
            if found is not None:
                _record_published(writer, face, face_id, slot, intent_id, post_id, found)
                return {"slot": slot, "outcome": "found published", "platform_id": found.platform_id}
            if not publishing:
                writer.submit([{"op": "update", "table": "posts", "where": {"post_id": post_id},
                                "set": {"status": "failed", "reject_reason": "stopped before publishing"}},
                               _resolve(face_id, slot)], write_id=f"unpublished:{intent_id}")
                return {"slot": slot, "outcome": "not published (stopping)"}
        published = face.publish(row["text"], intent_id)
        _record_published(writer, face, face_id, slot, intent_id, post_id, published)
        return {"slot": slot, "outcome": outcome, "platform_id": published.platform_id, "text": row["text"]}
    except Exception as exc:
        final = job is None or not job.retries_left
        message = str(getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}")
        attempt = (cfg.publish_retries - (job.retries_left or 0) + 1) if job is not None else 1
        if final:
            ops = [_resolve(face_id, slot), alert_op(
                f"publish-failed:{intent_id}", "error", f"online {face_id}",
                f"Publishing post {slot} of {run_id} on {face_id} failed after {attempt} attempt(s): {message}")]
            if row is not None:
                ops.insert(0, {"op": "update", "table": "posts", "where": {"post_id": post_id},
                               "set": {"status": "failed", "reject_reason": message[:500]}})
            writer.submit(ops, write_id=f"publish-failed:{intent_id}")
        else:
            writer.submit([alert_op(f"publish-retry:{intent_id}", "warning", f"online {face_id}",
                                  f"Publishing post {slot} of {run_id} on {face_id} failed (attempt {attempt}), "
                                  f"retrying with backoff: {message}")], write_id=f"publish-retry:{intent_id}:{attempt}")
        raise
    finally:
        if conn.get(lock) == token.encode():
            conn.delete(lock)
        schedule_tick(conn, face_id)


def _generate(conn, writer: StoreWriter, inputs: dict, cfg: OnlineConfig, settings, face_id: str, run_id: str,
              slot: int, intent_id: str, post_id: str) -> dict | None:
    """Sample until a post passes the guards; log every sample; record the kept one as `publishing`."""
    import hashlib

    from crowdtune.training.generation import GenerationConfig, generate_posts
    from crowdtune.training.guards import CopyIndex
    from crowdtune.training.models import DEFAULT_BASE_MODEL, load_base_model, load_version

    cache = settings.data_dir / "models"
    version = inputs.get("active_version")
    if version:
        model, tokenizer = load_version(version["artifact_url"], base_model=version["base_model"], cache_dir=cache)
    else:
        model, tokenizer = load_base_model((inputs.get("run") or {}).get("base_model") or cfg.base_model
                                           or DEFAULT_BASE_MODEL, cache_dir=cache)
    model.eval()
    sampling = cfg.sampling()
    copy_index = None
    if GenerationConfig(**sampling).drop_copies:
        texts = [p["text"] for p in read_via_store_worker(conn, "training_posts", face_id=face_id)]
        copy_index = CopyIndex(texts, embedding_threshold=cfg.copy_embedding_threshold) if texts else None
    prompt = cfg.prompts[slot % len(cfg.prompts)] if cfg.prompts else ""
    common = {"face_id": face_id, "origin": "generated", "run_id": run_id, "publish_slot": slot, "prompt": prompt,
              "model_version_id": version["version_id"] if version else None}
    for attempt in range(cfg.max_generation_attempts):
        seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}:{intent_id}:{attempt}".encode()).digest()[:4], "little")
        gen = GenerationConfig(**{**sampling, "num_samples": 1, "seed": seed})
        result = generate_posts(model, tokenizer, gen, prompts=[prompt] if prompt else None, copy_index=copy_index)
        sample = (result.kept or result.rejected)[0]
        row = {**common, "text": sample.text, "sampling": gen.model_dump(mode="json"), "token_ids": sample.token_ids,
               "token_logprobs": sample.logprobs, "logprob": float(sum(sample.logprobs))}
        if sample.rejected is not None:
            rejected_id = f"{post_id}r{attempt}"
            writer.upsert("posts", [{**row, "post_id": rejected_id, "status": "rejected", "reject_reason": sample.rejected}],
                          write_id=f"rejected:{rejected_id}")
            continue
        row = {**row, "post_id": post_id, "status": "publishing", "intent_id": intent_id}
        # Recorded through the store queue before the face is called: a crash after publishing
        # leaves a `publishing` row that the next attempt checks with find_published.
        writer.upsert("posts", [row], write_id=f"intent:{intent_id}")
        return {**row, "inserted_at": utc_now().isoformat()}
    return None


def _record_published(writer: StoreWriter, face, face_id: str, slot: int, intent_id: str, post_id: str, published) -> None:
    try:
        audience = face.audience_size()
    except Exception:  # the audience size is a nice-to-have; the post is out either way
        audience = None
    writer.submit([
        {"op": "update", "table": "posts", "where": {"post_id": post_id}, "set": {
            "status": "published", "platform_id": published.platform_id, "url": published.url,
            "published_at": published.published_at, "created_at": published.published_at, "audience_size": audience}},
        _resolve(face_id, slot),
    ], write_id=f"published:{intent_id}")


# --------------------------------------------------------------------------------------------
# Reactions


def collect_reactions(face_id: str, post_id: str, platform_id: str, maturity_seconds: float) -> dict:
    """Read a published post's reactions once (a new snapshot); score it when it has reached maturity.

    The age is the face's own (ReactionSnapshot.post_age_seconds: accelerated on the sandbox), so a
    post is only scored once an observation is at least `maturity_seconds` old.
    """
    from crowdtune.scoring import ScorerConfig, score_at_maturity
    from faces.registry import build_face

    conn = connect(load_settings())
    writer = StoreWriter(conn)
    job = get_current_job()
    inputs = read_via_store_worker(conn, "collect_inputs", post_id=post_id)
    if inputs is None or inputs["post"]["score"] is not None:
        return {"post_id": post_id, "outcome": "nothing to do"}
    post, record = inputs["post"], inputs["face"]
    try:
        face = build_face(record["kind"], record["config"])
        snap = face.reactions(platform_id)
    except Exception as exc:
        if job is None or not job.retries_left:
            message = str(getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}")
            writer.submit([alert_op(f"collect-failed:{post_id}", "warning", f"online {face_id}",
                                  f"Could not read the reactions of {post_id} on {face_id}: {message}")],
                          write_id=f"collect-failed:{job.id if job else uuid.uuid4().hex}")
        raise
    published_at = datetime.fromisoformat(str(post["published_at"]))
    age = snap.post_age_seconds if snap.post_age_seconds is not None else \
        max(0.0, (snap.observed_at - published_at).total_seconds())
    counts = dict(snap.counts) or {"likes": 0}  # an observation with no reactions still counts as one
    ops = [{"op": "insert", "table": "reaction_snapshots", "rows": [
        {"post_id": post_id, "observed_at": snap.observed_at, "kind": kind, "count": int(count),
         "age_seconds": age, "audience_size": snap.audience_size} for kind, count in counts.items()]}]
    history = [(s["age_seconds"], s["counts"], s["audience_size"]) for s in inputs["snapshots"]]
    history.append((age, counts, snap.audience_size))
    scorer = ScorerConfig(**(record.get("scorer") or {})).model_copy(update={"maturity_hours": maturity_seconds / 3600})
    score = score_at_maturity(history, scorer)
    if score is not None:
        ops.append({"op": "update", "table": "posts", "where": {"post_id": post_id},
                    "set": {"score": score, "scored_at": snap.observed_at}})
        if post.get("run_id") and post.get("publish_slot") is not None:
            ops.append({"op": "upsert", "table": "metrics", "rows": [
                {"run_id": post["run_id"], "name": "post_score", "step": post["publish_slot"], "value": score}]})
    writer.submit(ops, write_id=f"collect:{job.id if job else uuid.uuid4().hex}")
    if score is not None:
        schedule_tick(conn, face_id)
    return {"post_id": post_id, "age_seconds": age, "counts": counts, "score": score}


# --------------------------------------------------------------------------------------------
# RL updates


def rl_update(update_id: str) -> dict:
    """Run one RL update on its matured posts, register the new model version and make it active.

    Rewards come from the posts' scores at maturity (rewards_for, against the face's earlier
    generated posts). A stop request ends the update without a version (state `stopped`); a
    result with pause=True registers the version but keeps the old one active, pauses the
    controller and raises an alert. Re-running after a crash resumes from the update's checkpoint
    and writes nothing twice.
    """
    import numpy as np

    from crowdtune import artifacts
    from crowdtune.training.models import DEFAULT_BASE_MODEL, save_version
    from crowdtune.training.rl import run_update
    from crowdtune.training.rl.rewards import RewardConfig, rewards_for

    settings = load_settings()
    conn = connect(settings)
    writer = StoreWriter(conn)
    job = get_current_job()
    inputs = read_via_store_worker(conn, "update_inputs", update_id=update_id)
    if inputs is None:
        raise ValueError(f"there is no online update {update_id!r} in the store")
    update, run = inputs["update"], inputs["run"]
    if update["status"] in ("completed", "stopped", "failed"):
        return {"update_id": update_id, "outcome": f"already {update['status']}"}
    run_id, face_id, step = update["run_id"], update["face_id"], update["step"]
    cfg = OnlineConfig(**run["config"])
    writer.update("online_updates", {"update_id": update_id}, {"status": "running", "started_at": utc_now()},
                  write_id=f"update-running:{update_id}:{job.id if job else ''}:{utc_now():%H%M%S%f}")
    try:
        active = inputs.get("active_version")
        base_model = (active or {}).get("base_model") or run.get("base_model") or cfg.base_model or DEFAULT_BASE_MODEL
        reward_config = RewardConfig(**cfg.reward)
        batch = inputs["batch"]
        scores = [float(p["score"]) for p in batch]
        rewards = rewards_for(scores, inputs["baseline_scores"], reward_config)
        history = inputs["history"]
        history_rewards = rewards_for([float(h["score"]) for h in history], [], reward_config) if history else []
        train_texts = [p["text"] for p in read_via_store_worker(conn, "training_posts", face_id=face_id)]

        remote = artifacts.checkpoint_url(settings.artifacts, run_id)
        mirrored = not artifacts.is_local(remote)
        base_dir = settings.data_dir / "checkpoints" / run_id if mirrored else artifacts.local_path(remote)
        if mirrored:
            artifacts.mirror_down(remote, base_dir)

        on_progress = progress_reporter(job)

        result = run_update(
            cfg.algorithm, cfg.algorithm_settings, base_model=base_model,
            policy_url=(active or {}).get("artifact_url"),
            batch=[{"post_id": p["post_id"], "prompt": p["prompt"] or "", "text": p["text"], "token_ids": p["token_ids"],
                    "logprob": p["logprob"], "score": s, "reward": r} for p, s, r in zip(batch, scores, rewards)],
            history=[{**h, "reward": r} for h, r in zip(history, history_rewards)],
            state_dir=base_dir / "state", checkpoint_dir=base_dir / _safe(update_id),
            model_cache_dir=settings.data_dir / "models", train_texts=train_texts,
            on_progress=on_progress, should_stop=lambda: control.stop_requested(conn, run_id),
            seed=cfg.seed * 1000 + step,
        )
        if mirrored:
            artifacts.mirror_up(base_dir, remote)
        if result.stopped:
            writer.update("online_updates", {"update_id": update_id}, {"status": "stopped", "ended_at": utc_now()},
                          write_id=f"update-stopped:{update_id}")
            schedule_tick(conn, face_id)
            return {"update_id": update_id, "outcome": "stopped"}

        metrics = {k: float(v) for k, v in (result.metrics or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
        metrics.update({"score_mean": float(np.mean(scores)), "score_max": float(np.max(scores)),
                        "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
                        "batch_posts": float(len(batch))})
        metrics.setdefault("mean_length", float(np.mean([len(p["text"].split()) for p in batch])))
        if "copy_rate" not in metrics and train_texts:
            from crowdtune.training.guards import CopyIndex

            metrics["copy_rate"] = CopyIndex(train_texts, embedding_threshold=None).copy_rate([p["text"] for p in batch])
        started = datetime.fromisoformat(str(run["started_at"])) if run.get("started_at") else None
        if started is not None:
            days = max((utc_now() - started).total_seconds() * cfg.time_acceleration / 86400.0, 1.0)
            metrics["posts_per_day"] = inputs.get("published_count", 0) / days

        version_id = update_id
        url = artifacts.version_url(settings.artifacts, version_id)
        parent = (active or {}).get("version_id")
        save_version(result.adapter_dir, url, base_model=base_model,
                     metadata={"version_id": version_id, "run_id": run_id, "parent_version_id": parent,
                               "algorithm": cfg.algorithm, "update_id": update_id})
        ops = [
            {"op": "upsert", "table": "model_versions", "rows": [{
                "version_id": version_id, "run_id": run_id, "parent_version_id": parent, "base_model": base_model,
                "artifact_url": url, "step": step, "metrics": metrics,
                "note": f"online {cfg.algorithm} update {step} on {len(batch)} posts"}]},
            {"op": "update", "table": "online_updates", "where": {"update_id": update_id}, "set": {
                "status": "completed", "version_id": version_id, "parent_version_id": parent, "metrics": metrics,
                "paused": bool(result.pause), "ended_at": utc_now(), "error": None}},
            {"op": "upsert", "table": "metrics", "rows": [
                {"run_id": run_id, "name": name, "step": step, "value": value} for name, value in metrics.items()]},
        ]
        if result.pause:
            reason = result.pause_reason or "the update asked to pause"
            ops += [{"op": "update", "table": "controllers", "where": {"face_id": face_id},
                     "set": {"paused_reason": f"update {step}: {reason}"[:1000]}},
                    alert_op(f"online-paused:{update_id}", "warning", f"online {face_id}",
                           f"Online training of {face_id} paused after update {step}: {reason}. Version {version_id} "
                           "was saved but not activated; review it, then stop and restart the online run.")]
        else:
            ops.append({"op": "update", "table": "faces", "where": {"face_id": face_id}, "set": {"active_version_id": version_id}})
        writer.submit(ops, write_id=f"update-finish:{update_id}")
        schedule_tick(conn, face_id)
        return {"update_id": update_id, "version_id": version_id, "paused": bool(result.pause), "metrics": metrics}
    except Exception as exc:
        if job is None or not job.retries_left:
            message = str(getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}")
            writer.submit([
                {"op": "update", "table": "online_updates", "where": {"update_id": update_id},
                 "set": {"status": "failed", "error": message[:2000], "ended_at": utc_now()}},
                {"op": "update", "table": "controllers", "where": {"face_id": face_id},
                 "set": {"paused_reason": f"update {step} failed: {message}"[:1000]}},
                alert_op(f"update-failed:{update_id}", "error", f"online {face_id}",
                       f"RL update {step} of {face_id} failed: {message}. Online training is paused; "
                       "stop and restart it once fixed."),
            ], write_id=f"update-failed:{update_id}")
            schedule_tick(conn, face_id)
        raise
