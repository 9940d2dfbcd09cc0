"""A planted token is used by a real import on a real worker, then searched for everywhere."""

from crowdtune import actions
from crowdtune.store.connection import open_for_read
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import initialise
from crowdtune.testing.processes import wait_for
from tests.faces.test_mastodon import TOKEN, FakeMastodon


def everything_in_redis(conn) -> str:
    parts = []
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        parts.append(key.decode(errors="replace"))
        if kind == "string":
            parts.append(conn.get(key).decode(errors="replace"))
        elif kind == "hash":
            parts += [f"{k!r}={v!r}" for k, v in conn.hgetall(key).items()]
        elif kind == "list":
            parts += [v.decode(errors="replace") for v in conn.lrange(key, 0, -1)]
        elif kind == "set":
            parts += [v.decode(errors="replace") for v in conn.smembers(key)]
        elif kind == "zset":
            parts += [v.decode(errors="replace") for v in conn.zrange(key, 0, -1)]
        elif kind == "stream":
            parts += [repr(entry) for entry in conn.xrange(key)]
    return "\n".join(parts)


def everything_in_store(path) -> str:
    with open_for_read(path, wait_seconds=10) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        return "\n".join(str(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)


def test_a_planted_token_never_reaches_redis_the_store_or_the_logs(settings, redis_conn, workers, fake_api,
                                                                   monkeypatch):
    FakeMastodon(fake_api)
    monkeypatch.setenv("CROWDTUNE_MASTODON_TOKEN", TOKEN)  # the workers' environment, as in production
    initialise(settings.store_path)
    workers.start_together(("--store",), ("--queues", "control,default"), conn=redis_conn)
    actions.save_face(redis_conn, "masto", "mastodon", {"api_base_url": fake_api.url})
    job = actions.start_import(redis_conn, "masto")
    wait_for(lambda: job.get_status(refresh=True).value in ("finished", "failed"), timeout=120, message="the import")
    assert job.latest_result().return_value["imported"] == 5, job.latest_result().exc_string
    reader = StoreReader(settings.store_path)
    wait_for(lambda: reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'masto'") == 5, timeout=60,
             message="the imported posts")

    assert TOKEN not in everything_in_redis(redis_conn)       # job arguments, results, meta, queues
    assert TOKEN not in everything_in_store(settings.store_path)  # faces, posts, metrics, job audit
    assert TOKEN not in workers.logs()


def test_a_token_in_a_face_config_is_refused_before_it_is_stored(settings, redis_conn):
    import pytest

    from crowdtune.errors import SettingsError

    with pytest.raises(SettingsError) as err:
        actions.save_face(redis_conn, "masto", "mastodon", {"api_base_url": "https://x.example", "token": TOKEN})
    assert "must not contain secrets" in err.value.problem
    assert TOKEN not in str(err.value)
    assert TOKEN not in everything_in_redis(redis_conn)
