import math

from crowdtune.training.rl.rewards import RewardConfig, rewards_for


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
