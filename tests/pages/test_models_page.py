"""The Models page: versions with lineage; choosing and rolling back what publishes, with confirmation."""

import datetime as dt

from crowdtune.runtime.queues import queue
from tests.pages.conftest import NOW, chart_data, open_page, page_text, rows, write

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
    assert "Review decisions per version" not in text  # no face reviews: no table of decisions
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


def test_a_face_s_reward_model_shows_its_figures_and_its_spearman_over_fits(populated_store):
    fit = {"face_id": "tweets", "artifact_url": "/a/rm", "validation_posts": 12, "config": {}}
    write(populated_store, rows("reward_models",
          {**fit, "model_id": "tweets-50-a", "fitted_at": NOW - dt.timedelta(hours=2), "history_posts": 50,
           "generated_posts": 0, "validation_spearman": 0.31,
           "figures": {"scored_posts": 50, "validation_mae": 0.9, "validation_coverage": 0.88,
                       "online_agreement": None, "online_agreement_posts": 0}},
          {**fit, "model_id": "tweets-60-b", "fitted_at": NOW, "history_posts": 52, "generated_posts": 8,
           "validation_spearman": 0.42,
           "figures": {"scored_posts": 60, "validation_mae": 0.75, "validation_coverage": 0.93,
                       "online_agreement": 0.55, "online_agreement_posts": 8}}))
    at = open_page(PAGE, query={"face": "tweets"})
    shown = {m.label: m.value for m in at.metric}
    assert shown == {"Posts fitted (history / generated)": "52 / 8", "Time-split Spearman": "0.42",
                     "MAE (reward units)": "0.75", "Coverage (2 std)": "93%", "Online agreement": "0.55"}
    assert "`tweets-60-b`, fitted at 2026-11-20 12:00 UTC on 60 scored posts." in page_text(at)
    [chart] = at.get("plotly_chart")
    spearman, agreement = chart_data(chart)
    assert spearman["y"] == [0.31, 0.42] and spearman["x"] == [50, 60]
    assert agreement["y"][1] == 0.55


def test_a_face_without_a_reward_model_says_when_it_gets_one(populated_store):
    at = open_page(PAGE, query={"face": "sandbox"})
    assert "No reward model yet: one is fitted once the face has 16 scored posts" in page_text(at)


def test_review_decisions_are_counted_per_version_that_drafted_the_posts(populated_store):
    """v2 drafted four decided posts (one rejected, one picked, two approved) and one that timed out; the
    base model drafted one, rejected. A sample the guards refused (status rejected) is no decision."""
    drafted = {"d1": ("v2", "approve"), "d2": ("v2", "reject"), "d3": ("v2", "pick"), "d4": ("v2", "approve"),
               "d5": ("v2", "expire"), "d6": (None, "reject")}
    write(populated_store,
          rows("posts", *({"post_id": pid, "face_id": "sandbox", "origin": "generated", "status": "published",
                           "text": f"post {pid}", "model_version_id": version}
                          for pid, (version, _) in drafted.items()),
               {"post_id": "guarded", "face_id": "sandbox", "origin": "generated", "status": "rejected",
                "text": "refused by a guard", "model_version_id": "v2", "reject_reason": "copy"}),
          rows("review_decisions", *({"decision_id": f"i-{pid}", "face_id": "sandbox", "post_id": pid,
                                      "action": action, "decided_by": "alice", "decided_at": NOW}
                                     for pid, (_, action) in drafted.items())))
    at = open_page(PAGE)
    assert "Review decisions per version" in page_text(at)
    table = next(df.value for df in at.dataframe if "rejected_share" in df.value.columns).set_index("version_id")
    assert table.loc["v2", ["decided", "rejected", "timed_out"]].tolist() == [4, 1, 1]
    assert table.loc["v2", "rejected_share"] == 0.25
    assert table.loc["(base model, no adapter)", ["decided", "rejected"]].tolist() == [1, 1]
    assert list(table.index) == ["v2", "(base model, no adapter)"]
