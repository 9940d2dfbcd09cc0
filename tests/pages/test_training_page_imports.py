"""The Training page follows an import to its end: what landed, what was refused and why, or the
problem and fix of a source that cannot be read (issue 13 findings 2 and 7)."""

from crowdtune import actions
from crowdtune.runtime.progress import fetch_job
from crowdtune.store.reads import StoreReader
from crowdtune.testing.processes import wait_for
from tests.pages.conftest import open_page, page_text

PAGE = "pages/training.py"


def import_from_page(at, redis_conn, face_id: str):
    """Choose the face in the import form, click Import, wait for the job to end, redraw the page."""
    at.selectbox[1].set_value(face_id)
    next(b for b in at.button if b.label == "Import").click().run()
    job_id = at.session_state["training_import_job"]
    wait_for(lambda: fetch_job(redis_conn, job_id).get_status(refresh=True).value in ("finished", "failed"),
             timeout=180, message=f"the import of {face_id}")
    return at.run()


def test_the_page_shows_the_rows_that_landed_the_refused_ones_and_an_unreadable_sources_fix(
        populated_store, redis_conn, workers, tmp_path):
    settings = populated_store
    workers.start_together(("--store",), ("--queues", "control,default"), conn=redis_conn)
    path = tmp_path / "posts.csv"
    path.write_text("id,text,created_at,likes\n1,one,2024-01-01T00:00:00,1\n2,two,2024-01-01T00:00:00,-5\n"
                    "3,three,2024-01-01T00:00:00,\"1,234\"\n")
    actions.save_face(redis_conn, "csv", "dataset", {"source": str(path), "reaction_columns": {"likes": "likes"}})
    actions.save_face(redis_conn, "gone", "dataset", {"source": str(tmp_path / "gone.csv")})
    reader = StoreReader(settings.store_path)
    wait_for(lambda: reader.scalar("SELECT count(*) FROM faces WHERE face_id IN ('csv', 'gone')") == 2,
             message="the faces")

    at = import_from_page(open_page(PAGE), redis_conn, "csv")
    text = page_text(at)
    assert "Imported 2 posts into the store; 1 row(s) refused; 0 duplicate(s) merged" in text
    assert "negative" in text  # the problems table: line 3, the reason
    assert reader.scalar("SELECT count(*) FROM posts WHERE face_id = 'csv'") == 2

    at = import_from_page(at, redis_conn, "gone")
    text = page_text(at)
    assert f"The dataset file {tmp_path / 'gone.csv'} does not exist." in text
    assert "Set `source` in the dataset config" in text
