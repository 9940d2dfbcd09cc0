"""Post tables show what matters first: the score, the reactions, the text."""

import pandas as pd

from crowdtune.dashboard.tables import posts_for_display
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
