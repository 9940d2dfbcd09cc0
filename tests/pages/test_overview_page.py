"""The Overview page (the default page): training state, progress, alerts, posts, metrics, health."""

from crowdtune import actions
from crowdtune.runtime.queues import enqueue
from crowdtune.store import views
from crowdtune.store.reads import StoreReader
from crowdtune.testing.processes import wait_for
from tests.pages.conftest import open_page, page_text


def test_the_overview_is_the_default_page_and_explains_an_empty_installation(settings):
    text = page_text(open_page())
    assert "Overview" in text
    assert "The embedded Redis is not running" in text and "make run" in text
    assert "No store yet" in text
    assert "No training runs yet" in text
    assert "No posts yet: import a dataset on the Training page" in text
    assert "No face trains online. Start it on the Training page" in text


def test_the_overview_shows_the_running_job_s_progress_alerts_posts_and_charts(populated_store, redis_conn):
    enqueue(redis_conn, "train", "jobs.offline.train_offline", "run-b", "tweets", {}, job_id="run-b",
            meta={"progress": {"step": 50, "total": 200, "loss": 2.25, "eta_seconds": 600}})
    at = open_page()
    text = page_text(at)
    assert "Reactions are 3 hours late" in text
    assert "No worker is alive" in text
    progress = at.get("progress")
    assert progress and "`run-b` (tweets): step 50/200, ETA 10.0 min, loss 2.250" in progress[0].proto.text
    assert progress[0].proto.value == 25
    assert "Imported post number 59" in text
    assert len(at.get("plotly_chart")) == 3  # score per day, val_loss, reward_mean
    # The generated posts' scores apart from the imported history's (which spans other years).
    score_chart = at.get("plotly_chart")[0].proto.spec
    assert "Generated posts: mean score per day" in score_chart and '"imported"' not in score_chart
    assert "Imported history (" in text and "is left out of this chart" in text
    # What matters first: the score and the reactions before the text.
    latest = next(df.value for df in at.dataframe if "text" in df.value.columns and "score" in df.value.columns)
    assert list(latest.columns[:1]) == ["score"] and list(latest.columns).index("text") > 1


def test_the_overview_shows_what_a_run_does_now_and_that_it_is_stopping_after_stop(populated_store, redis_conn,
                                                                                   workers):
    enqueue(redis_conn, "train", "jobs.offline.train_offline", "run-b", "tweets", {}, job_id="run-b",
            meta={"progress": {"step": 20, "total": 60, "loss": 2.5, "eta_seconds": 252,
                               "phase": "evaluating: sampling 8 posts"}})
    at = open_page()
    (bar,) = at.get("progress")
    assert bar.proto.text == "`run-b` (tweets): step 20/60, evaluating: sampling 8 posts, ETA 4.2 min, loss 2.500"
    assert next(m for m in at.metric if m.label == "Running runs").value == "1"

    workers.start("--store", conn=redis_conn)
    actions.stop_run(redis_conn, "run-b")  # what the Training page's Stop does
    reader = StoreReader(populated_store.store_path)
    wait_for(lambda: reader.scalar("SELECT status FROM runs WHERE run_id = 'run-b'") == "stopping",
             message="the run to be stopping")
    at.run()
    (bar,) = at.get("progress")
    assert bar.proto.text.startswith("`run-b` (tweets) is stopping (asked ")
    assert ("s ago): it saves a checkpoint and a version, then ends as `stopped`. "
            "Now: evaluating: sampling 8 posts (step 20/60).") in bar.proto.text
    assert next(m for m in at.metric if m.label == "Running runs").value == "1"  # still running until it saved
    assert "stopping" in next(df.value for df in at.dataframe if "run_id" in df.value.columns
                              and "kind" in df.value.columns).set_index("run_id").loc["run-b", "status"]


def test_the_overview_shows_each_online_face_s_state_next_post_next_reaction_read_and_metrics(online_store):
    at = open_page()
    table = next(df.value for df in at.dataframe if "next post" in df.value.columns)
    row = table.set_index("face").loc["sandbox"]
    assert (row["state"], row["run"]) == ("ONLINE", "online-1")
    assert row["next post"].startswith(f"{online_store.next_post_at:%Y-%m-%d %H:%M} UTC (in 3 h ")
    assert row["next reaction read"].startswith(
        f"{online_store.next_reaction_post} at {online_store.next_reaction_at:%Y-%m-%d %H:%M} UTC (in ")
    assert (row["published"], row["scored"], row["updates"]) == (3, 1, 1)
    # The online run has no job progress: it is not drawn as a training run without progress.
    assert not any("online-1" in p.proto.text for p in at.get("progress"))
    assert len(at.get("plotly_chart")) == 4  # score per day, val_loss, reward_mean, score_mean


def test_an_alert_and_a_failed_import_show_their_problem_and_a_dismissal_is_stored_until_the_message_changes(
        populated_store, redis_conn, workers):
    from tests.pages.conftest import rows, run_queued_jobs, write

    # What a new user met: a Mastodon face without a token, imported; the failure said only "Fix: ...".
    write(populated_store, rows("faces", {"face_id": "masto", "kind": "mastodon", "config": {}}))
    workers.start("--store", conn=redis_conn)
    job = actions.start_import(redis_conn, "masto")
    run_queued_jobs(redis_conn)
    assert job.get_status(refresh=True).value == "failed"
    at = open_page()
    text = page_text(at)
    assert "Reactions are 3 hours late" in text
    assert "The Mastodon face has no access token. Fix: Create a new token" in text
    assert next(m for m in at.metric if m.label == "Open alerts").value == "2"

    at.button(key="dismiss-a1").click().run()
    assert "Reactions are 3 hours late" not in page_text(at)  # hidden at once
    at.button(key="dismiss-failed-jobs").click().run()
    assert "no access token" not in page_text(at) and "Nothing needs attention" in page_text(at)

    reader = StoreReader(populated_store.store_path)
    wait_for(lambda: reader.scalar("SELECT count(*) FROM alert_dismissals") == 2, message="the dismissals stored")
    dismissed = reader.rows("SELECT alert_id, message, dismissed_by FROM alert_dismissals ORDER BY alert_id")
    assert dismissed == [
        ("a1", "Reactions are 3 hours late", "dashboard"),
        (f"job:{job.id}", "faces.base.FaceConfigError: The Mastodon face has no access token. Fix: "
                          "Create a new token with scopes read write (Preferences > Development) and save it on "
                          "the Settings page (or set CROWDTUNE_FACE_<NAME>_TOKEN or CROWDTUNE_MASTODON_TOKEN).",
         "dashboard")]
    # Every session reads the alerts through open_alerts: dismissed ones stay out, until raised with news.
    assert views.open_alerts(reader).empty
    assert views.dismissed_alerts(reader, [f"job:{job.id}", "job:other"]) == {(f"job:{job.id}", dismissed[1][1])}
    write(populated_store, rows("alerts", {"alert_id": "a1", "level": "warning", "source": "collector",
                                           "message": "Reactions are 9 hours late"}))
    assert views.open_alerts(reader)["message"].tolist() == ["Reactions are 9 hours late"]
