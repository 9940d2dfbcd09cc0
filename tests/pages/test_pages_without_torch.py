"""Drawing a page never loads torch, transformers, Lightning or PEFT into the dashboard's process: they
take ~4 s and ~0.5 GB to import, and once loaded every later rerun of every page pays for their objects
(issue 17: Metrics idled at 1.1 CPU s/min before a Training visit, 3.0 after)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = ("torch", "transformers", "pytorch_lightning", "lightning", "peft")
# Runs the app under AppTest in a fresh interpreter (the test process has torch loaded by other tests).
RENDER = f"""
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app.py", default_timeout=120)
at.run()
at.switch_page(sys.argv[1])
at.run()
print(json.dumps({{"exceptions": [e.value for e in at.exception], "buttons": [b.label for b in at.button],
                  "titles": [t.value for t in at.title], "charts": len(at.get("plotly_chart")),
                  "heavy": sorted(name for name in {HEAVY!r} if name in sys.modules)}}))
"""


def render_in_fresh_process(page: str) -> dict:
    """What the app drew on `page` in a new Python process, and which heavy modules that process loaded."""
    done = subprocess.run([sys.executable, "-c", RENDER, page], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("page, title, drew", [
    # the offline and online forms draw from their configs
    ("pages/training.py", "Training", lambda drawn: {"Start training", "Review and start"} <= set(drawn["buttons"])),
    ("pages/metrics.py", "Metrics", lambda drawn: drawn["charts"] >= 2),  # val_loss, train_loss, reward_mean
    ("pages/playground.py", "Playground", lambda drawn: "Generate" in drawn["buttons"]),
    ("pages/overview.py", "Overview", lambda drawn: drawn["charts"] >= 1),
])
def test_drawing_a_page_loads_no_torch_into_the_app_process(populated_store, redis_conn, page, title, drew):
    drawn = render_in_fresh_process(page)
    assert drawn["exceptions"] == [] and title in drawn["titles"]
    assert drew(drawn), drawn
    assert drawn["heavy"] == []
