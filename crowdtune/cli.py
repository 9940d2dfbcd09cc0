"""The `crowdtune` command: headless use of everything the app does."""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Optional

import typer

from crowdtune.errors import CrowdtuneError
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
            raise typer.Exit(2)

    return wrapper


def settings_with(**overrides):
    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
@friendly
def up(
    port: Optional[int] = typer.Option(None, help="Port of the app (default 8501)."),
    host: Optional[str] = typer.Option(None, help="Address the app listens on (default localhost)."),
    no_app: bool = typer.Option(False, "--no-app", help="Start Redis and workers only."),
):
    """Start Redis (embedded unless REDIS_URL), the store writer, the workers and the app."""
    from crowdtune.supervisor import run_up

    run_up(settings_with(app_port=port, app_host=host), with_app=not no_app)


@app.command()
@friendly
def worker(
    queues: str = typer.Option("train,default", help="Comma-separated queues to serve, in priority order."),
    store: bool = typer.Option(False, "--store", help="Be the single store writer (serves only the 'store' queue)."),
    burst: bool = typer.Option(False, help="Quit when the queues are empty."),
):
    """Run one worker. On another machine, set REDIS_URL to the shared server first."""
    from crowdtune.queue import connect, queue
    from crowdtune.settings import QUEUE_STORE
    from crowdtune.worker import PreloadedWorker, StoreWorker

    settings = load_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    conn = connect(settings)
    if store:
        w = StoreWorker([queue(QUEUE_STORE, conn)], connection=conn, maintenance_interval=settings.worker_maintenance_seconds)
    else:
        names = [n.strip() for n in queues.split(",") if n.strip()]
        if QUEUE_STORE in names:
            raise CrowdtuneError(
                "The 'store' queue is served only by the store worker.", "Use `crowdtune worker --store` for it."
            )
        w = PreloadedWorker([queue(n, conn) for n in names], connection=conn,
                            maintenance_interval=settings.worker_maintenance_seconds)
    w.work(with_scheduler=True, burst=burst)


@app.command()
@friendly
def status(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")):
    """Show Redis, workers, queues, failed and scheduled jobs, and the store."""
    from dataclasses import asdict

    from crowdtune.status import system_status

    s = system_status(load_settings())
    if as_json:
        typer.echo(json.dumps(asdict(s), default=str, indent=2))
        raise typer.Exit(0 if s.redis_ok and not s.store_error else 1)
    typer.echo(f"Redis: {s.redis_url} " + ("ok (version %s)" % s.redis_version if s.redis_ok else "UNREACHABLE"))
    if s.redis_error:
        typer.echo("  " + s.redis_error.replace("\n", "\n  "))
    typer.echo(f"Workers: {len(s.workers)}")
    for w in s.workers:
        job = f" running {w.current_job_func} ({w.current_job})" if w.current_job else ""
        typer.echo(f"  {w.name} [{','.join(w.queues)}] {w.state}{job}")
    if s.queues:
        typer.echo("Queues: " + "  ".join(f"{q.name}: {q.queued} queued, {q.started} running, {q.failed} failed, {q.scheduled} scheduled" for q in s.queues))
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


def main() -> None:
    try:
        app()
    except CrowdtuneError as exc:  # raised while building settings, before a command's own wrapper
        typer.secho(f"Error: {exc.problem}", fg="red", err=True)
        typer.echo(f"Fix: {exc.fix}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
