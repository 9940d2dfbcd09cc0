"""Fixtures for page tests: the app under AppTest, and a store filled through the real writer."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from crowdtune.store.writer import apply_write
from crowdtune.store.writes import utc_now

APP = "../../app.py"
_write_ids = itertools.count()


@pytest.fixture(autouse=True)
def app_py_served_before(monkeypatch):
    """AppTest starts each run as a server's very first request (Streamlit's pages-folder mode on: the
    case of page_setup.through_app, proved in a real browser by test_browser_gate). Page tests run as
    every later request does: through app.py's navigation."""
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


def open_page(page: str | None = None, query: dict | None = None, session: dict | None = None) -> AppTest:
    """Run the app, switch to `page` (e.g. "pages/metrics.py") with query params; fail on an exception."""
    at = AppTest.from_file(APP, default_timeout=90)
    for key, value in (session or {}).items():
        at.session_state[key] = value
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    if page is not None:
        at.switch_page(page)
        for key, value in (query or {}).items():
            at.query_params[key] = value
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def page_text(at: AppTest) -> str:
    """Everything readable on the page, as one string."""
    parts = [e.value for e in at.markdown] + [e.value for e in at.error] + [e.value for e in at.info]
    parts += [e.value for e in at.warning] + [e.value for e in at.caption] + [e.value for e in at.success]
    parts += [e.value for e in at.title] + [e.value for e in at.subheader] + [e.value for e in at.code]
    parts += [str(m.value) + m.label for m in at.metric]
    parts += [df.value.to_string() for df in at.dataframe]
    return "\n".join(str(p) for p in parts)


def chart_data(chart) -> list[dict]:
    """The traces of a drawn plotly chart as the browser gets them, typed arrays ({"dtype", "bdata"}) decoded."""
    def decoded(value):
        if isinstance(value, dict) and "bdata" in value:
            return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
        return value

    return [{key: decoded(value) for key, value in trace.items()} for trace in json.loads(chart.proto.spec)["data"]]


def run_queued_jobs(conn, queue_name: str = "control") -> None:
    """Run the jobs waiting on `queue_name` in this process, as a worker does (RQ's SimpleWorker, until the queue
    is empty): a page test of a light job pays neither a worker's start nor its preloading of torch (~20 s here)."""
    from rq import SimpleWorker
    from rq.serializers import JSONSerializer

    from crowdtune.runtime.queues import queue
    from crowdtune.runtime.workers import CrowdtuneJob

    SimpleWorker([queue(queue_name, conn)], connection=conn, serializer=JSONSerializer,
                 job_class=CrowdtuneJob).work(burst=True)


def write(settings, *ops: dict) -> None:
    """Apply fixture rows with the real store writer."""
    apply_write(settings.store_path, f"fixture-{next(_write_ids)}", list(ops), 30)


def rows(table: str, *records: dict) -> dict:
    return {"op": "upsert", "table": table, "rows": list(records)}


NOW = dt.datetime(2026, 11, 20, 12, 0, 0)


@pytest.fixture
def populated_store(settings):
    """A store with two faces, posts and snapshots, two runs with metrics, versions and an alert."""
    posts = []
    snapshots = []
    for i in range(60):
        created = NOW - dt.timedelta(hours=60 - i)
        posts.append({"post_id": f"tweets:{i}", "face_id": "tweets", "origin": "imported", "status": "imported",
                      "platform_id": str(i), "text": f"Imported post number {i} about {'cats' if i % 2 else 'dogs'}",
                      "url": f"https://example.org/{i}", "created_at": created, "score": i / 10})
        for hours in (1, 6, 24):
            snapshots.append({"post_id": f"tweets:{i}", "observed_at": created + dt.timedelta(hours=hours),
                              "kind": "likes", "count": i * hours, "age_seconds": hours * 3600})
    posts.append({"post_id": "gen-1", "face_id": "sandbox", "origin": "generated", "status": "published",
                  "text": "A generated post from v2", "created_at": NOW, "model_version_id": "v2", "score": 9.5})
    metrics = [{"run_id": run, "name": name, "step": step, "value": base / (step + 1),
                "recorded_at": NOW - dt.timedelta(minutes=500 - step)}
               for run, base in (("run-a", 4.0), ("run-b", 3.0)) for name in ("val_loss", "train_loss")
               for step in range(0, 400, 10)]
    metrics += [{"run_id": "run-b", "name": "reward_mean", "step": s, "value": s / 100, "recorded_at": NOW}
                for s in range(20)]
    write(settings,
          rows("faces", {"face_id": "tweets", "kind": "dataset", "config": {"source": "trump_tweets"},
                         "active_version_id": "v2"},
               {"face_id": "sandbox", "kind": "sandbox", "config": {}}),
          rows("posts", *posts),
          rows("reaction_snapshots", *snapshots),
          rows("runs", {"run_id": "run-a", "kind": "offline", "face_id": "tweets", "status": "completed",
                        "started_at": NOW - dt.timedelta(hours=9), "ended_at": NOW - dt.timedelta(hours=8),
                        "job_id": "run-a"},
               {"run_id": "run-b", "kind": "offline", "face_id": "tweets", "status": "running",
                "started_at": NOW - dt.timedelta(hours=1), "job_id": "run-b"}),
          rows("metrics", *metrics),
          rows("model_versions",
               {"version_id": "v1", "run_id": "run-a", "base_model": "smollm2-135m", "artifact_url": "/a/v1",
                "step": 100, "metrics": {"val_loss": 2.5}, "created_at": NOW - dt.timedelta(hours=8)},
               {"version_id": "v2", "run_id": "run-b", "parent_version_id": "v1", "base_model": "smollm2-135m",
                "artifact_url": "/a/v2", "step": 200, "metrics": {"val_loss": 2.1}, "created_at": NOW}),
          rows("alerts", {"alert_id": "a1", "level": "warning", "source": "collector",
                          "message": "Reactions are 3 hours late", "created_at": NOW}))
    return settings


@dataclass
class OnlineStore:
    """What online_store wrote that a page should show (times naive UTC)."""

    settings: Any
    run_id: str
    next_post_at: dt.datetime
    next_reaction_at: dt.datetime
    next_reaction_post: str


@pytest.fixture
def online_store(populated_store) -> OnlineStore:
    """populated_store, and the `sandbox` face training online (controller ONLINE, run `online-1`): three
    published posts (the first scored, the second read at 1 h, the last just out), one completed RL update
    with its version and metrics. Times follow the real clock, since the pages decide against it.

    No jitter, so the next post is due exactly `interval_minutes` after the last one; the last post's
    first reaction read (1 h) comes before the second post's 6 h read.
    """
    settings, run_id, now = populated_store, "online-1", utc_now()
    posted = [now - dt.timedelta(hours=30), now - dt.timedelta(hours=5), now - dt.timedelta(minutes=10)]
    config = {"algorithm": "reinforce", "interval_minutes": 240, "jitter_minutes": 0, "min_gap_minutes": 60,
              "daily_cap": 6, "maturity_windows_hours": [1, 6, 24], "posts_per_update": 2}
    update_id = f"{run_id}-u1"
    posts = [{"post_id": f"{run_id}:p{slot}", "face_id": "sandbox", "origin": "generated", "status": "published",
              "run_id": run_id, "publish_slot": slot, "intent_id": f"{run_id}:{slot}", "platform_id": f"sbx-{slot}",
              "text": f"Online post {slot}", "created_at": at, "published_at": at,
              "score": 4.2 if slot == 0 else None, "update_id": update_id if slot == 0 else None}
             for slot, at in enumerate(posted)]
    read_ages = {0: (1, 6, 24), 1: (1,)}
    snapshots = [{"post_id": f"{run_id}:p{slot}", "observed_at": posted[slot] + dt.timedelta(hours=hours),
                  "kind": "likes", "count": 10 * hours, "age_seconds": hours * 3600}
                 for slot, ages in read_ages.items() for hours in ages]
    write(settings,
          rows("runs", {"run_id": run_id, "kind": "online", "face_id": "sandbox", "status": "running",
                        "config": config, "started_at": posted[0]}),
          rows("controllers", {"face_id": "sandbox", "state": "ONLINE", "run_id": run_id, "config": config,
                               "started_at": posted[0], "publish_slot": 3, "resolved_slot": 2,
                               "last_resolved_at": posted[2]}),
          rows("posts", *posts),
          rows("reaction_snapshots", *snapshots),
          rows("online_updates", {"update_id": update_id, "run_id": run_id, "face_id": "sandbox", "step": 1,
                                  "status": "completed", "post_ids": [f"{run_id}:p0"], "version_id": update_id,
                                  "metrics": {"score_mean": 4.2, "reward_mean": 0.3},
                                  "created_at": posted[0] + dt.timedelta(hours=25),
                                  "ended_at": posted[0] + dt.timedelta(hours=25, minutes=2)}),
          rows("model_versions", {"version_id": update_id, "run_id": run_id, "base_model": "smollm2-135m",
                                  "artifact_url": f"/a/{update_id}", "step": 1, "note": "online reinforce update 1"}),
          rows("faces", {"face_id": "sandbox", "kind": "sandbox", "config": {}, "active_version_id": update_id}),
          rows("metrics", *({"run_id": run_id, "name": name, "step": 1, "value": value}
                            for name, value in (("score_mean", 4.2), ("reward_mean", 0.3)))))
    return OnlineStore(settings, run_id, next_post_at=posted[2] + dt.timedelta(minutes=240),
                       next_reaction_at=posted[2] + dt.timedelta(hours=1), next_reaction_post=f"{run_id}:p2")
