"""The exploring choice among a slot's candidates (crowdtune.online.candidates.choose) and the
diversity floor on what is published (guard_samples' `stale`)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crowdtune.online.candidates import choose, guard_indexes, guard_samples
from crowdtune.training.generation import GenerationConfig, Sample
from crowdtune.training.guards import bigram_set, distinct_n, novelty, words


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


# --------------------------------------------------------------------------------------------
# The diversity floor

PLAIN = GenerationConfig(trim_unfinished=False, offensive_threshold=None)  # no tokenizer needed


def guarded(texts: list[str], published: list[str], min_novelty: float, window: int = 63) -> list[str | None]:
    samples = [Sample(text=t, token_ids=[], logprobs=[]) for t in texts]
    guards = guard_indexes([], published, None, window)
    return [s.rejected for s in guard_samples(samples, None, PLAIN, guards, min_novelty)]


def test_the_diversity_floor_sets_aside_a_candidate_made_of_the_recent_posts_phrases():
    # Runs of at most 5 words of a published post: not a repeat of it, but nearly every bigram was just posted.
    published = ["today was the best day of the year", "what a great game tonight for the fans"]
    stale = "the best day of the great game tonight"
    fresh = "rain again on the way to work"
    assert novelty(stale, bigram_set(published)) == 1 / 7
    assert guarded([stale, fresh], published, 0.75) == ["stale", None]
    # off, or the phrases outside the window: nothing is set aside
    assert guarded([stale, fresh], published, 0.0) == [None, None]
    assert guarded([stale, fresh], published + ["one", "two"], 0.75, window=2) == [None, None]


def test_the_diversity_floor_keeps_a_batchs_most_novel_candidate_so_a_slot_is_never_skipped():
    published = ["today was the best day of the year", "what a great game tonight for the fans"]
    batch = ["the best day of the great game tonight", "a great game tonight and the best day",
             "what a great day of the year"]
    # novelty 1/7, 2/7 and 1/6: all below the floor, the most novel is kept
    assert guarded(batch, published, 0.75) == ["stale", None, "stale"]


posts = st.lists(st.lists(st.sampled_from("a b c d e f".split()), max_size=8).map(" ".join), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(posts)
def test_distinct_2_is_the_length_weighted_novelty_of_each_post_against_the_earlier_ones(texts):
    # The floor's promise rests on this: each post of a window passing the floor keeps its distinct-2 above it.
    bigrams = [max(0, len(words(t)) - 1) for t in texts]
    fresh = sum(novelty(t, bigram_set(texts[:i])) * n for i, (t, n) in enumerate(zip(texts, bigrams, strict=True)))
    expected = fresh / sum(bigrams) if sum(bigrams) else 0.0
    assert expected == pytest.approx(distinct_n(texts, 2))
