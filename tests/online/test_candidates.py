"""The exploring choice among a slot's candidates (crowdtune.online.candidates.choose)."""

import numpy as np

from crowdtune.online.candidates import choose


def ensemble(members: int = 16, count: int = 5, seed: int = 0) -> np.ndarray:
    """(members, count) predicted rewards: candidate 0 best on average, the others uncertain."""
    rng = np.random.default_rng(seed)
    return np.array([1.0, 0.8, 0.7, 0.2, -1.0]) + rng.normal(scale=0.4, size=(members, count))


def test_thompson_probabilities_are_each_members_favourite_share_and_the_draw_follows_them():
    members = ensemble()
    favourites = members.argmax(axis=1)
    picks = [choose(5, "thompson", seed, members) for seed in range(400)]
    expected = np.bincount(favourites, minlength=5) / 16
    assert all(np.array_equal(p.probabilities, expected) for p in picks) and expected.sum() == 1.0
    shares = np.bincount([p.index for p in picks], minlength=5) / len(picks)
    assert np.abs(shares - expected).max() < 0.08  # the draws follow the stated probabilities
    top = int(members.mean(axis=0).argmax())
    assert expected[top] < 1 and 0 < shares[top] < 0.95  # it explores: not always the top prediction
    assert all(p.probabilities[p.index] > 0 for p in picks)


def test_the_choice_is_deterministic_given_the_seed():
    members = ensemble()
    assert [choose(5, "thompson", s, members).index for s in range(20)] == \
        [choose(5, "thompson", s, members).index for s in range(20)]


def test_greedy_takes_the_best_mean_and_uniform_any_with_equal_probability():
    members = ensemble()
    greedy = choose(5, "greedy", 0, members)
    assert greedy.index == int(members.mean(axis=0).argmax()) and greedy.probabilities.tolist() == [1, 0, 0, 0, 0]
    uniform = choose(5, "uniform", 3, members)
    assert uniform.rule == "uniform" and uniform.probabilities.tolist() == [0.2] * 5


def test_without_a_reward_model_every_rule_chooses_uniformly():
    for rule in ("thompson", "greedy", "uniform"):
        picked = choose(4, rule, 7)
        assert picked.rule == "uniform" and picked.probabilities.tolist() == [0.25] * 4 and 0 <= picked.index < 4
