"""The Models page's metrics table draws whatever metrics a version stored: NaN, null, inf and huge
numbers never break the page, and a missing or NaN value reads "—"."""

import itertools
import math

import hypothesis
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as hyp

from crowdtune.dashboard.tables import MISSING
from tests.pages.conftest import NOW, open_page, rows, write

PAGE = "pages/models.py"
_metric_values = hyp.one_of(hyp.none(), hyp.floats(allow_nan=True, allow_infinity=True),
                            hyp.sampled_from([math.nan, math.inf, 10**30, -10**400]), hyp.integers(),
                            hyp.text(max_size=3))
_metrics = hyp.dictionaries(hyp.sampled_from(["val_loss", "agreement", "tokens_per_second"]), _metric_values,
                            min_size=1, max_size=3)
_examples = itertools.count()


def metrics_table(at):
    """The page's "Metrics at save time" table, as it was handed to the browser, or None when it has none."""
    return next((df.value for df in at.dataframe
                 if "version_id" in df.value.columns and "artifact_url" not in df.value.columns), None)


def number_shown(text: str) -> float:
    return {"∞": math.inf, "-∞": -math.inf}.get(text) or float(text)


def number_stored(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf if value > 0 else -math.inf  # copysign would convert the int (and overflow)


@hypothesis.settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=hyp.lists(hyp.one_of(hyp.none(), _metrics), min_size=1, max_size=3))
@example(stored=[{"val_loss": math.nan, "agreement": None}, {"val_loss": 2.5, "agreement": math.inf}, None])
@example(stored=[{"val_loss": -10**400}])  # found in CI: beyond float's range, and negative
def test_the_version_table_shows_any_stored_metrics_and_nan_as_a_dash(settings, stored):
    run = next(_examples)  # one store for all examples: each writes versions of its own
    ids = [f"e{run}-v{i}" for i in range(len(stored))]
    write(settings, rows("model_versions", *({"version_id": version_id, "run_id": "r", "base_model": "b",
                                              "artifact_url": f"/a/{version_id}", "step": 1, "metrics": metrics,
                                              "created_at": NOW} for version_id, metrics in zip(ids, stored,
                                                                                               strict=True))))
    at = open_page(PAGE)  # fails on an exception in the page

    table = metrics_table(at)
    if table is None:  # no version in the store holds a number or a null
        assert not any(not isinstance(v, str) for m in stored if m for v in m.values())
        return
    table = table.set_index("version_id")
    for version_id, metrics in zip(ids, stored, strict=True):
        for name in table.columns:
            value, shown = (metrics or {}).get(name), table.loc[version_id, name]
            if value is None or isinstance(value, str) or math.isnan(number_stored(value)):
                assert shown == MISSING, (name, metrics)
            else:
                assert number_shown(shown) == pytest.approx(number_stored(value), rel=1e-5), (name, metrics)
