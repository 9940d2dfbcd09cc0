"""The online loop's controller: given what the store knows and the clock, what to do next.

Pure decisions, no I/O: `decide(snapshot, now)` returns a `Decision` that jobs/online.py carries
out (enqueue a publish, collect reactions, start an RL update, switch phase, schedule the next
tick). Everything a decision needs is in the store, so after any crash (worker, Redis, app) the
next tick decides again from the same facts and nothing is done twice.

States of a face's controller (table `controllers`):

    IDLE ──start──► ONLINE ──every K updates or drift──► OFFLINE ──offline run ended──► ONLINE
                      │                                     │
                      └────────────stop─────────────► STOPPING ◄──stop──┘
                                                           │ nothing in flight any more
                                                           ▼
                                                         IDLE

ONLINE publishes on schedule, collects reactions at the maturity windows and runs an update when
`posts_per_update` posts have matured (it also learns from the operator's review decisions taken since
the face's previous update: UpdatePlan.feedback_ids; an edited post never enters one). When the run's
algorithm warm-starts (guided) and the face has a reward model, the first thing it does is an update with
no posts (step 0, `<run>-u0`), and nothing is published until that has ended (completed: its version is
active; failed: the start model publishes and an alert says so); OFFLINE waits for the offline training
run (publishing paused, reactions still collected); STOPPING publishes nothing new, lets the in-flight
publish resolve and the in-flight update stop, then ends the run. IDLE still collects the reactions of
posts that have not matured yet, so no evaluation is lost.

Time. Schedule settings and maturity windows are in "audience time". `time_acceleration` maps
it to the wall clock from the moment the run started (3600: an audience hour per wall second), to
match an accelerated sandbox in tests and demos. Quiet hours and the daily cap apply to the
audience clock; quiet hours, `post_times` and `cron` are read in the run's `timezone`
(crowdtune.online.timetable), so daylight-saving changes neither skip nor double a post.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from crowdtune.errors import SettingsError
from crowdtune.states import ControllerState, PostStatus, ReviewAction, RunStatus, UpdateStatus

# Generation settings that define the sampling policy: the RL algorithm owns them, so that the
# log-probabilities recorded at publishing match those the update recomputes.
POLICY_SETTINGS = ("temperature", "top_p", "top_k", "repetition_penalty")
UPDATE_IN_FLIGHT = (UpdateStatus.QUEUED, UpdateStatus.RUNNING)
OFFLINE_VERSIONED = (RunStatus.COMPLETED, RunStatus.EARLY_STOPPED, RunStatus.STOPPED)  # ended with a version
OFFLINE_ENDED = (*OFFLINE_VERSIONED, RunStatus.FAILED)
WENT_OUT = (PostStatus.PUBLISHED, PostStatus.SHADOW)  # a shadow post counts for the schedule as if it went out
REVIEW_OVERDUE = timedelta(days=1)  # the Overview's alert: the oldest post has waited for review longer than this


class OnlineConfig(BaseModel):
    """Settings of one online run (plain data: the app's form, the CLI's --set and the jobs read it)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: str = Field("guided", description="guided | reinforce | policy_gradient | reward_model "
                                                 "(crowdtune.training.rl)")
    algorithm_settings: dict[str, Any] = Field(
        default_factory=dict, description="that algorithm's config (GuidedConfig, ReinforceConfig, "
                                          "PolicyGradientConfig, RewardModelConfig); it owns the sampling policy "
                                          "(temperature, top_p, ...)")
    reward: dict[str, Any] = Field(default_factory=dict, description="RewardConfig settings")
    base_model: str | None = Field(None, description="base of the first policy when the face has no active version "
                                                     "(None: the base_model setting); later the active version's base")
    interval_minutes: float = Field(240.0, gt=0, description="audience minutes between posts ...")
    jitter_minutes: float = Field(30.0, ge=0, description="... plus or minus up to this much (deterministic per post)")
    min_gap_minutes: float = Field(60.0, ge=0, description="never two posts closer than this")
    daily_cap: int = Field(6, ge=1, description="at most this many posts in any 24 audience hours")
    post_times: list[str] = Field(
        default_factory=list, description='local times of day to post at, "HH:MM" in `timezone`, e.g. ["09:00", '
                                          '"13:00", "18:30"]; replaces interval_minutes and jitter_minutes; '
                                          "[] = post every interval")
    cron: str | None = Field(
        None, description='a 5-field cron expression in `timezone` (minute hour day month weekday, e.g. "0 9 * * '
                          '1-5"); replaces the interval like post_times; None = none')
    timezone: str = Field("UTC", description='IANA time zone of post_times, cron and quiet_hours, e.g. '
                                             '"Europe/Paris"; daylight-saving changes neither skip nor double a post')
    quiet_hours: tuple[int, int] | None = Field(
        None, description="[start, end) hours of the day (in `timezone`, audience clock) without posts, e.g. "
                          "[23, 7]; None = post at any hour")
    maturity_windows_hours: list[float] = Field(
        default_factory=lambda: [1.0, 6.0, 24.0], description="ages at which reactions are read; the last one is "
                                                              "the maturity at which a post is scored (its reward)")
    posts_per_update: int = Field(16, ge=1, description="matured posts that trigger an RL update")
    generation: dict[str, Any] = Field(
        default_factory=dict, description="GenerationConfig settings (max_new_tokens, drop_copies, "
                                          "offensive_threshold ...) except the sampling policy")
    prompts: list[str] = Field(default_factory=list, description="contexts to post after, cycled; [] = free posts")
    candidates: int = Field(8, ge=1, le=64, description="posts sampled per slot in one batch (best-of-N); the "
                                                        "selection rule publishes one of those the guards keep, the "
                                                        "others are stored as candidates; 1 = publish the one sample")
    selection: Literal["thompson", "greedy", "uniform"] = Field(
        "thompson", description="how the published candidate is chosen on the face's reward model: thompson (draw "
                                "one ensemble member, publish its best: explores where the model is unsure), greedy "
                                "(best mean prediction), uniform (any); uniform while the face has no reward model")
    min_novelty: float = Field(0.75, ge=0.0, le=1.0, description="diversity floor on published posts: a candidate "
                               "whose word bigrams are less than this share new against the face's last "
                               "novelty_window posts is set aside (`stale`), unless it is a batch's most novel; "
                               "0 = off")
    novelty_window: int = Field(63, ge=1, description="the face's last published posts the diversity floor measures "
                                                      "against (63: a 64-post window keeps distinct-2 >= min_novelty)")
    max_generation_attempts: int = Field(4, ge=1, description="batches of candidates tried per slot when the guards "
                                                              "reject every sample, before the slot is skipped")
    copy_embedding_threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="near-copy guard by embeddings (cosine); None = n-gram guard only")
    review_timeout_hours: float = Field(
        6.0, gt=0, description="on a face with review: a post not decided within this many audience hours of its "
                               "slot is skipped (never published late); the next slot keeps its time")
    publish_retries: int = Field(3, ge=0, description="attempts after a failed publish ...")
    publish_retry_minutes: list[float] = Field(
        default_factory=lambda: [1.0, 5.0, 30.0],
        description="... with these backoffs (audience minutes, at least 1 wall second)")
    alternate_every: int | None = Field(
        None, ge=1, description="after this many online updates run an offline phase; None = never")
    drift_metric: str = Field("kl", description="an update metric that signals drift ...")
    drift_threshold: float | None = Field(None, description="... when above this: go offline now; None = off")
    offline: dict[str, Any] = Field(default_factory=dict, description="SFTConfig settings of the offline phases")
    time_acceleration: float = Field(1.0, gt=0, description="audience seconds per wall second (match the sandbox's)")
    seed: int = Field(0, description="seeds jitter, sampling and updates")

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, value: str) -> str:
        from crowdtune.training.rl.configs import ALGORITHMS  # torch-free: the dashboard builds this config

        if value not in ALGORITHMS:
            names = list(ALGORITHMS)
            choices = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
            raise ValueError(f"unknown algorithm {value!r}; choose {choices}")
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _hours_of_day(cls, value):
        if value is not None and not all(0 <= h <= 23 for h in value):
            raise ValueError(f"quiet hours {list(value)} must be hours of the day 0..23, e.g. [23, 7]")
        if value is not None and value[0] == value[1]:
            raise ValueError(f"quiet hours {list(value)} start and end at the same hour; use None for no quiet hours")
        return value

    @field_validator("post_times")
    @classmethod
    def _times_of_day(cls, value: list[str]) -> list[str]:
        from crowdtune.online.timetable import parse_post_time

        return sorted({parse_post_time(t).strftime("%H:%M") for t in value})

    @field_validator("cron")
    @classmethod
    def _cron_expression(cls, value: str | None) -> str | None:
        from crowdtune.online.timetable import check_cron

        return None if value is None else check_cron(value.strip())

    @field_validator("timezone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        from crowdtune.online.timetable import zone

        zone(value)
        return value

    @field_validator("maturity_windows_hours")
    @classmethod
    def _windows(cls, value: list[float]) -> list[float]:
        if not value or any(w <= 0 for w in value) or sorted(set(value)) != list(value):
            raise ValueError(f"maturity windows {value} must be positive hours in increasing order, e.g. [1, 6, 24]")
        return value

    @field_validator("publish_retry_minutes")
    @classmethod
    def _backoffs(cls, value: list[float]) -> list[float]:
        if not value or any(m < 0 for m in value):
            raise ValueError(f"publish retry backoffs {value} must be a non-empty list of minutes >= 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> OnlineConfig:
        if self.post_times and self.cron:
            raise ValueError("set post_times or cron, not both")
        if self.interval_minutes < self.min_gap_minutes:
            raise ValueError(f"interval {self.interval_minutes:g} min is below the minimum gap "
                             f"{self.min_gap_minutes:g} min")
        if self.jitter_minutes >= self.interval_minutes:
            raise ValueError(f"jitter {self.jitter_minutes:g} min must be smaller than the interval "
                             f"{self.interval_minutes:g} min")
        if self.daily_cap * self.min_gap_minutes > 24 * 60:
            raise ValueError(f"a daily cap of {self.daily_cap} posts cannot be reached with a minimum gap of "
                             f"{self.min_gap_minutes:g} min; lower one of them")
        clash = [k for k in POLICY_SETTINGS if k in self.generation]
        if clash:
            raise ValueError(f"generation setting(s) {clash} define the sampling policy: "
                             "set them in algorithm_settings")
        from crowdtune.training.configs import GenerationConfig
        from crowdtune.training.rl import algorithm_config
        from crowdtune.training.rl.rewards import RewardConfig

        try:
            GenerationConfig(**self.generation)
            RewardConfig(**self.reward)
        except ValidationError as exc:
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        try:
            algorithm_config(self.algorithm, self.algorithm_settings)
        except SettingsError as exc:
            raise ValueError(exc.problem) from None
        return self

    # Durations in audience seconds.
    def timetable(self):
        """The run's Timetable (crowdtune.online.timetable), or None when it posts every interval."""
        from crowdtune.online.timetable import Timetable

        if not self.post_times and self.cron is None:
            return None
        return Timetable(self.timezone, tuple(self.post_times), self.cron)

    @property
    def interval_seconds(self) -> float:
        return self.interval_minutes * 60.0

    @property
    def maturity_seconds(self) -> float:
        return self.maturity_windows_hours[-1] * 3600.0

    def wall_seconds(self, audience_seconds: float) -> float:
        return audience_seconds / self.time_acceleration

    def sampling(self) -> dict[str, Any]:
        """The GenerationConfig values publishing uses: the generation settings + the algorithm's sampling policy."""
        from crowdtune.training.rl import algorithm_config

        policy = algorithm_config(self.algorithm, self.algorithm_settings)
        return {**self.generation, **{k: getattr(policy, k) for k in POLICY_SETTINGS if hasattr(policy, k)}}

    def warm_start_steps(self) -> int:
        """Steps the algorithm takes against the face's reward model before the run's first post (0: none)."""
        from crowdtune.training.rl import warm_start_steps

        return warm_start_steps(self.algorithm, self.algorithm_settings)

    def publish_retry_intervals(self) -> list[int]:
        """RQ retry intervals in wall seconds (at least 1), one per retry."""
        minutes = self.publish_retry_minutes
        return [max(1, round(self.wall_seconds(minutes[min(i, len(minutes) - 1)] * 60)))
                for i in range(self.publish_retries)]


def parse_online_config(values: dict[str, Any] | None) -> OnlineConfig:
    """OnlineConfig from plain values; raise SettingsError naming every problem (no traceback)."""
    try:
        return OnlineConfig(**(values or {}))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(map(str, error["loc"]))
            message = error["msg"].removeprefix("Value error, ")
            named = where and not message.startswith(("interval", "unknown"))
            problems.append(f"{where}: {message}" if named else message)
        raise SettingsError("Invalid online settings: " + "; ".join(problems),
                            "Fix those settings; `crowdtune config-docs OnlineConfig` lists every setting and its "
                            "default.") from None


# --------------------------------------------------------------------------------------------
# What the controller knows


@dataclass
class PostView:
    """A generated post of the face, as the controller sees it. Times are naive UTC wall clock."""

    post_id: str
    status: str                      # a PostStatus: awaiting_review, approved, publishing, published ...
    run_id: str | None = None
    platform_id: str | None = None
    published_at: datetime | None = None
    score: float | None = None
    update_id: str | None = None
    publish_slot: int | None = None
    observed_ages: list[float] = field(default_factory=list)  # audience age (s) at each observation
    last_observed_at: datetime | None = None
    updated_at: datetime | None = None
    inserted_at: datetime | None = None      # when its slot drafted it (a post awaiting review waits since then)
    review: str | None = None                # the ReviewAction that let it out (None: not reviewed)


@dataclass
class UpdateView:
    update_id: str
    step: int
    status: str                      # queued | running | completed | stopped | failed
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ControllerSnapshot:
    """The store's facts about one face's controller (see reads.online_snapshot)."""

    face_id: str
    state: str
    config: OnlineConfig
    run_id: str | None = None
    started_at: datetime | None = None         # the run's start: origin of the audience clock
    publish_slot: int = 0                      # publishing slots started
    resolved_slot: int = -1                    # the last slot whose outcome is recorded
    last_resolved_at: datetime | None = None   # when it was recorded
    paused_reason: str | None = None
    offline_run_id: str | None = None
    offline_status: str | None = None
    offline_version_id: str | None = None
    updates_at_offline: int = 0                # completed updates when the last offline phase began
    posts: list[PostView] = field(default_factory=list)
    updates: list[UpdateView] = field(default_factory=list)
    scored_posts: int = 0                      # the face's scored posts, imported and published
    reward_model_scored: int | None = None     # how many it had at its reward model's last fit (None: never)
    feedback_ids: list[str] = field(default_factory=list)  # review decisions no update learnt from yet
    #                                                        (reads.pending_feedback)

    @classmethod
    def from_read(cls, data: dict) -> ControllerSnapshot:
        """Build from the JSON of the `online_snapshot` named read."""
        c = data["controller"]
        offline = data.get("offline") or {}
        posts = [PostView(
            post_id=p["post_id"], status=p["status"], run_id=p.get("run_id"), platform_id=p.get("platform_id"),
            published_at=_time(p.get("published_at")), score=p.get("score"), update_id=p.get("update_id"),
            publish_slot=p.get("publish_slot"),
            observed_ages=[a for a in p.get("observed_ages") or [] if a is not None],
            last_observed_at=_time(p.get("last_observed_at")), updated_at=_time(p.get("updated_at")),
            inserted_at=_time(p.get("inserted_at")), review=p.get("review"),
        ) for p in data.get("posts") or []]
        updates = [UpdateView(u["update_id"], u["step"], u["status"], u.get("metrics") or {})
                   for u in data.get("updates") or []]
        reward_model = data.get("reward_model") or {}
        return cls(
            face_id=c["face_id"], state=c["state"], config=OnlineConfig(**(c.get("config") or {})),
            run_id=c.get("run_id"), started_at=_time(c.get("started_at")), publish_slot=c.get("publish_slot") or 0,
            resolved_slot=c["resolved_slot"] if c.get("resolved_slot") is not None else -1,
            last_resolved_at=_time(c.get("last_resolved_at")),
            paused_reason=c.get("paused_reason"), offline_run_id=c.get("offline_run_id"),
            offline_status=((offline.get("run") or {}).get("status")), offline_version_id=offline.get("version_id"),
            updates_at_offline=c.get("updates_at_offline") or 0, posts=posts, updates=updates,
            scored_posts=reward_model.get("scored_posts") or 0,
            reward_model_scored=reward_model.get("fitted_scored_posts"),
            feedback_ids=list(data.get("feedback_ids") or []),
        )


def _time(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


@dataclass
class UpdatePlan:
    update_id: str
    step: int
    post_ids: list[str]
    feedback_ids: list[str] = field(default_factory=list)  # posts of review decisions it learns from too


@dataclass
class Decision:
    """What to do now, and when to look again.

    publish_slot: start publishing this slot (a new post)
    resume_slot: a slot whose outcome is not recorded yet: make sure its publish job runs (it checks
                 find_published before anything is sent again)
    collect: posts whose reactions to read now
    update: an RL update to start; resume_updates: updates in flight whose jobs must exist
    go_offline: start an offline phase (with the reason); end_offline: "completed" or "failed"
    fit_reward_model: refit the face's reward model, keyed by this count of scored posts (once per change)
    skip_reviews: posts awaiting review (or approved, when the run stops) to skip: (post, reason, decided by)
    review_overdue: (posts waiting, the oldest's post_id) when the oldest has waited more than a day
    finish_stop: the run has nothing in flight any more: end it and go IDLE
    publish_at: when the next post is due (wall clock), when publishing is on
    wake_at: when to tick next (naive UTC wall clock), None = only when something happens
    """

    publish_slot: int | None = None
    resume_slot: int | None = None
    collect: list[PostView] = field(default_factory=list)
    update: UpdatePlan | None = None
    resume_updates: list[str] = field(default_factory=list)
    go_offline: str | None = None
    end_offline: str | None = None
    fit_reward_model: int | None = None
    skip_reviews: list[tuple[PostView, str, str]] = field(default_factory=list)
    review_overdue: tuple[int, str] | None = None
    finish_stop: bool = False
    publish_at: datetime | None = None
    wake_at: datetime | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The audience clock


@dataclass(frozen=True)
class AudienceClock:
    """Audience time runs `acceleration` times faster than the wall clock from `origin` on."""

    origin: datetime
    acceleration: float

    def audience(self, wall: datetime) -> datetime:
        return self.origin + (wall - self.origin) * self.acceleration

    def wall(self, audience: datetime) -> datetime:
        return self.origin + (audience - self.origin) / self.acceleration


def jitter_seconds(config: OnlineConfig, run_id: str, slot: int) -> float:
    """A deterministic offset in [-jitter, +jitter] for one slot: a retried decision picks the same time."""
    digest = hashlib.sha256(f"{config.seed}:{run_id}:{slot}".encode()).digest()
    unit = int.from_bytes(digest[:8], "little") / 2**64
    return (2 * unit - 1) * config.jitter_minutes * 60.0


def next_publish_time(snap: ControllerSnapshot, clock: AudienceClock) -> datetime:
    """When the next post may go out (wall clock): interval + jitter after the last post (or, with a
    timetable, the first listed time after it), at least the minimum gap, no more than the daily cap
    in any 24 audience hours, never in quiet hours, and backing off (doubling, up to a day) after
    consecutive failed slots."""
    from crowdtune.online.timetable import after_quiet_hours, in_quiet_hours

    cfg = snap.config
    timetable = cfg.timetable()
    run_posts = [p for p in snap.posts if p.run_id == snap.run_id]
    published = _went_out(snap, clock)
    moment = clock.audience(snap.started_at)
    # A reviewed post goes out when the operator approves it, not at its slot's time: the interval counts
    # from the slot (its resolution), so a late approval does not push the next slot back.
    on_time = sorted(clock.audience(p.published_at) for p in run_posts
                     if p.status in WENT_OUT and p.published_at and p.review is None)
    anchors = on_time[-1:] + ([clock.audience(snap.last_resolved_at)] if snap.last_resolved_at else [])
    if anchors and timetable is None:  # the last slot's outcome: a post, a failure or all samples rejected
        gap = max(cfg.interval_seconds + jitter_seconds(cfg, snap.run_id or "", snap.publish_slot),
                  cfg.min_gap_minutes * 60)
        moment = max(moment, max(anchors) + timedelta(seconds=gap))
    if published:
        moment = max(moment, published[-1] + timedelta(minutes=cfg.min_gap_minutes))
    by_slot = sorted((p for p in run_posts
                      if p.status in (*WENT_OUT, PostStatus.FAILED) and p.publish_slot is not None),
                     key=lambda p: p.publish_slot)
    failures = 0
    for post in reversed(by_slot):
        if post.status != PostStatus.FAILED:
            break
        failures += 1
    if failures and anchors:
        backoff = min(cfg.interval_seconds * 2 ** (failures - 1), 24 * 3600.0)
        moment = max(moment, max(anchors) + timedelta(seconds=backoff))
    if len(published) >= cfg.daily_cap:
        moment = max(moment, published[-cfg.daily_cap] + timedelta(days=1, seconds=1))
    if timetable is None:
        return clock.wall(after_quiet_hours(moment, cfg.quiet_hours, cfg.timezone))
    # A listed time at or after every bound, after the last slot's outcome, outside quiet hours; a year
    # of days bounds the search (a cron of 29 February, quiet hours covering all its times).
    after = max([moment - timedelta(microseconds=1), *anchors])
    for count, slot in enumerate(timetable.slots_after(after)):
        if not in_quiet_hours(slot, cfg.quiet_hours, cfg.timezone):
            return clock.wall(slot)
        if count > 366 * 24 * 60:
            break
    raise SettingsError(f"The timetable of face {snap.face_id} has no time outside its quiet hours.",
                        "Change post_times, cron or quiet_hours.")


def _went_out(snap: ControllerSnapshot, clock: AudienceClock) -> list[datetime]:
    """Audience times of the run's posts that went out (published, or would have on a shadow face), in order."""
    return sorted(clock.audience(p.published_at) for p in snap.posts
                  if p.run_id == snap.run_id and p.status in WENT_OUT and p.published_at)


def approved_publish_time(snap: ControllerSnapshot, clock: AudienceClock, now: datetime) -> datetime:
    """When an approved post may go out (wall clock): now, unless the minimum gap after the last post or
    the daily cap says later; approvals of several posts at once go out one gap apart, not in a burst."""
    cfg = snap.config
    published = _went_out(snap, clock)
    moment = clock.audience(now)
    if published:
        moment = max(moment, published[-1] + timedelta(minutes=cfg.min_gap_minutes))
    if len(published) >= cfg.daily_cap:
        moment = max(moment, published[-cfg.daily_cap] + timedelta(days=1, seconds=1))
    return clock.wall(moment)


def review_due(snap: ControllerSnapshot, now: datetime, decision: Decision) -> list[datetime]:
    """The review queue's part of a decision: posts awaiting review past `review_timeout_hours` (audience
    time from their slot) are skipped, and every post still waiting when the run stops, approved ones too;
    the backlog is flagged once its oldest post has waited a day. Out: the wall times the next timeouts fall."""
    cfg = snap.config
    limit = timedelta(seconds=cfg.wall_seconds(cfg.review_timeout_hours * 3600.0))
    waiting = sorted((p for p in snap.posts if p.status == PostStatus.AWAITING_REVIEW and p.inserted_at),
                     key=lambda p: (p.inserted_at, p.post_id))
    wakes = []
    for post in waiting:
        if snap.state == ControllerState.STOPPING:
            decision.skip_reviews.append((post, "the run stopped before it was reviewed", "run_stopped"))
        elif post.inserted_at + limit <= now:
            decision.skip_reviews.append((post, f"not reviewed within {cfg.review_timeout_hours:g} h",
                                          "review_timeout"))
        else:
            wakes.append(post.inserted_at + limit)
    if snap.state == ControllerState.STOPPING:
        decision.skip_reviews += [(p, "the run stopped before it was published", "run_stopped")
                                  for p in snap.posts if p.status == PostStatus.APPROVED]
    if waiting and now - waiting[0].inserted_at > REVIEW_OVERDUE:
        decision.review_overdue = (len(waiting), waiting[0].post_id)
    return wakes


# --------------------------------------------------------------------------------------------
# The decision


def collection_due(post: PostView, cfg: OnlineConfig, clock: AudienceClock, now: datetime) -> datetime | None:
    """When to read this post's reactions next (wall clock), or None when it needs no more reading."""
    if post.status != PostStatus.PUBLISHED or post.published_at is None or post.score is not None:
        return None
    if max(post.observed_ages, default=-1.0) >= cfg.maturity_seconds:
        return None  # mature: scored by the collect job that read it
    # Give up on a post that cannot be read long after maturity (deleted, face gone): no endless retries.
    if now - post.published_at > timedelta(seconds=cfg.wall_seconds(3 * cfg.maturity_seconds) + 600):
        return None
    windows = [w * 3600.0 for w in cfg.maturity_windows_hours]
    window = next(w for w in windows if not any(age >= w for age in post.observed_ages))
    due = post.published_at + timedelta(seconds=cfg.wall_seconds(window))
    if post.last_observed_at is not None:  # observed younger than expected: read again, not in a tight loop
        due = max(due, post.last_observed_at + timedelta(seconds=max(1.0, cfg.wall_seconds(0.1 * windows[0]))))
    return due


def poll_seconds(cfg: OnlineConfig) -> float:
    """How often to look at something in flight (wall seconds): a minute of audience time, 1..60 s."""
    return min(60.0, max(1.0, cfg.wall_seconds(60.0)))


# Tick at least this often, so that anything Redis lost is rebuilt from the store.
MAX_SLEEP_SECONDS = 3600.0


def reward_model_due(scored_posts: int, fitted_scored_posts: int | None) -> bool:
    """Whether a face's reward model should be (re)fitted: it has enough scored posts for one and their
    count changed since the last fit (new scores matured, or an import added or replaced some)."""
    from crowdtune.training.rl.predictor import PredictorConfig

    return scored_posts >= PredictorConfig().min_posts and scored_posts != fitted_scored_posts


def warm_start_due(snap: ControllerSnapshot) -> bool:
    """Whether the run should warm-start now: its algorithm warm-starts, the face has a reward model, the
    run has published nothing and had no update yet (a warm start that ended, however, is not repeated)."""
    return (snap.state == ControllerState.ONLINE and not snap.paused_reason and not snap.updates
            and snap.publish_slot == 0 and snap.reward_model_scored is not None
            and snap.config.warm_start_steps() > 0)


def decide(snap: ControllerSnapshot, now: datetime) -> Decision:
    """What the controller does at wall-clock `now` (naive UTC), given the store's facts."""
    cfg = snap.config
    clock = AudienceClock(snap.started_at or now, cfg.time_acceleration)
    decision = Decision()
    wakes: list[datetime] = []
    poll = now + timedelta(seconds=poll_seconds(cfg))

    # Reactions are read in every state, so posts already out are scored even after a stop.
    for post in snap.posts:
        due = collection_due(post, cfg, clock, now)
        if due is None:
            continue
        if due <= now:
            decision.collect.append(post)
            wakes.append(poll)
        else:
            wakes.append(due)

    # The reward model follows the scores in every state, so it is current whenever publishing resumes.
    if reward_model_due(snap.scored_posts, snap.reward_model_scored):
        decision.fit_reward_model = snap.scored_posts

    if snap.state == ControllerState.IDLE:
        decision.wake_at = min(wakes, default=None)
        return decision
    wakes += review_due(snap, now, decision)

    # An unresolved publishing slot is resolved before anything new is published.
    stuck = sorted({p.publish_slot for p in snap.posts if p.status == PostStatus.PUBLISHING and p.run_id == snap.run_id
                    and p.publish_slot is not None})
    pending_slot = snap.publish_slot - 1 if snap.publish_slot - 1 > snap.resolved_slot else None
    if stuck or pending_slot is not None:
        decision.resume_slot = stuck[0] if stuck else pending_slot
        wakes.append(poll)
    in_flight = [u for u in snap.updates if u.status in UPDATE_IN_FLIGHT]
    decision.resume_updates = [u.update_id for u in in_flight]
    if in_flight:
        wakes.append(poll)
    offline_running = snap.offline_run_id is not None and snap.offline_status not in OFFLINE_ENDED

    if snap.state == ControllerState.STOPPING:
        if decision.resume_slot is None and not in_flight and not offline_running:
            decision.finish_stop = True
            decision.notes.append("nothing in flight: the run ends")
        elif offline_running:
            wakes.append(poll)
        decision.wake_at = min(wakes, default=None)
        return decision

    if snap.state == ControllerState.OFFLINE:
        if offline_running:
            wakes.append(poll)
        else:
            versioned = snap.offline_status in OFFLINE_VERSIONED and snap.offline_version_id
            decision.end_offline = "completed" if versioned else "failed"
            wakes.append(now)
        decision.wake_at = min(wakes, default=None)
        return decision

    # ONLINE
    completed = [u for u in snap.updates if u.status == UpdateStatus.COMPLETED]
    # An approved post goes out through its slot's publish job as soon as the gap and the cap allow.
    approved = sorted((p for p in snap.posts if p.status == PostStatus.APPROVED and p.run_id == snap.run_id
                       and p.publish_slot is not None), key=lambda p: p.publish_slot)
    if approved and not snap.paused_reason and decision.resume_slot is None:
        at = approved_publish_time(snap, clock, now)
        if at <= now:
            decision.resume_slot = approved[0].publish_slot
            wakes.append(poll)
        else:
            wakes.append(at)
    if snap.paused_reason:
        decision.notes.append(f"paused: {snap.paused_reason}")
    elif not in_flight and decision.resume_slot is None:
        since_offline = len(completed) - snap.updates_at_offline
        drifted = (cfg.drift_threshold is not None and completed
                   and (completed[-1].metrics.get(cfg.drift_metric) or float("-inf")) > cfg.drift_threshold)
        if cfg.alternate_every is not None and since_offline >= cfg.alternate_every:
            decision.go_offline = f"{since_offline} online updates since the last offline phase"
        elif drifted and since_offline > 0:
            drifted = completed[-1].metrics[cfg.drift_metric]
            decision.go_offline = f"drift: {cfg.drift_metric} {drifted:.4g} > {cfg.drift_threshold:g}"
        if decision.go_offline:
            decision.wake_at = poll
            return decision

    # The warm start: before the run's first post, the policy practises against the face's reward model.
    warm_start_pending = any(u.step == 0 for u in in_flight)
    if warm_start_due(snap) and not in_flight and decision.resume_slot is None:
        decision.update = UpdatePlan(f"{snap.run_id}-u0", 0, [])
        warm_start_pending = True
        wakes.append(poll)
    if warm_start_pending:
        decision.notes.append("publishing waits for the warm start")

    if not snap.paused_reason and not in_flight and decision.update is None:
        # An edited post was not sampled by the policy: it never enters a policy-gradient step.
        ready = sorted((p for p in snap.posts if p.run_id == snap.run_id and p.status == PostStatus.PUBLISHED
                        and p.score is not None and p.update_id is None and p.review != ReviewAction.EDIT),
                       key=lambda p: (p.published_at, p.post_id))
        if len(ready) >= cfg.posts_per_update:
            step = max((u.step for u in snap.updates), default=0) + 1
            # The operator's decisions since the last update ride along (crowdtune.training.rl.feedback).
            decision.update = UpdatePlan(f"{snap.run_id}-u{step}", step,
                                         [p.post_id for p in ready[:cfg.posts_per_update]], list(snap.feedback_ids))
            wakes.append(poll)

    if not snap.paused_reason and decision.resume_slot is None and not warm_start_pending:
        at = decision.publish_at = next_publish_time(snap, clock)
        if at <= now:
            decision.publish_slot = snap.publish_slot
            wakes.append(poll)
        else:
            wakes.append(at)

    decision.wake_at = min(wakes, default=now + timedelta(seconds=MAX_SLEEP_SECONDS))
    decision.wake_at = min(decision.wake_at, now + timedelta(seconds=MAX_SLEEP_SECONDS))
    return decision

