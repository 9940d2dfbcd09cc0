"""posts.latest_reactions stays each post's latest count per kind, whatever order things are written in."""

import datetime as dt
import json

from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import apply_write

START = dt.datetime(2026, 1, 1)


def post(post_id):
    return {"post_id": post_id, "face_id": "f", "origin": "imported", "status": "imported", "text": post_id,
            "created_at": START}


def snapshot(post_id, hours, kind, count):
    return {"post_id": post_id, "observed_at": START + dt.timedelta(hours=hours), "kind": kind, "count": count,
            "age_seconds": hours * 3600}


def held(reader: StoreReader) -> dict:
    return {post_id: json.loads(counts) if counts else None
            for post_id, counts in reader.rows("SELECT post_id, latest_reactions FROM posts ORDER BY post_id")}


def from_snapshots(reader: StoreReader) -> dict:
    """Each post's latest count per kind, read from the snapshots themselves."""
    latest = {post_id: None for post_id, in reader.rows("SELECT post_id FROM posts")}
    for post_id, kind, count in reader.rows(
            "SELECT post_id, kind, arg_max(count, observed_at) FROM reaction_snapshots "
            "WHERE post_id IN (SELECT post_id FROM posts) GROUP BY ALL"):
        latest[post_id] = {**(latest[post_id] or {}), kind: count}
    return latest


def test_latest_reactions_follow_every_kind_of_write(tmp_path):
    path = tmp_path / "s.duckdb"
    reader = StoreReader(path)
    batches = [
        ("a", [{"op": "insert", "table": "posts", "rows": [post("p1"), post("p2")]},
               {"op": "insert", "table": "reaction_snapshots", "rows": [
                   snapshot("p1", 1, "likes", 3), snapshot("p1", 6, "likes", 9), snapshot("p1", 1, "reposts", 1)]}]),
        # snapshots of a post not written yet, then the post
        ("b", [{"op": "insert", "table": "reaction_snapshots", "rows": [snapshot("p3", 1, "likes", 5)]}]),
        ("c", [{"op": "upsert", "table": "posts", "rows": [post("p3")]}]),
        # an older snapshot arriving late changes nothing; a newer one does
        ("d", [{"op": "insert", "table": "reaction_snapshots", "rows": [
            snapshot("p1", 3, "likes", 100), snapshot("p1", 24, "reposts", 4)]}]),
        # a re-written snapshot, and one moved to another post
        ("e", [{"op": "upsert", "table": "reaction_snapshots", "rows": [snapshot("p1", 6, "likes", 11)]},
               {"op": "update", "table": "reaction_snapshots", "where": {"post_id": "p3", "kind": "likes"},
                "set": {"post_id": "p2"}}]),
        # what publishing does: a post's status changes, nothing else (no snapshot, no post id)
        ("f", [{"op": "update", "table": "posts", "where": {"post_id": "p1"}, "set": {"status": "published"}},
               {"op": "insert", "table": "reaction_snapshots", "rows": []}]),
    ]
    for write_id, ops in batches:
        apply_write(path, write_id, ops, 5)
        assert held(reader) == from_snapshots(reader)
    assert held(reader) == {"p1": {"likes": 11, "reposts": 4}, "p2": {"likes": 5}, "p3": None}
