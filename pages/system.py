"""System: is everything alive? Redis, workers and their jobs, queues, failures, schedule, the store."""

import pandas as pd
import streamlit as st

from crowdtune.dashboard.page_setup import live_reads, or_stop, show_error, through_app
from crowdtune.errors import CrowdtuneError
from crowdtune.runtime.status import system_status
from crowdtune.settings import QUEUE_ROLES, load_settings

through_app()  # before anything else: this page opens only through app.py's login gate

st.title("System")

with or_stop():
    settings = load_settings()


STATUS_MAX_AGE_SECONDS = 15  # workers and queues live in Redis and move without the store: a dead worker shows soon


@st.fragment(run_every=3)
def live_status():
    # The status counts the store's rows: read again when the store changed (a job's start and end are
    # written to it) or after STATUS_MAX_AGE_SECONDS, else drawn from the last read.
    status = live_reads("system", settings, lambda: system_status(settings), max_age=STATUS_MAX_AGE_SECONDS)

    redis_col, workers_col, store_col = st.columns(3)
    redis_col.metric("Redis", "reachable" if status.redis_ok else "unreachable", status.redis_version or "",
                     delta_color="off")
    workers_col.metric("Live workers", len(status.workers))
    store_col.metric("Store",
                     f"{status.store.size_bytes / 1e6:.1f} MB" if status.store and status.store.exists else "—")

    if not status.redis_ok:
        st.error(status.redis_error.replace("\nFix:", "\n\n**Fix:**"))
    st.caption(f"Redis: `{status.redis_url}`")

    st.subheader("Workers")
    if status.workers:
        st.dataframe(pd.DataFrame([{
            "worker": w.name, "state": w.state, "queues": ", ".join(w.queues),
            "serves": "; ".join(QUEUE_ROLES.get(q, q) for q in w.queues),
            "current job": f"{w.current_job_func} ({w.current_job})" if w.current_job else "",
            "CPU %": w.cpu_percent, "memory MB": round(w.memory_mb) if w.memory_mb is not None else None,
            "last heartbeat": w.last_heartbeat, "done": w.successful, "failed": w.failed,
        } for w in status.workers]), hide_index=True, width="stretch")
        st.caption("CPU and memory: each worker with its job processes, at its last heartbeat "
                   "(CPU as % of one core since the one before).")
    elif status.redis_ok:
        st.warning("No worker is alive. Start them with `make run` "
                   "(or `crowdtune worker` / `crowdtune worker --store`).")

    if status.queues:
        st.subheader("Queues")
        st.dataframe(pd.DataFrame([{**vars(q), "carries": QUEUE_ROLES.get(q.name, "")} for q in status.queues]),
                     hide_index=True, width="stretch")

    st.subheader("Failed jobs")
    if status.failed_jobs:
        st.dataframe(pd.DataFrame([vars(f) for f in status.failed_jobs]), hide_index=True, width="stretch")
    else:
        st.caption("No failed jobs.")

    st.subheader("Scheduled jobs")
    if status.scheduled_jobs:
        st.dataframe(pd.DataFrame([vars(j) for j in status.scheduled_jobs]), hide_index=True, width="stretch")
    else:
        st.caption("Nothing scheduled.")

    st.subheader("Store")
    if status.store_error:
        st.error(status.store_error.replace("\nFix:", "\n\n**Fix:**"))
    elif status.store and status.store.exists:
        st.write(f"`{status.store.path}` · {status.store.size_bytes / 1e6:.2f} MB "
                 f"· schema v{status.store.schema_version}")
        st.dataframe(pd.DataFrame(sorted(status.store.row_counts.items()), columns=["table", "rows"]),
                     hide_index=True, width="stretch")
    else:
        st.info(f"No store yet at `{settings.store_path}`: `make run` creates it.")


live_status()

st.subheader("Check the workers")
if st.button("Run a probe job", help="Enqueues a job that reports the host, devices and library versions of a worker."):
    from crowdtune.runtime.queues import connect, enqueue
    from crowdtune.settings import QUEUE_DEFAULT

    try:
        job = enqueue(connect(settings), QUEUE_DEFAULT, "jobs.system.probe_worker", description="probe a worker")
        st.session_state["probe_job"] = job.id
    except CrowdtuneError as exc:
        show_error(exc)
if "probe_job" in st.session_state:
    from crowdtune.runtime.queues import connect

    try:
        from rq.job import Job
        from rq.serializers import JSONSerializer

        job = Job.fetch(st.session_state["probe_job"], connection=connect(settings), serializer=JSONSerializer)
        result = job.latest_result()
        if result is not None and result.return_value is not None:
            st.json(result.return_value)
        else:
            st.caption(f"Probe job {job.id}: {job.get_status()}")
    except Exception as exc:  # noqa: BLE001 - a vanished job is shown, not raised
        st.caption(f"Probe job unavailable: {exc}")
