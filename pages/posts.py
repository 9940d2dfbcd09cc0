"""Posts: imported and generated posts with their reactions and score, filtered, sorted, a page at a time;
the chosen post's best-of-N candidates with their predictions beside its real score."""

import math

import streamlit as st

from crowdtune.dashboard.charts import reactions_figure, reward_histogram
from crowdtune.dashboard.links import (
    POST_ORIGINS,
    POST_REPEATS,
    POST_SORTS,
    PostsView,
    from_query_params,
    seed_widgets,
    share_box,
)
from crowdtune.dashboard.page_setup import or_stop, through_app
from crowdtune.dashboard.tables import posts_for_display
from crowdtune.settings import load_settings
from crowdtune.store import views
from crowdtune.store.reads import StoreReader

through_app()  # before anything else: this page opens only through app.py's login gate

PAGE_SIZE = 25
REPEATS_SHOWN = {"any": "show all", "only": "only near-duplicates", "hide": "hide repeats"}

st.title("Posts")

with or_stop():
    settings = load_settings()
    reader = StoreReader.from_settings(settings)

# The page's reads (filter choices; the count, one page and its posts' reactions) share one
# read-only open; the block only draws widgets and tables besides, so the file is let go quickly.
with or_stop(), reader.session() as session:
    choices = views.post_filter_choices(session)

    view = from_query_params(PostsView, st.query_params)
    view.face = view.face if view.face in choices["faces"] else ""
    view.version = view.version if view.version in choices["versions"] else ""
    seed_widgets("posts", view)

    search_col, sort_col = st.columns([3, 1])
    text = search_col.text_input("Search text", key="posts_q", placeholder="words in the post")
    sort = sort_col.selectbox("Sort", POST_SORTS, key="posts_sort")
    face_col, version_col, origin_col, repeats_col = st.columns(4)
    face = face_col.selectbox("Face", ["", *choices["faces"]], key="posts_face",
                              format_func=lambda f: f or "all faces")
    version = version_col.selectbox("Model version", ["", *choices["versions"]], key="posts_version",
                                    format_func=lambda v: v or "all versions")
    origin = origin_col.selectbox("Origin", POST_ORIGINS, key="posts_origin")
    repeats = repeats_col.selectbox(
        "Near-duplicates", POST_REPEATS, key="posts_repeats", format_func=REPEATS_SHOWN.get,
        help=f"Two posts of a face are near-duplicates when they share a run of {views.NEAR_DUPLICATE_WORDS} words "
             "(case and punctuation aside), or a shorter post has the same words. \"hide\" keeps the first of "
             "each group. Publishing never repeats a post (its `repeat` guard also compares meanings).")
    filters = views.PostFilters(face=face, version=version, origin=origin, text=text.strip(), repeats=repeats)

    # A page number from an old link beyond the last page shows the last page.
    shown = views.posts_page(session, filters, sort, page=int(st.session_state["posts_page"]), page_size=PAGE_SIZE,
                             post=st.session_state.get("posts_post"))
    total, posts = shown.total, shown.posts
    if shown.page != st.session_state["posts_page"]:
        st.session_state["posts_page"] = shown.page
    page_col, count_col = st.columns([1, 3])
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = page_col.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key="posts_page")

    count_col.caption(f"{total:,} posts match.")
    if total == 0 and not (face or version or text) and origin == "any" and repeats == "any":
        st.info("No posts yet: import a dataset on the Training page or with `crowdtune import --face ...`.")
    elif posts.empty:
        st.info("No post matches these filters: clear the search or choose another face, version, origin or "
                "near-duplicates choice.")
    else:
        st.dataframe(posts_for_display(posts), hide_index=True, width="stretch",
                     column_config={"url": st.column_config.LinkColumn("url", display_text="open"),
                                    "text": st.column_config.TextColumn("text", width="large"),
                                    "score": st.column_config.NumberColumn("score", format="%.3f")})

        st.subheader("Reactions over the post's age")
        # posts_page read the reactions of the post chosen last, or of the first one if it left the page.
        st.session_state["posts_post"] = shown.post
        texts = dict(zip(posts["post_id"], posts["text"], strict=True))
        st.selectbox("Post", posts["post_id"].tolist(), key="posts_post", format_func=lambda p: f"{p}: {texts[p][:80]}")
        snapshots = shown.reactions
        if snapshots.empty:
            st.caption("No reaction snapshots for this post yet.")
        else:
            st.plotly_chart(reactions_figure(snapshots), width="stretch")

        candidates = shown.candidates
        if not candidates.empty:
            st.subheader("Candidates it was chosen among")
            st.caption(f"Best-of-{len(candidates)}: the reward model's prediction of each candidate, the chance "
                       "the selection rule had to pick it, and the published post's real score once mature.")
            st.dataframe(candidates.drop(columns="reward_model_id"), hide_index=True, width="stretch",
                         column_config={
                             "text": st.column_config.TextColumn("text", width="large"),
                             "predicted_reward": st.column_config.NumberColumn("predicted", format="%.3f"),
                             "predicted_reward_std": st.column_config.NumberColumn("± std", format="%.3f"),
                             "selection_probability": st.column_config.NumberColumn("P(chosen)", format="%.3f"),
                             "score": st.column_config.NumberColumn("real score", format="%.3f")})

    st.subheader("Rewards of the history")
    if not face:
        st.caption("Choose a face to see the rewards its scored posts get in training.")
    else:
        history, clip = views.history_rewards(session, face)
        if history.empty:
            st.caption(f"`{face}` has no scored posts yet: import posts with reactions, or let online posts mature.")
        else:
            st.caption(f"{len(history):,} scored posts of `{face}`, each against the posts of its own era "
                       "(the same reactions count for more when the channel had fewer readers).")
            st.plotly_chart(reward_histogram(history, clip), width="stretch")

view = PostsView(face=face, version=version, origin=origin, q=text, repeats=repeats, sort=sort, page=int(page),
                 post=st.session_state.get("posts_post") or "")
share_box("posts", view)
