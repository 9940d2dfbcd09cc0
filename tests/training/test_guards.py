"""Copy detection, diversity and style similarity."""

from __future__ import annotations

import pytest

from crowdtune.embeddings import cache_misses
from crowdtune.training.guards import CopyIndex, StyleProbe, distinct_n, guard_metrics

POSTS = [
    "The economy is doing better than ever before and jobs are coming back to our great country!",
    "Thank you Ohio!",
    "Watch my interview tonight on Fox at 10pm, big announcement coming about the wall.",
]


def test_long_shared_word_run_is_a_copy_and_short_overlap_is_not():
    index = CopyIndex(POSTS, embedding_threshold=None)
    flags = index.ngram_copies([
        "Wow. The economy is doing better than ever before and jobs are coming back, amazing",  # 12+ words
        "The economy is doing better today",  # 5 words in common with a long post
        "Thank you Ohio! What a crowd",  # the whole of a very short post
        "Thank you Iowa!",
    ])
    assert flags == [True, False, True, False]


def test_links_and_very_short_posts_are_no_evidence_of_copying():
    index = CopyIndex(["We", "Thank you!", "Thank you Iowa! https://t.co/aB3dE5fG7h", *POSTS], embedding_threshold=None)
    flags = index.ngram_copies([
        "We will win, thank you! https://t.co/zZ9yY8xX7w",  # shares only 1-3 word posts and a link prefix
        "Thank you!",  # the whole of a very short post
        "Thank you Iowa! See you soon",  # the whole of a short post, without its link
    ])
    assert flags == [False, True, True]


def test_near_duplicate_by_embedding_is_a_copy():
    index = CopyIndex(POSTS, embedding_threshold=0.95)
    edited = "Watch my big interview tonight on Fox at 10pm: a big announcement coming about the wall!"
    unrelated = "I love the beautiful beaches of Florida in the winter."
    assert index.ngram_copies([edited]) == [False]  # no run of 8 words (half the post) in common ...
    assert index.copy_flags([edited, unrelated]) == [True, False]  # ... the embedding still sees it
    assert index.copy_rate([edited, unrelated]) == 0.5


def test_distinct_n_measures_repetition():
    assert distinct_n(["a b c d"], 1) == 1.0
    assert distinct_n(["a a a a"], 1) == 0.25
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert distinct_n([], 2) == 0.0


def test_style_probe_scores_on_topic_samples_above_off_topic_ones(tweets):
    recent = [t["text"] for t in tweets[2500:2600]]
    older = [t["text"] for t in tweets[2000:2100]]
    probe = StyleProbe(recent, older)
    on_topic = probe.similarity([t["text"] for t in tweets[2600:2620]])
    off_topic = probe.similarity(["The mitochondria is the powerhouse of the cell.",
                                  "Preheat the oven to 180 degrees."])
    assert 0.1 < probe.reference < 1.0
    assert on_topic > off_topic + 0.1
    metrics = guard_metrics(["Thank you Ohio!"], CopyIndex(POSTS), probe)
    assert metrics["copy_rate"] == 1.0 and metrics["style_reference"] == pytest.approx(probe.reference)


def test_embedding_test_on_ngram_candidates_matches_every_post_and_embeds_fewer(tweets, tmp_path, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path))  # an empty embedding cache
    posts = [t["text"] for t in tweets[2000:2300]]
    edited = [" ".join(w if i != 5 else "really" for i, w in enumerate(p.split())) for p in posts[:40:4]]
    samples = [*edited, *[t["text"] for t in tweets[2600:2610]]]
    before = cache_misses()["kept"]
    by_candidates = CopyIndex(posts).embedding_copies(samples)
    embedded_for_candidates = cache_misses()["kept"] - before
    by_all = CopyIndex(posts, candidate_ngram=None).embedding_copies(samples)
    assert by_candidates == by_all and sum(by_all) >= 5  # the edited copies are found either way
    assert embedded_for_candidates < len(posts) / 3
