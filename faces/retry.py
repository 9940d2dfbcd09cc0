"""Retrying calls to networks: rate limits, server errors, timeouts, answers that are not the API,
and publishing without duplicates.

Rules (one place for all network faces):
- 429: wait what the server said (Retry-After); without it, back off like a server error.
- 5xx and connection errors: exponential backoff with jitter.
- Attempts are bounded; when they run out the caller gets a FaceRateLimitError or
  FaceUnavailableError saying what failed and what to do.
- Timeouts count as connection errors, named with the setting to raise (`timed_out`).
- An answer that is not JSON (an HTML page from a proxy, a cut-off body) is retried too; JSON of
  the wrong shape is not (a server that speaks another API keeps doing so). `AnswerCheck` names
  both with what came back; each face decides from its library's errors which is which.
- Anything else (401, 400, ...) is not retried: the face turns it into a clear FaceError.
- Before a publish is retried, `before_retry` (the face's find_published) is asked whether the
  failed attempt did create the post after all; if so that post is returned and nothing is resent.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from faces.base import FaceError, FaceMalformedAnswerError, FaceRateLimitError, FaceUnavailableError

log = logging.getLogger(__name__)
Result = TypeVar("Result")


class RetryPolicy(BaseModel):
    """How hard a network face tries before giving up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=5, ge=1, description="tries in total, the first included")
    base_delay_seconds: float = Field(
        default=1.0, ge=0, description="first backoff; doubles every attempt, times a jitter in [0.5, 1]")
    max_delay_seconds: float = Field(default=60.0, ge=0, description="cap on one backoff")
    max_retry_after_seconds: float = Field(
        default=300.0, ge=0, description="a 429 asking to wait longer than this fails at once")

    def backoff_seconds(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay after failed attempt number `attempt` (1-based): exponential, capped, jittered."""
        rng = rng or random.Random()
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (attempt - 1))
        return ceiling * rng.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Retryable:
    """A failure worth another attempt. `reason` is safe to log (a status, never a token).

    `fix` replaces the generic advice of the error raised when attempts run out (e.g. for a timeout:
    raise the face's request_timeout).
    """

    reason: str
    rate_limited: bool = False
    retry_after: float | None = None
    fix: str | None = None


def timed_out(network: str, seconds: float, check: str) -> Retryable:
    """A request that got no answer within `seconds`: retried; when attempts run out the fix names
    `check` (where to see the server is up) and the face's request_timeout."""
    return Retryable(
        f"no answer within {seconds:g} s",
        fix=f"{check}; if it is just slow, raise request_timeout in the {network} face config.",
    )


class AnswerCheck:
    """Names answers that are not a network's API, with what came back.

    A face keeps one, tells it about every answer it sees (`note`, from its HTTP library's response
    hook), and checks the values it reads with `expect` / `expect_list`, so a wrong-shaped answer
    raises FaceMalformedAnswerError ("Bluesky (https://...) answered reading a post's reactions with
    an object without uri (HTTP 200, application/json: '{...'): that is not the Bluesky API.")
    instead of a KeyError deep in a library, and never turns into a stored "None".
    """

    def __init__(self, network: str, where: str, fix: str):
        self.network, self.where, self.fix = network, where, fix
        self.last = "no answer yet"

    def note(self, status: int | None, content_type: str | None, body: bytes | None) -> None:
        """Remember an answer: its status, content type and the start of its body (None: unknown)."""
        shown = (content_type or "no content type").split(";")[0]
        if status is not None:
            shown = f"HTTP {status}, {shown}"
        if body is not None:
            excerpt = re.sub(r"\s+", " ", body[:200].decode("utf-8", "replace")).strip()[:80]
            shown += f": {excerpt!r}"
        self.last = shown

    def not_json(self) -> Retryable:
        """The verdict for an answer that is not JSON: retried, since a proxy's error page or a body
        cut off in transit is most often gone a moment later (a publish retry asks find_published
        first, so it cannot post twice)."""
        return Retryable(f"an answer that is not JSON ({self.last})", fix=self.fix)

    def malformed(self, action: str, problem: str) -> FaceMalformedAnswerError:
        return FaceMalformedAnswerError(
            f"{self.network} ({self.where}) answered {action} with {problem} ({self.last}): "
            f"that is not the {self.network} API.",
            self.fix,
        )

    def expect(self, answer: object, action: str,
               fields: tuple[str, ...] | Mapping[str, type | tuple[type, ...]]) -> dict:
        """`answer` if it is an object with every field in `fields` present and not null (and, where
        `fields` maps names to types, of that type); otherwise FaceMalformedAnswerError naming what
        was wrong with it."""
        if not isinstance(answer, dict):
            raise self.malformed(action, f"a value of type {type(answer).__name__} where an object belongs")
        kinds = fields if isinstance(fields, Mapping) else dict.fromkeys(fields, object)
        missing = [name for name in kinds if answer.get(name) is None]
        if missing:
            raise self.malformed(action, f"an object without {', '.join(missing)}")
        wrong = [f"{name} is a {type(answer[name]).__name__}"
                 for name, kind in kinds.items() if not isinstance(answer[name], kind)]
        if wrong:
            raise self.malformed(action, f"an object whose {', '.join(wrong)}")
        return answer

    def expect_list(self, answer: object, action: str, what: str) -> list:
        """`answer` if it is a list; otherwise FaceMalformedAnswerError ("... where a list of `what` belongs")."""
        if not isinstance(answer, list):
            raise self.malformed(action, f"a value of type {type(answer).__name__} where a list of {what} belongs")
        return answer


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a Retry-After header (seconds, or an HTTP date) into seconds from now; None if absent/unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def call_with_retries(
    operation: Callable[[], Result],
    *,
    classify: Callable[[Exception], Retryable | FaceError | None],
    policy: RetryPolicy,
    network: str,
    action: str,
    before_retry: Callable[[], Result | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Result:
    """Run `operation` until it succeeds, following the rules in the module docstring.

    In: the operation; `classify` maps its exception to Retryable (try again), a FaceError (raise
    it) or None (re-raise the original); names for messages (`network`, `action`, e.g.
    "Mastodon", "publishing a status"); an optional `before_retry` that returns a result to stop
    retrying with (used to find a post a failed publish did create).
    Out: the operation's result, or `before_retry`'s. Raises FaceRateLimitError /
    FaceUnavailableError when attempts run out.
    """
    for attempt in range(1, policy.max_attempts + 1):
        try:
            return operation()
        except Exception as error:  # noqa: BLE001 - classify decides what is retryable
            verdict = classify(error)
            if verdict is None:
                raise
            if isinstance(verdict, FaceError):
                raise verdict from error
            if verdict.rate_limited and verdict.retry_after is not None:
                if verdict.retry_after > policy.max_retry_after_seconds:
                    raise FaceRateLimitError(
                        f"{network} rate-limited {action} and asked to wait {verdict.retry_after:.0f} s, "
                        f"longer than the {policy.max_retry_after_seconds:.0f} s Crowdtune waits.",
                        "Try again later, or post and collect less often for this face.",
                    ) from error
                delay = verdict.retry_after
            else:
                delay = policy.backoff_seconds(attempt)
            if attempt == policy.max_attempts:
                if verdict.rate_limited:
                    raise FaceRateLimitError(
                        f"{network} kept rate-limiting {action} ({verdict.reason}) for {attempt} attempts.",
                        "Wait a few minutes and try again, or post and collect less often for this face.",
                    ) from error
                raise FaceUnavailableError(
                    f"{network} kept failing while {action} ({verdict.reason}) for {attempt} attempts.",
                    verdict.fix or "Check that the server is up and reachable (its status page, the base URL "
                    "in the face config) and try again later.",
                ) from error
            log.warning(
                "%s: %s while %s; retrying in %.2f s (attempt %d of %d)",
                network, verdict.reason, action, delay, attempt, policy.max_attempts,
            )
            sleep(delay)
            if before_retry is not None:
                # The check is itself retried; if it cannot be made, resending could duplicate
                # the post, so the error propagates instead.
                found = call_with_retries(
                    before_retry, classify=classify, policy=policy, network=network,
                    action=f"checking whether {action} already happened", sleep=sleep,
                )
                if found is not None:
                    log.info("%s: the failed attempt at %s did succeed; not sending it again", network, action)
                    return found
    raise AssertionError("unreachable: the loop returns or raises")
