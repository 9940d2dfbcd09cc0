"""Bad input at the command line: each gives a message naming the problem and the fix, no traceback."""

import socket
import subprocess
import sys

import duckdb
import pytest

from crowdtune.store.schema import SCHEMA_VERSION
from crowdtune.store.writer import initialise
from crowdtune.testing.processes import free_port


def crowdtune(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "crowdtune.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_clear(result, *phrases):
    assert result.returncode != 0
    out = result.stdout + result.stderr
    for phrase in phrases:
        assert phrase in out, out
    assert "Traceback" not in out, out


def test_an_unreachable_redis_url_is_named_with_its_password_masked(data_dir, monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    status = crowdtune("status")
    assert_clear(status, "Cannot reach Redis at redis://:***@127.0.0.1:1/0", "Fix:")
    assert "hunter2" not in status.stdout + status.stderr
    worker = crowdtune("worker", "--queues", "control,default")
    assert_clear(worker, "Cannot reach Redis", "REDIS_URL")
    assert worker.returncode == 2
    up = crowdtune("up", "--port", str(free_port()))
    assert_clear(up, "Cannot reach Redis")
    assert "hunter2" not in up.stdout + up.stderr


def test_no_embedded_redis_running_says_how_to_start_it(data_dir):
    assert_clear(crowdtune("worker"), "The embedded Redis is not running", "make run")


def test_a_corrupt_store_is_reported_and_kept(data_dir):
    data_dir.mkdir(parents=True)
    db = data_dir / "crowdtune.duckdb"
    db.write_bytes(b"garbage" * 100)
    assert_clear(crowdtune("store", "init"), "not a readable DuckDB database", "Move")
    assert_clear(crowdtune("status"), "not a readable DuckDB database")
    assert db.read_bytes() == b"garbage" * 100


def test_a_newer_schema_is_refused(data_dir):
    db = data_dir / "crowdtune.duckdb"
    initialise(db)
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION + 1])
    con.close()
    assert_clear(crowdtune("store", "init"), "newer than this Crowdtune", "Upgrade")


def test_a_data_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(blocker / "data"))
    assert_clear(crowdtune("up", "--port", str(free_port())), "cannot be written", "CROWDTUNE_DATA_DIR")
    assert blocker.read_text() == "not a folder"


def test_a_port_in_use_is_named_with_how_to_pick_another(data_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_clear(crowdtune("up", "--port", str(port)), f"Port {port} is already in use", "--port")


@pytest.mark.parametrize("env, phrase", [
    ({"CROWDTUNE_APP_PORT": "99999"}, "app_port"),
    ({"CROWDTUNE_WORKER_QUEUES": '["train,store"]'}, "worker_queues"),
])
def test_invalid_settings_name_the_setting(data_dir, monkeypatch, env, phrase):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert_clear(crowdtune("status"), "Invalid settings", phrase)


def test_a_broken_config_file_is_named(data_dir, tmp_path, monkeypatch):
    config = tmp_path / "crowdtune.toml"
    config.write_text("app_port = [unclosed")
    monkeypatch.setenv("CROWDTUNE_CONFIG", str(config))
    assert_clear(crowdtune("status"), "Could not read settings", str(config))


def test_generate_latest_before_any_version_says_to_train_one_first(data_dir):
    assert_clear(crowdtune("generate", "--version", "latest"), "There is no model version yet",
                 "crowdtune train offline --face tweets")
