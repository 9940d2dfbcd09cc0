"""The System page, rendered by Streamlit's AppTest against real Redis, workers and store."""

from streamlit.testing.v1 import AppTest

from crowdtune.runtime.queues import queue
from crowdtune.store.schema import SCHEMA_VERSION
from crowdtune.store.writer import initialise
from crowdtune.testing.processes import wait_for

APP = "../../app.py"


def render() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("pages/system.py")  # Overview is the default page now
    at.run()
    assert not at.exception, at.exception
    return at


def page_text(at: AppTest) -> str:
    parts = [e.value for e in at.markdown] + [e.value for e in at.error] + [e.value for e in at.info]
    parts += [e.value for e in at.warning] + [e.value for e in at.caption]
    parts += [str(m.value) + m.label for m in at.metric]
    parts += [df.value.to_string() for df in at.dataframe]
    return "\n".join(str(p) for p in parts)


def test_without_redis_the_page_says_what_is_wrong_and_how_to_fix_it(settings):
    at = render()
    text = page_text(at)
    assert "The embedded Redis is not running" in text
    assert "make run" in text
    assert "No store yet" in text


def test_with_redis_and_workers_the_page_lists_workers_queues_and_store(settings, redis_conn, workers):
    initialise(settings.store_path)
    store_worker = workers.start("--store", conn=redis_conn)
    name = f"store.{__import__('socket').gethostname()}.{store_worker.pid}"
    wait_for(lambda: redis_conn.hget(f"rq:worker:{name}", "crowdtune_rss_bytes"), timeout=30,
             message="the worker's first heartbeat with its figures")
    at = render()
    text = page_text(at)
    assert "reachable" in text
    assert name in text
    [row] = at.dataframe[0].value.query("worker == @name").to_dict("records")
    assert row["memory MB"] > 20 and row["CPU %"] >= 0  # a Python process with RQ and DuckDB loaded
    assert "posts" in text and f"schema v{SCHEMA_VERSION}" in text
    assert "No failed jobs." in text


def test_the_probe_button_enqueues_a_job_that_a_worker_runs(settings, redis_conn, workers):
    initialise(settings.store_path)
    at = render()
    at.button[0].click().run()
    default = queue("default", redis_conn)
    assert default.count == 1
    job_id = at.session_state["probe_job"]
    workers.start("--queues", "control,default", conn=redis_conn)
    wait_for(lambda: default.fetch_job(job_id).get_status(refresh=True).value == "finished", timeout=60,
             message="the probe job")
    at.run()
    shown = [j.value for j in at.json]
    assert shown and "torch" in str(shown[0])


def test_a_corrupt_store_is_reported_on_the_page(settings, redis_conn):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.store_path.write_bytes(b"not duckdb" * 50)
    text = page_text(render())
    assert "not a readable DuckDB database" in text
    assert settings.store_path.read_bytes() == b"not duckdb" * 50


def test_a_store_from_a_newer_crowdtune_is_reported_and_left_alone(settings, redis_conn):
    import duckdb

    initialise(settings.store_path)
    with duckdb.connect(str(settings.store_path)) as con:
        con.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION + 1])
    before = settings.store_path.read_bytes()
    text = page_text(render())
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this Crowdtune understands" in text
    assert "Upgrade Crowdtune" in text
    assert settings.store_path.read_bytes() == before
