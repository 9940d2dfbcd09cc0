"""Named reads that jobs and the CLI ask the store for."""

from crowdtune.store.reads import NAMED_READS, StoreReader, newest_version_id, post_texts
from crowdtune.store.writer import apply_write


def post(i: int, text: str, status: str, origin: str = "generated", face_id: str = "f", at: str | None = None):
    return {"post_id": f"{face_id}:{i}", "face_id": face_id, "origin": origin, "status": status, "text": text,
            "created_at": at or f"2020-01-{i:02d}T00:00:00", "published_at": None}


def test_post_texts_are_the_channel_s_distinct_texts_newest_first(tmp_path):
    path = tmp_path / "s.duckdb"
    rows = [post(1, "old", "imported", "imported"), post(2, "same", "imported", "imported"),
            post(3, "same", "imported", "imported"), post(4, "", "imported", "imported"),
            post(5, "went out", "published", at="2020-01-09T00:00:00"), post(6, "not chosen", "candidate"),
            post(7, "refused", "rejected"), post(8, "someone else's", "imported", "imported", face_id="g")]
    apply_write(path, "w", [{"op": "upsert", "table": "posts", "rows": rows}], 5)
    reader = StoreReader(path)
    assert post_texts(reader, "f") == ["went out", "same", "old"]
    assert NAMED_READS["post_texts"] is post_texts  # the embedding job asks the store worker for it by name
    assert post_texts(StoreReader(tmp_path / "none.duckdb"), "f") == []


def test_the_newest_version_is_the_last_registered(tmp_path):
    path = tmp_path / "s.duckdb"
    assert newest_version_id(StoreReader(path)) is None  # no store yet
    versions = [{"version_id": v, "run_id": "r", "base_model": "m", "artifact_url": f"/a/{v}", "created_at": at}
                for v, at in (("v1", "2026-01-01T00:00:00"), ("v3", "2026-01-03T00:00:00"),
                              ("v2", "2026-01-02T00:00:00"))]
    apply_write(path, "w", [{"op": "upsert", "table": "model_versions", "rows": versions}], 5)
    assert newest_version_id(StoreReader(path)) == "v3"
