"""Posting at local times: fixed times of day or a cron expression, in a face's time zone.

Pure functions of naive UTC moments (the controller's clock) and a time zone. A local time is turned
into one instant by two rules that make daylight-saving changes neither skip nor double a post:

- a time that happens twice (clocks going back: 02:30 in Paris on 2026-10-25) is taken the first time;
- a time that does not exist (clocks going forward: 02:30 in Paris on 2026-03-29) is taken at the first
  minute that exists after it (03:00, the moment the clocks jump to).

Both rules keep the order of local times, so the instants of a timetable never go backwards, and two
local times that land on one instant make one post.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

POST_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
MAX_GAP_MINUTES = 24 * 60  # no zone skips more than a day (Samoa skipped exactly one in 2011)


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` ("Europe/Paris"); ValueError naming it if there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris' or 'UTC'") from None


def to_local(moment: datetime, tz: ZoneInfo) -> datetime:
    """A naive UTC moment as naive local wall-clock time in `tz`."""
    return moment.replace(tzinfo=UTC).astimezone(tz).replace(tzinfo=None)


def _exists(local: datetime, tz: ZoneInfo) -> bool:
    return to_local(local.replace(tzinfo=tz).astimezone(UTC).replace(tzinfo=None), tz) == local


def to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """A naive local wall-clock time in `tz` as a naive UTC moment, by the rules of the module docstring."""
    shifted = local
    for _ in range(MAX_GAP_MINUTES):
        if _exists(shifted, tz):
            break
        shifted = (shifted + timedelta(minutes=1)).replace(second=0, microsecond=0)
    # fold=0 is the first of two occurrences of an ambiguous time.
    return shifted.replace(tzinfo=tz, fold=0).astimezone(UTC).replace(tzinfo=None)


def parse_post_time(text: str) -> time:
    """ "HH:MM" (24-hour) as a time; ValueError naming the text otherwise."""
    match = POST_TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"post time {text!r} is not HH:MM on a 24-hour clock, e.g. '09:00' or '18:30'")
    return time(int(match.group(1)), int(match.group(2)))


def check_cron(expression: str) -> str:
    """`expression` if it is a 5-field cron expression croniter reads; ValueError naming it otherwise."""
    from croniter import croniter

    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise ValueError(f"cron expression {expression!r} is not 5 fields (minute hour day-of-month month "
                         "day-of-week), e.g. '0 9 * * 1-5' for 09:00 on weekdays")
    return expression


@dataclass(frozen=True)
class Timetable:
    """When a face posts: at `post_times` every day, or on `cron`, both read in the time zone `timezone`."""

    timezone: str = "UTC"
    post_times: tuple[str, ...] = ()
    cron: str | None = None

    def _local_times(self, start: datetime) -> Iterator[datetime]:
        """Local wall-clock times of the timetable from the day of `start` (naive local) on, in order."""
        if self.cron is not None:
            from croniter import croniter

            # Naive datetimes: croniter steps through wall-clock times and knows nothing of DST, which
            # is what makes to_utc's rules the only ones that apply.
            steps = croniter(self.cron, start - timedelta(minutes=1))
            while True:
                yield steps.get_next(datetime)
        times = sorted({parse_post_time(t) for t in self.post_times})
        day = start.date()
        while True:
            for moment in times:
                yield datetime.combine(day, moment)
            day += timedelta(days=1)

    def slots_after(self, after: datetime) -> Iterator[datetime]:
        """Instants (naive UTC) of the timetable strictly after `after` (naive UTC), increasing, endless."""
        tz = zone(self.timezone)
        # A day earlier: a local time before `after`'s local date can still be after it in UTC.
        start = (to_local(after, tz) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        last = None
        for local in self._local_times(start):
            moment = to_utc(local, tz)
            if moment > after and moment != last:
                last = moment
                yield moment


def in_quiet_hours(moment: datetime, quiet: tuple[int, int] | None, timezone: str = "UTC") -> bool:
    """Whether naive UTC `moment` falls in the quiet hours [start, end) of the day in `timezone`."""
    if quiet is None:
        return False
    start, end = quiet
    hour = to_local(moment, zone(timezone)).hour
    return start <= hour < end if start < end else (hour >= start or hour < end)


def after_quiet_hours(moment: datetime, quiet: tuple[int, int] | None, timezone: str = "UTC") -> datetime:
    """The first moment at or after naive UTC `moment` outside the quiet hours [start, end) of `timezone`."""
    if not in_quiet_hours(moment, quiet, timezone):
        return moment
    tz = zone(timezone)
    local = to_local(moment, tz)
    resume = local.replace(hour=quiet[1], minute=0, second=0, microsecond=0)
    if resume <= local:
        resume += timedelta(days=1)
    return max(moment, to_utc(resume, tz))
