"""score_at_maturity: interpolated, weighted, normalised reaction scores."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crowdtune.scoring import ScorerConfig, counts_at_age, score_at_maturity

HOUR = 3600.0


def test_a_post_younger_than_maturity_has_no_score():
    assert score_at_maturity([(2 * HOUR, {"likes": 5}, 100), (23.9 * HOUR, {"likes": 50}, 100)]) is None
    assert score_at_maturity([]) is None


def test_counts_are_interpolated_at_exactly_the_maturity_age():
    snapshots = [(26 * HOUR, {"likes": 120}, None), (22 * HOUR, {"likes": 80}, None)]  # any order
    counts, audience = counts_at_age(snapshots, 24 * HOUR)
    assert counts == {"likes": 100.0} and audience is None
    config = ScorerConfig(normalize_by_audience=False)
    assert score_at_maturity(snapshots, config) == pytest.approx(100.0)


def test_posts_observed_at_different_ages_compare_fairly():
    # Same linear growth (5 likes/hour), observed late vs on time: the same score.
    late = [(20 * HOUR, {"likes": 100}, 1000), (30 * HOUR, {"likes": 150}, 1000)]
    on_time = [(24 * HOUR, {"likes": 120}, 1000)]
    assert score_at_maturity(late) == pytest.approx(score_at_maturity(on_time))


def test_weights_per_kind_and_default_weight_for_unknown_kinds():
    config = ScorerConfig(normalize_by_audience=False, default_weight=0.5)
    snapshot = [(24 * HOUR, {"likes": 10, "reposts": 3, "replies": 2, "emoji:🔥": 4}, None)]
    assert score_at_maturity(snapshot, config) == pytest.approx(10 * 1 + 3 * 2 + 2 * 1.5 + 4 * 0.5)


def test_normalised_per_1000_audience_when_the_audience_is_known():
    assert score_at_maturity([(24 * HOUR, {"likes": 30}, 2000)]) == pytest.approx(15.0)
    assert score_at_maturity([(24 * HOUR, {"likes": 30}, None)]) == pytest.approx(30.0)


def test_a_post_first_seen_after_maturity_scores_its_counts_unscaled_by_age():
    score = score_at_maturity([(48 * HOUR, {"likes": 200}, None)], ScorerConfig(maturity_hours=24))
    assert score == pytest.approx(200.0)


def test_imported_posts_seen_at_1_h_24_h_and_3_years_score_the_same_mature_reactions_alike():
    # Issue 13, finding 8: a 2009 tweet read in 2018 was worth about half a 2018 one for the same reactions.
    reactions = {"likes": 120, "reposts": 10}
    config = ScorerConfig(normalize_by_audience=False)
    assert score_at_maturity([(1 * HOUR, reactions, None)], config) is None  # not mature yet
    day = score_at_maturity([(24 * HOUR, reactions, None)], config)
    three_years = score_at_maturity([(3 * 365 * 24 * HOUR, reactions, None)], config)
    assert day == pytest.approx(120 + 2 * 10) and three_years == pytest.approx(day)
    # Seen at 1 h and again at 3 years: the mature count lies between the two, never scaled below the first.
    both = score_at_maturity([(1 * HOUR, {"likes": 30}, None), (3 * 365 * 24 * HOUR, {"likes": 120}, None)], config)
    assert 30 <= both <= 120


def test_interpolated_counts_never_fall_below_the_earlier_snapshot():
    counts, _ = counts_at_age([(20 * HOUR, {"likes": 50}, None), (30 * HOUR, {"likes": 40}, None)], 24 * HOUR)
    assert counts["likes"] == 50.0


@given(
    early=st.integers(0, 10_000), growth=st.integers(0, 10_000),
    before=st.floats(1, 23.9), after=st.floats(24.1, 72),
)
def test_score_lies_between_the_surrounding_snapshots(early, growth, before, after):
    config = ScorerConfig(normalize_by_audience=False)
    snapshots = [(before * HOUR, {"likes": early}, None), (after * HOUR, {"likes": early + growth}, None)]
    score = score_at_maturity(snapshots, config)
    assert early - 1e-9 <= score <= early + growth + 1e-9
