"""Overview: what is training, how far it got, what comes next, what the audience thinks, what is wrong."""

import datetime as dt

import pandas as pd
import redis
import streamlit as st

from crowdtune import actions
from crowdtune.dashboard.access import reviewer_name
from crowdtune.dashboard.charts import small_line_figure
from crowdtune.dashboard.checklist import first_steps, next_step, offered
from crowdtune.dashboard.face_picker import Purpose, faces_for, time_acceleration_of
from crowdtune.dashboard.links import share_box
from crowdtune.dashboard.page_setup import control_connection, live_reads, or_stop, show_error, through_app
from crowdtune.dashboard.tables import posts_for_display
from crowdtune.errors import CrowdtuneError
from crowdtune.runtime.progress import Progress, job_progress
from crowdtune.runtime.status import system_status
from crowdtune.runtime.stop_flags import seconds_since_stop_request
from crowdtune.settings import load_settings
from crowdtune.states import RunStatus
from crowdtune.store import views
from crowdtune.store.reads import StoreReader
from crowdtune.store.writes import utc_now

through_app()  # before anything else: this page opens only through app.py's login gate

st.title("Overview")

with or_stop():
    settings = load_settings()
reader = StoreReader.from_settings(settings)
KEY_METRICS = ("val_loss", "reward_mean", "score_mean")  # score_mean, reward_mean: per online update
ACTIVE_RUNS = (RunStatus.RUNNING, RunStatus.STOPPING)  # a stopping run still trains until it has saved


def small_chart(frame: pd.DataFrame, x: str, y: str, color: str, title: str, built: dict | None = None):
    """A small line chart (a marker for a single point); `built` keeps figures by title across redraws of
    the same reads."""
    figure = (built or {}).get(title)
    if figure is None:
        figure = small_line_figure(frame, x, y, color, title)
        if built is not None:
            built[title] = figure
    st.plotly_chart(figure, width="stretch", config={"displayModeBar": False})


def when(moment, now: dt.datetime) -> str:
    """A store time (naive UTC) as '2026-11-20 16:00 UTC (in 3 h 50 min)'; '—' when there is none."""
    if moment is None or pd.isna(moment):
        return "—"
    moment = pd.Timestamp(moment).to_pydatetime()
    minutes = round((moment - now).total_seconds() / 60)
    relative = "due now" if minutes <= 0 else f"in {minutes // 60} h {minutes % 60} min" if minutes >= 60 \
        else f"in {minutes} min"
    return f"{moment:%Y-%m-%d %H:%M} UTC ({relative})"


def run_line(run_id: str, face_id: str, status: str, progress: Progress | None, stop_asked: float | None) -> str:
    """A training run's progress-bar text: what it does now, "`run-b` (tweets): step 20/60, evaluating:
    sampling 8 posts, ETA 4.2 min, loss 2.310"; once Stop was pressed, "`run-b` (tweets) is stopping
    (asked 12 s ago): it saves a checkpoint and a version, then ends as `stopped`. Now: ...". `stop_asked`:
    seconds since the stop request, None when unknown."""
    name = f"`{run_id}` ({face_id})"
    if status == RunStatus.STOPPING:
        asked = f" (asked {stop_asked:.0f} s ago)" if stop_asked is not None else ""
        now = f" Now: {progress.phase or 'training'} (step {progress.step}/{progress.total})." if progress else ""
        return f"{name} is stopping{asked}: it saves a checkpoint and a version, then ends as `stopped`.{now}"
    if progress is None:
        return f"{name}: started, no progress reported yet"
    loss = f", loss {progress.loss:.3f}" if progress.loss is not None else ""
    return f"{name}: {progress.summary()}{loss}"


def online_table(controllers: pd.DataFrame, schedule: pd.DataFrame, now: dt.datetime) -> pd.DataFrame:
    """One row per face that trains (or trained) online: state, run, what comes next, counts."""
    table = controllers.merge(schedule, on="face_id", how="left")
    reads = [f"{post} at {when(at, now)}" if isinstance(post, str) else "—"
             for post, at in zip(table["next_reaction_post"], table["next_reaction_at"], strict=True)]
    return pd.DataFrame({
        "face": table["face_id"], "state": table["state"], "run": table["run_id"],
        "next post": [when(at, now) for at in table["next_post_at"]], "next reaction read": reads,
        "published": table["published"], "scored": table["scored"], "updates": table["updates"],
        "note": table["note"].fillna(""),
    })


def read_overview() -> dict:
    """Everything the live Overview shows from the store (and the system status, which reads it too)."""
    status = system_status(settings)
    runs = views.latest_runs(reader, limit=10)
    catalog = views.metric_catalog(reader)
    controllers = views.online_controllers(reader)
    recent_runs = runs["run_id"].head(5).tolist() if not runs.empty else []
    series = {name: views.metric_series(reader, recent_runs, [name], max_points=300)
              if not catalog.empty and (catalog["name"] == name).any() else pd.DataFrame() for name in KEY_METRICS}
    failed_ids = [f"job:{job.job_id}" for job in status.failed_jobs]
    return dict(status=status, runs=runs, alerts=views.open_alerts(reader), posts=views.latest_posts(reader, limit=10),
                dismissed_jobs=views.dismissed_alerts(reader, failed_ids),
                scores=views.score_by_day(reader), controllers=controllers,
                schedule=views.online_schedule(reader, controllers["face_id"].tolist(), utc_now()), series=series,
                review=views.review_backlog(reader), figures={})  # figures: filled by the first draw of these reads


DISMISSED = "overview_dismissed"  # (alert_id, message) pairs dismissed in this session


def dismiss(pairs: list[tuple[str, str]]) -> None:
    """A Dismiss button's click: store the dismissals (crowdtune.actions.dismiss_alerts) and hide them now."""
    try:
        actions.dismiss_alerts(control, pairs, reviewer_name(settings))
    except CrowdtuneError as exc:
        st.session_state["overview_dismiss_error"] = exc
        return
    st.session_state.setdefault(DISMISSED, set()).update(pairs)


def live_overview(controls_off: bool):
    # The store and the status are read again only when the store changed (one Redis GET to know);
    # job progress lives in Redis, outside the store, and is read at every tick (one HGET per run).
    try:
        read = live_reads("overview", settings, read_overview)
    except CrowdtuneError as exc:
        show_error(exc)
        return
    status, runs, alerts, posts = read["status"], read["runs"], read["alerts"], read["posts"]
    scores, controllers, schedule = read["scores"], read["controllers"], read["schedule"]
    now = utc_now()  # "in 3 h 50 min" counts from the moment drawn, also when the reads were kept
    # What was dismissed in this session is hidden at once; the store hides it from then on (open_alerts).
    hidden = st.session_state.setdefault(DISMISSED, set())
    kept = [(a, m) not in hidden for a, m in zip(alerts["alert_id"], alerts["message"], strict=True)]
    alerts = alerts[pd.Series(kept, index=alerts.index, dtype=bool)]
    failed_jobs = [job for job in status.failed_jobs if (f"job:{job.job_id}", job.error) not in
                   hidden | read.get("dismissed_jobs", set())]

    redis_col, workers_col, runs_col, alerts_col = st.columns(4)
    redis_col.metric("Redis", "reachable" if status.redis_ok else "unreachable")
    workers_col.metric("Live workers", len(status.workers))
    running = runs[runs["status"].isin(ACTIVE_RUNS)] if not runs.empty else runs
    runs_col.metric("Running runs", len(running))
    alerts_col.metric("Open alerts", len(alerts) + len(failed_jobs))

    st.subheader("Alerts")
    if not status.redis_ok:
        st.error(status.redis_error.replace("\nFix:", "\n\n**Fix:**"))
    elif not status.workers:
        st.warning("No worker is alive. Start them with `make run` "
                   "(or `crowdtune worker` / `crowdtune worker --store`).")
    if status.store_error:
        st.error(status.store_error.replace("\nFix:", "\n\n**Fix:**"))
    elif not reader.exists:
        st.info(f"No store yet at `{settings.store_path}`: `make run` creates it.")
    shown: list[tuple[str, str]] = []  # (alert_id, message) of every alert drawn: what "Dismiss all" dismisses
    for alert in alerts.itertuples():
        show = {"error": st.error, "warning": st.warning}.get(alert.level, st.info)
        text_col, button_col = st.columns([8, 1], vertical_alignment="center")
        with text_col:
            show(f"**{alert.source}** · {alert.message} ({alert.created_at})")
        button_col.button("Dismiss", key=f"dismiss-{alert.alert_id}", disabled=controls_off, on_click=dismiss,
                          args=([(alert.alert_id, alert.message)],), help="Hide it until it is raised again with "
                          "another message; who dismissed it and when is kept (table alert_dismissals).")
        shown.append((alert.alert_id, alert.message))
    if failed_jobs:
        jobs = [(f"job:{job.job_id}", job.error) for job in failed_jobs]
        text_col, button_col = st.columns([8, 1], vertical_alignment="center")
        text_col.error(f"{len(failed_jobs)} failed job(s); the newest: `{failed_jobs[0].func}`: "
                       f"{failed_jobs[0].error}. Details on the System page.")
        button_col.button("Dismiss", key="dismiss-failed-jobs", disabled=controls_off, on_click=dismiss,
                          args=(jobs,), help="Hide these failed jobs here (the System page still lists them).")
        shown += jobs
    if len(shown) > 1:
        st.button("Dismiss all", key="dismiss-all", disabled=controls_off, on_click=dismiss, args=(shown,))
    waiting, oldest = read.get("review", (0, None))
    if waiting:
        # Older than a day: also an alert, raised by the controller (records.review_overdue).
        show = st.warning if now - pd.Timestamp(oldest) > pd.Timedelta(days=1) else st.info
        show(f"**{waiting} post(s) wait for review** (the oldest since {pd.Timestamp(oldest):%Y-%m-%d %H:%M} UTC): "
             "decide on the Review page or with `crowdtune review list`.")
    if status.redis_ok and status.workers and alerts.empty and not failed_jobs and not status.store_error \
            and not waiting:
        st.caption("Nothing needs attention.")

    st.subheader("Training")
    offline_running = running[running["kind"] != "online"]  # online runs have their own table below
    if running.empty:
        st.caption("No run is training now. Start one on the Training page.")
    for run in offline_running.itertuples():
        # Progress and the stop flag live in Redis, not the store: read at every tick (an HGET and a TTL).
        progress, stop_asked = None, None
        if control is not None and status.redis_ok and isinstance(run.job_id, str) and run.job_id:  # none: NaN
            try:
                progress = job_progress(control, run.job_id)
                if run.status == RunStatus.STOPPING:
                    stop_asked = seconds_since_stop_request(control, run.run_id)
            except (CrowdtuneError, redis.RedisError):
                progress = None
        st.progress(progress.fraction if progress else 0.0,
                    text=run_line(run.run_id, run.face_id, run.status, progress, stop_asked))
    if runs.empty:
        st.info("No training runs yet: import a dataset and start offline training on the Training page.")
    else:
        st.dataframe(runs[["run_id", "kind", "face_id", "status", "started_at", "ended_at", "error"]],
                     hide_index=True, width="stretch")

    st.subheader("Online training")
    if controllers.empty:
        st.caption("No face trains online. Start it on the Training page (a sandbox face publishes to a "
                   "simulated audience).")
    else:
        st.dataframe(online_table(controllers, schedule, now), hide_index=True, width="stretch")
        st.caption("Next post and reaction read as the controller decides them from the store; times are UTC.")

    st.subheader("Next scheduled jobs")
    if status.scheduled_jobs:
        st.dataframe(pd.DataFrame([vars(j) for j in status.scheduled_jobs]).sort_values("at"), hide_index=True,
                     width="stretch")
    else:
        st.caption("Nothing scheduled.")

    st.subheader("Key metrics")
    chart_cols = st.columns(1 + len(KEY_METRICS))
    with chart_cols[0]:
        # Generated posts only: imported history (2009-2018 for the bundled tweets) would share the axis
        # with today's posts and squeeze them into one point at the right.
        generated, history = scores[scores["origin"] == "generated"], scores[scores["origin"] == "imported"]
        if generated.empty:
            st.caption("Score of generated posts: none scored yet (a post gets a score when its reactions mature).")
        else:
            small_chart(generated.sort_values("day"), "day", "score", "origin", "Generated posts: mean score per day",
                        read["figures"])
        if not history.empty:
            st.caption(f"Imported history ({history['day'].min():%Y}-{history['day'].max():%Y}) is left out of "
                       "this chart; the Posts page shows its posts and scores.")
    for column, name in zip(chart_cols[1:], KEY_METRICS, strict=True):
        with column:
            if read["series"][name].empty:
                st.caption(f"{name}: no values yet in the latest runs.")
            else:
                small_chart(read["series"][name], "step", "value", "run_id", name, read["figures"])

    st.subheader("Latest posts")
    if posts.empty:
        st.info("No posts yet: import a dataset on the Training page or with `crowdtune import --face ...`.")
    else:
        st.dataframe(posts_for_display(posts.drop(columns=["status"])), hide_index=True, width="stretch",
                     column_config={"url": st.column_config.LinkColumn("url", display_text="open")})

    st.subheader("Workers and queues")
    if status.queues:
        st.dataframe(pd.DataFrame([vars(q) for q in status.queues]), hide_index=True, width="stretch")
    st.caption("Details on the System page.")


FIRST_STEPS_TABLES = ("posts", "model_versions", "faces", "controllers")  # what the checklist's reads read


def read_first_steps() -> tuple[dict, pd.DataFrame]:
    """The checklist's store reads: what was done so far, and the faces."""
    return views.getting_started(reader), views.faces_frame(reader)


def getting_started(conn, controls_off: bool) -> None:
    """The first steps as a checklist with one button for the next one; nothing once all are done."""
    try:
        # Read again only when those tables changed, not two store opens every tick.
        facts, faces = live_reads("first_steps", settings, read_first_steps, tables=FIRST_STEPS_TABLES)
    except CrowdtuneError as exc:
        show_error(exc)
        return
    history, online = faces_for(faces, Purpose.HISTORY), faces_for(faces, Purpose.ONLINE)
    history_face, online_face = (history or [None])[0], (online or [None])[0]
    steps = first_steps(facts, history_face, online_face)
    if next_step(steps) is None:
        return
    buttons = offered(steps)
    st.subheader("First steps")
    for index, step in enumerate(steps):
        mark = ":material/check_circle:" if step.done else ":material/radio_button_unchecked:"
        text_col, button_col = st.columns([4, 1])
        text_col.markdown(f"{mark} **{index + 1}. {step.title}** · `{step.command}`")
        if index in buttons and button_col.button(step.title, key=f"first_step_{index}", type="primary",
                                                  disabled=controls_off or (index != 2 and not history_face)):
            try:
                st.session_state["first_step_note"] = _take_step(conn, index, facts, faces, history_face,
                                                                 online_face)
            except CrowdtuneError as exc:
                show_error(exc)
    if st.session_state.get("first_step_note"):
        st.caption(st.session_state["first_step_note"])


def _take_step(conn, index: int, facts: dict, faces: pd.DataFrame, history_face: str, online_face: str | None) -> str:
    """Start step `index` of the checklist; return what was started, for the caption."""
    if index == 0:
        job = actions.start_import(conn, history_face)
        return f"Importing `{history_face}` (job `{job.id}`): the Training page shows the rows written."
    if index == 1:
        run_id, _ = actions.start_offline_training(conn, history_face, actions.QUICK_FIRST_VERSION)
        return f"Training run `{run_id}` queued: its progress shows below under Training."
    if index == 2:
        st.switch_page("pages/playground.py")
    if online_face is None:
        raise CrowdtuneError("There is no face that can publish.",
                             "Add a `sandbox` face on the Training page (a simulated audience).")
    if index == 3:
        actions.set_active_version(conn, online_face, facts["latest_version"])
        return f"`{facts['latest_version']}` now publishes on `{online_face}`."
    run_id = actions.start_online(conn, online_face, {"time_acceleration": time_acceleration_of(faces, online_face)})
    return f"Online run `{run_id}` started on `{online_face}`: its posts appear under Latest posts."


@st.fragment(run_every=5)
def live_page(conn, controls_off: bool) -> None:
    # One timer for both sections: a fragment's rerun costs the app process ~0.13 CPU s of Streamlit's own
    # work however little it draws (an idle tab: 1.3 CPU s/min for Metrics' 10 reruns a minute, 3.4-4.0
    # for the Overview's 28 when the checklist had a timer of its own), and the script's part is ~0.015 s.
    getting_started(conn, controls_off)
    if "overview_dismiss_error" in st.session_state:
        show_error(st.session_state.pop("overview_dismiss_error"))
    live_overview(controls_off)


control, controls_off = control_connection(settings)
live_page(control, controls_off)
share_box("overview", None)
