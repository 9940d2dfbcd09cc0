"""What the System page and the Overview say about a failed job."""

import traceback

from crowdtune.errors import traceback_message
from faces.base import FaceConfigError


def test_a_failed_jobs_error_keeps_its_problem_sentence_not_only_the_fix():
    try:
        raise FaceConfigError("The Mastodon face has no access token.", "Save it on the Settings page.")
    except FaceConfigError as error:
        text = "".join(traceback.format_exception(error))
    shown = traceback_message(text)
    assert shown == ("faces.base.FaceConfigError: The Mastodon face has no access token. "
                     "Fix: Save it on the Settings page.")
    assert traceback_message("ValueError: plain") == "ValueError: plain"
    assert traceback_message(None) == "(no error text)"
