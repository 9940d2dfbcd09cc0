"""How tables are laid out on the pages: posts with what matters first (score, reactions, text), and
numbers that read the same whether they are finite, infinite or missing."""

from __future__ import annotations

import math

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


MISSING = "—"  # a metric a version lacks, or stored as NaN or null


def metric_text(value) -> str:
    """One metric as the tables show it: "2.1034", "1.5e+30", "∞", "-∞", or "—" when missing or NaN."""
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.6g}"


def metrics_for_display(metrics: pd.DataFrame) -> pd.DataFrame:
    """views.version_metrics' frame with every metric column as text (metric_text): the table shows
    "—" for a missing or NaN value rather than an empty-looking "None", and any float, however large."""
    return metrics.assign(**{name: metrics[name].map(metric_text) for name in metrics.columns if name != "version_id"})
