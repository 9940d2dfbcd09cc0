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
    PUBLISHING = "publishing"    # the intent is recorded, the face was (maybe) called
    PUBLISHED = "published"
    FAILED = "failed"


class UpdateStatus(StrEnum):
    """One online RL update (table `online_updates`)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    STOPPED = "stopped"
    FAILED = "failed"
