"""Logs people can search: one JSON line per event with its run, face and job ids, in rotated files that
several processes share; `crowdtune logs` filters them and follows them as they grow."""

import json
import logging
import multiprocessing
import threading
import time

import pytest
from typer.testing import CliRunner

from crowdtune.cli import app
from crowdtune.runtime.logs import (
    EventFilter,
    bound_ids,
    configure_logging,
    follow_events,
    ids_of_job,
    log_files,
    read_events,
)
from crowdtune.testing.processes import wait_for

log = logging.getLogger("crowdtune.test")


@pytest.fixture
def logging_to(settings):
    """configure_logging for this test's data folder (as a process named `name`); undone at the end."""
    def configure(name: str, max_bytes: int = 1_000_000, backups: int = 5):
        return configure_logging(settings.log_dir, name, max_bytes, backups, console_level=None)

    yield configure
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_crowdtune", False)]:
        root.removeHandler(handler)
        handler.close()


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_line_carries_the_ids_bound_around_it_and_its_extra_fields(logging_to):
    path = logging_to("worker-1")
    with bound_ids(run_id="r1", face_id="sandbox", job_id="publish-r1-3"):
        log.info("published post %d", 3, extra={"platform_id": "sbx-9"})
        with bound_ids(post_id="r1:p3"):
            log.warning("slow")
    try:
        raise ValueError("bad \"input\"\nsecond line")
    except ValueError:
        log.exception("failed")

    first, second, third = lines_of(path)
    assert {k: first[k] for k in ("level", "process", "event", "run_id", "face_id", "job_id", "platform_id")} == {
        "level": "INFO", "process": "worker-1", "event": "published post 3", "run_id": "r1", "face_id": "sandbox",
        "job_id": "publish-r1-3", "platform_id": "sbx-9"}
    assert first["at"].endswith("Z") and "post_id" not in first
    assert second["post_id"] == "r1:p3" and second["level"] == "WARNING"
    assert "run_id" not in third and "ValueError: bad \"input\"\nsecond line" in third["error"]


def test_a_jobs_ids_come_from_its_arguments_by_name_and_its_meta(redis_conn):
    from crowdtune.runtime.queues import enqueue

    publish = enqueue(redis_conn, "default", "jobs.online.publish_post", "sandbox", "online-1", 4)
    update = enqueue(redis_conn, "train", "jobs.online.rl_update", "online-1-u2",
                     meta={"run_id": "online-1", "face_id": "sandbox"})

    assert ids_of_job(publish) == {"job_id": publish.id, "face_id": "sandbox", "run_id": "online-1"}
    assert ids_of_job(update) == {"job_id": update.id, "update_id": "online-1-u2", "run_id": "online-1",
                                  "face_id": "sandbox"}


def test_logs_merges_every_processs_file_by_time_and_filters_by_run_face_and_job(logging_to, settings):
    for process, run, face, job, event in [("worker-1", "r1", "a", "j1", "r1 first"),
                                           ("store-worker", "r2", "b", "j2", "r2 only"),
                                           ("worker-1", "r1", "a", "j3", "r1 second")]:
        logging_to(process)
        with bound_ids(run_id=run, face_id=face, job_id=job):
            log.info(event)
        time.sleep(0.002)  # lines a millisecond apart: the merge orders them by time

    runner = CliRunner()
    shown = runner.invoke(app, ["logs", "--run", "r1"])
    assert shown.exit_code == 0, shown.output
    assert [line.split("] ", 1)[1] for line in shown.output.splitlines()] == ["r1 first", "r1 second"]
    assert "INFO worker-1 [run=r1 face=a job=j1] r1 first" in shown.output
    as_json = runner.invoke(app, ["logs", "--face", "b", "--json"])
    assert [json.loads(line)["process"] for line in as_json.output.splitlines()] == ["store-worker"]
    assert runner.invoke(app, ["logs", "--job", "j3", "-n", "1"]).output.count("\n") == 1
    assert runner.invoke(app, ["logs", "-n", "2"]).output.splitlines()[0].endswith("r2 only")


def test_logs_without_any_log_names_the_folder_and_the_fix(settings):
    shown = CliRunner().invoke(app, ["logs"])
    assert shown.exit_code == 2
    assert f"There are no event logs in {settings.log_dir} yet." in shown.output


def _write_lines(log_dir, writer: str, count: int) -> None:
    configure_logging(log_dir, "worker-1", max_bytes=3000, backups=200, console_level=None)
    for i in range(count):
        logging.getLogger("crowdtune.test").info("%s line %d", writer, i)


def test_processes_sharing_a_file_lose_no_line_when_it_rotates(settings, logging_to):
    fork = multiprocessing.get_context("fork")  # as a worker forks its jobs
    children = [fork.Process(target=_write_lines, args=(settings.log_dir, f"p{n}", 150)) for n in range(2)]
    for child in children:
        child.start()
    _write_lines(settings.log_dir, "parent", 150)
    for child in children:
        child.join(timeout=60)

    events = read_events(settings.log_dir)
    assert len(log_files(settings.log_dir)) > 5  # it rotated many times
    for writer in ("parent", "p0", "p1"):
        assert [e["event"] for e in events if e["event"].startswith(writer + " ")] == [
            f"{writer} line {i}" for i in range(150)]


def test_only_the_kept_rotations_stay(settings, logging_to):
    logging_to("worker-1", max_bytes=2000, backups=2)
    for i in range(100):
        log.info("line %d", i)

    assert sorted(p.name for p in log_files(settings.log_dir)) == ["worker-1.jsonl", "worker-1.jsonl.1",
                                                                   "worker-1.jsonl.2"]
    kept = [int(e["event"].split()[1]) for e in read_events(settings.log_dir)]
    assert kept == list(range(100 - len(kept), 100))  # the newest lines, none missing


def test_follow_shows_new_lines_of_the_run_as_they_come_through_a_rotation_and_a_new_process(settings, logging_to):
    logging_to("worker-1", max_bytes=1500, backups=10)
    log.info("before following")
    seen, stop = [], threading.Event()
    follower = threading.Thread(target=lambda: seen.extend(
        e["event"] for e in follow_events(settings.log_dir, EventFilter(run_id="r1"), poll=0.05, stop=stop.is_set)))
    follower.start()
    try:
        time.sleep(0.5)  # the follower has found the files and their ends
        for i in range(30):  # enough to rotate worker-1.jsonl a few times
            with bound_ids(run_id="r1" if i % 2 == 0 else "r2"):
                log.info("event %d", i)
        logging_to("store-worker")  # a process that started after the follower
        with bound_ids(run_id="r1"):
            log.info("from the store worker")
        expected = [f"event {i}" for i in range(0, 30, 2)] + ["from the store worker"]
        wait_for(lambda: len(seen) >= len(expected), timeout=10, message="the followed lines")
    finally:
        stop.set()
        follower.join(timeout=10)
    assert seen == expected
    assert len(log_files(settings.log_dir)) > 2
