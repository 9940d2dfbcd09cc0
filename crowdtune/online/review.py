"""Review before posting: a face's review policy, what an operator's decision may do, and the publish job's check.

    review_policy(face) -> (ReviewMode, shadow)           from a stored face record, with its kind's defaults
    slot_post(rows, intent_id) -> dict | None             which of a slot's rows carries its intent now
    decision_ops(item, action, by, text, candidate_id)    the writes of one decision, or a CrowdtuneError why not
    approving(decision, row) -> bool                      whether a stored decision lets `row` go out

How it runs. On a face with `review` approve or pick, jobs.online.publish_post drafts the slot as usual
(best-of-N, guards, the exploring choice) but records the chosen post as `awaiting_review` and resolves
the slot, so the schedule moves on. The operator decides on the Review page or with `crowdtune review`
(crowdtune.actions.review_post): approve, edit (published as edited), reject, or, in pick mode, pick one
of the slot's candidates (or none: reject). A decision is one write through the store queue with a
deterministic write id, and wakes the controller, whose next tick hands the approved post to the slot's
publish job (deterministic job id). That job publishes only a post whose stored decision approves it.
The controller skips a post not decided within `OnlineConfig.review_timeout_hours` (crowdtune.online.
controller.review_due); the next slot keeps its time.

One decision per intent: review_decisions is keyed by the intent id and rows are inserted, never
replaced, and the post updates apply only while the post still awaits review, so of two racing
decisions the first to land is the one that counts.
"""

from __future__ import annotations

from crowdtune.errors import CrowdtuneError
from crowdtune.online import records
from crowdtune.states import PostStatus, ReviewAction, ReviewMode

APPROVING = (ReviewAction.APPROVE, ReviewAction.EDIT, ReviewAction.PICK)
# Of a slot's rows that carry its intent id, the one to act on (after a pick two may, briefly).
_SLOT_ROW_ORDER = (PostStatus.PUBLISHING, PostStatus.APPROVED, PostStatus.PUBLISHED, PostStatus.SHADOW,
                   PostStatus.AWAITING_REVIEW, PostStatus.FAILED, PostStatus.SKIPPED, PostStatus.REJECTED,
                   PostStatus.CANDIDATE)


def review_policy(face: dict) -> tuple[ReviewMode, bool]:
    """(review mode, shadow) of a face record ({"kind", "config"}); a config without them gets its kind's
    defaults (approve on network faces, off on the sandbox and datasets; shadow off)."""
    from faces.registry import FACE_KINDS

    fields = FACE_KINDS[face["kind"]].Config.model_fields
    config = face.get("config") or {}
    return (ReviewMode(config.get("review", fields["review"].default)),
            bool(config.get("shadow", fields["shadow"].default)))


def slot_post(rows: list[dict], intent_id: str) -> dict | None:
    """The row of a slot that carries its intent id (the chosen post, or the candidate picked instead)."""
    carrying = [r for r in rows if r.get("intent_id") == intent_id]
    return min(carrying, key=lambda r: _SLOT_ROW_ORDER.index(r["status"]), default=None)


def approving(decision: dict | None, row: dict) -> bool:
    """Whether the stored review decision approves publishing `row` (the post approved or edited, or picked)."""
    return (decision is not None and decision["action"] in APPROVING
            and (decision.get("candidate_id") or decision["post_id"]) == row["post_id"])


def decision_ops(item: dict, action: ReviewAction, decided_by: str, text: str | None = None,
                 candidate_id: str | None = None) -> list[dict]:
    """The writes of one decision on a waiting post.

    In: `item` (reads.review_item: "post", its "candidates", "face"), the action, who decides ("cli" or the
    dashboard's user), the edited text (edit) or the chosen candidate's post_id (pick). Out: ops for one
    write. Raises CrowdtuneError when the post no longer waits or the decision does not fit it."""
    post = item["post"]
    if post["status"] != PostStatus.AWAITING_REVIEW:
        raise CrowdtuneError(f"Post {post['post_id']} does not wait for review: it is {post['status']}.",
                             "`crowdtune review list` (or the Review page) shows the posts that wait.")
    if action == ReviewAction.EDIT:
        text = (text or "").strip()
        if not text:
            raise CrowdtuneError("An edit needs the text to publish.", "Give the new text, or reject the post.")
        if text == post["text"]:
            action = ReviewAction.APPROVE  # nothing changed: the policy's own sample, usable for RL as it is
    candidate = None
    if action == ReviewAction.PICK:
        slot_rows = {post["post_id"]: post, **{c["post_id"]: c for c in item["candidates"]}}
        if candidate_id not in slot_rows:
            raise CrowdtuneError(f"{candidate_id!r} is not one of the candidates of {post['post_id']}.",
                                 f"Pick one of: {', '.join(slot_rows)}.")
        candidate = slot_rows[candidate_id]
    return records.review_decided(post, action, decided_by, text=text, candidate=candidate)
