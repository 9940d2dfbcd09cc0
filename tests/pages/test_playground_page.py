"""The Playground page: generating samples from chosen versions enqueues one sampling job each; finished
samples show in full, as written, a rejected one with its reason."""

from crowdtune.runtime.queues import queue
from tests.pages.conftest import open_page, page_text

PAGE = "pages/playground.py"


def test_on_an_empty_store_the_page_offers_the_base_model(settings):
    text = page_text(open_page(PAGE))
    assert "No model versions yet: train one on the Training page" in text


def test_generate_enqueues_one_sampling_job_per_chosen_version_and_shows_they_are_pending(populated_store,
                                                                                           redis_conn):
    at = open_page(PAGE, query={"versions": "v2,v1"})
    assert at.multiselect(key="playground_versions").value == ["v2", "v1"]
    at.text_area[0].input("Tonight\nThe economy")
    at.number_input(key="generation_temperature").set_value(0.7)
    next(b for b in at.button if b.label == "Generate").click().run()
    jobs = {job.args[0]: job for job in queue("default", redis_conn).jobs}
    assert set(jobs) == {"v1", "v2"}
    version_id, base_model, count, generation, prompts = jobs["v2"].args
    assert jobs["v2"].func_name == "jobs.generate.sample_posts"
    assert base_model is None and count == 4 and prompts == ["Tonight", "The economy"]
    assert generation["temperature"] == 0.7
    assert page_text(at).count("Sampling…") == 2
    assert at.query_params["versions"] == "v2,v1"


def test_finished_samples_show_in_full_as_written_and_a_rejected_one_says_why(populated_store, redis_conn):
    long_post = "We will raise $5 and $10 for #1 veterans, " + "and keep going " * 20 + "all the way!"
    rows = [{"text": "", "kept": False, "rejected": "empty", "tokens": 1, "logprob": -0.5},
            {"text": long_post, "kept": True, "rejected": None, "tokens": 90, "logprob": -120.0}]
    at = open_page(PAGE, session={"playground_jobs": {"v2": "job-1"},
                                  "playground_done": {"job-1": ("finished", rows)}})
    assert [t.value for t in at.text] == [long_post, "(empty)"]  # kept first, the whole text, no markdown
    captions = [c.value for c in at.caption]
    assert "90 tokens, log-prob -120.0" in captions and "rejected: empty · 1 tokens, log-prob -0.5" in captions
