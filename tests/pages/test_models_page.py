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
    text = page_text(open_page(PAGE))
    assert "No model versions yet: start offline training" in text
    assert "No review decisions yet" in text


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


def test_a_versions_gallery_shows_its_runs_evaluation_samples_and_its_posts_newest_first(populated_store):
    write(populated_store, rows("evaluation_samples", *[
        {"run_id": "run-b", "step": step, "sample": i, "text": f"sample {i} at step {step}",
         "recorded_at": NOW - dt.timedelta(hours=6) + dt.timedelta(minutes=step)}
        for step in (100, 200, 300) for i in range(2)]))
    at = open_page(PAGE)
    assert at.selectbox[0].value == "v2"  # the newest version: run-b's, saved at step 200
    gallery = next(df.value for df in at.dataframe if "source" in df.value.columns)
    assert gallery[["source", "text"]].values.tolist() == [
        ["published", "A generated post from v2"],
        ["evaluation", "sample 0 at step 200"], ["evaluation", "sample 1 at step 200"],
        ["evaluation", "sample 0 at step 100"], ["evaluation", "sample 1 at step 100"]]  # not step 300: after v2
    assert gallery["score"].iloc[0] == 9.5
    at.selectbox[0].set_value("v1").run()  # run-a's version: no samples stored, no posts
    assert "No posts of this version yet" in page_text(at)


def test_the_share_of_posts_rejected_on_review_shows_per_model_version(populated_store):
    drafted = [("v2", "reject"), ("v2", "approve"), ("v2", "pick"), ("v1", "reject"), ("v1", "expire")]
    write(populated_store,
          rows("posts", *({"post_id": f"reviewed-{i}", "face_id": "sandbox", "origin": "generated",
                           "status": "rejected" if action == "reject" else "published", "text": f"Reviewed {i}",
                           "model_version_id": version} for i, (version, action) in enumerate(drafted))),
          {"op": "insert", "table": "review_decisions", "rows": [
              {"decision_id": f"online-1:{i}", "face_id": "sandbox", "post_id": f"reviewed-{i}", "action": action,
               "decided_by": "review_timeout" if action == "expire" else "alice", "decided_at": NOW}
              for i, (_, action) in enumerate(drafted)]})
    at = open_page(PAGE)
    assert "2 of 4 reviewed posts rejected." in page_text(at)
    table = next(d.value for d in at.dataframe if "rejected_share" in d.value.columns).set_index("model_version_id")
    assert table.index.tolist() == ["v2", "v1"]  # newest version first
    assert table.loc["v2", ["reviewed", "rejected"]].tolist() == [3, 1]
    assert table.loc["v1", "rejected_share"] == 1.0  # the timeout is no one's decision


def fitted_with_agreement(store, face: str, agreement: float, posts: int) -> None:
    write(store, rows("reward_models", {
        "face_id": face, "artifact_url": "/a/rm", "validation_posts": 12, "config": {}, "model_id": f"{face}-rm",
        "fitted_at": NOW, "history_posts": 50, "generated_posts": posts, "validation_spearman": 0.4,
        "figures": {"scored_posts": 50 + posts, "online_agreement": agreement, "online_agreement_posts": posts}}))


def online_run(store, face: str, run_id: str, algorithm: str, algorithm_settings: dict) -> None:
    write(store, rows("runs", {"run_id": run_id, "kind": "online", "face_id": face, "status": "running",
                               "config": {"algorithm": algorithm, "algorithm_settings": algorithm_settings},
                               "started_at": NOW}))


def shown_for(store, face: str, agreement: float, posts: int, run: tuple[str, dict] | None = None) -> str:
    """The Models page's text for `face` with a fit of that agreement, and an online run (algorithm, settings)."""
    fitted_with_agreement(store, face, agreement, posts)
    if run is not None:
        online_run(store, face, f"online-{face}", *run)
    return page_text(open_page(PAGE, query={"face": face}))


def test_the_reward_model_says_whether_its_agreement_would_pause_guided_and_why(populated_store):
    # -0.24 on 16 posts: noise (upper 95% bound +0.22); -0.40 on 32: confidently below 0.10 (bound -0.11)
    assert ("Online agreement -0.24 on 16 posts: guided trains on: it pauses only when the upper 95% bound "
            "(here 0.22) is below the threshold 0.10 (guided's default settings: the face has no online run yet)."
            in shown_for(populated_store, "tweets", -0.24, 16))
    assert ("Online agreement -0.40 on 32 posts: guided pauses the face: its upper 95% bound -0.11 is below"
            in shown_for(populated_store, "sandbox", -0.4, 32, ("guided", {})))


def test_the_agreement_rule_follows_the_faces_online_settings(populated_store):
    assert ("guided pauses the face: its upper 50% bound -0.24 is below the threshold 0.10."
            in shown_for(populated_store, "tweets", -0.24, 16, ("guided", {"agreement_confidence": 0.5})))
    assert ("the face's online run uses `policy_gradient`, which does not pause on this figure"
            in shown_for(populated_store, "sandbox", -0.24, 16, ("policy_gradient", {})))


def test_a_stored_online_config_guided_would_refuse_falls_back_to_its_defaults(populated_store):
    assert ("guided trains on: it pauses only when the upper 95% bound (here 0.22)"
            in shown_for(populated_store, "tweets", -0.24, 16, ("guided", {"agreement_confidence": 7})))
