"""The exact accounting after a run of the real system: nothing lost, nothing doubled.

`account(settings)` counts everything in the store, the sandbox faces' folders and the artifacts,
and checks that it adds up: generated = published + rejected + failed, nothing stuck in
`publishing`, every published post has reaction snapshots, every model version loads, every sandbox
post is a published row and the other way round, and no table has two rows with one primary key.
The fault tests (tests/reliability/) call it after each fault, benchmarks/soak.py at its end.
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem
from rq.registry import ScheduledJobRegistry, StartedJobRegistry

from crowdtune.runtime.queues import queue
from crowdtune.store.reads import StoreReader
from crowdtune.store.schema import TABLE_KEYS


def count(reader: StoreReader, sql: str, *params) -> int:
    """The number a `SELECT count(*) ...` query returns (0 when it returns nothing)."""
    return int(reader.scalar(sql, list(params), default=0) or 0)


def sandbox_folders(reader: StoreReader) -> dict[str, Path]:
    """The local folders of the store's sandbox faces (their "servers"), by face id."""
    folders = {}
    for face_id, config in reader.rows("SELECT face_id, config FROM faces WHERE kind = 'sandbox'"):
        url = json.loads(config or "{}").get("state_url", "data/sandbox")
        fs, root = fsspec.core.url_to_fs(url)
        if isinstance(fs, LocalFileSystem):
            folders[face_id] = Path(root)
    return folders


def sandbox_records(folder: Path) -> list[dict]:
    """Every post the sandbox holds (one JSON file each)."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob("sbx-*.json"))] if folder.is_dir() else []


def account(settings, *, load_versions: bool = True, scored: bool = False) -> dict:
    """Count everything and check it adds up exactly. Call it once the system has settled.

    Returns figures (posts by status, reactions, versions, rows, lost, duplicates) and `problems`,
    a list of sentences, empty when everything adds up. Best-of-N candidates that were not chosen are
    counted apart (`candidates`), never as generated posts.
      lost:       a sandbox post the store does not record as published, a published post without
                  reaction snapshots (or score, with `scored`), a version that does not load, a
                  completed update or version folder without its model_versions row, a candidate
                  whose slot post is missing
      duplicates: two rows with one primary key, one platform post or intent recorded twice,
                  two published posts for one slot
    """
    reader = StoreReader(settings.store_path, wait_seconds=120)
    problems: list[str] = []
    lost = duplicates = 0

    rows = {}
    for table, key in {**TABLE_KEYS, "applied_writes": ("write_id",)}.items():
        rows[table] = count(reader, f'SELECT count(*) FROM "{table}"')
        columns = ", ".join(f'"{c}"' for c in key)
        doubled = count(reader, f'SELECT count(*) FROM (SELECT {columns} FROM "{table}" '
                                 'GROUP BY ALL HAVING count(*) > 1)')
        if doubled:
            duplicates += doubled
            problems.append(f"{doubled} duplicate key(s) in {table}")

    by_status = dict(reader.rows("SELECT status, count(*) FROM posts WHERE origin = 'generated' GROUP BY status"))
    # Candidates a slot did not publish are bookkeeping of its choice, not posts: each must belong to a slot post.
    candidates = by_status.pop("candidate", 0)
    generated = sum(by_status.values())
    orphans = [r[0] for r in reader.rows(
        "SELECT c.post_id FROM posts c LEFT JOIN posts p ON p.post_id = c.candidate_of AND p.run_id = c.run_id "
        "AND p.publish_slot = c.publish_slot "
        "AND p.status IN ('publishing', 'published', 'failed', 'shadow', 'skipped', 'rejected') "
        "WHERE c.status = 'candidate' AND p.post_id IS NULL")]
    if orphans:
        lost += len(orphans)
        problems.append(f"{len(orphans)} candidate(s) without their slot's post: {orphans[:5]}")
    published, rejected = by_status.get("published", 0), by_status.get("rejected", 0)
    failed, publishing = by_status.get("failed", 0), by_status.get("publishing", 0)
    # A shadow face's posts and posts skipped on review (not decided in time, or the run stopped) are settled too.
    settled_elsewhere = by_status.get("shadow", 0) + by_status.get("skipped", 0)
    if generated != published + rejected + failed + settled_elsewhere:
        problems.append(f"generated {generated} != published {published} + rejected {rejected} + failed {failed} "
                        f"+ shadow/skipped {settled_elsewhere} (statuses {by_status})")
    for what, sql in {
        "platform post": "SELECT face_id, platform_id FROM posts "
                         "WHERE origin = 'generated' AND platform_id IS NOT NULL",
        "publishing intent": "SELECT intent_id FROM posts WHERE intent_id IS NOT NULL",
        "published slot": "SELECT run_id, publish_slot FROM posts "
                          "WHERE status = 'published' AND publish_slot IS NOT NULL",
    }.items():
        doubled = count(reader, f"SELECT count(*) FROM ({sql} GROUP BY ALL HAVING count(*) > 1)")
        if doubled:
            duplicates += doubled
            problems.append(f"{doubled} {what}(s) recorded twice")

    unobserved = [r[0] for r in reader.rows(
        "SELECT post_id FROM posts p WHERE status = 'published' AND (NOT EXISTS "
        "(SELECT 1 FROM reaction_snapshots s WHERE s.post_id = p.post_id)" + (" OR score IS NULL)" if scored else ")"))]
    if unobserved:
        lost += len(unobserved)
        problems.append(f"published post(s) without {'a score' if scored else 'reaction snapshots'}: {unobserved[:5]}")

    sandbox_posts = 0
    for face_id, folder in sandbox_folders(reader).items():
        out = {r["platform_id"]: r for r in sandbox_records(folder)}
        sandbox_posts += len(out)
        recorded = {r[0] for r in reader.rows("SELECT platform_id FROM posts "
                                              "WHERE face_id = ? AND status = 'published' "
                                              "AND origin = 'generated'", [face_id])}
        missing, phantom = sorted(set(out) - recorded), sorted(recorded - set(out))
        if missing:
            lost += len(missing)
            problems.append(f"{face_id}: {len(missing)} sandbox post(s) not recorded as published "
                            f"(intents {[out[m]['intent_id'] for m in missing[:5]]})")
        if phantom:
            lost += len(phantom)
            problems.append(f"{face_id}: {len(phantom)} published row(s) the sandbox does not have: {phantom[:5]}")

    versions = reader.rows("SELECT version_id, artifact_url, base_model FROM model_versions ORDER BY version_id")
    for version_id, url, base_model in versions:
        try:
            if load_versions:
                from crowdtune.training.models import load_version

                load_version(url, base_model=base_model, cache_dir=settings.data_dir / "models")
            else:
                fs, root = fsspec.core.url_to_fs(url)
                if not fs.exists(f"{root.rstrip('/')}/adapter_config.json"):
                    raise FileNotFoundError(f"{url} has no adapter_config.json")
        except Exception as exc:  # noqa: BLE001 - every failure is one lost version
            lost += 1
            problems.append(f"version {version_id} does not load: {type(exc).__name__}: {exc}")
    known = {v[0] for v in versions}
    unregistered = [r[0] for r in reader.rows(
        "SELECT update_id FROM online_updates WHERE status = 'completed' AND (version_id IS NULL OR version_id NOT IN "
        "(SELECT version_id FROM model_versions))")]
    folder = Path(settings.artifacts) / "versions"
    orphans = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in known) if folder.is_dir() else []
    for what, ids in (("completed update(s) without a model version", unregistered),
                      ("version folder(s) without a model_versions row", orphans)):
        if ids:
            lost += len(ids)
            problems.append(f"{len(ids)} {what}: {ids[:5]}")

    imported = count(reader, "SELECT count(*) FROM posts WHERE origin = 'imported'")
    updates = count(reader, "SELECT count(*) FROM online_updates WHERE status = 'completed'")
    if publishing:
        problems.append(f"{publishing} post(s) stuck in publishing")
    return {"posts": {"generated": generated, "published": published, "rejected": rejected, "failed": failed,
                      "publishing": publishing, "imported": imported, "candidates": candidates},
            "sandbox_posts": sandbox_posts, "reactions": rows["reaction_snapshots"],
            "observed_posts": count(reader, "SELECT count(DISTINCT post_id) FROM reaction_snapshots"),
            "versions": len(versions), "updates": updates,
            "rows": sum(rows.values()), "rows_by_table": rows, "lost": lost, "duplicates": duplicates,
            "stuck_publishing": publishing, "problems": problems}


def store_settled(conn) -> bool:
    """Nothing waits for the store writer: no queued, running or scheduled batch. (A batch the worker has
    just taken sits in RQ's intermediate list until it is recorded as started: it counts as running.)"""
    q = queue("store", conn)
    return (q.count == 0 and conn.llen(q.intermediate_queue_key) == 0 and StartedJobRegistry(queue=q).count == 0
            and ScheduledJobRegistry(queue=q).count == 0)
