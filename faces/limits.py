"""Request budgets: every network face waits before a request its platform would refuse.

Each network's documented limits are listed below (NETWORK_LIMITS) with their source. A face takes
one token per request attempt (and per sign-in, per post where those have their own limits) from a
token bucket per limit, and sleeps when a bucket is empty, so it waits before the platform would
answer 429 rather than after. A bucket of a limit of N requests per W seconds holds at most N/10
tokens and refills at 0.9 N/W, so no window of W seconds ever sees more than N requests.

Where the buckets live (`use_budget`): in Redis for workers (RedisBuckets: one Lua script takes from
every bucket of a request at once, on Redis's clock, so all workers of an account share its limits);
in the process otherwise (LocalBuckets: the CLI, tests). Buckets are named by network, server and
account, never by a token.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from faces.base import FaceRateLimitError

Covers = Literal["request", "session", "post"]


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` calls of kind `covers` per `per_seconds`, per `scope`, as `source` documents."""

    covers: Covers
    requests: int
    per_seconds: float
    scope: str
    source: str

    @property
    def capacity(self) -> float:
        return max(1.0, self.requests / 10)

    @property
    def rate(self) -> float:
        """Tokens per second: what is left of the limit after one full bucket, spread over the window."""
        return max(self.requests - self.capacity, 1.0) / self.per_seconds

    def describe(self) -> str:
        window = {300: "5 min", 600: "10 min", 3600: "hour", 86400: "day", 1: "second", 60: "minute"}
        per = window.get(int(self.per_seconds), f"{self.per_seconds:g} s")
        what = {"request": "requests", "session": "sign-ins", "post": "posts"}[self.covers]
        return f"{self.requests:,} {what} per {per} per {self.scope}"


MASTODON_DOCS = "https://docs.joinmastodon.org/api/rate-limits/"
BLUESKY_DOCS = "https://docs.bsky.app/docs/advanced-guides/rate-limits"
DISCORD_DOCS = "https://discord.com/developers/docs/topics/rate-limits"
REDDIT_DOCS = "https://support.reddithelp.com/hc/en-us/articles/16160319875092-Reddit-Data-API-Wiki"
NETWORK_LIMITS: dict[str, tuple[RateLimit, ...]] = {
    # The instance default; an instance may set other limits (it says so in X-RateLimit-Limit).
    "mastodon": (RateLimit("request", 300, 300, "account", MASTODON_DOCS),),
    "bluesky": (
        RateLimit("request", 3000, 300, "IP", BLUESKY_DOCS),
        RateLimit("session", 30, 300, "account", BLUESKY_DOCS),
        # The docs say 300 a day; the bsky.social entryway refuses after 100 (bluesky-social/bsky-docs#183).
        RateLimit("session", 100, 86400, "account", BLUESKY_DOCS),
        # 5,000 points an hour and 35,000 a day, a created record costs 3.
        RateLimit("post", 1666, 3600, "account", BLUESKY_DOCS),
        RateLimit("post", 11666, 86400, "account", BLUESKY_DOCS),
    ),
    # Per-route limits are announced in each answer's headers, which hikari follows; this is the global one.
    "discord": (RateLimit("request", 50, 1, "bot", DISCORD_DOCS),),
    # 100 queries per minute per OAuth client id, averaged over 10 minutes.
    "reddit": (RateLimit("request", 1000, 600, "app", REDDIT_DOCS),),
}


def reported_by_server(headers: Mapping[str, str]) -> str | None:
    """What an answer's rate-limit headers say is left of the server's current window, or None without them.

    In: the answer's headers (a case-insensitive mapping: requests', httpx's). Mastodon sends X-RateLimit-Limit
    and X-RateLimit-Remaining, Bluesky RateLimit-Limit and RateLimit-Remaining, Reddit X-Ratelimit-Used and
    X-Ratelimit-Remaining (as "995.0"). Out: e.g. "the server reports 297 of 300 requests left in its window".
    """
    def number(*names: str) -> int | None:
        for name in names:
            value = headers.get(name)
            if value is not None:
                try:
                    return int(float(value))
                except ValueError:
                    return None
        return None

    remaining = number("x-ratelimit-remaining", "ratelimit-remaining")
    if remaining is None:
        return None
    used = number("x-ratelimit-used")
    limit = number("x-ratelimit-limit", "ratelimit-limit") or (remaining + used if used is not None else None)
    left = f"{remaining:,} of {limit:,}" if limit else f"{remaining:,}"
    return f"the server reports {left} requests left in its current window"


class Buckets(Protocol):
    def take(self, keys: Sequence[str], limits: Sequence[RateLimit]) -> float:
        """Take one token from each bucket `keys[i]` (of `limits[i]`) if all have one: out 0.0. Else take
        none and out the seconds until all will have one."""


class LocalBuckets:
    """Token buckets in this process (one lock; a clock that only moves forward)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock, self.lock = clock, threading.Lock()
        self.levels: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, keys: Sequence[str], limits: Sequence[RateLimit]) -> float:
        with self.lock:
            now = self.clock()
            levels = []
            for key, limit in zip(keys, limits, strict=True):
                tokens, at = self.levels.get(key, (limit.capacity, now))
                levels.append(min(limit.capacity, tokens + (now - at) * limit.rate))
            wait = max(((1 - level) / limit.rate for level, limit in zip(levels, limits, strict=True) if level < 1),
                       default=0.0)
            if wait == 0.0:
                for key, level in zip(keys, levels, strict=True):
                    self.levels[key] = (level - 1, now)
            return wait


# KEYS: one hash per bucket; ARGV: capacity and rate of each, in the same order. Redis's own clock, so
# workers on machines whose clocks differ share one notion of time. Strings out: Lua numbers would be
# truncated to integers.
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local levels, wait = {}, 0
for i, key in ipairs(KEYS) do
  local capacity, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens, at = tonumber(state[1]) or capacity, tonumber(state[2]) or now
  levels[i] = math.min(capacity, tokens + math.max(0, now - at) * rate)
  if levels[i] < 1 then wait = math.max(wait, (1 - levels[i]) / rate) end
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  local capacity, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('HSET', key, 'tokens', tostring(levels[i] - 1), 'at', tostring(now))
  redis.call('EXPIRE', key, math.ceil(capacity / rate) + 60)
end
return '0'
"""


class RedisBuckets:
    """Token buckets in Redis, shared by every worker that talks to it. In: a redis client and the key prefix."""

    def __init__(self, conn, prefix: str):
        self.prefix = prefix
        self.script = conn.register_script(TAKE_SCRIPT)

    def take(self, keys: Sequence[str], limits: Sequence[RateLimit]) -> float:
        args = [value for limit in limits for value in (repr(limit.capacity), repr(limit.rate))]
        return float(self.script(keys=[f"{self.prefix}{key}" for key in keys], args=args))


_budget: Buckets = LocalBuckets()


def use_budget(buckets: Buckets) -> None:
    """Make every face in this process (and in processes forked from it) take from `buckets`."""
    global _budget
    _budget = buckets


class RequestBudget:
    """One face's budget: its network's limits, named by `account` (server and account, never a token)."""

    def __init__(self, network: str, account: str, max_wait_seconds: float,
                 limits: Sequence[RateLimit] | None = None, sleep: Callable[[float], None] = time.sleep):
        self.network, self.account, self.max_wait, self.sleep = network, account, max_wait_seconds, sleep
        self.limits = tuple(NETWORK_LIMITS[network] if limits is None else limits)
        self.reported: str | None = None  # what the server's latest rate-limit headers said (reported_by_server)

    def note_answer(self, headers: Mapping[str, str]) -> None:
        """Keep what an answer's rate-limit headers say, for describe(); an answer without them changes nothing."""
        self.reported = reported_by_server(headers) or self.reported

    def wait_for_turn(self, covers: Covers = "request", action: str = "a request") -> float:
        """Block until a `covers` call may go out without breaking a limit, then count it.
        Out: the seconds waited. Raises FaceRateLimitError when the wait would exceed max_wait_seconds."""
        chosen = [limit for limit in self.limits if limit.covers in ("request", covers)]
        keys = [f"{self.network}:{self.account if limit.scope != 'IP' else 'ip'}:{limit.covers}:"
                f"{limit.requests}/{limit.per_seconds:g}" for limit in chosen]
        waited = 0.0
        while chosen:
            wait = _budget.take(keys, chosen)
            if wait <= 0:
                break
            if waited + wait > self.max_wait:
                hardest = min(chosen, key=lambda limit: limit.rate)
                raise FaceRateLimitError(
                    f"{self.network.capitalize()} allows {hardest.describe()} ({hardest.source}); {action} would "
                    f"have to wait {waited + wait:.0f} s, longer than the {self.max_wait:.0f} s Crowdtune waits.",
                    "Post and collect less often for this face, or try again later.",
                )
            self.sleep(wait)
            waited += wait
        return waited

    def describe(self) -> list[str]:
        """The limits this face keeps, one line each, with their source; last, what the server reported of its own."""
        kept = [f"{limit.describe()} ({limit.source})" for limit in self.limits]
        return [*kept, f"now: {self.reported}"] if self.reported else kept
