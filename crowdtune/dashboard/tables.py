"""How post tables are laid out on the pages: what matters first (score, reactions, text)."""

from __future__ import annotations

import pandas as pd

from crowdtune.store.views import POST_COLUMNS

_FIRST = ["score"]
_THEN = ["text"]


def posts_for_display(posts: pd.DataFrame) -> pd.DataFrame:
    """The posts' columns reordered: score, then each reaction kind (the columns views adds beside
    POST_COLUMNS: likes, reposts, ...), then the text, then the rest as they came. Rows are unchanged."""
    reactions = [c for c in posts.columns if c not in POST_COLUMNS and c not in ("matching", "latest_reactions")]
    first = [c for c in [*_FIRST, *reactions, *_THEN] if c in posts.columns]
    return posts[first + [c for c in posts.columns if c not in first]]
