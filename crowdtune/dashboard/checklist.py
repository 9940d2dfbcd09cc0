"""The Overview's first steps: which of actions.FIRST_STEPS are done, from what the store holds.

A step is done when its result is in the store: imported posts on the history face, a model
version, that version publishing on the sandbox, the sandbox's online loop started once. Generating samples leaves
nothing in the store (the Playground never publishes): it is optional, offered beside the next step,
and counts as done once a later step is.
"""

from __future__ import annotations

from dataclasses import dataclass

from crowdtune.actions import FIRST_STEPS

SAMPLES = 2  # "Generate samples in the Playground": optional (the Playground never writes to the store)


@dataclass
class Step:
    title: str
    command: str
    done: bool
    optional: bool = False  # leaves nothing in the store, so it never holds up the steps after it


def first_steps(facts: dict, history_face: str | None, online_face: str | None) -> list[Step]:
    """The checklist for views.getting_started `facts`, the face to learn from and the one to publish to."""
    imported = bool(history_face) and facts["imported"].get(history_face, 0) > 0
    version = facts["latest_version"]
    publishing = bool(online_face) and version is not None and facts["active"].get(online_face) is not None
    online = bool(online_face) and online_face in facts["online"]  # its loop was started (it may be stopped now)
    done = [imported, version is not None, publishing or online, publishing, online]
    return [Step(title, command, flag, optional=index == SAMPLES)
            for index, ((title, command), flag) in enumerate(zip(FIRST_STEPS, done, strict=True))]


def next_step(steps: list[Step]) -> int | None:
    """The index of the first required step not done yet, or None when all are."""
    return next((i for i, step in enumerate(steps) if not step.done and not step.optional), None)


def offered(steps: list[Step]) -> list[int]:
    """The steps that get a button now: the next required one, and any optional one before it not done."""
    current = next_step(steps)
    if current is None:
        return []
    return [i for i, step in enumerate(steps[:current]) if step.optional and not step.done] + [current]
