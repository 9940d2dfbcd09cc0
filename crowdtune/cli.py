"""The `crowdtune` command: headless use of everything the app does."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import re
import sys
from pathlib import Path

import typer

from crowdtune.errors import CrowdtuneError, traceback_message
from crowdtune.settings import load_settings

app = typer.Typer(help="Crowdtune: train a language model on a channel's posts and on its audience's reactions.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def friendly(func):
    """Print a CrowdtuneError as its problem and fix, exit 2, and show no traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CrowdtuneError as exc:
            typer.secho(f"Error: {exc.problem}", fg="red", err=True)
            typer.echo(f"Fix: {exc.fix}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def settings_with(**overrides):
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
@friendly
def up(
    port: int | None = typer.Option(None, help="Port of the app (default 8501)."),
    host: str | None = typer.Option(None, help="Address the app listens on (default localhost)."),
    no_app: bool = typer.Option(False, "--no-app", help="Start Redis and workers only."),
):
    """Start Redis (embedded unless REDIS_URL), the store writer, the workers and the app."""
    from crowdtune.runtime.supervisor import run_up

    run_up(settings_with(app_port=port, app_host=host), with_app=not no_app)


@app.command()
@friendly
def worker(
    queues: str = typer.Option("train,default,control", help="Comma-separated queues to serve, in priority order."),
    store: bool = typer.Option(False, "--store", help="Be the single store writer (serves only the 'store' queue)."),
    burst: bool = typer.Option(False, help="Quit when the queues are empty."),
    log_name: str | None = typer.Option(None, "--log-name", help="Name of its event log, <data_dir>/logs/NAME.jsonl "
                                        "(default: store-worker, or worker- and its queues)."),
    console_level: str = typer.Option("INFO", "--console-level", help="Least level printed on stderr "
                                      "(the event log takes INFO and above)."),
    gpu: int | None = typer.Option(None, "--gpu", help="Pin this worker (its training and sampling) to GPU N."),
):
    """Run one worker. On another machine, set REDIS_URL to the shared server first."""
    if gpu is not None:  # before anything touches CUDA: the worker and its jobs see that GPU alone
        from crowdtune.training.devices import pin_to_gpu

        if store:
            raise CrowdtuneError("The store worker uses no GPU.", "Drop --gpu from `crowdtune worker --store`.")

        pin_to_gpu(gpu)
    from crowdtune.runtime.durability import durability_warnings
    from crowdtune.runtime.logs import start_logging
    from crowdtune.runtime.queues import connect, queue
    from crowdtune.runtime.workers import PreloadedWorker, StoreWorker
    from crowdtune.settings import QUEUE_STORE

    if console_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise CrowdtuneError(f"--console-level {console_level!r} is not a log level.",
                             "Use one of DEBUG, INFO, WARNING, ERROR, CRITICAL.")
    settings = load_settings()
    default_name = "store-worker" if store else "worker-" + "-".join(n.strip() for n in queues.split(",") if n.strip())
    start_logging(settings, re.sub(r"[^A-Za-z0-9_.-]", "_", log_name or default_name), console_level)
    conn = connect(settings)
    for warning in durability_warnings(conn, settings.redis_display_url):
        logging.getLogger("crowdtune.worker").warning("%s Fix: %s", warning.problem, warning.fix)
    # An idle worker blocks on Redis for worker_ttl - 15 s and runs maintenance (requeueing orphans,
    # taking over the scheduler of a killed worker) only between blocks: keep the two periods equal.
    timing = dict(maintenance_interval=settings.worker_maintenance_seconds,
                  worker_ttl=settings.worker_maintenance_seconds + 15)
    if store:
        w = StoreWorker([queue(QUEUE_STORE, conn)], connection=conn, **timing)
    else:
        names = [n.strip() for n in queues.split(",") if n.strip()]
        if QUEUE_STORE in names:
            raise CrowdtuneError(
                "The 'store' queue is served only by the store worker.", "Use `crowdtune worker --store` for it."
            )
        w = PreloadedWorker([queue(n, conn) for n in names], connection=conn, **timing)
    w.work(with_scheduler=True, burst=burst)


@app.command()
@friendly
def status(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")):
    """Show Redis, workers, queues, failed and scheduled jobs, and the store."""
    from dataclasses import asdict

    from crowdtune.runtime.status import system_status

    s = system_status(load_settings())
    if as_json:
        typer.echo(json.dumps(asdict(s), default=str, indent=2))
        raise typer.Exit(0 if s.redis_ok and not s.store_error else 1)
    typer.echo(f"Redis: {s.redis_url} " + (f"ok (version {s.redis_version})" if s.redis_ok else "UNREACHABLE"))
    if s.redis_error:
        typer.echo("  " + s.redis_error.replace("\n", "\n  "))
    typer.echo(f"Workers: {len(s.workers)}")
    for w in s.workers:
        job = f" running {w.current_job_func} ({w.current_job})" if w.current_job else ""
        usage = f" cpu {w.cpu_percent:.0f}% mem {w.memory_mb:,.0f} MB" if w.memory_mb is not None else ""
        typer.echo(f"  {w.name} [{','.join(w.queues)}] {w.state}{usage}{job}")
    if s.queues:
        queues = [f"{q.name}: {q.queued} queued, {q.started} running, {q.failed} failed, {q.scheduled} scheduled"
                  for q in s.queues]
        typer.echo("Queues: " + "  ".join(queues))
    for f in s.failed_jobs[:10]:
        typer.echo(f"  failed {f.queue}/{f.job_id} {f.func}: {f.error}")
    if s.store_error:
        typer.echo("Store: ERROR " + s.store_error.replace("\n", "\n  "))
    elif s.store:
        if not s.store.exists:
            typer.echo(f"Store: {s.store.path} (not created yet; `crowdtune up` creates it)")
        else:
            typer.echo(f"Store: {s.store.path} ({s.store.size_bytes / 1e6:.1f} MB, schema v{s.store.schema_version})")
            typer.echo("  " + "  ".join(f"{k}: {v}" for k, v in s.store.row_counts.items()))
    raise typer.Exit(0 if s.redis_ok and not s.store_error else 1)


store_app = typer.Typer(help="The DuckDB store.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("init")
@friendly
def store_init():
    """Create the store file or bring its schema up to date."""
    from crowdtune.store.writer import initialise

    settings = load_settings()
    initialise(settings.store_path)
    typer.echo(f"Store ready: {settings.store_path}")


def parse_assignments(pairs: list[str]) -> dict:
    """`key=value` pairs as a dict; values are read as JSON when they parse (numbers, lists, true)."""
    out: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise CrowdtuneError(f"{pair!r} is not of the form key=value.", "Write settings like --set max_steps=50.")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


face_app = typer.Typer(help="Faces: where posts come from and go to.", no_args_is_help=True)
app.add_typer(face_app, name="face")


@face_app.command("add")
@friendly
def face_add(
    face_id: str = typer.Argument(..., help="A name for the face, e.g. tweets."),
    kind: str = typer.Option(..., help="dataset, sandbox, mastodon, bluesky, discord or reddit."),
    set_: list[str] = typer.Option([], "--set", help="Config key=value (repeatable), e.g. --set source=trump_tweets."),
):
    """Create or update a face. Tokens are never given here: see README, Secrets."""
    from crowdtune.actions import save_face
    from crowdtune.runtime.queues import connect

    save_face(connect(load_settings()), face_id, kind, parse_assignments(set_))
    typer.echo(f"Face {face_id} ({kind}) saved.")


@face_app.command("list")
@friendly
def face_list():
    """List the faces in the store."""
    from crowdtune.store.reads import StoreReader, faces

    for face in faces(StoreReader.from_settings(load_settings())):
        typer.echo(f"{face['face_id']}: {face['kind']} {json.dumps(face['config'])}")


def follow_job(job, label: str, poll: float = 0.5) -> dict | None:
    """Show a job's progress until it ends; return its result, or exit 1 if it failed."""
    import time

    last_step = -1
    with typer.progressbar(length=1, label=label) as bar:
        while True:
            status = job.get_status(refresh=True)
            progress = job.get_meta(refresh=True).get("progress") or {}
            total, step = progress.get("total"), progress.get("step") or 0
            if total and bar.length != total:
                bar.length = total
            if step != last_step and total:
                bar.update(step - max(last_step, 0))
                bar.label = f"{label} loss {progress['loss']:.3f}" if progress.get("loss") is not None else label
                last_step = step
            if status is not None and status.value in ("finished", "failed", "stopped", "canceled"):
                break
            time.sleep(poll)
    result = job.latest_result()
    if status.value != "finished":
        error = traceback_message(result.exc_string if result else None, default=status.value)
        typer.secho(f"Job {job.id} {status.value}: {error}", fg="red", err=True)
        raise typer.Exit(1)
    return result.return_value if result else None


def follow_import(job, label: str, poll: float = 0.5, every: float = 2.0) -> dict:
    """Show an import's rows WRITTEN to the store until it ends (on stderr); return its result.

    A failed import prints its problem and fix (the job's meta["error"]) and exits 2, or exits 1
    with the failure's last line when the job left no such error."""
    import time

    shown, last_shown = None, 0.0
    while True:
        status = job.get_status(refresh=True)
        meta = job.get_meta(refresh=True)
        done = status is not None and status.value in ("finished", "failed", "stopped", "canceled")
        progress = meta.get("progress") or {}
        line = f"{label}: {progress.get('step') or 0:,} rows written to the store"
        line += f" of at most {progress['total']:,}" if progress.get("total") else ""
        line += f" ({progress.get('read') or 0:,} read, {progress.get('refused') or 0:,} refused)"
        if line != shown and (done or time.monotonic() - last_shown >= every):
            typer.echo(line, err=True)
            shown, last_shown = line, time.monotonic()
        if done:
            break
        time.sleep(poll)
    if status.value == "finished":
        return job.latest_result().return_value
    error = meta.get("error")
    if error:
        typer.secho(f"Error: {error['problem']}", fg="red", err=True)
        typer.echo(f"Fix: {error['fix']}", err=True)
        raise typer.Exit(2)
    result = job.latest_result()
    reason = traceback_message(result.exc_string if result else None, default=status.value)
    typer.secho(f"Import job {job.id} {status.value}: {reason}", fg="red", err=True)
    typer.echo("Fix: see the failed job on the System page and the worker's log in data/logs/.", err=True)
    raise typer.Exit(1)


@app.command("import")
@friendly
def import_(
    face: str = typer.Option(..., "--face", help="The face to import from (see `crowdtune face list`)."),
    limit: int | None = typer.Option(None, help="Import at most this many posts."),
    wait: bool = typer.Option(True, help="Follow the job until its rows are in the store."),
):
    """Import a face's history into the store (runs on a worker); done when its rows are queryable."""
    from crowdtune.actions import start_import
    from crowdtune.runtime.queues import connect

    job = start_import(connect(load_settings()), face, limit)
    typer.echo(f"Import job {job.id} queued.")
    if wait:
        result = follow_import(job, f"importing {face}")
        typer.echo(result["summary"])
        for problem in result["problems"][:20]:
            typer.echo(f"  line {problem['line']}: {problem['reason']}")
        if result["refused"] > 20:
            typer.echo(f"  ... and {result['refused'] - 20:,} more (the first {len(result['problems'])} are in the "
                       "job's result; see the alert on the Overview page)")


train_app = typer.Typer(help="Training runs.", no_args_is_help=True)
app.add_typer(train_app, name="train")


CONFIG_OPTION_HELP = ("A run file (TOML) with the run's face and [settings], e.g. downloaded from the Training page; "
                      "--face, --base-model and --set override it.")


def run_request(kind: str, config_file: Path | None, face: str | None, overrides: dict, **top: str | None):
    """The run `crowdtune train KIND` asks for: the run file's (if any) with the options on top.
    Out: a run_files.RunRequest whose face is set; SettingsError names a bad field and its fix."""
    from crowdtune.training.run_files import RunRequest, parse_run_file, read_run_file

    if config_file is not None:
        request = read_run_file(config_file, kind, overrides)
    else:
        request = parse_run_file("", kind, source="the --set options", overrides=overrides, section="")
    request = RunRequest(request.kind, request.config, face or request.face,
                         **{key: value or getattr(request, key) for key, value in top.items()})
    if not request.face:
        raise CrowdtuneError("No face was named.", "Give --face NAME, or face = \"NAME\" in the run file.")
    return request


@train_app.command("offline")
@friendly
def train_offline(
    face: str | None = typer.Option(None, "--face", help="Train on this face's imported posts."),
    base_model: str | None = typer.Option(None, help="Hugging Face id or local folder "
                                                     "(default: the base_model setting)."),
    set_: list[str] = typer.Option([], "--set", help="SFT setting key=value (repeatable), e.g. --set max_steps=50."),
    config_file: Path | None = typer.Option(None, "--config", help=CONFIG_OPTION_HELP),
    wait: bool = typer.Option(True, help="Follow the run with a progress bar until it ends."),
):
    """Fine-tune with LoRA on a face's posts (runs on a `train` worker)."""
    from crowdtune.actions import start_offline_training
    from crowdtune.runtime.queues import connect

    request = run_request("offline", config_file, face, parse_assignments(set_), base_model=base_model,
                          parent_version=None)
    run_id, job = start_offline_training(connect(load_settings()), request.face, request.config.model_dump(mode="json"),
                                         base_model=request.base_model, parent_version_id=request.parent_version)
    typer.echo(f"Run {run_id} queued. Stop it with `crowdtune stop {run_id}`.")
    if wait:
        result = follow_job(job, f"training {run_id}")
        typer.echo(f"Run {run_id} {result['stopped_reason']} after {result['steps']} steps; "
                   f"best val loss {result['best_val_loss']}; version {result['version_id']}.")


def nested_assignments(pairs: list[str]) -> dict:
    """Like parse_assignments, but `a.b=1` sets key b of dict a (e.g. algorithm_settings.learning_rate=1e-4)."""
    out: dict = {}
    for key, value in parse_assignments(pairs).items():
        *parents, last = key.split(".")
        target = out
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return out


@train_app.command("online")
@friendly
def train_online(
    face: str | None = typer.Option(None, "--face", help="The face to publish on and learn from (sandbox or network)."),
    base_model: str | None = typer.Option(None, help="Base model if the face has no active version yet."),
    set_: list[str] = typer.Option(
        [], "--set", help="Online setting key=value (repeatable), e.g. --set interval_minutes=120 "
        "--set algorithm=reinforce --set algorithm_settings.learning_rate=1e-4."),
    config_file: Path | None = typer.Option(None, "--config", help=CONFIG_OPTION_HELP),
):
    """Start online training: publish on schedule, score reactions at maturity, update with RL (runs on workers)."""
    from crowdtune.actions import start_online
    from crowdtune.runtime.queues import connect

    overrides = nested_assignments(set_)
    if base_model:
        overrides["base_model"] = base_model
    request = run_request("online", config_file, face, overrides)
    run_id = start_online(connect(load_settings()), request.face, request.config.model_dump(mode="json"))
    face = request.face
    typer.echo(f"Online run {run_id} started on {face}. Stop it with `crowdtune stop --face {face}`.")


@app.command()
@friendly
def stop(
    run_id: str | None = typer.Argument(None, help="The run to stop (see the Training page or `crowdtune status`)."),
    face: str | None = typer.Option(None, "--face", help="Stop the online training of this face."),
):
    """Ask a run to stop gracefully: offline runs save a checkpoint and a loadable version; an online
    run publishes nothing new, lets work in flight end, and leaves its controller IDLE."""
    from crowdtune.actions import stop_online, stop_run
    from crowdtune.runtime.queues import connect

    conn = connect(load_settings())
    if face is None and run_id and run_id.startswith("online-"):
        from crowdtune.store.remote import read_via_store_worker

        run = read_via_store_worker(conn, "online_run", run_id=run_id, timeout=60)
        if run is None:
            raise CrowdtuneError(f"There is no run {run_id!r}.", "See the runs on the Training page.")
        face = run["face_id"]
    if face is not None:
        stopped = stop_online(conn, face)
        typer.echo(f"Stopping online run {stopped} of {face}." if stopped else f"{face} is not training online.")
        return
    if not run_id:
        raise CrowdtuneError("Nothing to stop was named.",
                             "Give a run id (`crowdtune stop RUN_ID`) or a face (`--face F`).")
    stop_run(conn, run_id)
    typer.echo(f"Stop requested for {run_id}.")


review_app = typer.Typer(help="Review before posting: the posts that wait, and your decisions.", no_args_is_help=True)
app.add_typer(review_app, name="review")


def _decide(post_id: str, action: str, text: str | None = None, candidate_id: str | None = None) -> None:
    from crowdtune.actions import review_post
    from crowdtune.runtime.queues import connect

    result = review_post(connect(load_settings()), post_id, action, "cli", text=text, candidate_id=candidate_id)
    typer.echo(f"{post_id}: {result['action']} (write {result['write_id']}); an approved post goes out within seconds.")


@review_app.command("list")
@friendly
def review_list(face: str | None = typer.Option(None, "--face", help="Only this face's posts.")):
    """The posts that wait for review, oldest first, each with its slot's candidates."""
    from crowdtune.store.reads import StoreReader, review_queue

    queue = review_queue(StoreReader.from_settings(load_settings()), face)
    if not queue:
        typer.echo("Nothing waits for review.")
    for post in queue:
        predicted = post.get("predicted_reward")
        shown = f", predicted {predicted:.3f}" if predicted is not None else ""
        typer.echo(f"{post['post_id']}  {post['face_id']} slot {post['publish_slot']}, drafted "
                   f"{str(post['inserted_at'])[:16]}{shown}")
        typer.echo(f"    {post['text']}")
        for candidate in post["candidates"]:
            typer.echo(f"  candidate {candidate['post_id']}: {candidate['text']}")


@review_app.command("approve")
@friendly
def review_approve(post_id: str = typer.Argument(..., help="A waiting post (see `crowdtune review list`).")):
    """Publish the post as it is."""
    _decide(post_id, "approve")


@review_app.command("reject")
@friendly
def review_reject(post_id: str = typer.Argument(..., help="A waiting post.")):
    """Never publish the post (in pick mode: none of the candidates)."""
    _decide(post_id, "reject")


@review_app.command("edit")
@friendly
def review_edit(post_id: str = typer.Argument(..., help="A waiting post."),
                text: str = typer.Argument(..., help="The text to publish instead.")):
    """Publish TEXT instead of the post (the original is kept in the decision)."""
    _decide(post_id, "edit", text=text)


@review_app.command("pick")
@friendly
def review_pick(post_id: str = typer.Argument(..., help="A waiting post."),
                candidate_id: str = typer.Argument(..., help="One of its candidates (or the post itself).")):
    """Publish one of the slot's candidates instead of the rule's choice."""
    _decide(post_id, "pick", candidate_id=candidate_id)


@app.command()
@friendly
def logs(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing events as they come (Ctrl-C ends)."),
    run: str | None = typer.Option(None, "--run", help="Only the events of this run."),
    face: str | None = typer.Option(None, "--face", help="Only the events of this face."),
    job: str | None = typer.Option(None, "--job", help="Only the events of this job."),
    lines: int = typer.Option(50, "--lines", "-n", min=0, help="How many past events to show first (0 = all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON lines as they are in the files."),
):
    """Show the events of every Crowdtune process on this machine (<data_dir>/logs/*.jsonl), merged by time."""
    from crowdtune.runtime.logs import EventFilter, follow_events, format_event, read_events

    log_dir = load_settings().log_dir
    keep = EventFilter(run_id=run, face_id=face, job_id=job)

    def show(event: dict) -> None:
        typer.echo(json.dumps(event, ensure_ascii=False) if as_json else format_event(event))

    if not log_dir.is_dir() and not follow:
        raise CrowdtuneError(f"There are no event logs in {log_dir} yet.",
                             "Start Crowdtune (`crowdtune up` or `crowdtune worker`) with this data folder, "
                             "or set CROWDTUNE_DATA_DIR to the folder it runs with.")
    for event in read_events(log_dir, keep, last=lines or None) if log_dir.is_dir() else []:
        show(event)
    if follow:
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for event in follow_events(log_dir, keep):
                show(event)
        except KeyboardInterrupt:
            pass


@app.command()
@friendly
def recover():
    """Requeue jobs whose worker on this machine died (workers also do this when they start)."""
    from crowdtune.runtime.queues import connect
    from crowdtune.runtime.recovery import requeue_orphans

    requeued = requeue_orphans(connect(load_settings()))
    typer.echo(f"Requeued {len(requeued)} job(s)" + (": " + ", ".join(requeued) if requeued else "."))


@app.command()
@friendly
def generate(
    version: str | None = typer.Option(None, help="Model version id (see the Models page), or `latest` for the "
                                                  "newest; default: the base model."),
    base_model: str | None = typer.Option(None, help="Base model when no version is given "
                                                     "(default: the base_model setting)."),
    count: int = typer.Option(5, min=1, max=200, help="How many posts."),
    prompt: list[str] = typer.Option([], help="Optional prompt/context (repeatable; one post per prompt)."),
    set_: list[str] = typer.Option([], "--set", help="Sampling setting key=value, e.g. --set temperature=0.7."),
):
    """Print sampled posts from a version (runs on a worker; nothing is published)."""
    from crowdtune.actions import generate_samples
    from crowdtune.runtime.queues import connect
    from crowdtune.store.reads import StoreReader, newest_version_id

    settings = load_settings()
    if version == "latest":
        version = newest_version_id(StoreReader.from_settings(settings))
        if version is None:
            raise CrowdtuneError("There is no model version yet, so `--version latest` has nothing to sample.",
                                 "Train one first: `crowdtune train offline --face tweets` (or the Overview's "
                                 "first steps), or leave --version out to sample the base model.")
    job = generate_samples(connect(settings), version, base_model, count, parse_assignments(set_), prompt)
    for i, post in enumerate(follow_job(job, "sampling") or [], start=1):
        mark = "" if post["kept"] else f"  [rejected: {post['rejected']}]"
        typer.echo(f"{i}. {post['text']}{mark}")

@app.command("export")
@friendly
def export_(
    version: str = typer.Argument(..., help="The model version id (see the Models page)."),
    out: Path = typer.Option(..., "--out", help="The folder to write (created if missing)."),
    merged: bool = typer.Option(False, "--merged", help="Merge the adapter into the base model: loads with plain "
                                                        "transformers, no peft."),
    hub: str | None = typer.Option(None, "--hub", help="Also push the folder to this hub repo (e.g. me/my-channel); "
                                                       "the token comes from HF_TOKEN or `hf auth login`."),
):
    """Export a version with a model card: the LoRA adapter, or with --merged the base model with it merged in.
    Runs here, reading the store file and the artifacts from this machine (the Models page's button runs it on a
    worker instead)."""
    from crowdtune.store.reads import StoreReader, version_card
    from crowdtune.training.export import VersionCard, push_to_hub, write_export

    settings = load_settings()
    answer = version_card(StoreReader.from_settings(settings), version)
    if answer is None:
        raise CrowdtuneError(f"There is no model version {version!r}.", "See the version ids on the Models page.")
    write_export(answer["version"]["artifact_url"], out, VersionCard.from_read(answer), merged=merged,
                 cache_dir=settings.data_dir / "models")
    typer.echo(f"Exported {version} ({'merged' if merged else 'adapter'}) to {out}, with its model card README.md.")
    if hub:
        typer.echo(f"Pushed to {push_to_hub(out, hub)}.")


# Every config a user sets, in the order docs/CONFIG.md shows them: name -> "module:class".
CONFIGS = {
    "Settings": "crowdtune.settings:Settings",
    "SFTConfig": "crowdtune.training.configs:SFTConfig",
    "GenerationConfig": "crowdtune.training.configs:GenerationConfig",
    "OnlineConfig": "crowdtune.online.controller:OnlineConfig",
    "GuidedConfig": "crowdtune.training.rl:GuidedConfig",
    "ReinforceConfig": "crowdtune.training.rl:ReinforceConfig",
    "PolicyGradientConfig": "crowdtune.training.rl:PolicyGradientConfig",
    "RewardModelConfig": "crowdtune.training.rl:RewardModelConfig",
    "RewardConfig": "crowdtune.training.rl:RewardConfig",
    "ScorerConfig": "crowdtune.scoring:ScorerConfig",
    "DatasetConfig": "faces.dataset:DatasetConfig",
    "ColumnMapping": "faces.dataset:ColumnMapping",
    "SandboxConfig": "faces.sandbox:SandboxConfig",
    "AudienceConfig": "faces.audience:AudienceConfig",
    "MastodonConfig": "faces.mastodon:MastodonConfig",
    "BlueskyConfig": "faces.bluesky:BlueskyConfig",
    "DiscordConfig": "faces.discord:DiscordConfig",
    "RedditConfig": "faces.reddit:RedditConfig",
    "RetryPolicy": "faces.retry:RetryPolicy",
}
# A generated table in a Markdown file: `<!-- config-docs NAME -->`, the table, `<!-- /config-docs -->`.
MARKED_TABLE = re.compile(r"(<!-- config-docs (\w+) -->\n)(.*?)(<!-- /config-docs -->)", re.S)


def config_class(name: str):
    """The config class registered as `name` in CONFIGS; CrowdtuneError naming the known ones otherwise."""
    if name not in CONFIGS:
        raise CrowdtuneError(f"There is no config called {name!r}.", f"Use one of: {', '.join(CONFIGS)}.")
    module, attribute = CONFIGS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def shown_default(field) -> str:
    """A field's default as a user writes it (JSON for strings, lists and dicts); a nested config as `Name()`,
    a folder computed from the environment by its function's name."""
    from pydantic import BaseModel

    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return f"{type(value).__name__}()"
    if isinstance(value, Path):
        return f"{field.default_factory.__name__}()" if field.default_factory else json.dumps(str(value))
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return json.dumps(value)


def config_table(name: str) -> str:
    """The Markdown table of config `name`: one row per field, its default and its description."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for field_name, field in config_class(name).model_fields.items():
        cells = [f"`{field_name}`", f"`{shown_default(field)}`", field.description or ""]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def refresh_config_tables(text: str) -> str:
    """Markdown `text` with every marked table (see MARKED_TABLE) generated again from its config's fields."""
    return MARKED_TABLE.sub(lambda m: f"{m[1]}\n{config_table(m[2])}\n{m[4]}", text)


@app.command("config-docs")
@friendly
def config_docs(
    names: list[str] | None = typer.Argument(None, help="Configs to show, e.g. SFTConfig (default: all)."),
    write: list[Path] = typer.Option([], help="Regenerate the marked tables in this Markdown file instead "
                                              "(repeatable), e.g. --write README.md --write docs/CONFIG.md."),
):
    """Print each config's settings, defaults and meanings as Markdown tables, read from the fields."""
    for path in write:
        text = path.read_text()
        fresh = refresh_config_tables(text)
        path.write_text(fresh)
        count = len(MARKED_TABLE.findall(text))
        typer.echo(f"{path}: {count} table(s), {'updated' if fresh != text else 'already current'}.")
    if write:
        return
    for name in names or CONFIGS:
        typer.echo(f"## {name}\n\n{config_table(name)}")


def main() -> None:
    try:
        app()
    except CrowdtuneError as exc:  # raised while building settings, before a command's own wrapper
        typer.secho(f"Error: {exc.problem}", fg="red", err=True)
        typer.echo(f"Fix: {exc.fix}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
