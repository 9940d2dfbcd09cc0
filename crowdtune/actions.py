"""What the app and the CLI can ask Crowdtune to do. Each action writes through the store queue
and/or enqueues a job; none trains or calls a face itself, so both stay responsive.

Every function takes a Redis connection (from crowdtune.runtime.queues.connect) and plain data. Job
arguments never carry secrets: workers read tokens from their own environment or secrets file.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from crowdtune.runtime import defaults, stop_flags
from crowdtune.runtime.queues import enqueue
from crowdtune.settings import QUEUE_CONTROL, QUEUE_DEFAULT, QUEUE_TRAIN
from crowdtune.states import ControllerState, RunStatus
from crowdtune.store.writes import StoreWriter, alert_dismissed_op, update_op, upsert_op, utc_now

# Training jobs may run for days; RQ's timeout is a last resort, graceful stop is the normal way.
TRAINING_TIMEOUT = defaults.TRAINING_TIMEOUT

QUICK_FIRST_VERSION = {"max_steps": 60, "eval_every": 30, "eval_samples": 8, "eval_max_new_tokens": 32}
# A newcomer's first steps, in order: the Overview draws them as a checklist with a button each and
# `make run` prints them with their commands (the bundled `tweets` face, the simulated `sandbox`).
FIRST_STEPS = (
    ("Import the bundled posts", "crowdtune import --face tweets"),
    ("Train a first version (quick)", "crowdtune train offline --face tweets "
     + " ".join(f"--set {name}={value}" for name, value in QUICK_FIRST_VERSION.items())),
    ("Generate samples in the Playground", "crowdtune generate --version latest --count 5"),
    ("Make it the publishing version", "the Models page (or the Overview's button)"),
    ("Start the sandbox online loop", "crowdtune train online --face sandbox"),
)


def new_id(prefix: str) -> str:
    return f"{prefix}-{utc_now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def save_face(conn: redis.Redis, face_id: str, kind: str, config: dict[str, Any],
              scorer: dict[str, Any] | None = None) -> str:
    """Create or update a face. The config is validated by the face kind's typed Config and must not
    hold secrets (those come from the environment or the secrets file). Returns the write id."""
    from crowdtune.scoring import ScorerConfig

    validate_face_config(kind, config)
    row = {"face_id": face_id, "kind": kind, "config": config}
    if scorer is not None:
        row["scorer"] = ScorerConfig(**scorer).model_dump()
    write_id = StoreWriter(conn).upsert("faces", [row])
    from faces.registry import needs_set_up

    if needs_set_up(kind):
        prepare_face(conn, face_id)  # queued after the write: the store queue answers its read in order
    return write_id


def prepare_face(conn: redis.Redis, face_id: str) -> Job:
    """Queue the face's one-time set-up (a sandbox fits its audience) so that its first publish job
    does not pay for it. It is heavy (minutes of embedding on a fresh data folder), so it goes with
    generation on `default`, never on the control queue. Progress shows in the job's meta."""
    return enqueue(conn, QUEUE_DEFAULT, "jobs.system.prepare_face", face_id, timeout=defaults.IMPORT_TIMEOUT,
                   description=f"set up face {face_id}", meta={"face_id": face_id})


def embed_face_posts(conn: redis.Redis, face_id: str, chunk: int | None = None,
                     done: tuple[int, int] | None = None, at: dt.datetime | None = None) -> str | None:
    """Make sure the next chunk of the face's post embeddings (jobs.embeddings.embed_posts) waits on `default`.

    Embedding a fresh history is heavy (minutes of CPU for 20,000 posts on 2 cores), so it is not for
    `control` (light work keeps its times) nor `train` (it would wait behind a run of many minutes, or
    hold the first run up by all of them). On `default` it goes in chunks of `chunk` texts (default
    embeddings.CHUNK_TEXTS, ~10 s), each queued at the back when the one before ends, so a publish job
    or Playground samples wait one chunk at most. Two job ids take turns, so there is never more than
    one chunk waiting: it reads the face's posts when it starts, so it also covers posts added since.
    `done`: (posts embedded, posts) for the job's description; `at`: not before then (naive UTC).
    Out: the id queued, or None when one waits."""
    from rq.job import JobStatus

    from crowdtune.embeddings import CHUNK_TEXTS
    from crowdtune.online.schedule import enqueue_job, job_status, safe_id

    ids = [f"embed-posts-{safe_id(face_id)}-{turn}" for turn in (0, 1)]
    states = [job_status(conn, job_id) for job_id in ids]
    if any(state in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED) for state in states):
        return None
    free = [job_id for job_id, state in zip(ids, states, strict=True) if state != JobStatus.STARTED]
    if not free:
        return None
    if states[ids.index(free[0])] is not None:  # an ended chunk of this id: make room for the new one
        Job.fetch(free[0], connection=conn, serializer=JSONSerializer).delete()
    so_far = f" ({done[0]:,} of {done[1]:,} done)" if done else ""
    enqueue_job(conn, QUEUE_DEFAULT, "jobs.embeddings.embed_posts", face_id, chunk or CHUNK_TEXTS,
                job_id=free[0], at=at, timeout=defaults.EMBED_CHUNK_TIMEOUT,
                description=f"embed the posts of {face_id}{so_far}",
                meta={"face_id": face_id})
    return free[0]


def check_face(conn: redis.Redis, face_id: str) -> Job:
    """Queue the face's health check (jobs.system.check_face) with the light work on the control queue (a few
    requests a user waits for, never behind a sampling job). The job returns the account, the audience and the
    limits (faces.base.FaceHealth)."""
    return enqueue(conn, QUEUE_CONTROL, "jobs.system.check_face", face_id, timeout=defaults.HEALTH_CHECK_TIMEOUT,
                   description=f"check the connection of {face_id}", meta={"face_id": face_id})


def validate_face_config(kind: str, config: dict[str, Any]) -> None:
    """Check a face config against its kind's typed Config; raise CrowdtuneError naming the field.

    Secret fields are checked on the worker that uses the face (tokens live in its environment),
    and must not appear here at all.
    """
    from pydantic import ValidationError

    from crowdtune.errors import SettingsError
    from faces.registry import FACE_KINDS

    face_class = FACE_KINDS.get(kind)
    if face_class is None:
        raise SettingsError(f"Unknown face kind {kind!r}.", f"Use one of: {', '.join(sorted(FACE_KINDS))}.")
    leaked = [name for name in face_class.secret_fields if name in config]
    if leaked:
        raise SettingsError(
            f"The {kind} face config must not contain secrets ({', '.join(leaked)}).",
            "Put tokens in environment variables or the secrets file (see README, Secrets).",
        )
    placeholders = {name: "placeholder" for name in face_class.secret_fields}
    try:
        face_class.Config(**{**config, **placeholders})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"Invalid {kind} face config: {problems}",
                            f"Correct the config; `crowdtune config-docs {face_class.Config.__name__}` lists every "
                            "field and its default.") from None


def dismiss_alerts(conn: redis.Redis, alerts: list[tuple[str, str]], dismissed_by: str) -> str:
    """Dismiss alerts as they read now: (alert_id, message) pairs, a failed job as (`job:<job_id>`, its error).
    Each stays hidden until it is raised with another message; who and when are kept (`alert_dismissals`).
    One write whose id names the pairs, so a double click applies once. Returns the write id."""
    import hashlib

    digest = hashlib.sha256(repr(sorted(alerts)).encode()).hexdigest()[:16]
    return StoreWriter(conn).submit([alert_dismissed_op(alerts, dismissed_by)], write_id=f"dismiss:{digest}")


def start_import(conn: redis.Redis, face_id: str, limit: int | None = None) -> Job:
    """Import (or refresh) a face's history into the store, on the `control` queue (the embedding of its
    posts, which is heavy, follows on `default`: embed_face_posts)."""
    return enqueue(conn, QUEUE_CONTROL, "jobs.imports.import_history", face_id, limit=limit,
                   description=f"import history of {face_id}", timeout=defaults.IMPORT_TIMEOUT,
                   meta={"face_id": face_id})


def start_offline_training(
    conn: redis.Redis,
    face_id: str,
    config: dict[str, Any],
    base_model: str | None = None,
    parent_version_id: str | None = None,
) -> tuple[str, Job]:
    """Queue supervised LoRA training on a face's posts. Returns (run_id, job).

    A run that fails on a transient error runs again after `training_retry_seconds` and resumes
    from its checkpoint; a bad setting or missing data fails at once (jobs.offline decides)."""
    from crowdtune.settings import load_settings

    retry_seconds = load_settings().training_retry_seconds
    run_id = new_id("offline")
    StoreWriter(conn).upsert("runs", [{
        "run_id": run_id, "kind": "offline", "face_id": face_id, "status": RunStatus.QUEUED, "config": config,
        "base_model": base_model, "parent_version_id": parent_version_id, "job_id": run_id,
    }])
    job = enqueue(conn, QUEUE_TRAIN, "jobs.offline.train_offline", run_id, face_id, config,
                  base_model=base_model, parent_version_id=parent_version_id, job_id=run_id,
                  timeout=TRAINING_TIMEOUT, description=f"offline training on {face_id}",
                  retries=len(retry_seconds), retry_intervals=retry_seconds,
                  meta={"run_id": run_id, "face_id": face_id, "kind": "offline"})
    return run_id, job


def stop_run(conn: redis.Redis, run_id: str) -> None:
    """Ask a run to stop gracefully: it shows `stopping` until it has saved a checkpoint and a version,
    then `stopped`. A run that has already ended keeps its state."""
    stop_flags.request_stop(conn, run_id)
    StoreWriter(conn).submit([update_op("runs", {"run_id": run_id, "status": status}, {"status": RunStatus.STOPPING})
                              for status in (RunStatus.QUEUED, RunStatus.RUNNING)])


def set_active_version(conn: redis.Redis, face_id: str, version_id: str | None) -> str:
    """Choose the model version that publishes on a face (None: the base model); also a rollback."""
    return StoreWriter(conn).update("faces", {"face_id": face_id}, {"active_version_id": version_id})


def generate_samples(conn: redis.Redis, version_id: str | None, base_model: str | None, count: int,
                     generation: dict[str, Any] | None = None, prompts: list[str] | None = None) -> Job:
    """Sample posts from a version (or a base model) without publishing; the job returns them."""
    return enqueue(conn, QUEUE_DEFAULT, "jobs.generate.sample_posts", version_id, base_model, count,
                   generation or {}, prompts or [], timeout=defaults.GENERATE_TIMEOUT,
                   description=f"samples from {version_id or base_model or 'the default model'}")


def export_version(conn: redis.Redis, version_id: str, merged: bool = False, hub_repo: str | None = None) -> Job:
    """Export a version under `<artifacts_url>/exports/` (adapter or merged, with a model card), and push it to
    the hub repo `hub_repo` if given. A job on the default queue: it runs where the artifacts are reachable,
    also when they are remote (s3://...); the job returns {"export_url", "hub_url"}."""
    return enqueue(conn, QUEUE_DEFAULT, "jobs.export.export_version", version_id, merged, hub_repo,
                   timeout=defaults.EXPORT_TIMEOUT,
                   description=f"export {version_id} ({'merged' if merged else 'adapter'})")


# --------------------------------------------------------------------------------------------
# Online training (crowdtune.online.controller decides, jobs.online acts)


def start_online(conn: redis.Redis, face_id: str, config: dict[str, Any]) -> str:
    """Start the online loop on a face: publish on schedule, collect reactions, run RL updates.

    `config` is validated as crowdtune.online.controller.OnlineConfig (a SettingsError names every bad
    setting). The face must exist, be able to publish and observe reactions, and not be online
    already. Returns the new run id; the controller's first tick is queued at once, after the fit
    of the face's reward model when its scores changed since the last one.
    """
    from crowdtune.errors import SettingsError
    from crowdtune.online.controller import parse_online_config
    from crowdtune.online.reward_fits import refit_if_behind
    from crowdtune.online.schedule import schedule_tick
    from crowdtune.store.remote import read_via_store_worker
    from faces.registry import FACE_KINDS

    online = parse_online_config(config)
    face = read_via_store_worker(conn, "face_record", face_id=face_id, timeout=60)
    if face is None:
        raise SettingsError(f"There is no face called {face_id!r}.",
                            "Add it first on the Training page or with `crowdtune face add`.")
    capabilities = FACE_KINDS[face["kind"]].capabilities
    if not (capabilities.publish and capabilities.reactions):
        raise SettingsError(f"The face {face_id!r} ({face['kind']}) cannot publish and read reactions.",
                            "Train online on a sandbox or network face.")
    controller = read_via_store_worker(conn, "online_controller", face_id=face_id, timeout=60)
    if controller is not None and controller["state"] != ControllerState.IDLE:
        raise SettingsError(f"The face {face_id!r} is already {controller['state']} (run {controller['run_id']}).",
                            f"Stop it first: `crowdtune stop --face {face_id}` or the Training page.")
    run_id = new_id("online")
    now = utc_now()
    values = online.model_dump(mode="json")
    StoreWriter(conn).submit([
        upsert_op("runs", [{
            "run_id": run_id, "kind": "online", "face_id": face_id, "status": RunStatus.RUNNING, "config": values,
            "base_model": online.base_model, "parent_version_id": face.get("active_version_id"),
            "started_at": now, "ended_at": None, "error": None}]),
        upsert_op("controllers", [{
            "face_id": face_id, "state": ControllerState.ONLINE, "run_id": run_id, "config": values, "started_at": now,
            "publish_slot": 0, "resolved_slot": -1, "last_resolved_at": None, "offline_run_id": None,
            "updates_at_offline": 0, "paused_reason": None}]),
    ], write_id=f"start:{run_id}")
    stop_flags.clear_stop(conn, run_id)
    # Day 0: a reward model fitted on the face's history before the first post (queued ahead of it).
    refit_if_behind(conn, face_id)
    schedule_tick(conn, face_id)
    return run_id


def stop_online(conn: redis.Redis, face_id: str) -> str | None:
    """Stop a face's online loop: nothing new is published, the post being published is resolved,
    a running update stops at its next step, then the run ends (`stopped`) and the controller is
    IDLE. Returns the run id being stopped, or None if the face was not online."""
    from crowdtune.online.schedule import schedule_tick
    from crowdtune.store.remote import read_via_store_worker

    controller = read_via_store_worker(conn, "online_controller", face_id=face_id, timeout=60)
    if controller is None or controller["state"] == ControllerState.IDLE:
        return None
    run_id = controller["run_id"]
    StoreWriter(conn).update("controllers", {"face_id": face_id}, {"state": ControllerState.STOPPING},
                             write_id=f"stop:{run_id}")
    stop_flags.request_stop(conn, run_id)
    if controller.get("offline_run_id"):
        stop_flags.request_stop(conn, controller["offline_run_id"])
    schedule_tick(conn, face_id)
    return run_id


# --------------------------------------------------------------------------------------------
# Review before posting (crowdtune.online.review)


def review_post(conn: redis.Redis, post_id: str, action: str, decided_by: str, text: str | None = None,
                candidate_id: str | None = None) -> dict:
    """Decide on a post that waits for review: approve, edit (publish `text` instead), reject, or pick
    `candidate_id` (one of its slot's candidates, or the post itself).

    The post is read through the store worker (so earlier queued decisions count), the decision is one
    write with the write id `review:<intent>` (a double click or a re-run applies it once), and the face's
    controller is woken so that an approved post goes out through its slot's publish job now. Out:
    {"post_id", "action", "write_id", "text"}. Raises CrowdtuneError when the post does not wait for review
    or the decision does not fit it (crowdtune.online.review.decision_ops)."""
    from crowdtune.errors import CrowdtuneError
    from crowdtune.online.review import decision_ops
    from crowdtune.online.schedule import schedule_tick
    from crowdtune.states import ReviewAction
    from crowdtune.store.remote import read_via_store_worker

    try:
        chosen = ReviewAction(action)
    except ValueError:
        raise CrowdtuneError(f"{action!r} is not a review decision.", "Use approve, edit, reject or pick.") from None
    item = read_via_store_worker(conn, "review_item", post_id=post_id, timeout=60)
    if item is None:
        raise CrowdtuneError(f"There is no post {post_id!r}.", "`crowdtune review list` shows the posts that wait.")
    ops = decision_ops(item, chosen, decided_by, text=text, candidate_id=candidate_id)
    post = item["post"]
    write_id = StoreWriter(conn).submit(ops, write_id=f"review:{post['intent_id']}")
    schedule_tick(conn, post["face_id"])
    return {"post_id": post_id, "action": ops[0]["rows"][0]["action"], "write_id": write_id,
            "text": ops[0]["rows"][0]["text"]}
