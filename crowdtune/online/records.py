"""The store writes of the online loop, by what they record (each a list of ops from store.writes).

Jobs and the dispatcher say *what* happened (`published(...)`, `update_failed(...)`); the rows and
columns it takes live here, once.
"""

from __future__ import annotations

import math
from typing import Any

from crowdtune.states import ControllerState, PostStatus, ReviewAction, RunStatus, UpdateStatus
from crowdtune.store.writes import (
    alert_op,
    controller_op,
    insert_op,
    metrics_op,
    post_op,
    update_op,
    upsert_op,
    utc_now,
)


def slot_resolved(face_id: str, slot: int) -> dict:
    """A slot's outcome is known (published, failed or skipped): the controller may schedule the next."""
    return controller_op(face_id, resolved_slot=slot, last_resolved_at=utc_now())


def update_planned(plan, run_id: str, face_id: str, parent_version_id: str | None) -> list[dict]:
    """A new RL update over `plan.post_ids`, and each of those posts, and those of the review decisions it
    learns from (`plan.feedback_ids`: reads.update_feedback finds them by this mark), marked as used by it."""
    return [
        insert_op("online_updates", [{
            "update_id": plan.update_id, "run_id": run_id, "face_id": face_id, "step": plan.step,
            "status": UpdateStatus.QUEUED, "post_ids": plan.post_ids, "parent_version_id": parent_version_id}]),
        *(post_op(pid, update_id=plan.update_id) for pid in [*plan.post_ids, *plan.feedback_ids]),
    ]


def offline_started(face_id: str, offline_run_id: str, completed_updates: int, why: str) -> list[dict]:
    return [
        controller_op(face_id, state=ControllerState.OFFLINE, offline_run_id=offline_run_id,
                      updates_at_offline=completed_updates),
        alert_op(f"offline-phase:{offline_run_id}", "info", f"online {face_id}",
                 f"{face_id} switched to offline training ({offline_run_id}): {why}."),
    ]


def offline_ended(face_id: str, offline_run_id: str | None, version_id: str | None, completed: bool) -> list[dict]:
    """Back online; a completed offline phase's version becomes the face's active one."""
    ops = [controller_op(face_id, state=ControllerState.ONLINE, offline_run_id=None)]
    if completed:
        ops.append(update_op("faces", {"face_id": face_id}, {"active_version_id": version_id}))
    else:
        ops.append(alert_op(f"offline-failed:{offline_run_id}", "warning", f"online {face_id}",
                            f"The offline phase {offline_run_id} of {face_id} failed; "
                            "online training goes on with the previous version."))
    return ops


def run_stopped(face_id: str, run_id: str) -> list[dict]:
    return [update_op("runs", {"run_id": run_id}, {"status": RunStatus.STOPPED, "ended_at": utc_now()}),
            controller_op(face_id, state=ControllerState.IDLE, offline_run_id=None)]


# --- Publishing --------------------------------------------------------------------------------


def samples_rejected(rows: list[dict]) -> list[dict]:
    """Samples the guards refused (status `rejected` with the reason): kept for the record, never published."""
    return [upsert_op("posts", rows)]


def slot_drafted(chosen: dict, candidates: list[dict]) -> list[dict]:
    """The slot's intent (its post, `publishing`) and its other candidates, together: one write, so that
    a crash leaves either none of them (a re-run samples the same again) or all (it publishes `chosen`)."""
    return [upsert_op("posts", [chosen, *candidates])]


def reward_model_unusable(face_id: str, problem: str) -> dict:
    """Publishing chose uniformly because the face's reward model could not be used (one alert per face)."""
    return alert_op(f"reward-model-unusable:{face_id}", "warning", f"online {face_id}",
                    f"Publishing on {face_id} chose among the candidates at random: {problem}"[:2000])


def slot_awaiting_review(chosen: dict, candidates: list[dict], face_id: str, slot: int) -> list[dict]:
    """On a face with review: the slot's post waits for the operator (`awaiting_review`), with its candidates,
    and the slot is resolved in the same write, so the schedule moves on while the post waits in the queue."""
    return [upsert_op("posts", [{**chosen, "status": PostStatus.AWAITING_REVIEW}, *candidates]),
            slot_resolved(face_id, slot)]


def published(face_id: str, slot: int, post_id: str, result, audience: int | None, resolve: bool = True) -> list[dict]:
    """The face took the post: its platform id, address and time, and (`resolve`) the slot is resolved
    (a reviewed slot was resolved when it was drafted, and a later slot may have been since)."""
    ops = [post_op(post_id, status=PostStatus.PUBLISHED, platform_id=result.platform_id, url=result.url,
                   published_at=result.published_at, created_at=result.published_at, audience_size=audience)]
    return [*ops, slot_resolved(face_id, slot)] if resolve else ops


def shadowed(face_id: str, slot: int, post_id: str, at, resolve: bool = True) -> list[dict]:
    """A shadow face's post "would have posted" at `at`: no network call, no platform id, no reactions."""
    ops = [post_op(post_id, status=PostStatus.SHADOW, published_at=at, created_at=at)]
    return [*ops, slot_resolved(face_id, slot)] if resolve else ops


def post_failed(face_id: str, slot: int, post_id: str | None, reason: str, resolve: bool = True) -> list[dict]:
    """The slot is resolved without a post; a recorded intent (post_id) is marked failed with the reason."""
    ops = [post_op(post_id, status=PostStatus.FAILED, reject_reason=reason[:500])] if post_id else []
    return [*ops, slot_resolved(face_id, slot)] if resolve else ops


# --- Review ------------------------------------------------------------------------------------


def review_decision_row(post: dict, action: ReviewAction, decided_by: str, text: str | None = None,
                        candidate_id: str | None = None) -> dict:
    """The review_decisions row of a decision on the slot post `post` (one per intent: its id is the intent's)."""
    return {"decision_id": post["intent_id"] or f"{post['run_id']}:{post['publish_slot']}", "face_id": post["face_id"],
            "run_id": post.get("run_id"), "publish_slot": post.get("publish_slot"), "post_id": post["post_id"],
            "candidate_id": candidate_id, "action": action, "decided_by": decided_by, "decided_at": utc_now(),
            "original_text": post.get("text"), "text": text, "slot_drafted_at": post.get("inserted_at")}


def review_decided(post: dict, action: ReviewAction, decided_by: str, text: str | None = None,
                   candidate: dict | None = None) -> list[dict]:
    """An operator's decision on the slot post `post` (awaiting review), in one write.

    approve: the post as it is; edit: with `text` instead (the original stays in the decision); reject: never
    sent; pick: `candidate` (one of the slot's candidates, or the post itself) becomes the slot's post and the
    others point at it. Each post change applies only while `post` still awaits review, and the decision row
    is inserted, never replaced: of two racing decisions (a click and the timeout) the first one counts."""
    waiting = {"post_id": post["post_id"], "status": PostStatus.AWAITING_REVIEW}
    if action == ReviewAction.PICK and candidate is not None and candidate["post_id"] != post["post_id"]:
        picked = candidate["post_id"]
        return [
            insert_op("review_decisions", [review_decision_row(post, action, decided_by, candidate["text"], picked)]),
            update_op("posts", {"candidate_of": post["post_id"], "status": PostStatus.CANDIDATE},
                      {"candidate_of": picked}),
            update_op("posts", {"post_id": picked, "status": PostStatus.CANDIDATE},
                      {"status": PostStatus.APPROVED, "intent_id": post["intent_id"], "candidate_of": None,
                       "review": action}),
            update_op("posts", waiting, {"status": PostStatus.CANDIDATE, "intent_id": None, "candidate_of": picked}),
        ]
    row = review_decision_row(post, action, decided_by, text if action == ReviewAction.EDIT else post["text"],
                              post["post_id"] if action == ReviewAction.PICK else None)
    if action == ReviewAction.REJECT:
        change = {"status": PostStatus.REJECTED, "reject_reason": f"rejected on review by {decided_by}"[:500],
                  "review": action}
    elif action == ReviewAction.EDIT:
        change = {"status": PostStatus.APPROVED, "text": text, "review": action}
    else:
        change = {"status": PostStatus.APPROVED, "review": action}
    return [insert_op("review_decisions", [row]), update_op("posts", waiting, change)]


def review_skipped(face_id: str, post, reason: str, decided_by: str) -> list[dict]:
    """A post the clock decided (controller.review_due): not reviewed in time, or its run stopped. It is
    `skipped` if still awaiting review or approved, and an `expire` decision is recorded unless one exists."""
    row = {"decision_id": f"{post.run_id}:{post.publish_slot}", "face_id": face_id, "run_id": post.run_id,
           "publish_slot": post.publish_slot, "post_id": post.post_id, "action": ReviewAction.EXPIRE,
           "decided_by": decided_by, "decided_at": utc_now(), "slot_drafted_at": post.inserted_at}
    skip = {"status": PostStatus.SKIPPED, "reject_reason": reason[:500]}
    return [insert_op("review_decisions", [row]),
            update_op("posts", {"post_id": post.post_id, "status": PostStatus.AWAITING_REVIEW}, skip),
            update_op("posts", {"post_id": post.post_id, "status": PostStatus.APPROVED}, skip)]


def review_overdue(face_id: str, waiting: int, oldest_post_id: str) -> dict:
    """The face's review queue has a post older than a day (one alert per oldest post)."""
    return alert_op(f"review-overdue:{face_id}", "warning", f"online {face_id}",
                    f"{waiting} post(s) of {face_id} wait for review, the oldest ({oldest_post_id}) for more than a "
                    "day: review them on the Review page or with `crowdtune review list`, or lower "
                    "review_timeout_hours.")


def publish_failed(face_id: str, run_id: str, slot: int, intent_id: str, post_id: str | None, attempt: int,
                   message: str, final: bool) -> list[dict]:
    """A failed publishing attempt: a warning while retries are left, else the slot gives up with an error."""
    where = f"Publishing post {slot} of {run_id} on {face_id}"
    if not final:
        return [alert_op(f"publish-retry:{intent_id}", "warning", f"online {face_id}",
                         f"{where} failed (attempt {attempt}), retrying with backoff: {message}")]
    return [*post_failed(face_id, slot, post_id, message),
            alert_op(f"publish-failed:{intent_id}", "error", f"online {face_id}",
                     f"{where} failed after {attempt} attempt(s): {message}")]


# --- Reactions ---------------------------------------------------------------------------------


def reactions_observed(post: dict, observed_at, counts: dict[str, int], age: float, audience: int | None,
                       score: float | None) -> list[dict]:
    """One reaction snapshot; at maturity also the post's score (and its run's `post_score` metric)."""
    ops = [insert_op("reaction_snapshots", [
        {"post_id": post["post_id"], "observed_at": observed_at, "kind": kind, "count": int(count),
         "age_seconds": age, "audience_size": audience} for kind, count in counts.items()])]
    if score is not None:
        ops.append(post_op(post["post_id"], score=score, scored_at=observed_at))
        if post.get("run_id") and post.get("publish_slot") is not None:
            ops.append(metrics_op(post["run_id"], post["publish_slot"], {"post_score": score}))
    return ops


# --- RL updates --------------------------------------------------------------------------------


def update_set(update_id: str, **values: Any) -> dict:
    return update_op("online_updates", {"update_id": update_id}, values)


def guard_tripped(update: dict, guard: str, message: str) -> dict:
    """A guard against reward hacking (KL leash, copy guard, diversity floor ...) tripped in an update."""
    return alert_op(f"guard-{guard}:{update['update_id']}", "warning", f"online {update['face_id']}",
                    f"Update {update['step']} of {update['face_id']}: {message}")


def update_finished(update: dict, version: dict, metrics: dict[str, float], note: str,
                    pause_reason: str | None, alerts: list[dict] = ()) -> list[dict]:
    """The update's version registered, with an alert per tripped guard (`alerts`: {"guard", "message"});
    made the face's active one unless the update asked to pause."""
    run_id, face_id, step, update_id = update["run_id"], update["face_id"], update["step"], update["update_id"]
    ops = [
        upsert_op("model_versions", [{**version, "run_id": run_id, "step": step, "metrics": metrics, "note": note}]),
        update_set(update_id, status=UpdateStatus.COMPLETED, version_id=version["version_id"],
                   parent_version_id=version["parent_version_id"], metrics=metrics,
                   paused=pause_reason is not None, ended_at=utc_now(), error=None),
        metrics_op(run_id, step, metrics),
        *(guard_tripped(update, a["guard"], a["message"]) for a in alerts),
    ]
    if pause_reason is not None:
        return [*ops, controller_op(face_id, paused_reason=f"update {step}: {pause_reason}"[:1000]),
                alert_op(f"online-paused:{update_id}", "warning", f"online {face_id}",
                         f"Online training of {face_id} paused after update {step}: {pause_reason}. Version "
                         f"{version['version_id']} was saved but not activated; review it, then stop and restart "
                         "the online run.")]
    return [*ops, update_op("faces", {"face_id": face_id}, {"active_version_id": version["version_id"]})]


def update_failed(update: dict, message: str) -> list[dict]:
    """The update gave up: it is failed, the controller pauses, and an error alert says why. A failed warm
    start (step 0) does not pause: publishing starts with the start model, and a warning says so."""
    face_id, step, update_id = update["face_id"], update["step"], update["update_id"]
    if step == 0:
        return [update_set(update_id, status=UpdateStatus.FAILED, error=message[:2000], ended_at=utc_now()),
                alert_op(f"update-failed:{update_id}", "warning", f"online {face_id}",
                         f"The warm start of {face_id} against its reward model failed: {message}. Publishing "
                         "starts with the start model; later updates learn as usual.")]
    return [
        update_set(update_id, status=UpdateStatus.FAILED, error=message[:2000], ended_at=utc_now()),
        controller_op(face_id, paused_reason=f"update {step} failed: {message}"[:1000]),
        alert_op(f"update-failed:{update_id}", "error", f"online {face_id}",
                 f"RL update {step} of {face_id} failed: {message}. Online training is paused; "
                 "stop and restart it once fixed."),
    ]


# --- Reward models -----------------------------------------------------------------------------


def reward_model_run_id(face_id: str) -> str:
    """The run id under which a face's reward-model fits log their figures (the Metrics page charts them)."""
    return f"reward-model:{face_id}"


def reward_model_fitted(row: dict, metrics: dict[str, float], scored_posts: int) -> list[dict]:
    """A face's new reward model: its `reward_models` row, and its figures as metrics of
    reward_model_run_id at step `scored_posts` (the face's scored posts at the fit: one step per fit)."""
    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
    return [upsert_op("reward_models", [row]), metrics_op(reward_model_run_id(row["face_id"]), scored_posts, finite)]
