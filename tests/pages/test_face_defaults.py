"""Forms preselect the face that fits them: history for import and offline, the sandbox for online;
never a real network by default. The online form's time acceleration follows the chosen face."""

import pandas as pd

from crowdtune.dashboard.face_picker import Purpose, faces_for, preselected, time_acceleration_of
from tests.pages.conftest import open_page, rows, write

PAGE = "pages/training.py"


def frame(*faces: tuple[str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(faces, columns=["face_id", "kind", "config"])


FACES = frame(("a-mastodon", "mastodon", '{"api_base_url": "https://example.social"}'),
              ("b-sandbox", "sandbox", '{"time_acceleration": 60}'),
              ("c-posts", "dataset", '{"source": "posts.csv"}'),
              ("tweets", "dataset", '{"source": "trump_tweets"}'))


def test_history_forms_put_the_bundled_dataset_first_and_a_real_network_last():
    assert faces_for(FACES, Purpose.HISTORY) == ["tweets", "c-posts", "b-sandbox", "a-mastodon"]


def test_the_online_form_offers_only_faces_that_publish_with_the_sandbox_first():
    assert faces_for(FACES, Purpose.ONLINE) == ["b-sandbox", "a-mastodon"]


def test_a_linked_face_wins_when_it_fits_and_is_ignored_when_it_does_not():
    online = faces_for(FACES, Purpose.ONLINE)
    assert preselected(online, "a-mastodon") == 1 and preselected(online, "tweets") == 0


def test_time_acceleration_is_the_faces_own_and_1_for_a_real_network():
    assert time_acceleration_of(FACES, "b-sandbox") == 60.0
    assert time_acceleration_of(FACES, "a-mastodon") == 1.0
    assert time_acceleration_of(frame(("s", "sandbox", "{}")), "s") == 1.0  # the sandbox's own default


def test_the_training_page_preselects_by_purpose_and_takes_the_faces_time_acceleration(populated_store):
    # A real network added first and named first alphabetically: still never the default.
    write(populated_store, rows("faces",
          {"face_id": "aaa-mastodon", "kind": "mastodon", "config": {"api_base_url": "https://example.social"}},
          {"face_id": "sandbox", "kind": "sandbox", "config": {"time_acceleration": 60.0}}))
    at = open_page(PAGE)
    import_face = next(s for s in at.selectbox if s.label == "Face")
    assert import_face.value == "tweets" and import_face.options[-1] == "aaa-mastodon"
    online_face = at.selectbox(key="online_face")
    assert online_face.value == "sandbox"
    assert at.number_input(key="online_time_acceleration").value == 60.0
    online_face.set_value("aaa-mastodon").run()
    assert at.number_input(key="online_time_acceleration").value == 1.0
