"""How good a post was: one number from its reaction snapshots, read at a fixed age.

Pure functions, no I/O. Posts are observed at whatever times the collector got to them (23.7 h,
24.2 h, ...). Comparing raw counts at those ages would favour the ones observed late, so the
counts are interpolated to exactly the maturity age before they are weighted and summed.

A post first observed only after maturity (imported history: a 2009 tweet read in 2025) has no
earlier snapshot to interpolate from. Its counts are taken as its mature counts, unscaled: nearly
all reactions come in a post's first hours, so scaling them by maturity / age (a straight line
from zero at birth) would make a post worth less the older it is, for the same reactions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

# One snapshot: (age of the post in seconds when observed, counts per reaction kind, audience size or None).
Snapshot = tuple[float, Mapping[str, int], int | None]


def default_reaction_weights() -> dict[str, float]:
    # Kinds are the shared vocabulary of faces (see faces.base.REACTION_KINDS). Ratios and
    # ratings are not counts of people reacting, so they do not add to the score by default.
    return {
        "likes": 1.0,
        "reposts": 2.0,
        "replies": 1.5,
        "quotes": 2.0,
        "upvote_ratio_percent": 0.0,
        "human_rating_x1000": 0.0,
    }


class ScorerConfig(BaseModel):
    """How reaction counts become a score."""

    model_config = ConfigDict(extra="forbid")

    maturity_hours: float = Field(default=24.0, gt=0,
                                  description="age at which a post is scored; younger posts have no score")
    weights: dict[str, float] = Field(default_factory=default_reaction_weights,
                                      description="weight of each reaction kind in the score")
    default_weight: float = Field(1.0, description="weight of a kind not in `weights` (e.g. a Discord emoji)")
    normalize_by_audience: bool = Field(True, description="divide by the audience size when it is known ...")
    per_audience: float = Field(default=1000.0, gt=0,
                                description="... and express the score per this many audience members")

    @property
    def maturity_seconds(self) -> float:
        return self.maturity_hours * 3600.0


def counts_at_age(snapshots: Sequence[Snapshot], age_seconds: float) -> tuple[dict[str, float], int | None] | None:
    """Interpolate reaction counts at an exact age.

    In: snapshots in any order, and the age to read at. Out: (counts per kind, audience size) at
    that age, or None when no snapshot is at least that old (the post is not mature yet).
    Between two snapshots the counts are linear in age; when the first snapshot is already at
    least that old, its counts are returned as they are (see module docstring). A kind missing
    from a snapshot counts as 0 there, but an interpolated count never falls below the earlier
    snapshot's (counts do not decrease).
    """
    ordered = sorted(snapshots, key=lambda snapshot: snapshot[0])
    after_index = next((i for i, snapshot in enumerate(ordered) if snapshot[0] >= age_seconds), None)
    if after_index is None:
        return None
    after_age, after_counts, after_audience = ordered[after_index]
    if after_index == 0:
        # Nothing observed before maturity: the first (mature) observation is the mature count.
        return {kind: float(count) for kind, count in after_counts.items()}, after_audience
    before_age, before_counts, before_audience = ordered[after_index - 1]
    if after_age == before_age:
        fraction = 1.0
    else:
        fraction = (age_seconds - before_age) / (after_age - before_age)
    counts: dict[str, float] = {}
    for kind in set(before_counts) | set(after_counts):
        low = float(before_counts.get(kind, 0))
        high = float(after_counts.get(kind, 0))
        counts[kind] = max(low, low + (high - low) * fraction)
    audience = after_audience if after_audience is not None else before_audience
    return counts, audience


def weighted_sum(counts: Mapping[str, float], config: ScorerConfig) -> float:
    """Sum counts with their kind's weight (config.default_weight for unknown kinds)."""
    return sum(config.weights.get(kind, config.default_weight) * value for kind, value in counts.items())


def score_at_maturity(snapshots: Sequence[Snapshot], config: ScorerConfig | None = None) -> float | None:
    """Score a post from its snapshots.

    In: snapshots as (age_seconds, counts, audience_size or None), in any order, and the scorer
    config. Out: None while no snapshot has reached the maturity age; otherwise the weighted sum
    of the counts interpolated at exactly the maturity age, per `per_audience` audience members
    when normalisation is on and the audience size is known and positive.
    """
    config = config or ScorerConfig()
    interpolated = counts_at_age(snapshots, config.maturity_seconds)
    if interpolated is None:
        return None
    counts, audience = interpolated
    score = weighted_sum(counts, config)
    if config.normalize_by_audience and audience:
        score = score * config.per_audience / audience
    return score
