"""Property-based bad input: every input gets a result or a clear error, never a crash or a partial write."""

from __future__ import annotations

import datetime as dt
import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crowdtune.errors import CrowdtuneError
from crowdtune.scoring import ScorerConfig, score_at_maturity
from crowdtune.settings import load_settings
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import apply_batch, apply_write, initialise
from faces.base import FaceError
from faces.dataset import DatasetConfig, DatasetFace
from jobs.imports import history_rows

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

text_values = st.text(max_size=40)
# what an environment variable can hold at all: no NUL, no lone surrogates (the OS refuses both)
env_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@FAST
@given(port=st.one_of(st.integers(-10, 70000).map(str), env_values),
       queues=st.one_of(st.just('["train,default"]'), env_values),
       wait=st.one_of(st.floats(allow_nan=True).map(str), env_values))
def test_any_environment_either_loads_or_names_the_bad_setting(port, queues, wait, monkeypatch, tmp_path):
    monkeypatch.setenv("CROWDTUNE_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("CROWDTUNE_APP_PORT", port)
    monkeypatch.setenv("CROWDTUNE_WORKER_QUEUES", queues)
    monkeypatch.setenv("CROWDTUNE_STORE_LOCK_WAIT_SECONDS", wait)
    try:
        loaded = load_settings()
    except CrowdtuneError as exc:
        assert exc.problem.startswith(("Invalid settings", "Could not read settings")) and exc.fix
    else:
        assert 1 <= loaded.app_port <= 65535 and loaded.store_lock_wait_seconds > 0


@FAST
@given(config_text=st.text(max_size=200))
def test_any_config_file_either_loads_or_names_the_file(config_text, monkeypatch, tmp_path):
    config = tmp_path / "crowdtune.toml"
    config.write_text(config_text)
    monkeypatch.setenv("CROWDTUNE_CONFIG", str(config))
    for key in [k for k in os.environ if k.startswith("CROWDTUNE_") and k != "CROWDTUNE_CONFIG"]:
        monkeypatch.delenv(key)
    try:
        load_settings()
    except CrowdtuneError as exc:
        assert str(config) in exc.fix or "settings" in exc.problem.lower()


counts = st.dictionaries(st.sampled_from(["likes", "reposts", "replies", "emoji:🔥", "quotes"]),
                         st.integers(0, 10**9), max_size=5)
snapshot = st.tuples(st.floats(0, 10**8, allow_nan=False), counts, st.one_of(st.none(), st.integers(0, 10**9)))


@FAST
@given(snapshots=st.lists(snapshot, max_size=8), maturity=st.floats(0.01, 1000))
def test_any_snapshots_score_as_a_finite_non_negative_number_or_not_yet(snapshots, maturity):
    score = score_at_maturity(snapshots, ScorerConfig(maturity_hours=maturity))
    mature = any(age >= maturity * 3600 for age, _, _ in snapshots)
    if not mature:
        assert score is None
    else:
        assert score is not None and score >= 0 and math.isfinite(score)


rows = st.lists(st.tuples(st.one_of(st.integers(0, 50).map(str), text_values), text_values,
                          st.one_of(st.just("2024-01-02T03:04:05"), text_values),
                          st.one_of(st.integers(0, 100).map(str), text_values)), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows, junk=st.binary(max_size=64), header=st.booleans())
def test_any_csv_imports_its_valid_rows_atomically_and_reports_the_rest(rows, junk, header, tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv")
    path = folder / "posts.csv"
    lines = (["id,text,created_at,likes"] if header else []) + [
        ",".join(json.dumps(v) for v in row) for row in rows]
    path.write_bytes("\n".join(lines).encode() + b"\n" + junk)
    face = DatasetFace(DatasetConfig(source=str(path), reaction_columns={"likes": "likes"}))
    try:
        posts = list(face.fetch_history())
    except FaceError as exc:  # a file-level problem (no header, no text column): a clear error
        assert exc.problem and exc.fix
        return
    for problem in face.problems:
        assert problem.line >= 1 and problem.reason
    store = folder / "store.duckdb"
    initialise(store)
    now = dt.datetime(2025, 1, 1)
    # Duplicate ids in a file must merge into one post, never fail the batch.
    ops = history_rows("f", posts, now, None, ScorerConfig())
    apply_write(store, "w", ops, wait_seconds=5)
    reader = StoreReader(store)
    assert reader.scalar("SELECT count(*) FROM posts") == len({p.platform_id for p in posts})
    assert reader.scalar("SELECT count(*) FROM posts p WHERE NOT EXISTS "
                         "(SELECT 1 FROM reaction_snapshots s WHERE s.post_id = p.post_id)") == sum(
        1 for pid in {p.platform_id for p in posts}
        if not any(q.reactions for q in posts if q.platform_id == pid))


@pytest.mark.parametrize("ops, bad", [
    ([{"op": "upsert", "table": "posts", "rows": [{"post_id": "a", "face_id": "f", "origin": "imported",
                                                   "status": "imported", "text": "ok"}]},
      {"op": "insert", "table": "metrics", "rows": [{"run_id": "r", "name": "x", "step": "not a number"}]}],
     ("metrics", "r")),
    ([{"op": "upsert", "table": "posts", "rows": [{"post_id": "a", "face_id": "f", "origin": "imported",
                                                   "status": "imported", "text": "ok"},
                                                  {"post_id": "b", "face_id": "f", "origin": "imported",
                                                   "status": "imported", "text": None}]}],
     ("posts", "b")),
])
def test_a_batch_with_one_bad_row_lands_the_rest_and_raises_an_alert_naming_the_bad_one(tmp_path, ops, bad):
    store = tmp_path / "s.duckdb"
    initialise(store)
    outcome = apply_batch(store, "w", ops, wait_seconds=5)
    reader = StoreReader(store)
    assert reader.rows("SELECT post_id FROM posts") == [("a",)]
    assert [(r["table"], next(iter(r["key"].values()))) for r in outcome.refused] == [bad]
    assert bad[1] in reader.scalar("SELECT message FROM alerts WHERE alert_id = 'store-refused:w'")
    assert reader.scalar("SELECT count(*) FROM applied_writes") == 1
