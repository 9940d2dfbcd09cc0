"""`crowdtune review`: list, approve, reject, edit and pick, each through the store queue, once."""

from __future__ import annotations

from typer.testing import CliRunner

from crowdtune.cli import app
from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import apply_write, initialise
from crowdtune.store.writes import utc_now
from crowdtune.testing.processes import wait_for


def waiting(slot: int, text: str, **values) -> dict:
    return {"post_id": f"run:p{slot}", "face_id": "masto", "origin": "generated", "status": "awaiting_review",
            "run_id": "run", "publish_slot": slot, "intent_id": f"run:{slot}", "text": text, "inserted_at": utc_now(),
            **values}


def test_each_review_subcommand_does_what_it_says(settings, redis_conn, workers):
    initialise(settings.store_path)
    posts = [waiting(0, "first"), waiting(1, "second"), waiting(2, "third"), waiting(3, "fourth"),
             {**waiting(3, "a candidate of the fourth"), "post_id": "run:p3c1", "status": "candidate",
              "intent_id": None, "candidate_of": "run:p3"}]
    apply_write(settings.store_path, "fixture", [
        {"op": "upsert", "table": "faces", "rows": [{"face_id": "masto", "kind": "mastodon", "config": {}}]},
        {"op": "upsert", "table": "posts", "rows": posts}], 10)
    workers.start("--store", conn=redis_conn)
    cli, reader = CliRunner(), StoreReader(settings.store_path)

    listed = cli.invoke(app, ["review", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.index("run:p0") < listed.output.index("run:p3") and "candidate run:p3c1" in listed.output
    for args in (["approve", "run:p0"], ["reject", "run:p1"], ["edit", "run:p2", "third, edited"],
                 ["pick", "run:p3", "run:p3c1"]):
        result = cli.invoke(app, ["review", *args])
        assert result.exit_code == 0, result.output
    again = cli.invoke(app, ["review", "approve", "run:p1"])
    assert again.exit_code == 2 and "does not wait for review: it is rejected" in again.output

    wait_for(lambda: reader.scalar("SELECT count(*) FROM review_decisions") == 4, message="four decisions")
    status = dict(reader.rows("SELECT post_id, status FROM posts"))
    assert status == {"run:p0": "approved", "run:p1": "rejected", "run:p2": "approved", "run:p3": "candidate",
                      "run:p3c1": "approved"}
    assert reader.rows("SELECT action, decided_by, original_text, text FROM review_decisions ORDER BY post_id") == [
        ("approve", "cli", "first", "first"), ("reject", "cli", "second", "second"),
        ("edit", "cli", "third", "third, edited"), ("pick", "cli", "fourth", "a candidate of the fourth")]
    assert cli.invoke(app, ["review", "list"]).output.strip() == "Nothing waits for review."
