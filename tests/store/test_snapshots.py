"""A face's posts reach jobs as a Parquet snapshot under artifacts_url: Redis carries a URL, not the posts."""

import datetime as dt
import json
import threading

import fsspec
import pytest

from crowdtune.runtime.queues import queue
from crowdtune.settings import QUEUE_STORE, load_settings
from crowdtune.store.snapshots import KEEP, read_snapshot, snapshot_folder
from crowdtune.store.writer import apply_write, initialise
from crowdtune.store.writes import upsert_op
from crowdtune.testing.processes import wait_for
from jobs.store import read_named, snapshot_named

FACE = {"face_id": "tweets"}


def add_posts(settings, count: int, start: int = 0) -> None:
    """`count` imported posts of the face `tweets` (every third without a score), from number `start` on."""
    initialise(settings.store_path)
    created = dt.datetime(2026, 11, 1)
    rows = [{"post_id": f"tweets:{i}", "face_id": "tweets", "origin": "imported", "status": "imported",
             "text": f"Post number {i}, with a comma, a quote \" and ünïcode",
             "created_at": created + dt.timedelta(hours=i),
             "score": None if i % 3 == 0 else i / 7} for i in range(start, start + count)]
    apply_write(settings.store_path, f"posts-{start}-{count}", [upsert_op("posts", rows)], wait_seconds=30)


def everything_in(conn) -> bytes:
    """Every value Redis holds, as bytes (keys of each type read in full)."""
    out = []
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        if kind == "string":
            out.append(conn.get(key))
        elif kind == "hash":
            out += [b"".join(kv) for kv in conn.hgetall(key).items()]
        elif kind == "list":
            out += conn.lrange(key, 0, -1)
        elif kind in ("set", "zset"):
            out += list(conn.smembers(key)) if kind == "set" else conn.zrange(key, 0, -1)
        elif kind == "stream":
            out += [b"".join(b"".join(kv) for kv in fields.items()) for _, fields in conn.xrange(key)]
    return b"\n".join(out)


def test_training_posts_travel_as_a_url_and_read_back_as_the_json_answer_did(settings, tmp_path):
    add_posts(settings, 120)

    answer = snapshot_named("training_posts", FACE)

    assert answer["rows"] == 120 and answer["url"].endswith(".parquet")
    assert len(json.dumps(answer)) < 300  # all that goes through Redis
    before = read_named("training_posts", FACE)  # what the answer through Redis was
    assert read_snapshot(answer, tmp_path / "cache") == before
    assert before[0]["score"] is None and before[1]["score"] == pytest.approx(1 / 7)


def test_an_unchanged_answer_is_not_written_again_and_only_the_newest_snapshots_stay(settings):
    add_posts(settings, 10)
    first = snapshot_named("training_posts", FACE)
    fs, path = fsspec.core.url_to_fs(first["url"])
    written_at = fs.modified(path)
    assert snapshot_named("training_posts", FACE) == first and fs.modified(path) == written_at

    urls = [first["url"]]
    for n in range(KEEP + 1):  # each import changes the answer: a new file
        add_posts(settings, 1, start=100 + n)
        urls.append(snapshot_named("training_posts", FACE)["url"])

    kept = sorted(fs.glob(snapshot_folder(settings.artifacts, "training_posts", FACE) + "/*.parquet"))
    assert len(set(urls)) == KEEP + 2 and kept == sorted(fsspec.core.url_to_fs(u)[1] for u in urls[-KEEP:])


def test_a_remote_artifacts_url_is_read_once_into_the_workers_cache(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("CROWDTUNE_ARTIFACTS_URL", f"memory://{tmp_path.name}")  # one per test: memory:// is global
    add_posts(settings, 30)
    answer = snapshot_named("training_posts", FACE)
    assert answer["url"].startswith(f"memory://{tmp_path.name}/snapshots/training_posts/face_id=tweets/")

    rows = read_snapshot(answer, tmp_path / "cache")
    fsspec.filesystem("memory").rm(fsspec.core.url_to_fs(answer["url"])[1])  # gone remotely: the copy is as good

    assert read_snapshot(answer, tmp_path / "cache") == rows == read_named("training_posts", FACE)
    assert len(list((tmp_path / "cache").rglob("*.parquet"))) == 1


def test_an_artifacts_folder_that_cannot_be_written_sends_the_rows_in_the_answer(settings, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the artifacts folder should be")
    monkeypatch.setenv("CROWDTUNE_ARTIFACTS_URL", str(blocker))
    add_posts(settings, 5)

    answer = snapshot_named("training_posts", FACE)

    assert answer["rows"] == 5 and "url" not in answer
    assert read_snapshot(answer, tmp_path / "cache") == read_named("training_posts", FACE)


def test_a_job_reads_a_faces_posts_through_the_store_worker_and_redis_keeps_none(settings, redis_conn):
    from crowdtune.runtime.workers import StoreWorker
    from crowdtune.store.remote import read_rows_via_store_worker

    add_posts(settings, 200)
    got = []
    asker = threading.Thread(target=lambda: got.append(
        read_rows_via_store_worker(redis_conn, "training_posts", timeout=60, face_id="tweets")))
    asker.start()
    wait_for(lambda: queue(QUEUE_STORE, redis_conn).count == 1, timeout=10, message="the read to be queued")

    StoreWorker([queue(QUEUE_STORE, redis_conn)], connection=redis_conn).work(burst=True)
    asker.join(timeout=30)

    assert got == [read_named("training_posts", FACE)]
    assert b"Post number" not in everything_in(redis_conn)
    assert load_settings().data_dir.joinpath("cache").exists() is False  # a local artifacts folder is read in place
