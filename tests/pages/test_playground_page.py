"""The Playground page: generating samples from chosen versions enqueues one sampling job each."""

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
