"""Review before posting, in the controller's decisions on a fake clock: timeouts skip, the schedule keeps
its times, approved posts go out one gap apart, a stop skips what still waits, edits never train."""

from datetime import timedelta

from crowdtune.online.controller import PostView, decide
from crowdtune.states import ControllerState, PostStatus, ReviewAction
from tests.test_controller import HOUR, MIN, T0, config, published, snapshot


def waiting(slot: int, drafted) -> PostView:
    return PostView(post_id=f"run:p{slot}", status=PostStatus.AWAITING_REVIEW, run_id="run", publish_slot=slot,
                    inserted_at=drafted)


def approved(slot: int, drafted) -> PostView:
    return PostView(post_id=f"run:p{slot}", status=PostStatus.APPROVED, run_id="run", publish_slot=slot,
                    inserted_at=drafted, review=ReviewAction.APPROVE)


def test_a_post_not_reviewed_in_time_is_skipped_and_the_next_slot_keeps_its_time():
    cfg = config(interval_minutes=120, review_timeout_hours=1.5)
    # Slot 0 was drafted at T0 (and resolved then): it waits for review, the schedule does not.
    snap = snapshot(config=cfg, posts=[waiting(0, T0)], last_resolved_at=T0)
    before = decide(snap, T0 + 80 * MIN)
    assert before.skip_reviews == [] and before.wake_at == T0 + 90 * MIN  # wakes exactly at the timeout
    assert before.publish_at == T0 + 2 * HOUR
    late = decide(snap, T0 + 91 * MIN)
    assert [(p.post_id, by) for p, _, by in late.skip_reviews] == [("run:p0", "review_timeout")]
    assert "not reviewed within 1.5 h" in late.skip_reviews[0][1]
    # Skipped, the next slot is still due an interval after slot 0's time, not after the timeout.
    skipped = PostView(post_id="run:p0", status=PostStatus.SKIPPED, run_id="run", publish_slot=0, inserted_at=T0)
    after = decide(snapshot(config=cfg, posts=[skipped], last_resolved_at=T0), T0 + 92 * MIN)
    assert after.publish_at == T0 + 2 * HOUR and after.publish_slot is None
    assert decide(snapshot(config=cfg, posts=[skipped], last_resolved_at=T0), T0 + 2 * HOUR).publish_slot == 1


def test_an_approved_post_goes_out_at_once_and_a_late_approval_does_not_push_the_schedule_back():
    cfg = config(interval_minutes=120, min_gap_minutes=30, review_timeout_hours=6)
    snap = snapshot(config=cfg, posts=[approved(0, T0)], last_resolved_at=T0)
    now = T0 + 50 * MIN
    decision = decide(snap, now)
    assert decision.resume_slot == 0 and decision.publish_slot is None
    # Published 50 min late, the next slot is still due at T0 + 2 h (the slot's time + the interval).
    out = published(0, now)
    out.review = ReviewAction.APPROVE
    assert decide(snapshot(config=cfg, posts=[out], last_resolved_at=T0), now + MIN).publish_at == T0 + 2 * HOUR


def test_approvals_of_several_posts_at_once_go_out_one_minimum_gap_apart():
    cfg = config(interval_minutes=120, min_gap_minutes=30)
    first = published(0, T0 + 5 * HOUR)
    first.review = ReviewAction.APPROVE
    snap = snapshot(config=cfg, posts=[first, approved(1, T0 + 2 * HOUR), approved(2, T0 + 4 * HOUR)],
                    last_resolved_at=T0 + 4 * HOUR)
    decision = decide(snap, T0 + 5 * HOUR + 10 * MIN)
    assert decision.resume_slot is None
    assert decision.wake_at == T0 + 5 * HOUR + 30 * MIN
    assert decide(snap, T0 + 5 * HOUR + 30 * MIN).resume_slot == 1


def test_stopping_skips_every_post_still_waiting_or_approved_and_the_run_ends():
    snap = snapshot(state=ControllerState.STOPPING, posts=[waiting(0, T0), approved(1, T0 + HOUR)],
                    last_resolved_at=T0 + HOUR)
    decision = decide(snap, T0 + 2 * HOUR)
    assert {(p.post_id, by) for p, _, by in decision.skip_reviews} == {("run:p0", "run_stopped"),
                                                                       ("run:p1", "run_stopped")}
    assert decision.finish_stop


def test_a_queue_older_than_a_day_is_flagged_and_an_edited_post_never_makes_an_update():
    cfg = config(review_timeout_hours=48, posts_per_update=1)
    edited = published(0, T0, ages=[3700, 22000], score=1.0)
    edited.review = ReviewAction.EDIT
    snap = snapshot(config=cfg, posts=[edited, waiting(1, T0 + HOUR)], last_resolved_at=T0 + HOUR)
    decision = decide(snap, T0 + timedelta(days=1, hours=2))
    assert decision.review_overdue == (1, "run:p1")
    assert decision.update is None
    edited.review = ReviewAction.APPROVE
    assert decide(snap, T0 + timedelta(days=1, hours=2)).update.post_ids == ["run:p0"]
