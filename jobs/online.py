"""The online loop's jobs: the controller's tick and the work it hands out.

    tick(face_id)              queue `control`, scheduled with enqueue_at: read the store, decide
                               (crowdtune.online.controller.decide), carry the decision out
                               (crowdtune.online.dispatch), schedule the next tick
    publish_post(face, run, slot)   queue `default`: sample N candidates with the active version, guard,
                               choose one (crowdtune.online.candidates), record the intent and the
                               candidates, publish, keep the post's embedding; a retry first asks the face
                               whether the post went out
    collect_reactions(...)     queue `control`: one reaction snapshot of a post; its score at maturity
    rl_update(update_id)       queue `train`: one RL update -> a new model version, made active unless paused
    fit_reward_model(face_id)  queue `default`: the face's reward model on its scored posts, validated and
                               recorded (crowdtune.online.reward_fits); queued once per count of scored posts
    reconcile()                queue `store`: schedule a tick for every face with work (store worker start-up)

Redis holds only the queues and the schedule (crowdtune.online.schedule). Everything a tick decides
from is in the store, every job has a deterministic id and every write a deterministic write id, so
a tick after any loss (a killed worker, a restarted Redis) rebuilds the missing jobs and nothing
happens twice. What each write records is spelled once, in crowdtune.online.records.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from rq import get_current_job

from crowdtune.actions import embed_face_posts
from crowdtune.embeddings import keep_posts
from crowdtune.errors import failure_message
from crowdtune.online import records
from crowdtune.online.controller import ControllerSnapshot, OnlineConfig, decide
from crowdtune.online.dispatch import carry_out
from crowdtune.online.review import approving, review_policy, slot_post
from crowdtune.online.schedule import LockHeld, intent_lock, safe_id, schedule_tick, tick_lock
from crowdtune.runtime import stop_flags
from crowdtune.runtime.progress import progress_reporter
from crowdtune.runtime.queues import connect
from crowdtune.settings import Settings, load_settings
from crowdtune.states import ControllerState, PostStatus, ReviewMode, UpdateStatus
from crowdtune.store.remote import read_rows_via_store_worker, read_via_store_worker
from crowdtune.store.writes import StoreWriter, post_op, utc_now

log = logging.getLogger(__name__)


def reconcile() -> list[str]:
    """Schedule a tick for every face whose controller has work (rebuilds a schedule Redis lost)."""
    from crowdtune.store.reads import StoreReader, online_faces

    settings = load_settings()
    conn = connect(settings)
    faces = online_faces(StoreReader(settings.store_path, wait_seconds=settings.store_lock_wait_seconds))
    for face_id in faces:
        schedule_tick(conn, face_id)
    return faces


def tick(face_id: str) -> dict:
    """Decide what the face's controller does now and hand it out; schedule the next tick."""
    conn = connect(load_settings())
    job = get_current_job()
    try:
        with tick_lock(conn, face_id, job.id if job is not None else None):
            raw = read_via_store_worker(conn, "online_snapshot", face_id=face_id)
            if raw is None:
                return {"face_id": face_id, "skipped": "no controller"}
            snap = ControllerSnapshot.from_read(raw)
            decision = decide(snap, utc_now())
            done = carry_out(conn, raw, snap, decision)
            if decision.wake_at is not None:
                schedule_tick(conn, face_id, decision.wake_at)
            return {"face_id": face_id, "state": snap.state, **done,
                    "wake_at": decision.wake_at.isoformat() if decision.wake_at else None, "notes": decision.notes}
    except LockHeld:
        schedule_tick(conn, face_id, utc_now() + timedelta(seconds=1))
        return {"face_id": face_id, "skipped": "another tick is running"}


# --------------------------------------------------------------------------------------------
# Publishing


@dataclass
class _Slot:
    """One publishing slot of an online run, and where its writes go."""

    conn: redis.Redis
    writer: StoreWriter
    settings: Settings
    cfg: OnlineConfig
    inputs: dict
    face_id: str
    run_id: str
    slot: int
    row: dict | None = None  # the slot's post once its intent is recorded (or found from an earlier attempt)

    @property
    def intent_id(self) -> str:
        return f"{self.run_id}:{self.slot}"

    @property
    def post_id(self) -> str:
        """The slot's post: the drafted one, or the candidate the operator picked instead."""
        return self.row["post_id"] if self.row else f"{self.run_id}:p{self.slot}"

    @property
    def unresolved(self) -> bool:
        """The controller has not recorded this slot's outcome (a reviewed slot is resolved when drafted)."""
        resolved = (self.inputs["controller"] or {}).get("resolved_slot")
        return resolved is None or resolved < self.slot

    def record(self, ops: list[dict], what: str) -> None:
        self.writer.submit(ops, write_id=f"{what}:{self.intent_id}")

    def resolve(self) -> None:
        if self.unresolved:
            self.record([records.slot_resolved(self.face_id, self.slot)], "resolve")


def publish_post(face_id: str, run_id: str, slot: int) -> dict:
    """Publish the post of one slot of an online run, at most once.

    First run: sample `candidates` posts with the active version (or the base model) in one batch,
    drop empty posts, filtered ones and copies of training posts or of the face's own published
    posts (each rejected sample is recorded with its reason), choose one by the exploring rule on the
    face's reward model (crowdtune.online.candidates), record it as `publishing` with its intent id
    and the other candidates (status `candidate`) in one write through the store queue, then call
    face.publish. A re-run (RQ
    retry, a requeue after a crash, a tick finding the slot unresolved) finds that row and asks
    face.find_published first; only a post the face does not know is sent again, with the same
    intent id. Final failure: the post is `failed` and an alert says why.
    """
    settings = load_settings()
    conn = connect(settings)
    job = get_current_job()
    inputs = read_via_store_worker(conn, "publish_inputs", face_id=face_id, run_id=run_id, slot=slot)
    controller = inputs["controller"]
    resolved = controller.get("resolved_slot") if controller else None
    row = slot_post(inputs["slot_posts"], f"{run_id}:{slot}")
    # A reviewed slot is resolved when drafted; its approved post still has to go out.
    to_send = row is not None and row["status"] in (PostStatus.APPROVED, PostStatus.PUBLISHING)
    if controller is None or controller["run_id"] != run_id or (resolved is not None and resolved >= slot
                                                                  and not to_send):
        return {"slot": slot, "outcome": "already resolved"}
    at = _Slot(conn, StoreWriter(conn), settings, OnlineConfig(**controller["config"]), inputs, face_id, run_id, slot)
    try:
        with intent_lock(conn, at.intent_id, job.id if job else None):
            try:
                return _publish(at)
            except Exception as exc:
                _record_publish_failure(at, job, exc)
                raise
            finally:
                schedule_tick(conn, face_id)
    except LockHeld:
        raise RuntimeError(f"another job is publishing {at.intent_id} right now; trying again later") from None


def _publish(at: _Slot) -> dict:
    """The slot's steps while holding its intent lock: resolve what is known, else generate (and, on a face
    with review, leave the post waiting for the operator), then publish, or on a shadow face only record
    that it would have gone out (crowdtune.online.review)."""
    from faces.registry import build_face

    controller = at.inputs["controller"]
    review, shadow = review_policy(at.inputs["face"])
    row = at.row = slot_post(at.inputs["slot_posts"], at.intent_id)
    publishing = controller["state"] == ControllerState.ONLINE and not controller.get("paused_reason")
    if row is not None and row["status"] not in (PostStatus.APPROVED, PostStatus.PUBLISHING):
        at.resolve()  # published, shadow, failed, awaiting review, rejected or skipped: nothing to send
        return {"slot": at.slot, "outcome": f"already {row['status']}"}
    if row is None and not publishing:
        at.resolve()
        return {"slot": at.slot, "outcome": f"skipped ({controller['state']})"}
    if row is None:
        row = _generate(at, awaiting_review=review != ReviewMode.OFF)
        if row is None:
            at.resolve()
            return {"slot": at.slot, "outcome": "every sample was rejected"}
        if row["status"] == PostStatus.AWAITING_REVIEW:
            return {"slot": at.slot, "outcome": "awaiting review", "text": row["text"]}
    elif row["status"] == PostStatus.APPROVED:
        # Only a post whose stored decision approves it goes out (a decision that lost a race does not).
        stopped = controller["state"] in (ControllerState.STOPPING, ControllerState.IDLE)
        if not approving(at.inputs.get("review"), row) or stopped:
            why = "stopped before publishing" if stopped else "no approving review decision"
            at.record([post_op(row["post_id"], status=PostStatus.SKIPPED, reject_reason=why)], "unapproved")
            return {"slot": at.slot, "outcome": f"skipped ({why})"}
        if not publishing:  # paused or offline: it stays approved and goes out when publishing resumes
            return {"slot": at.slot, "outcome": f"approved, waiting ({controller['state']})"}
        # Recorded before the face is called: a crash after publishing leaves `publishing`, which the next
        # attempt checks with find_published.
        at.record([post_op(row["post_id"], status=PostStatus.PUBLISHING)], "approved-publishing")
    elif not shadow:
        since = datetime.fromisoformat(str(row["inserted_at"])) - timedelta(days=1)
        found = build_face(at.inputs["face"]["kind"], at.inputs["face"]["config"], name=at.face_id).find_published(
            at.intent_id, row["text"], since)
        if found is not None:
            _record_published(at, None, found)
            return {"slot": at.slot, "outcome": "found published", "platform_id": found.platform_id}
        if not publishing:
            at.record(records.post_failed(at.face_id, at.slot, at.post_id, "stopped before publishing",
                                          resolve=at.unresolved), "unpublished")
            return {"slot": at.slot, "outcome": "not published (stopping)"}
    if shadow:  # everything but the network call
        at.record(records.shadowed(at.face_id, at.slot, at.post_id, utc_now(), resolve=at.unresolved), "shadow")
        return {"slot": at.slot, "outcome": "would have posted", "text": row["text"]}
    face = build_face(at.inputs["face"]["kind"], at.inputs["face"]["config"], name=at.face_id)
    result = face.publish(row["text"], at.intent_id)
    _record_published(at, face, result)
    return {"slot": at.slot, "outcome": "published", "platform_id": result.platform_id, "text": row["text"]}


def _record_publish_failure(at: _Slot, job, exc: Exception) -> None:
    final = job is None or not job.retries_left
    attempt = (at.cfg.publish_retries - (job.retries_left or 0) + 1) if job is not None else 1
    ops = records.publish_failed(at.face_id, at.run_id, at.slot, at.intent_id, at.post_id if at.row else None,
                                 attempt, failure_message(exc), final)
    at.writer.submit(ops, write_id=f"publish-failed:{at.intent_id}" if final
                     else f"publish-retry:{at.intent_id}:{attempt}")


def _generate(at: _Slot, awaiting_review: bool = False) -> dict | None:
    """Sample the slot's candidates, guard them and choose one (crowdtune.online.candidates); record the
    rejected samples, then the chosen post as `publishing` (`awaiting_review` on a face with review, the
    slot resolved with it) with the other candidates in one write. Out: the chosen row, None if none."""
    from crowdtune.online.candidates import SlotIds, draft_slot, guard_indexes, load_reward_model
    from crowdtune.training.devices import torch_device
    from crowdtune.training.generation import GenerationConfig
    from crowdtune.training.models import load_base_model, load_version

    cfg, cache = at.cfg, at.settings.data_dir / "models"
    version = at.inputs.get("active_version")
    if version:
        model, tokenizer = load_version(version["artifact_url"], base_model=version["base_model"], cache_dir=cache)
    else:
        model, tokenizer = load_base_model((at.inputs.get("run") or {}).get("base_model") or cfg.base_model
                                           or at.settings.base_model, cache_dir=cache)
    model.to(torch_device(at.settings.device)).eval()  # a worker pinned to a GPU samples there
    training = []
    if GenerationConfig(**cfg.sampling()).drop_copies:
        training = [p["text"] for p in read_rows_via_store_worker(at.conn, "training_posts", face_id=at.face_id)]
    guards = guard_indexes(training, at.inputs.get("published_texts") or [], cfg.copy_embedding_threshold,
                           cfg.novelty_window)
    now = utc_now()
    draft = draft_slot(model, tokenizer, cfg, SlotIds(at.face_id, at.run_id, at.slot), guards=guards,
                       reward_model=load_reward_model(at.inputs.get("reward_model")),
                       version_id=version["version_id"] if version else None, hour=now.hour + now.minute / 60)
    if draft.reward_model_problem:
        at.record([records.reward_model_unusable(at.face_id, draft.reward_model_problem)], "reward-model-unusable")
    if draft.rejected:
        at.record(records.samples_rejected(draft.rejected), "rejected")
    if draft.chosen is None:
        return None
    if awaiting_review:
        at.record(records.slot_awaiting_review(draft.chosen, draft.candidates, at.face_id, at.slot), "intent")
        at.row = {**draft.chosen, "status": PostStatus.AWAITING_REVIEW, "inserted_at": now.isoformat()}
        return at.row
    # Recorded through the store queue before the face is called: a crash after publishing
    # leaves a `publishing` row that the next attempt checks with find_published.
    at.record(records.slot_drafted(draft.chosen, draft.candidates), "intent")
    at.row = {**draft.chosen, "inserted_at": now.isoformat()}
    return at.row


def _record_published(at: _Slot, face, result) -> None:
    from faces.registry import build_face

    try:
        face = face or build_face(at.inputs["face"]["kind"], at.inputs["face"]["config"], name=at.face_id)
        audience = face.audience_size()
    except Exception:  # the audience size is a nice-to-have; the post is out either way
        audience = None
    at.record(records.published(at.face_id, at.slot, at.post_id, result, audience, resolve=at.unresolved),
              "published")
    try:  # its vector, for the fits and guards to come; never a reason to fail a post that went out
        if keep_posts([at.row["text"]], at.settings):  # no vector of it here (not a candidate's): the job's turn
            embed_face_posts(at.conn, at.face_id)
    except Exception:
        log.warning("could not keep the embedding of %s", at.post_id, exc_info=True)


# --------------------------------------------------------------------------------------------
# Reactions


def collect_reactions(face_id: str, post_id: str, platform_id: str, maturity_seconds: float) -> dict:
    """Read a published post's reactions once (a new snapshot); score it when it has reached maturity.

    The age is the face's own (ReactionSnapshot.post_age_seconds: accelerated on the sandbox), so a
    post is only scored once an observation is at least `maturity_seconds` old.
    """
    from crowdtune.scoring import ScorerConfig, score_at_maturity
    from crowdtune.store.writes import alert_op
    from faces.registry import build_face

    conn = connect(load_settings())
    writer = StoreWriter(conn)
    job = get_current_job()
    write_suffix = job.id if job else uuid.uuid4().hex
    inputs = read_via_store_worker(conn, "collect_inputs", post_id=post_id)
    if inputs is None or inputs["post"]["score"] is not None:
        return {"post_id": post_id, "outcome": "nothing to do"}
    post, record = inputs["post"], inputs["face"]
    try:
        snap = build_face(record["kind"], record["config"], name=face_id).reactions(platform_id)
    except Exception as exc:
        if job is None or not job.retries_left:
            writer.submit([alert_op(f"collect-failed:{post_id}", "warning", f"online {face_id}",
                                    f"Could not read the reactions of {post_id} on {face_id}: "
                                    f"{failure_message(exc)}")], write_id=f"collect-failed:{write_suffix}")
        raise
    published_at = datetime.fromisoformat(str(post["published_at"]))
    age = snap.post_age_seconds if snap.post_age_seconds is not None else \
        max(0.0, (snap.observed_at - published_at).total_seconds())
    counts = dict(snap.counts) or {"likes": 0}  # an observation with no reactions still counts as one
    history = [(s["age_seconds"], s["counts"], s["audience_size"]) for s in inputs["snapshots"]]
    history.append((age, counts, snap.audience_size))
    scorer = ScorerConfig(**(record.get("scorer") or {})).model_copy(update={"maturity_hours": maturity_seconds / 3600})
    score = score_at_maturity(history, scorer)
    writer.submit(records.reactions_observed(post, snap.observed_at, counts, age, snap.audience_size, score),
                  write_id=f"collect:{write_suffix}")
    if score is not None:
        schedule_tick(conn, face_id)
    return {"post_id": post_id, "age_seconds": age, "counts": counts, "score": score}


# --------------------------------------------------------------------------------------------
# RL updates


def rl_update(update_id: str) -> dict:
    """Run one RL update on its matured posts (and the review decisions the controller gave it: rejections
    and picks, crowdtune.training.rl.feedback), register the new model version and make it active.

    Steps: read its inputs (crowdtune.online.updates.read_update_inputs), train
    (train_update), record the version and metrics (record_update). A stop request ends the update
    without a version (state `stopped`); a result with pause=True registers the version but keeps
    the old one active, pauses the controller and raises an alert. Re-running after a crash resumes
    from the update's checkpoint and writes nothing twice.
    """
    from crowdtune.online.updates import read_update_inputs, record_update, train_update, update_trackers

    settings = load_settings()
    conn = connect(settings)
    writer = StoreWriter(conn)
    job = get_current_job()
    inputs = read_update_inputs(conn, update_id)
    update = inputs.update
    if update["status"] in (UpdateStatus.COMPLETED, UpdateStatus.STOPPED, UpdateStatus.FAILED):
        return {"update_id": update_id, "outcome": f"already {update['status']}"}
    writer.submit([records.update_set(update_id, status=UpdateStatus.RUNNING, started_at=utc_now())],
                  write_id=f"update-running:{update_id}:{job.id if job else ''}:{utc_now():%H%M%S%f}")
    try:
        with update_trackers(settings, update) as trackers:
            result = train_update(settings, inputs, on_progress=progress_reporter(job),
                                  should_stop=lambda: stop_flags.stop_requested(conn, update["run_id"]),
                                  checkpoint_name=safe_id(update_id), writer=writer, trackers=trackers)
            if result.stopped:
                writer.submit([records.update_set(update_id, status=UpdateStatus.STOPPED, ended_at=utc_now())],
                              write_id=f"update-stopped:{update_id}")
                return {"update_id": update_id, "outcome": "stopped"}
            version_id, metrics = record_update(settings, writer, inputs, result, trackers)
        return {"update_id": update_id, "version_id": version_id, "paused": bool(result.pause), "metrics": metrics}
    except Exception as exc:
        if job is None or not job.retries_left:
            writer.submit(records.update_failed(update, failure_message(exc)), write_id=f"update-failed:{update_id}")
        raise
    finally:
        schedule_tick(conn, update["face_id"])


# --------------------------------------------------------------------------------------------
# Reward models


def fit_reward_model(face_id: str) -> dict:
    """Fit the face's reward model on its scored posts and record it, with its honest figures.

    Steps (crowdtune.online.reward_fits): read the inputs, fit (era rewards, MiniLM vectors through the
    shared cache, time-split validation, online agreement), save under artifacts_url and record the
    `reward_models` row and its metrics. Fewer scored posts than a model needs: nothing is recorded.
    """
    from crowdtune.online.reward_fits import fit_model, read_fit_inputs, record_fit

    settings = load_settings()
    conn = connect(settings)
    inputs = read_fit_inputs(conn, face_id)
    if len(inputs.posts) < inputs.predictor.min_posts:
        return {"face_id": face_id, "outcome": f"{len(inputs.posts)} scored post(s): too few for a reward model"}
    report = progress_reporter(get_current_job())
    fitted = fit_model(settings, inputs, on_progress=lambda done, total: report(done, total, None, None, "embedding"))
    url = record_fit(settings, conn, fitted)
    return {"face_id": face_id, "model_id": fitted.model_id, "artifact_url": url, **fitted.figures}
