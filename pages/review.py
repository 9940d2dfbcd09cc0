"""Review: the posts that wait for the operator before they go out, oldest first, each with its slot's time;
approve / edit / reject (review = approve) or pick one of the slot's candidates with the reward model's
predictions (review = pick). One click, or one key (crowdtune.dashboard.review_keys), decides a post: it leaves
the queue at once, and the controller publishes an approved one through its slot's publish job
(crowdtune.online.review)."""

import pandas as pd
import streamlit as st

from crowdtune import actions
from crowdtune.dashboard.access import reviewer_name
from crowdtune.dashboard.page_setup import control_connection, or_stop, show_error, through_app
from crowdtune.dashboard.review_keys import CARD_KEY, review_keys
from crowdtune.errors import CrowdtuneError
from crowdtune.online.review import review_policy
from crowdtune.settings import load_settings
from crowdtune.states import ReviewMode
from crowdtune.store import reads
from crowdtune.store.reads import StoreReader

through_app()  # before anything else: this page opens only through app.py's login gate

SHOWN = 10  # posts drawn at a time: the next ones move up as these are decided
DONE = "review_done"  # post_ids decided in this session: hidden until the store shows them decided

st.title("Review")

with or_stop():
    settings = load_settings()
    reader = StoreReader.from_settings(settings)
    done: dict = st.session_state.setdefault(DONE, {})
    queue = [p for p in reads.review_queue(reader) if p["post_id"] not in done]
    decisions = pd.DataFrame(reads.review_decisions(reader, limit=20))

conn, controls_off = control_connection(settings)


def decide(post_id: str, action: str, candidate_id: str | None = None) -> None:
    """A button's click: send the decision (crowdtune.actions.review_post) and hide the post."""
    # The text as typed now (a click right after typing comes before the rerun that would rebind args).
    text = st.session_state.get(f"text-{post_id}") if action == "edit" else None
    try:
        result = actions.review_post(conn, post_id, action, reviewer_name(settings), text=text,
                                     candidate_id=candidate_id)
    except CrowdtuneError as exc:
        st.session_state["review_error"] = exc
        return
    done[post_id] = result["action"]
    st.session_state["review_last"] = f"{post_id}: {result['action']}"


if "review_error" in st.session_state:
    show_error(st.session_state.pop("review_error"))
if "review_last" in st.session_state:
    st.success(f"Decided {st.session_state.pop('review_last')}. An approved post goes out within seconds.")

if not queue:
    st.info("Nothing waits for review. Posts of faces with `review = approve` or `pick` (the default on "
            "Mastodon, Bluesky, Discord and Reddit) wait here before they go out.")
else:
    st.caption(f"{len(queue)} post(s) wait, oldest first. A post not decided within its run's "
               "`review_timeout_hours` is skipped, never published late.")
    if not controls_off:
        review_keys()
    for post in queue[:SHOWN]:
        pid = post["post_id"]
        mode, shadow = review_policy(post["face"]) if post["face"] else (ReviewMode.APPROVE, False)
        with st.container(border=True, key=f"{CARD_KEY}{pid}"):
            st.markdown(f"**{post['face_id']}** · slot {post['publish_slot']} · drafted "
                        f"{pd.Timestamp(post['inserted_at']):%Y-%m-%d %H:%M} UTC · `{pid}`"
                        + (" · shadow: would not be sent" if shadow else ""))
            if mode == ReviewMode.PICK:
                options = [post, *post["candidates"]]
                columns = st.columns(len(options))
                for number, (column, option) in enumerate(zip(columns, options, strict=True), 1):
                    with column:
                        st.write(option["text"])
                        predicted = option.get("predicted_reward")
                        st.caption(("chosen by the rule · " if option is post else "")
                                   + (f"predicted {predicted:.3f}" if predicted is not None else "no prediction")
                                   + f" · P(chosen) {option.get('selection_probability') or 0:.2f}")
                        st.button("Pick", key=f"pick-{option['post_id']}", disabled=controls_off, on_click=decide,
                                  args=(pid, "pick"), kwargs={"candidate_id": option["post_id"]},
                                  help=f"Key {number}" if number < 10 else None)
                st.button("None of these", key=f"reject-{pid}", disabled=controls_off, on_click=decide,
                          args=(pid, "reject"), help="Key R")
            else:
                st.write(post["text"])
                if post.get("predicted_reward") is not None:
                    st.caption(f"predicted reward {post['predicted_reward']:.3f}")
                approve_col, reject_col = st.columns(2)
                approve_col.button("Approve", key=f"approve-{pid}", type="primary", disabled=controls_off,
                                   on_click=decide, args=(pid, "approve"), help="Key A")
                reject_col.button("Reject", key=f"reject-{pid}", disabled=controls_off, on_click=decide,
                                  args=(pid, "reject"), help="Key R")
                with st.expander("Edit (key E)"):
                    st.text_area("Text to publish", value=post["text"], key=f"text-{pid}")
                    st.button("Publish edited", key=f"edit-{pid}", disabled=controls_off, on_click=decide,
                              args=(pid, "edit"))

st.subheader("Latest decisions")
if decisions.empty:
    st.caption("No decisions yet. Every decision is kept in the `review_decisions` table (who, when, what, the "
               "original text): the Query page reads it.")
else:
    st.dataframe(decisions[["decided_at", "face_id", "publish_slot", "action", "decided_by", "text",
                            "original_text"]], hide_index=True, width="stretch")
