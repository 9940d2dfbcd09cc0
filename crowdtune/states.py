"""The states things pass through, as enums (in the manner of RQ's JobStatus).

Each is a StrEnum: a member equals its value, so rows read from the store compare with members
directly, and members travel through JSON and into DuckDB as plain strings.
"""

from enum import StrEnum


class ControllerState(StrEnum):
    """A face's online controller (table `controllers`; see crowdtune.online.controller)."""

    IDLE = "IDLE"
    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"
    STOPPING = "STOPPING"


class RunStatus(StrEnum):
    """An offline or online run (table `runs`)."""

    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"    # a stop was asked; the run saves a checkpoint and a version, then is `stopped`
    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    STOPPED = "stopped"
    FAILED = "failed"


class PostStatus(StrEnum):
    """A post (table `posts`): imported from a face's history, or generated and published."""

    IMPORTED = "imported"
    REJECTED = "rejected"        # a sample a guard refused; never published
    CANDIDATE = "candidate"      # a best-of-N sample that passed the guards but was not chosen
    AWAITING_REVIEW = "awaiting_review"  # a slot's post on a face with review: waits for the operator
    APPROVED = "approved"        # the operator approved (or edited, or picked) it; the publish job sends it
    PUBLISHING = "publishing"    # the intent is recorded, the face was (maybe) called
    PUBLISHED = "published"
    SHADOW = "shadow"            # a shadow face's post: everything but the network call ("would have posted")
    SKIPPED = "skipped"          # not reviewed within review_timeout (or the run stopped first): never sent
    FAILED = "failed"


class ReviewMode(StrEnum):
    """How a face's posts are reviewed before they go out (a face setting, faces.base.FaceConfig.review)."""

    OFF = "off"          # published as soon as chosen
    APPROVE = "approve"  # the chosen post waits for approve / edit / reject
    PICK = "pick"        # the operator picks one of the slot's candidates, or none


class ReviewAction(StrEnum):
    """A review decision (table `review_decisions`)."""

    APPROVE = "approve"
    EDIT = "edit"        # published as edited; never an on-policy RL sample (its tokens are the original's)
    PICK = "pick"
    REJECT = "reject"
    EXPIRE = "expire"    # no decision within review_timeout: the slot was skipped (decided_by "review_timeout")


class UpdateStatus(StrEnum):
    """One online RL update (table `online_updates`)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"
