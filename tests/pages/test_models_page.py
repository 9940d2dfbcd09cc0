"""The Models page: versions with lineage; choosing and rolling back what publishes, with confirmation."""

from crowdtune.runtime.queues import queue
from tests.pages.conftest import open_page, page_text

PAGE = "pages/models.py"


def store_writes(conn) -> list[list[dict]]:
    return [job.args[1] for job in queue("store", conn).jobs]


def button(at, label):
    return next(b for b in at.button if b.label == label)


def test_on_an_empty_store_the_page_says_how_to_get_a_version(settings):
    assert "No model versions yet: start offline training" in page_text(open_page(PAGE))


def test_versions_show_their_lineage_and_the_active_one(populated_store):
    at = open_page(PAGE, query={"face": "tweets"})
    text = page_text(at)
    assert "`v2` ← `v1` ← base model" in text
    assert "Publishing now: `v2`" in text
    assert at.dataframe[0].value.set_index("version_id").loc["v2", "active_for"] == "tweets"


def test_choosing_a_version_needs_confirmation_then_writes_it(populated_store, redis_conn):
    at = open_page(PAGE, query={"face": "tweets"})
    at.selectbox(key="models_choice").set_value("v1")
    button(at, "Use this version").click().run()
    assert "Tick the confirmation first" in page_text(at)
    assert store_writes(redis_conn) == []
    at.selectbox(key="models_choice").set_value("v1")
    at.checkbox(key="models_confirm").check()
    button(at, "Use this version").click().run()
    assert "(a rollback to an older version)" in page_text(at)
    assert store_writes(redis_conn) == [[{"op": "update", "table": "faces", "where": {"face_id": "tweets"},
                                          "set": {"active_version_id": "v1"}}]]


def test_roll_back_sets_the_parent_version(populated_store, redis_conn):
    at = open_page(PAGE, query={"face": "tweets"})
    at.checkbox(key="models_confirm_rollback").check()
    button(at, "Roll back").click().run()
    assert store_writes(redis_conn)[-1][0]["set"] == {"active_version_id": "v1"}
    assert at.query_params["face"] == "tweets"
