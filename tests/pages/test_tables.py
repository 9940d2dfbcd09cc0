"""Post tables show what matters first: the score, the reactions, the text."""

import pandas as pd

from crowdtune.dashboard.tables import posts_for_display, sample_blocks
from crowdtune.store.views import POST_COLUMNS


def test_score_then_reactions_then_text_come_first_and_nothing_is_lost():
    posts = pd.DataFrame([["p1", "f", "imported", "imported", "hello", None, None, None, 1.5, None, 3, 1]],
                         columns=[*POST_COLUMNS, "likes", "reposts"])
    shown = posts_for_display(posts)
    assert list(shown.columns[:4]) == ["score", "likes", "reposts", "text"]
    assert sorted(shown.columns) == sorted(posts.columns) and shown.iloc[0]["likes"] == 3


def test_a_table_without_reactions_or_score_keeps_its_columns():
    posts = pd.DataFrame({"post_id": ["a"], "text": ["t"]})
    assert list(posts_for_display(posts).columns) == ["text", "post_id"]


def test_playground_samples_show_in_full_kept_first_and_a_rejected_one_says_why():
    long = "word " * 80
    samples = [{"text": "", "prompt": "", "kept": False, "rejected": "empty", "logprob": -3.0, "tokens": 1},
               {"text": long, "prompt": "", "kept": True, "rejected": None, "logprob": -90.5, "tokens": 80}]
    (kept_text, kept_note), (empty_text, empty_note) = sample_blocks(samples)
    assert kept_text == long.strip() and kept_note == "80 tokens, log-prob -90.5"
    assert empty_text == "(empty)" and empty_note.startswith("rejected: empty")
