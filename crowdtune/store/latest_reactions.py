"""posts.latest_reactions: each post's latest count per reaction kind, kept by the store writer.

The Posts page lists a page of posts with their latest likes, reposts ...; reading them from
`reaction_snapshots` costs a lookup per post, and on a read-only open (which decompresses what it
touches afresh) 25 scattered lookups cost about as much as the rest of the page. So the writer
keeps them on the post, as JSON ({"likes": 12, "reposts": 3}): after every batch that touches
posts or snapshots it recomputes them, from the snapshots, for the posts touched, in the batch's
transaction. Recomputed, never incremented: a re-written snapshot or a post written after its
snapshots cannot leave it stale.
"""

from __future__ import annotations

import duckdb

# The latest count of each kind (the snapshot observed last) of the posts in {posts}.
_UPDATE = """
    UPDATE posts SET latest_reactions = l.counts
    FROM (SELECT post_id, json_group_object(kind, count) AS counts
          FROM (SELECT post_id, kind, arg_max(count, observed_at) AS count FROM reaction_snapshots
                {where} GROUP BY post_id, kind)
          GROUP BY post_id) l
    WHERE posts.post_id = l.post_id
"""

BACKFILL_SQL = "ALTER TABLE posts ADD COLUMN latest_reactions JSON;" + _UPDATE.format(where="") + ";"


_MARKS = "CREATE TEMP TABLE IF NOT EXISTS _reaction_marks (post_id VARCHAR)"


def mark(con: duckdb.DuckDBPyConnection, post_ids_sql: str, params=None) -> None:
    """Record the posts whose ids `post_ids_sql` selects (one column) for refresh."""
    con.execute(_MARKS)
    con.execute(f"INSERT INTO _reaction_marks {post_ids_sql}", params or [])


def refresh(con: duckdb.DuckDBPyConnection) -> None:
    """Recompute latest_reactions of the posts marked since the last refresh (if any), then forget
    the marks. Call inside the batch's transaction, after its operations."""
    con.execute(_MARKS)  # a batch may touch posts without marking any (an update of their status)
    if not con.execute("SELECT count(*) FROM _reaction_marks").fetchone()[0]:
        con.execute("DROP TABLE _reaction_marks")
        return
    con.execute(_UPDATE.format(where="WHERE post_id IN (SELECT post_id FROM _reaction_marks)"))
    con.execute("UPDATE posts SET latest_reactions = NULL WHERE post_id IN (SELECT post_id FROM _reaction_marks) "
                "AND latest_reactions IS NOT NULL AND post_id NOT IN (SELECT post_id FROM reaction_snapshots)")
    con.execute("DROP TABLE _reaction_marks")
