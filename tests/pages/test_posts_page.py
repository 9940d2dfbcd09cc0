"""The Posts page: a page of posts at a time, filters and sort in SQL, reactions over age, links."""

from tests.pages.conftest import NOW, chart_data, open_page, page_text, rows, write

PAGE = "pages/posts.py"


def test_on_an_empty_store_the_page_says_how_to_import_posts(settings):
    assert "No posts yet: import a dataset on the Training page" in page_text(open_page(PAGE))


def test_posts_come_a_page_at_a_time_with_their_latest_reactions(populated_store):
    at = open_page(PAGE)
    table = at.dataframe[0].value
    assert len(table) == 25
    assert "61 posts match." in page_text(at)
    newest_imported = table[table["post_id"] == "tweets:59"].iloc[0]
    assert newest_imported["likes"] == 59 * 24  # the latest snapshot, not the first
    assert "No reaction snapshots for this post yet." in page_text(at)  # gen-1, the newest, has none
    at.selectbox(key="posts_post").set_value("tweets:59").run()
    assert len(at.get("plotly_chart")) == 1  # reactions over the age of the chosen post
    assert at.query_params["post"] == "tweets:59"


def test_sort_filters_and_search_narrow_the_posts(populated_store):
    at = open_page(PAGE)
    at.selectbox(key="posts_sort").set_value("best").run()
    assert at.dataframe[0].value.iloc[0]["post_id"] == "gen-1"
    at.selectbox(key="posts_origin").set_value("imported").run()
    assert at.dataframe[0].value.iloc[0]["post_id"] == "tweets:59"
    at.text_input(key="posts_q").set_value("cats").run()
    assert "30 posts match." in page_text(at)
    at.number_input(key="posts_page").set_value(2).run()
    second = at.dataframe[0].value
    assert len(second) == 5 and second["text"].str.contains("cats").all()
    assert dict(at.query_params) == {"origin": "imported", "q": "cats", "sort": "best", "page": "2",
                                     "post": second.iloc[0]["post_id"]}


def test_a_link_opens_the_same_filtered_page(populated_store):
    at = open_page(PAGE, query={"face": "sandbox", "sort": "worst", "version": "v2"})
    assert at.selectbox(key="posts_face").value == "sandbox"
    assert at.selectbox(key="posts_version").value == "v2"
    assert at.dataframe[0].value["post_id"].tolist() == ["gen-1"]
    assert at.query_params["face"] == "sandbox" and at.query_params["sort"] == "worst"


def test_a_page_number_beyond_the_last_page_shows_the_last_page(populated_store):
    at = open_page(PAGE, query={"page": "99"})
    assert at.number_input(key="posts_page").value == 3
    assert len(at.dataframe[0].value) == 11


def test_a_published_post_shows_the_candidates_it_was_chosen_among_beside_its_real_score(populated_store):
    chosen = {"post_id": "run:p0", "face_id": "sandbox", "origin": "generated", "status": "published",
              "run_id": "run", "publish_slot": 0, "text": "The chosen one", "created_at": NOW, "score": 7.25,
              "predicted_reward": 0.4, "predicted_reward_std": 0.2, "selection_probability": 0.625,
              "reward_model_id": "rm-1"}
    others = [{**chosen, "post_id": f"run:p0c{i}", "status": "candidate", "candidate_of": "run:p0", "score": None,
               "text": f"Candidate {i}", "predicted_reward": 1.0 - 0.5 * i, "selection_probability": p}
              for i, p in ((1, 0.375), (2, 0.0))]
    write(populated_store, rows("posts", chosen, *others))
    at = open_page(PAGE, query={"face": "sandbox", "post": "run:p0"})
    # Candidates are not posts of their own: only the chosen one is listed.
    assert sorted(at.dataframe[0].value["post_id"]) == ["gen-1", "run:p0"]
    assert "Candidates it was chosen among" in page_text(at)
    table = at.dataframe[1].value
    assert table["post_id"].tolist() == ["run:p0c1", "run:p0", "run:p0c2"]  # best prediction first
    assert table["chosen"].tolist() == [False, True, False]
    assert table["selection_probability"].sum() == 1.0
    assert table.loc[table["chosen"], "score"].item() == 7.25


def test_a_face_s_history_shows_how_its_posts_are_rewarded_against_their_era(populated_store):
    at = open_page(PAGE, query={"face": "tweets"})
    assert "60 scored posts of `tweets`, each against the posts of its own era" in page_text(at)
    bars = [trace for chart in at.get("plotly_chart") for trace in chart_data(chart) if trace["type"] == "bar"]
    assert [b["name"] for b in bars] == ["imported"] and sum(bars[0]["y"]) == 60
    # Scores rise steadily with time, so each post is about as good as its era: no reward is clipped.
    assert bars[0]["y"][0] == bars[0]["y"][-1] == 0
    assert "Choose a face to see the rewards" in page_text(open_page(PAGE))


def test_the_page_filters_near_duplicates_and_its_link_keeps_the_filter(populated_store):
    from tests.pages.conftest import NOW, rows, write

    repeated = "Great crowd tonight in Ohio, thank you all for coming out to see us"
    write(populated_store, rows("posts", *({"post_id": f"gen-r{i}", "face_id": "sandbox", "origin": "generated",
                                             "status": "published", "text": text, "created_at": NOW}
                                            for i, text in enumerate([repeated, repeated.upper() + "!!"]))))
    at = open_page(PAGE, query={"repeats": "only"})
    assert set(at.dataframe[0].value["post_id"]) == {"gen-r0", "gen-r1"}
    assert "2 posts match." in page_text(at)
    at.selectbox(key="posts_repeats").set_value("hide").run()
    shown = set(at.dataframe[0].value["post_id"])
    assert "gen-r0" in shown and "gen-r1" not in shown  # the first of the two stays
    assert at.query_params["repeats"] == "hide"
