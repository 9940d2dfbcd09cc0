"""Live fragments read the store only when it changed: their timer reruns ask Redis's change counter
(one GET) and draw from what they kept while it did not move; a held store file shows a banner."""

from __future__ import annotations

import functools

import pytest
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
from streamlit.testing.v1 import AppTest, local_script_runner

from crowdtune.runtime import status as runtime_status
from crowdtune.store import changes, views
from crowdtune.store.writer import initialise
from crowdtune.store.writes import StoreWriter, write_outcome
from crowdtune.testing.faults import store_held_by_another_program
from crowdtune.testing.processes import wait_for
from tests.pages.conftest import open_page, page_text, rows, write


def rerun_fragments(at: AppTest) -> AppTest:
    """What the browser's run_every timers do: rerun the page's fragments alone, not the page."""
    fragment_ids = list(at._fragment_storage._fragments)  # registered by the page's last whole run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local_script_runner, "RerunData",
                      functools.partial(RerunData, fragment_id_queue=fragment_ids, is_auto_rerun=True))
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def store_reads(monkeypatch):
    """Counts of the store reads the live pages make, by the function that makes them (the real ones run)."""
    counts = {"latest_runs": 0, "metric_series": 0, "summary": 0, "getting_started": 0}

    def counted(module, name):
        real = getattr(module, name)

        @functools.wraps(real)
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    counted(views, "latest_runs")
    counted(views, "metric_series")
    counted(views, "getting_started")
    counted(runtime_status, "summary")
    return counts


def test_the_overview_s_timer_rerun_skips_the_store_until_the_change_counter_moves(populated_store, redis_conn,
                                                                                   store_reads):
    at = open_page()
    assert store_reads["latest_runs"] == 1  # the first render reads

    rerun_fragments(at)
    rerun_fragments(at)
    assert store_reads["latest_runs"] == 1  # nothing changed: drawn from what the first render kept
    assert "Imported post number 59" in page_text(at)

    write(populated_store, rows("runs", {"run_id": "run-c", "kind": "offline", "face_id": "tweets",
                                         "status": "running"}))
    changes.record_batch(redis_conn, {"runs"})  # as the store worker does after the batch
    rerun_fragments(at)
    assert store_reads["latest_runs"] == 2
    runs_table = next(df.value for df in at.dataframe if "kind" in df.value.columns)
    assert "run-c" in runs_table["run_id"].tolist()


def test_the_overview_s_first_steps_read_again_only_when_their_tables_changed(settings, redis_conn, store_reads):
    initialise(settings.store_path)
    write(settings, rows("faces", {"face_id": "tweets", "kind": "dataset", "config": {"source": "trump_tweets"}}))
    at = open_page()
    assert store_reads["getting_started"] == 1 and "First steps" in page_text(at)

    rerun_fragments(at)
    changes.record_batch(redis_conn, {"metrics", "runs"})  # tables the checklist does not read
    rerun_fragments(at)
    assert store_reads["getting_started"] == 1

    write(settings, rows("posts", {"post_id": "tweets:1", "face_id": "tweets", "origin": "imported",
                                   "status": "imported", "text": "an imported post"}))
    changes.record_batch(redis_conn, {"posts"})
    rerun_fragments(at)
    assert store_reads["getting_started"] == 2
    assert ":material/check_circle: **1. " in page_text(at)  # the import step is ticked


def test_the_metrics_charts_read_again_only_when_a_metrics_batch_landed(populated_store, redis_conn, store_reads):
    at = open_page("pages/metrics.py")
    first = store_reads["metric_series"]
    assert first >= 1 and len(at.get("plotly_chart")) == 3  # run-b's val_loss, train_loss, reward_mean

    rerun_fragments(at)
    changes.record_batch(redis_conn, {"runs", "posts"})  # other tables: the charts do not show them
    rerun_fragments(at)
    assert store_reads["metric_series"] == first
    assert len(at.get("plotly_chart")) == 3  # drawn again from what was kept

    changes.record_batch(redis_conn, {"metrics"})
    rerun_fragments(at)
    assert store_reads["metric_series"] == first + 1


def test_the_system_status_is_read_again_only_when_the_store_changed(populated_store, redis_conn, store_reads):
    at = open_page("pages/system.py")
    first = store_reads["summary"]
    rerun_fragments(at)
    rerun_fragments(at)
    assert store_reads["summary"] == first
    assert "schema v" in page_text(at)

    changes.record_batch(redis_conn, {"jobs"})
    rerun_fragments(at)
    assert store_reads["summary"] == first + 1


@pytest.fixture
def job_fetches(monkeypatch):
    from crowdtune.runtime import progress

    fetched = []
    real = progress.fetch_job

    def counted(conn, job_id):
        fetched.append(job_id)
        return real(conn, job_id)

    monkeypatch.setattr(progress, "fetch_job", counted)
    return fetched


def test_the_playground_asks_redis_about_a_sampling_job_only_until_it_is_done(populated_store, redis_conn,
                                                                              job_fetches):
    from crowdtune.runtime.queues import enqueue

    pending = enqueue(redis_conn, "default", "jobs.generate.sample_posts", "v2", None, 2, {}, []).id
    at = open_page("pages/playground.py", session={"playground_jobs": {"v2": pending, "(base model)": "gone-job"}})
    assert "The sampling job expired" in page_text(at) and "Sampling… (queued" in page_text(at)
    asked = job_fetches.count("gone-job")

    rerun_fragments(at)
    rerun_fragments(at)
    assert job_fetches.count("gone-job") == asked  # done: never asked again
    assert job_fetches.count(pending) >= 3  # still queued: asked at every tick
    assert "The sampling job expired" in page_text(at)


def test_every_page_says_writes_are_waiting_while_another_program_holds_the_store(settings, redis_conn, workers):
    # The holder is another process: a handle in this one would lose its lock when a page's read
    # detaches the file (DuckDB's locks belong to the process, see crowdtune.store.connection).
    initialise(settings.store_path)
    workers.start("--store", conn=redis_conn)
    with store_held_by_another_program(settings.store_path):
        write_id = StoreWriter(redis_conn).insert("runs", [{"run_id": "r", "kind": "offline", "status": "running"}])
        held = wait_for(lambda: changes.held(redis_conn), timeout=30, message="the held note")
        for page in ("pages/posts.py", "pages/settings.py"):  # pages without a live fragment of their own too
            text = page_text(open_page(page))
            assert f"Writes are waiting: the store file is held by another program since {held.since:%H:%M} UTC" \
                in text, page
    wait_for(lambda: write_outcome(redis_conn, write_id), timeout=60, message="the write to land")
    assert "Writes are waiting" not in page_text(open_page("pages/posts.py"))


def test_the_training_page_s_runs_skip_the_store_until_the_change_counter_moves(populated_store, redis_conn,
                                                                                store_reads):
    at = open_page("pages/training.py")
    first = store_reads["latest_runs"]  # the app's first run (the Overview) and the Training page's
    rerun_fragments(at)
    rerun_fragments(at)
    assert store_reads["latest_runs"] == first  # two timer reruns, no store read
    changes.record_batch(redis_conn, {"runs"})
    rerun_fragments(at)
    assert store_reads["latest_runs"] == first + 1
