import datetime as dt
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdtune.training.rl.rewards import RewardConfig, era_rewards, rewards_for


def test_rewards_are_normalised_against_the_baseline_and_clipped():
    baseline = [10.0, 12.0, 8.0, 11.0, 9.0, 10.0, 13.0, 7.0, 10.0, 11.0]
    rewards = rewards_for([10.0, 30.0, 1e6, 0.0], baseline, RewardConfig(clip=3.0))
    assert abs(rewards[0]) < 0.5  # a typical post gets about 0
    assert 0.5 < rewards[1] <= 3.0  # a better one gets more
    assert rewards[2] == 3.0  # a viral outlier is clipped
    assert rewards[3] == -3.0


def test_only_the_rolling_window_of_the_baseline_counts():
    old_low, recent_high = [1.0] * 100, [100.0] * 20
    config = RewardConfig(baseline_window=20, min_spread=1.0)
    assert rewards_for([100.0], old_low + recent_high, config) == [0.0]


def test_z_normalisation_matches_mean_and_std():
    baseline = [math.expm1(x) for x in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)]
    [reward] = rewards_for([math.expm1(4.5)], baseline, RewardConfig(normalize="z", clip=10))
    assert abs(reward) < 1e-9


def test_empty_baseline_uses_the_batch_itself_and_never_divides_by_zero():
    assert rewards_for([], []) == []
    assert rewards_for([5.0], []) == [0.0]
    assert rewards_for([5.0, 5.0, 5.0], []) == [0.0, 0.0, 0.0]
    low, high = rewards_for([1.0, 100.0], [])
    assert low < 0 < high
    assert all(math.isfinite(r) for r in rewards_for([0.0, 3.0], [4.0, 4.0]))


# --- History: each post against its own era --------------------------------------------------

START = dt.datetime(2009, 1, 1)


def hours(*offsets: float) -> list[dt.datetime]:
    return [START + dt.timedelta(hours=h) for h in offsets]


def test_the_same_reactions_score_higher_in_a_low_era_than_in_a_high_one():
    # 2009: ~10 likes a post; 2018: ~1,000 (the bundled tweets grew ~100x). The same 300 likes in each.
    rng = np.random.default_rng(0)
    low = list(rng.lognormal(np.log(10), 0.5, 60))
    high = list(rng.lognormal(np.log(1000), 0.5, 60))
    times = hours(*range(60)) + hours(*(80_000 + h for h in range(60)))
    rewards = era_rewards([*low[:30], 300.0, *low[31:], *high[:30], 300.0, *high[31:]], times,
                          RewardConfig(era_window=40))
    in_low_era, in_high_era = rewards[30], rewards[90]
    assert in_low_era == 3.0 and in_high_era < -1.0  # a hit in 2009, a flop in 2018
    # Against one baseline for all, history's eras would swamp the posts: old ones all low, new ones all high.
    assert abs(np.mean(rewards[:60])) < 0.3 and abs(np.mean(rewards[60:])) < 0.3


def test_a_post_is_judged_against_its_neighbours_in_time_not_against_itself():
    scores = [10.0] * 20 + [1e5]
    rewards = era_rewards(scores, hours(*range(21)), RewardConfig(era_window=8, min_spread=0.5))
    assert rewards[-1] == 3.0 and rewards[:20] == [0.0] * 20  # the viral post is not its own baseline
    assert era_rewards([5.0], [None]) == [0.0] and era_rewards([], []) == []
    # Without posting times every post is judged against all of them.
    assert era_rewards([1.0, 10.0, 100.0] * 4, [None] * 12, RewardConfig(min_spread=0.01))[1] == 0.0


era = st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=12, max_size=40)


@settings(max_examples=60, deadline=None)
@given(first=era, second=era, growth=st.floats(1.5, 1e3), window=st.integers(2, 11))
def test_era_rewards_are_finite_clipped_and_blind_to_the_growth_of_another_era(first, second, growth, window):
    # Two eras ten years apart, each with more posts than an era window: a window never leaves its era.
    times = hours(*range(len(first))) + hours(*(87_600 + h for h in range(len(second))))
    config = RewardConfig(era_window=window)
    rewards = era_rewards(first + second, times, config)
    assert all(np.isfinite(rewards)) and max(map(abs, rewards)) <= config.clip
    # The channel grew: every (1 + score) of the second era times `growth`, i.e. log1p(score) + log(growth).
    grown = [(1 + s) * growth - 1 for s in second]
    again = era_rewards(first + grown, times, config)
    assert np.allclose(again, rewards, atol=1e-6)
