"""How post tables are laid out on the pages: what matters first (score, reactions, text)."""

from __future__ import annotations

import pandas as pd

from crowdtune.store.views import POST_COLUMNS

_FIRST = ["score"]
_THEN = ["text"]
# Statuses as the Posts page names them (a shadow face's posts never went out).
STATUS_LABELS = {"shadow": "would have posted", "awaiting_review": "awaiting review"}


def posts_for_display(posts: pd.DataFrame) -> pd.DataFrame:
    """The posts' columns reordered: score, then each reaction kind (the columns views adds beside
    POST_COLUMNS: likes, reposts, ...), then the text, then the rest as they came; statuses by their
    STATUS_LABELS name ("would have posted"). Rows are unchanged."""
    reactions = [c for c in posts.columns if c not in POST_COLUMNS and c not in ("matching", "latest_reactions")]
    first = [c for c in [*_FIRST, *reactions, *_THEN] if c in posts.columns]
    shown = posts[first + [c for c in posts.columns if c not in first]]
    if "status" in shown.columns:
        shown = shown.assign(status=shown["status"].replace(STATUS_LABELS))
    return shown


def sample_blocks(samples: list[dict]) -> list[tuple[str, str]]:
    """The Playground's samples as (text, note) pairs to show in full, kept ones first.

    In: jobs.generate.sample_posts rows. The note says why a rejected sample was rejected beside
    it (an empty sample shows as "(empty)", never as a blank row), else its length and log-prob.
    """
    blocks = []
    for sample in sorted(samples, key=lambda s: not s["kept"]):
        text = sample["text"].strip() or "(empty)"
        figures = f"{sample['tokens']} tokens, log-prob {sample['logprob']:.1f}"
        note = figures if sample["kept"] else f"rejected: {sample['rejected']} · {figures}"
        blocks.append((text, note))
    return blocks
