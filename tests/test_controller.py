"""The online controller's decisions, on a fake clock: schedule, maturity, updates, phases, stopping."""

from datetime import UTC, datetime, timedelta

import pytest

from crowdtune.errors import SettingsError
from crowdtune.online.controller import (
    ControllerSnapshot,
    OnlineConfig,
    PostView,
    UpdateView,
    decide,
    parse_online_config,
)
from crowdtune.states import ControllerState

T0 = datetime(2026, 11, 2, 9, 0, 0)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def config(**values) -> OnlineConfig:
    base = {"interval_minutes": 120, "jitter_minutes": 0, "min_gap_minutes": 30, "daily_cap": 6,
            "maturity_windows_hours": [1, 6], "posts_per_update": 3}
    return OnlineConfig(**{**base, **values})


def snapshot(state=ControllerState.ONLINE, posts=(), updates=(), **values) -> ControllerSnapshot:
    cfg = values.pop("config", None) or config()
    slots = [p.publish_slot for p in posts if p.publish_slot is not None]
    defaults = {"publish_slot": max(slots, default=-1) + 1, "resolved_slot": max(slots, default=-1)}
    return ControllerSnapshot(face_id="f", state=state, config=cfg, run_id="run", started_at=T0,
                              posts=list(posts), updates=list(updates), **{**defaults, **values})


def published(slot: int, at: datetime, ages=(), score=None, update_id=None, last_observed_at=None) -> PostView:
    return PostView(post_id=f"run:p{slot}", status="published", run_id="run", platform_id=f"x{slot}", published_at=at,
                    score=score, update_id=update_id, publish_slot=slot, observed_ages=list(ages),
                    last_observed_at=last_observed_at)


def scored(slot: int, at: datetime) -> PostView:
    """A post already scored at maturity: it needs no more collecting."""
    return published(slot, at, ages=[3700, 22000], score=1.0, update_id="run-u0")


def test_the_first_post_goes_out_at_once_and_the_next_one_an_interval_later():
    assert decide(snapshot(), T0).publish_slot == 0
    snap = snapshot(posts=[scored(0, T0)], last_resolved_at=T0)
    decision = decide(snap, T0 + MIN)
    assert decision.publish_slot is None
    assert decision.publish_at == T0 + 2 * HOUR
    assert decision.wake_at == T0 + MIN + HOUR  # ticks at least hourly, to rebuild what Redis may have lost
    assert decide(snap, T0 + 2 * HOUR).publish_slot == 1


def test_jitter_moves_each_post_within_its_bounds_and_is_the_same_on_every_tick():
    cfg = config(jitter_minutes=30)
    wakes = set()
    for slot in range(1, 30):
        posts = [scored(slot - 1, T0)]
        snap = snapshot(config=cfg, posts=posts, last_resolved_at=T0)
        first, again = decide(snap, T0 + MIN).publish_at, decide(snap, T0 + 2 * MIN).publish_at
        assert first == again
        assert T0 + 90 * MIN <= first <= T0 + 150 * MIN
        wakes.add(first)
    assert len(wakes) > 20


def test_the_minimum_gap_holds_even_when_jitter_would_come_earlier():
    cfg = config(interval_minutes=40, jitter_minutes=39, min_gap_minutes=30)
    for slot in range(1, 40):
        snap = snapshot(config=cfg, posts=[scored(slot - 1, T0)], last_resolved_at=T0)
        assert decide(snap, T0).publish_at >= T0 + 30 * MIN


def test_the_daily_cap_waits_until_the_oldest_post_of_the_last_day_drops_out():
    cfg = config(interval_minutes=60, min_gap_minutes=60, daily_cap=3)
    posts = [scored(i, T0 + i * HOUR) for i in range(3)]
    decision = decide(snapshot(config=cfg, posts=posts, last_resolved_at=T0 + 2 * HOUR), T0 + 3 * HOUR)
    assert decision.publish_slot is None
    assert T0 + 24 * HOUR <= decision.publish_at <= T0 + 24 * HOUR + MIN


def test_no_post_goes_out_in_quiet_hours():
    cfg = config(quiet_hours=(22, 7))
    late = datetime(2026, 11, 2, 21, 30)
    snap = snapshot(config=cfg, posts=[scored(0, late)], last_resolved_at=late)
    decision = decide(snap, late + 3 * HOUR)  # 00:30: quiet
    assert decision.publish_slot is None
    assert decision.publish_at == datetime(2026, 11, 3, 7, 0)


def test_acceleration_turns_audience_hours_into_wall_seconds():
    cfg = config(time_acceleration=3600)  # an audience hour per wall second
    snap = snapshot(config=cfg, posts=[scored(0, T0)], last_resolved_at=T0)
    assert decide(snap, T0).publish_at == T0 + timedelta(seconds=2)
    young = published(0, T0)
    assert decide(snapshot(config=cfg, posts=[young], last_resolved_at=T0),
                  T0 + timedelta(seconds=1.5)).collect == [young]


def test_reactions_are_read_at_each_window_and_no_more_once_mature():
    post = published(0, T0)
    assert decide(snapshot(posts=[post], last_resolved_at=T0), T0 + 30 * MIN).wake_at == T0 + HOUR
    assert decide(snapshot(posts=[post], last_resolved_at=T0), T0 + HOUR).collect == [post]
    after_first = published(0, T0, ages=[3700], last_observed_at=T0 + HOUR)
    decision = decide(snapshot(posts=[after_first], last_resolved_at=T0), T0 + 2 * HOUR)
    assert decision.collect == [] and decision.publish_slot == 1
    assert decide(snapshot(ControllerState.IDLE, posts=[after_first]), T0 + 2 * HOUR).wake_at == T0 + 6 * HOUR
    mature = published(0, T0, ages=[3700, 6 * 3600 + 10], score=4.0, last_observed_at=T0 + 6 * HOUR)
    assert decide(snapshot(posts=[mature], last_resolved_at=T0, paused_reason="x"), T0 + 7 * HOUR).collect == []


def test_a_post_observed_younger_than_expected_is_read_again_without_a_tight_loop():
    post = published(0, T0, ages=[1800], last_observed_at=T0 + HOUR)  # the face's clock runs slower
    decision = decide(snapshot(posts=[post], paused_reason="x"), T0 + HOUR + timedelta(seconds=10))
    assert decision.collect == [] and decision.wake_at == T0 + HOUR + 6 * MIN


def test_an_update_starts_when_enough_posts_have_matured_and_uses_each_post_once():
    scored = [published(i, T0 + i * 2 * HOUR, ages=[3700, 22000], score=float(i)) for i in range(4)]
    decision = decide(snapshot(posts=scored, last_resolved_at=T0 + 6 * HOUR), T0 + 7 * HOUR)
    assert decision.update.update_id == "run-u1"
    assert decision.update.post_ids == ["run:p0", "run:p1", "run:p2"]
    used = [published(i, p.published_at, p.observed_ages, p.score, update_id="run-u1" if i < 3 else None)
            for i, p in enumerate(scored)]
    done = [UpdateView("run-u1", 1, "completed")]
    assert decide(snapshot(posts=used, updates=done, last_resolved_at=T0 + 6 * HOUR), T0 + 7 * HOUR).update is None


def test_immature_posts_never_make_an_update():
    young = [published(i, T0 + i * MIN, ages=[3700]) for i in range(5)]
    assert decide(snapshot(posts=young), T0 + 2 * HOUR).update is None


def test_an_update_in_flight_blocks_the_next_and_must_keep_its_job():
    scored = [published(i, T0, ages=[22000], score=1.0) for i in range(6)]
    decision = decide(snapshot(posts=scored, updates=[UpdateView("run-u1", 1, "running")]), T0 + 7 * HOUR)
    assert decision.update is None and decision.resume_updates == ["run-u1"]


def test_a_slot_still_publishing_is_resolved_before_anything_new_is_published():
    stuck = PostView("run:p2", "publishing", run_id="run", publish_slot=2)
    decision = decide(snapshot(posts=[published(0, T0), published(1, T0 + HOUR), stuck], resolved_slot=1),
                      T0 + 9 * HOUR)
    assert decision.resume_slot == 2 and decision.publish_slot is None
    lost = snapshot(posts=[published(0, T0)], publish_slot=2, resolved_slot=0)  # slot 1's job never wrote a row
    assert decide(lost, T0 + 9 * HOUR).resume_slot == 1


def test_consecutive_failures_back_off():
    failed = [PostView(f"run:p{i}", "failed", run_id="run", publish_slot=i, updated_at=T0) for i in range(3)]
    decision = decide(snapshot(posts=failed, last_resolved_at=T0), T0 + 3 * HOUR)
    assert decision.publish_slot is None and decision.publish_at == T0 + 8 * HOUR  # 2 h * 2^2


def test_every_k_updates_the_controller_goes_offline_and_comes_back_with_the_offline_version():
    cfg = config(alternate_every=2)
    done = [UpdateView("run-u1", 1, "completed"), UpdateView("run-u2", 2, "completed")]
    assert decide(snapshot(config=cfg, updates=done[:1]), T0).go_offline is None
    assert "2 online updates" in decide(snapshot(config=cfg, updates=done), T0).go_offline
    assert decide(snapshot(config=cfg, updates=done, updates_at_offline=2), T0).go_offline is None
    waiting = snapshot(ControllerState.OFFLINE, config=cfg, updates=done, offline_run_id="off",
                       offline_status="running")
    decision = decide(waiting, T0)
    assert decision.end_offline is None and decision.publish_slot is None and decision.wake_at > T0
    ended = snapshot(ControllerState.OFFLINE, config=cfg, offline_run_id="off", offline_status="completed",
                     offline_version_id="off-step8")
    assert decide(ended, T0).end_offline == "completed"
    failed = snapshot(ControllerState.OFFLINE, offline_run_id="off", offline_status="failed")
    assert decide(failed, T0).end_offline == "failed"


def test_drift_sends_the_controller_offline():
    cfg = config(drift_threshold=0.5)
    calm = [UpdateView("run-u1", 1, "completed", {"kl": 0.1})]
    assert decide(snapshot(config=cfg, updates=calm), T0).go_offline is None
    drifted = [UpdateView("run-u1", 1, "completed", {"kl": 0.9})]
    assert decide(snapshot(config=cfg, updates=drifted), T0).go_offline.startswith("drift: kl 0.9")


def test_a_paused_controller_publishes_and_updates_nothing_but_still_collects():
    scored = [published(i, T0, ages=[22000], score=1.0) for i in range(3)] + [published(3, T0)]
    decision = decide(snapshot(posts=scored, paused_reason="reward model disagrees"), T0 + 5 * HOUR)
    assert decision.publish_slot is None and decision.update is None
    assert [p.post_id for p in decision.collect] == ["run:p3"]


def test_stopping_waits_for_work_in_flight_then_finishes():
    stuck = PostView("run:p1", "publishing", run_id="run", publish_slot=1)
    waiting = decide(snapshot(ControllerState.STOPPING, posts=[published(0, T0), stuck], resolved_slot=0),
                     T0 + 9 * HOUR)
    assert waiting.resume_slot == 1 and not waiting.finish_stop and waiting.publish_slot is None
    updating = decide(snapshot(ControllerState.STOPPING, updates=[UpdateView("run-u1", 1, "running")]), T0)
    assert updating.resume_updates == ["run-u1"] and not updating.finish_stop
    done = decide(snapshot(ControllerState.STOPPING, posts=[published(0, T0, ages=[22000], score=2.0)] * 3),
                  T0 + 9 * HOUR)
    assert done.finish_stop and done.update is None and done.publish_slot is None


def test_idle_only_collects_what_is_still_maturing_and_then_sleeps():
    young = published(0, T0, ages=[3700], last_observed_at=T0 + HOUR)
    decision = decide(snapshot(ControllerState.IDLE, posts=[young]), T0 + 6 * HOUR)
    assert decision.collect == [young] and decision.publish_slot is None
    assert decide(snapshot(ControllerState.IDLE), T0).wake_at is None


@pytest.mark.parametrize("values, message", [
    ({"interval_minutes": 5, "min_gap_minutes": 30}, "interval 5 min is below the minimum gap 30 min"),
    ({"algorithm": "ppo"}, "unknown algorithm 'ppo'; choose guided, reinforce, policy_gradient or reward_model"),
    ({"maturity_windows_hours": [6, 1]}, "increasing order"),
    ({"generation": {"temperature": 0.5}}, "set them in algorithm_settings"),
    ({"algorithm": "reinforce", "algorithm_settings": {"learning_rate": -1}}, "learning_rate"),
    ({"intervall_minutes": 60}, "intervall_minutes: Extra inputs are not permitted"),
])
def test_bad_settings_give_a_clear_error(values, message):
    with pytest.raises(SettingsError) as error:
        parse_online_config(values)
    assert message in error.value.problem
    assert "OnlineConfig" in error.value.fix



def test_the_reward_model_is_refitted_once_per_change_of_the_scored_posts_in_every_state():
    assert decide(snapshot(scored_posts=40, reward_model_scored=None), T0).fit_reward_model == 40  # the first fit
    assert decide(snapshot(scored_posts=40, reward_model_scored=40), T0).fit_reward_model is None  # current
    assert decide(snapshot(scored_posts=41, reward_model_scored=40), T0).fit_reward_model == 41    # a new score
    assert decide(snapshot(ControllerState.IDLE, scored_posts=41, reward_model_scored=40), T0).fit_reward_model == 41
    assert decide(snapshot(scored_posts=15, reward_model_scored=None), T0).fit_reward_model is None  # too few
    raw = {"controller": {"face_id": "f", "state": "ONLINE", "config": {}},
           "reward_model": {"scored_posts": 41, "fitted_scored_posts": 40}}
    snap = ControllerSnapshot.from_read(raw)
    assert (snap.scored_posts, snap.reward_model_scored) == (41, 40)


def test_a_warm_starting_run_queues_an_update_without_posts_and_publishes_only_once_it_has_ended():
    with_model = {"scored_posts": 40, "reward_model_scored": 40}
    first = decide(snapshot(**with_model), T0)
    assert first.update.update_id == "run-u0" and first.update.step == 0 and first.update.post_ids == []
    assert first.publish_slot is None and "publishing waits for the warm start" in first.notes
    running = decide(snapshot(updates=[UpdateView("run-u0", 0, "running")], **with_model), T0 + MIN)
    assert running.publish_slot is None and running.update is None and running.resume_updates == ["run-u0"]
    for ended in ("completed", "failed", "stopped"):  # failed: the start model publishes (the alert is the job's)
        decision = decide(snapshot(updates=[UpdateView("run-u0", 0, ended)], **with_model), T0 + MIN)
        assert decision.publish_slot == 0 and decision.update is None, ended


def test_no_warm_start_without_a_reward_model_or_for_an_algorithm_that_does_not_warm_start():
    assert decide(snapshot(scored_posts=10), T0).publish_slot == 0  # no reward model yet
    for cfg in (config(algorithm="policy_gradient"), config(algorithm_settings={"warm_start_steps": 0})):
        decision = decide(snapshot(config=cfg, scored_posts=40, reward_model_scored=40), T0)
        assert decision.publish_slot == 0 and decision.update is None
    started = decide(snapshot(posts=[scored(0, T0)], last_resolved_at=T0, scored_posts=40, reward_model_scored=40),
                     T0 + 3 * HOUR)  # the run has published already: no warm start mid-run
    assert started.update is None and started.publish_slot == 1


def test_after_a_warm_start_the_first_real_update_is_step_one():
    posts = [published(i, T0 + i * 2 * HOUR, ages=[3700, 22000], score=float(i)) for i in range(3)]
    decision = decide(snapshot(posts=posts, updates=[UpdateView("run-u0", 0, "completed")],
                               last_resolved_at=T0 + 4 * HOUR), T0 + 7 * HOUR)
    assert decision.update.update_id == "run-u1" and decision.update.step == 1


def run_timetable(cfg: OnlineConfig, start: datetime, days: int) -> list[datetime]:
    """Drive decide() from `start` (naive UTC) for `days`, publishing whenever it says so at the moment it
    said; out: the naive UTC times of the posts."""
    posts: list[PostView] = []
    now, end = start, start + timedelta(days=days)
    while now < end:
        snap = ControllerSnapshot(face_id="f", state=ControllerState.ONLINE, config=cfg, run_id="run",
                                  started_at=start, publish_slot=len(posts), resolved_slot=len(posts) - 1,
                                  last_resolved_at=posts[-1].published_at if posts else None, posts=list(posts))
        decision = decide(snap, now)
        if decision.publish_slot is not None:
            posts.append(scored(decision.publish_slot, now))
            now += timedelta(seconds=30)  # the publish job takes a moment
        else:
            now = max(decision.publish_at, now + timedelta(seconds=1))
    return [p.published_at for p in posts]


@pytest.mark.parametrize("timezone, spring, autumn, missing, twice", [
    ("Europe/Paris", datetime(2026, 3, 29), datetime(2026, 10, 25), "02:30", "02:30"),
    ("America/New_York", datetime(2026, 3, 8), datetime(2026, 11, 1), "02:30", "01:30"),
])
def test_post_times_are_kept_in_local_time_across_both_daylight_saving_changes(timezone, spring, autumn, missing,
                                                                               twice):
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(timezone)
    # `missing` does not exist on the spring day (clocks jump to 03:00); `twice` happens twice in autumn.
    times = sorted({"09:00", "13:00", "18:30", missing, twice})
    cfg = config(post_times=times, timezone=timezone, min_gap_minutes=30, daily_cap=10)  # a 23-hour day holds 6
    for change in (spring, autumn):
        start = change - timedelta(days=2)
        posted = run_timetable(cfg, start, days=4)
        local = [p.replace(tzinfo=UTC).astimezone(tz) for p in posted]
        days = [(start + timedelta(days=d)).date() for d in range(4)]
        assert sorted({p.date() for p in local}) == days
        for day in days:
            of_day = [p.strftime("%H:%M") for p in local if p.date() == day]
            expected = times
            if day == spring.date():
                expected = sorted(["03:00" if t == missing else t for t in times])
            assert of_day == expected, (timezone, day, of_day)
        assert len(posted) == len(set(posted)) == 4 * len(times)  # nothing skipped, nothing doubled


def test_a_cron_timetable_posts_on_weekdays_at_nine_local_and_quiet_hours_are_local_too():
    cfg = config(cron="0 9 * * 1-5", timezone="Europe/Paris")
    monday = datetime(2026, 11, 2, 0, 0)  # UTC; Paris is UTC+1 in November
    posted = run_timetable(cfg, monday, days=7)
    assert posted == [datetime(2026, 11, d, 8, 0) for d in (2, 3, 4, 5, 6)]
    # Quiet hours 22..7 in Paris: a post due at 23:30 Paris waits until 07:00 Paris (06:00 UTC).
    late = datetime(2026, 11, 2, 20, 0)  # 21:00 Paris
    snap = snapshot(config=config(quiet_hours=(22, 7), timezone="Europe/Paris", interval_minutes=150),
                    posts=[scored(0, late)], last_resolved_at=late)
    assert decide(snap, late + HOUR).publish_at == datetime(2026, 11, 3, 6, 0)


def test_a_timetable_starts_at_its_next_listed_time_and_skips_listed_times_in_quiet_hours():
    cfg = config(post_times=["06:00", "09:00", "13:00"], quiet_hours=(22, 7))
    assert decide(snapshot(config=cfg), T0 - MIN).publish_at == T0  # the run starts at 09:00 UTC (T0)
    assert decide(snapshot(config=cfg), T0 + 10 * MIN).publish_slot == 0  # a late tick still takes its slot
    snap = snapshot(config=cfg, posts=[scored(0, T0 + 10 * MIN)], last_resolved_at=T0 + 10 * MIN)
    assert decide(snap, T0 + HOUR).publish_at == T0 + 4 * HOUR  # ... and the next keeps its listed time
    snap = snapshot(config=cfg, posts=[scored(0, T0 + 4 * HOUR)], last_resolved_at=T0 + 4 * HOUR)
    assert decide(snap, T0 + 5 * HOUR).publish_at == T0 + 24 * HOUR  # 06:00 is quiet: the next day's 09:00


@pytest.mark.parametrize("values, message", [
    ({"post_times": ["9am"]}, "is not HH:MM"),
    ({"cron": "0 9 * *"}, "is not 5 fields"),
    ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"post_times": ["09:00"], "cron": "0 9 * * *"}, "not both"),
])
def test_bad_timetables_are_refused_naming_the_setting(values, message):
    with pytest.raises(SettingsError) as raised:
        parse_online_config({**values})
    assert message in raised.value.problem
