"""The Training page: faces, imports, offline and online training start and stop enqueue the right jobs."""

from crowdtune.dashboard.links import TrainingView, from_query_params, to_query_params
from crowdtune.runtime import stop_flags
from crowdtune.runtime.queues import queue
from crowdtune.store.reads import StoreReader, online_controller, online_run
from crowdtune.testing.processes import wait_for
from tests.pages.conftest import open_page, page_text, rows, write

PAGE = "pages/training.py"


def button(at, label):
    return next(b for b in at.button if b.label == label)


def save_face(at, name: str, kind: str, config_json: str):
    """Fill in the add-face form and submit it."""
    at.text_input[0].input(name)
    at.selectbox[0].set_value(kind)
    at.text_area[0].input(config_json)
    return button(at, "Save face").click().run()


def test_on_an_empty_store_the_page_says_to_add_a_face_first(settings):
    text = page_text(open_page(PAGE))
    assert "No faces yet: add one below" in text
    assert "Add a face and import its posts first." in text
    assert "To train online, add a face that can publish" in text


def test_adding_a_face_and_importing_it_enqueue_a_store_write_and_an_import_job(populated_store, redis_conn):
    at = save_face(open_page(PAGE), "tweets2", "dataset", '{"source": "hutto_tweets"}')
    assert "Face `tweets2` saved" in page_text(at)
    [write] = queue("store", redis_conn).jobs
    assert write.func_name == "jobs.store.apply_write"
    assert write.args[1] == [{"op": "upsert", "table": "faces", "rows": [
        {"face_id": "tweets2", "kind": "dataset", "config": {"source": "hutto_tweets"}}]}]

    at.selectbox[1].set_value("tweets")
    at.number_input[0].set_value(500)
    button(at, "Import").click().run()
    [job] = queue("control", redis_conn).jobs  # light work: it never waits behind training
    assert job.func_name == "jobs.imports.import_history"
    assert job.args == ["tweets"] and job.kwargs == {"limit": 500}


def test_a_face_config_holding_a_secret_is_refused(populated_store, redis_conn):
    at = save_face(open_page(PAGE), "masto", "mastodon", '{"token": "abc"}')
    assert "Remove token from the config" in page_text(at)
    assert queue("store", redis_conn).count == 0


def test_start_training_validates_the_form_and_enqueues_offline_training(populated_store, redis_conn):
    at = open_page(PAGE, query={"face": "tweets"})
    at.text_input(key="sft_max_steps").input("0")  # blank = auto (60 on a CPU); a number is kept
    button(at, "Start training").click().run()
    assert "Not started; fix these settings" in page_text(at) and "max_steps" in page_text(at)
    assert queue("train", redis_conn).count == 0

    at.text_input(key="sft_max_steps").input("12")
    at.number_input(key="sft_learning_rate").set_value(0.001)
    at.text_input(key="sft_max_epochs").input("2")
    button(at, "Start training").click().run()
    [job] = queue("train", redis_conn).jobs
    assert job.func_name == "jobs.offline.train_offline"
    run_id, face_id, config = job.args
    assert face_id == "tweets" and run_id == at.session_state["training_last_run"]
    assert config["max_steps"] == 12 and config["learning_rate"] == 0.001 and config["max_epochs"] == 2
    assert config["lora_rank"] == 8  # untouched fields keep SFTConfig's defaults
    assert job.kwargs == {"base_model": "smollm2-135m", "parent_version_id": None}
    assert at.query_params["face"] == "tweets"


def test_stop_asks_the_running_run_to_stop(populated_store, redis_conn):
    at = open_page(PAGE)
    assert not stop_flags.stop_requested(redis_conn, "run-b")
    at.button(key="stop_run-b").click().run()
    assert stop_flags.stop_requested(redis_conn, "run-b")
    assert "Stop requested" in page_text(at)


def assert_nothing_queued(conn):
    for name in ("store", "train", "default", "control"):
        assert queue(name, conn).count == 0, name


def test_the_online_form_refuses_a_bad_setting_and_names_it(populated_store, redis_conn):
    at = open_page(PAGE)
    at.number_input(key="online_interval_minutes").set_value(30)
    button(at, "Review and start").click().run()
    assert "Not started. Invalid online settings: interval 30 min is below the minimum gap 60 min" in page_text(at)
    assert not any(b.label == "Yes, start publishing" for b in at.button)

    at.number_input(key="online_interval_minutes").set_value(240)
    at.text_input(key="online_quiet_hours").input("[25, 7]")
    button(at, "Review and start").click().run()
    assert "quiet_hours: quiet hours [25, 7] must be hours of the day 0..23" in page_text(at)
    assert_nothing_queued(redis_conn)


def test_starting_online_training_asks_first_then_writes_run_and_controller_and_queues_the_tick(
        populated_store, redis_conn, workers):
    workers.start("--store", conn=redis_conn)
    reader = StoreReader(populated_store.store_path)
    at = open_page(PAGE)
    assert at.selectbox(key="online_face").value == "sandbox"  # the only face that can publish
    at.selectbox(key="online_algorithm").set_value("reinforce")
    at.number_input(key="online_interval_minutes").set_value(120)
    at.text_input(key="online_quiet_hours").input("[23, 7]")
    button(at, "Review and start").click().run()
    text = page_text(at)
    assert "This publishes." in text and "`sandbox` with reinforce posts to the simulated audience" in text
    assert "about every 120 min" in text and "never from 23:00 to 7:00 UTC" in text
    assert online_controller(reader, "sandbox") is None and queue("control", redis_conn).count == 0

    button(at, "Yes, start publishing").click().run()
    run_id = at.session_state["training_online_run"]
    assert f"Online run `{run_id}` started" in page_text(at)
    assert not any(b.label == "Yes, start publishing" for b in at.button)
    controller = wait_for(lambda: online_controller(reader, "sandbox"), message="the controller row")
    assert (controller["state"], controller["run_id"]) == ("ONLINE", run_id)
    assert controller["config"]["interval_minutes"] == 120 and controller["config"]["quiet_hours"] == [23, 7]
    run = online_run(reader, run_id)
    assert (run["kind"], run["face_id"], run["status"]) == ("online", "sandbox", "running")
    assert run["config"]["algorithm"] == "reinforce" and run["base_model"] == "smollm2-135m"
    [tick] = queue("control", redis_conn).jobs
    assert tick.func_name == "jobs.online.tick" and tick.args == ["sandbox"]


def test_the_online_form_defaults_to_guided_with_its_settings_and_keeps_the_changed_ones(populated_store, redis_conn,
                                                                                         workers):
    workers.start("--store", conn=redis_conn)  # the controls are on only while the store has its writer
    at = open_page(PAGE)
    assert at.selectbox(key="online_algorithm").value == "guided"
    assert at.number_input(key="online_guided_warm_start_steps").value == 8
    assert at.number_input(key="online_guided_diversity_floor").value == 0.8
    at.number_input(key="online_guided_warm_start_steps").set_value(3)
    at.number_input(key="online_guided_max_kl").set_value(0.5)
    button(at, "Review and start").click().run()
    pending = at.session_state["online_pending"]["config"]
    assert pending["algorithm"] == "guided"
    assert pending["algorithm_settings"] == {"warm_start_steps": 3, "max_kl": 0.5}  # only what was changed
    # the run it is about to start, as a run file for `crowdtune train online --config`
    from streamlit.runtime.memory_media_file_storage import _calculate_file_id

    from crowdtune.online.controller import OnlineConfig
    from crowdtune.training.run_files import RunKind, RunRequest, parse_run_file, run_file_text

    text = run_file_text(RunRequest(RunKind.ONLINE, OnlineConfig(**pending), "sandbox"))
    assert _calculate_file_id(text.encode(), "application/toml", "online-run.toml") in \
        at.download_button(key="online_run_file").proto.url
    assert parse_run_file(text, "online").config.model_dump(mode="json") == pending
    at.selectbox(key="online_algorithm").set_value("reinforce").run()  # the settings follow the algorithm
    assert at.number_input(key="online_reinforce_window").value == 64
    assert not any(n.key == "online_guided_warm_start_steps" for n in at.number_input)


def test_the_page_shows_each_online_face_with_its_counts_and_updates(online_store):
    text = page_text(open_page(PAGE))
    assert "**sandbox** is ONLINE (run `online-1`): 3 published, 1 scored, 1 RL update." in text
    assert "online-1-u1" in text and "completed" in text
    assert "`sandbox` is ONLINE: stop it (below) before starting another online run." in text
    # Online runs stop through their face: no offline progress bar or stop button for them.
    assert "`online-1` on sandbox" not in text


def test_stop_asks_first_then_moves_the_online_controller_to_stopping(online_store, redis_conn, workers):
    workers.start("--store", conn=redis_conn)
    reader = StoreReader(online_store.settings.store_path)
    at = open_page(PAGE)
    at.button(key="stop_online_sandbox").click().run()
    assert "Stop requested for `sandbox`" in page_text(at)
    wait_for(lambda: online_controller(reader, "sandbox")["state"] == "STOPPING", message="the controller to stop")
    assert stop_flags.stop_requested(redis_conn, "online-1")
    [tick] = queue("control", redis_conn).jobs
    assert tick.func_name == "jobs.online.tick" and tick.args == ["sandbox"]


def test_a_read_only_session_can_neither_start_nor_stop_online_training(online_store, redis_conn, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_LOGIN_PASSWORD", "correct horse")
    at = open_page(PAGE, session={"online_pending": {"face": "sandbox", "config": {"algorithm": "reinforce"}}})
    assert "Read-only: log in" in page_text(at)
    for find in (lambda: button(at, "Review and start"), lambda: at.button(key="online_confirm"),
                 lambda: at.button(key="stop_online_sandbox")):
        target = find()
        assert target.disabled, target.label
        target.proto.disabled = False  # forge the click a browser could not make: it still changes nothing
        target.click().run()
        assert not at.exception
    assert_nothing_queued(redis_conn)
    assert not stop_flags.stop_requested(redis_conn, "online-1")


def test_the_face_to_train_online_round_trips_through_the_link(populated_store):
    write(populated_store, rows("faces", {"face_id": "sandbox2", "kind": "sandbox", "config": {}}))
    at = open_page(PAGE, query={"online_face": "sandbox2"})
    assert at.selectbox(key="online_face").value == "sandbox2"
    assert at.query_params["online_face"] == "sandbox2"
    at.selectbox(key="online_face").set_value("sandbox").run()
    assert at.query_params["online_face"] == "sandbox"
    view = TrainingView(face="tweets", online_face="sandbox2")
    assert from_query_params(TrainingView, to_query_params(view)) == view


def test_the_offline_form_says_what_a_run_will_cost_from_the_speed_a_version_measured(populated_store):
    from crowdtune.training.configs import SFTConfig
    from tests.pages.conftest import NOW

    at = open_page(PAGE)
    assert any("Cost before it starts" in c.value and "(a default)" in c.value for c in at.caption)

    write(populated_store, rows("model_versions", {
        "version_id": "v3", "run_id": "run-c", "base_model": "smollm2-135m", "artifact_url": "/a/v3", "step": 60,
        "metrics": {"val_loss": 2.0, "tokens_per_second": 512.0, "eval_seconds": 30.0}, "created_at": NOW}))
    cost = next(c.value for c in open_page(PAGE).caption if "Cost before it starts" in c.value)
    config = SFTConfig().resolved()  # the form's defaults, as a CPU worker resolves them
    tokens = config.batch_size * config.block_size * config.accumulate_grad_batches
    minutes = (60 + config.max_steps * tokens / 512.0 + config.max_steps // config.eval_every * 30.0) / 60
    assert f"about **{minutes:.0f} min** on the CPU" in cost
    assert f"{config.max_steps} steps x {tokens:,} tokens at 512 tokens/s (measured by `v3`)" in cost


def test_the_run_file_the_page_offers_is_the_run_it_starts(populated_store, redis_conn):
    from streamlit.runtime.memory_media_file_storage import _calculate_file_id

    from crowdtune.training.run_files import parse_run_file

    at = open_page(PAGE, query={"face": "tweets"})
    at.text_input(key="sft_max_steps").input("12")
    at.number_input(key="sft_learning_rate").set_value(0.001)
    at.text_input(key="sft_grad_clip").input("")  # blank = None (no clipping): "none" in the file
    button(at, "Settings as a run file").click().run()
    assert queue("train", redis_conn).count == 0  # nothing starts
    text = at.session_state["training_offline_run_file"]
    # the button serves exactly these bytes (Streamlit names a download by the hash of its content)
    assert _calculate_file_id(text.encode(), "application/toml", "offline-run.toml") in \
        at.download_button(key="offline_run_file").proto.url

    button(at, "Start training").click().run()
    [job] = queue("train", redis_conn).jobs
    request = parse_run_file(text, "offline")  # what `crowdtune train offline --config` reads
    assert request.config.model_dump(mode="json") == job.args[2]
    assert request.config.grad_clip is None and request.config.max_steps == 12
    assert (request.face, request.base_model, request.parent_version) == (
        job.args[1], job.kwargs["base_model"], job.kwargs["parent_version_id"])


def test_the_forms_start_from_the_base_model_the_settings_name(populated_store, redis_conn, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_BASE_MODEL", "/models/my-base")  # e.g. a bigger model on a GPU machine
    at = open_page(PAGE, query={"face": "tweets"})
    assert at.text_input(key="online_base_model").value == "/models/my-base"  # the sandbox has no version yet
    button(at, "Start training").click().run()
    [job] = queue("train", redis_conn).jobs
    assert job.kwargs["base_model"] == "/models/my-base"
