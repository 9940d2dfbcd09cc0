"""Where a run's figures go: the store, through a Lightning Logger, and any of Lightning's own trackers.

    StoreLogger(writer, run_id)          log_metrics(metrics, step) -> one store batch per step, applied once
    tracker_loggers(names, ...)          TensorBoard, CSV, MLflow, W&B loggers by name (each an optional extra)
    run_trackers(settings, face, run)    the same, as the `loggers` setting says
    finalize_trackers(trackers, status)  close them after work done outside a Trainer; never raises
    log_figures(loggers, step, metrics)  what a step outside a Trainer (an online update's record) logs
    log_samples(loggers, step, texts)    an evaluation's sampled posts: the store, and the trackers' text views

Both trainers hand these to `pl.Trainer(logger=...)`; their evaluations (SFT) and updates (RL) log
through `trainer.loggers`, so every logger sees the same (step, figures) as the store. A tracker
logs into `<tracking_dir>/<kind>/<face>/<run_id>/`; an online run's updates all land in its run's
folder (MLflow: its one MLflow run, found by the `crowdtune_run_id` tag), one point per update.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from crowdtune.errors import CrowdtuneError
from crowdtune.settings import Settings
from crowdtune.store.writes import StoreWriter, metrics_op, samples_op

log = logging.getLogger(__name__)

# tracker -> (module it needs, the extra that installs it)
TRACKER_EXTRAS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "csv": (None, None),  # Lightning writes CSV itself
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}


class TrackerUnavailable(CrowdtuneError):
    """A logger named in the `loggers` setting whose package is not installed."""


class StoreLogger(Logger):
    """The store as a Lightning Logger: each `log_metrics(metrics, step)` is one batch of metric rows.

    Exactly once per (run, name, step): the batch's write id is `metrics:<run_id>:<step>`, so a step
    logged again after a crash (the SFT evaluation re-emits what it had not recorded as emitted)
    changes nothing. Figures named `<group>/<name>` (the step figures, "train/loss") are a batch of
    their own at the same step: `metrics:<run_id>:<step>:<group>`. `after_write()` runs after each
    batch (the offline job mirrors checkpoints there).
    Hyperparameters are not stored here: the run's config is already in its `runs` row.
    """

    def __init__(self, writer: StoreWriter, run_id: str, after_write: Callable[[], None] | None = None):
        super().__init__()
        self.writer, self.run_id, self.after_write = writer, run_id, after_write

    @property
    def name(self) -> str:
        return "crowdtune-store"

    @property
    def version(self) -> str:
        return self.run_id

    @property
    def experiment(self) -> StoreWriter:
        return self.writer

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None:
            raise ValueError("StoreLogger needs a step: metric rows are keyed by (run, name, step)")
        values = {name: float(value) for name, value in metrics.items() if value is not None}
        self.writer.submit([metrics_op(self.run_id, int(step), values)], write_id=metrics_write_id(
            self.run_id, int(step), values))
        if self.after_write is not None:
            self.after_write()

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None

    @rank_zero_only
    def log_samples(self, texts: list[str], step: int) -> None:
        """The posts sampled at the evaluation at `step`, as evaluation_samples rows (once per run and step)."""
        self.writer.submit([samples_op(self.run_id, int(step), list(texts))], write_id=f"samples:{self.run_id}:{step}")


def metrics_write_id(run_id: str, step: int, names: Iterable[str]) -> str:
    """The write id of a metrics batch: one per run and step, and per group of `group/name` figures."""
    groups = sorted({name.split("/", 1)[0] for name in names if "/" in name})
    return f"metrics:{run_id}:{step}" + "".join(f":{group}" for group in groups)


class SinkLogger(Logger):
    """Any `on_metrics(step, {name: value})` callable as a Logger (tests, benchmarks, scripts)."""

    def __init__(self, sink: Callable[[int, dict[str, float]], None],
                 samples: Callable[[int, list[str]], None] | None = None):
        super().__init__()
        self.sink, self.samples = sink, samples

    @property
    def name(self) -> str:
        return "sink"

    @property
    def version(self) -> str:
        return "0"

    @property
    def experiment(self) -> Callable:
        return self.sink

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.sink(int(step or 0), dict(metrics))

    @rank_zero_only
    def log_samples(self, texts: list[str], step: int) -> None:
        if self.samples is not None:
            self.samples(int(step), list(texts))

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None


def tracker_loggers(names: Iterable[str], *, folder: Path, face_id: str, run_id: str,
                    mlflow_tracking_uri: str | None = None, wandb_project: str = "crowdtune") -> list[Logger]:
    """Lightning's own loggers for the trackers `names` (the `loggers` setting), writing under `folder`.

    In: tracker names among TRACKER_EXTRAS; the tracking folder; the face and run, which name the
    experiment and the run in every tracker. Out: one Logger per name, in order.
    Raises TrackerUnavailable naming the extra to install when a tracker's package is missing.
    """
    folder = Path(folder)
    loggers: list[Logger] = []
    for name in names:
        if name not in TRACKER_EXTRAS:
            raise TrackerUnavailable(f"There is no logger called {name!r}.",
                                     f"Use some of: {', '.join(TRACKER_EXTRAS)} (the `loggers` setting).")
        module, extra = TRACKER_EXTRAS[name]
        if module is not None and importlib.util.find_spec(module) is None:
            raise TrackerUnavailable(
                f"The {name!r} logger needs the {module!r} package, which is not installed.",
                f'Install the extra: pip install -e ".[{extra}]", or drop {name!r} from the `loggers` setting.')
        loggers.append(_build(name, folder, face_id, run_id, mlflow_tracking_uri, wandb_project))
    return loggers


def finalize_trackers(trackers: Iterable[Logger], status: str) -> None:
    """Close each tracker with Lightning's status ("success", "failed"); one that cannot be reached is
    logged, not raised: the figures are in the store, and the job's outcome must not hang on a tracker."""
    for tracker in trackers:
        try:
            tracker.finalize(status)
        except Exception:  # noqa: BLE001 - any tracker's own failure
            log.warning("could not finalize the %s tracker", type(tracker).__name__, exc_info=True)


def run_trackers(settings: Settings, face_id: str, run_id: str) -> list[Logger]:
    """tracker_loggers for a run, as the settings (loggers, tracking_dir, mlflow_tracking_uri, wandb_project) say."""
    return tracker_loggers(settings.loggers, folder=settings.tracking, face_id=face_id, run_id=run_id,
                           mlflow_tracking_uri=settings.mlflow_tracking_uri, wandb_project=settings.wandb_project)


def _build(name: str, folder: Path, face_id: str, run_id: str, mlflow_tracking_uri: str | None,
           wandb_project: str) -> Logger:
    from pytorch_lightning import loggers as pl_loggers

    if name == "tensorboard":
        # version = the run id: a resumed run and an online run's later updates append to one folder
        return pl_loggers.TensorBoardLogger(folder / "tensorboard", name=face_id, version=run_id,
                                            default_hp_metric=False)
    if name == "csv":
        logger = pl_loggers.CSVLogger(folder / "csv", name=face_id, version=run_id)
        _continue_csv(logger)
        return logger
    if name == "mlflow":
        uri = mlflow_tracking_uri
        if uri is None:
            # MLflow 3 keeps its file store only on request; the client-only extra (mlflow-skinny) has no
            # database store, and a folder needs no server: set a tracking URI for anything else
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (folder / "mlruns").absolute().as_uri()
        experiment = f"crowdtune-{face_id}"
        # the run's earlier MLflow run, if any: each logger would otherwise open a new one (and an online
        # run builds its trackers once per update)
        return pl_loggers.MLFlowLogger(experiment_name=experiment, run_name=run_id, tracking_uri=uri,
                                       tags={"crowdtune_run_id": run_id, "face": face_id},
                                       run_id=_mlflow_run_of(uri, experiment, run_id))
    # W&B: id = run id, so attempts and updates of one run are one W&B run (needs `wandb login` or WANDB_MODE)
    return pl_loggers.WandbLogger(project=wandb_project, name=run_id, id=_wandb_id(run_id), resume="allow",
                                  save_dir=str(folder), group=face_id)


def _mlflow_run_of(tracking_uri: str, experiment_name: str, run_id: str) -> str | None:
    """The id of the MLflow run tagged with Crowdtune's `run_id` in the experiment, None if there is none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    # run ids are actions.new_id's (letters, digits, dashes): nothing to escape in the filter
    found = client.search_runs([experiment.experiment_id], filter_string=f"tags.crowdtune_run_id = '{run_id}'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    return found[0].info.run_id if found else None


def _wandb_id(run_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in run_id)[:128]


def _continue_csv(logger) -> None:
    """Let a later process (a resumed run, an online run's next update) append to the run's metrics.csv:
    Lightning's writer deletes the file it finds, so its rows go back in as rows still to be saved."""
    path = Path(logger.log_dir) / "metrics.csv"
    earlier = []
    if path.is_file():
        with path.open(newline="") as file:
            earlier = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(file)]
    logger.experiment.metrics[:0] = earlier  # creating the writer removed the file: write it back at once
    logger.experiment.save()


def log_figures(loggers: Iterable[Logger], step: int, metrics: Mapping[str, float]) -> None:
    """Log one step's finite figures to each logger and flush it (for work outside a Trainer)."""
    finite = {k: float(v) for k, v in metrics.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if not finite:
        return
    for logger in loggers:
        logger.log_metrics(finite, step)
        logger.finalize("success")


def log_samples(loggers: Iterable[Logger], step: int, texts: list[str]) -> None:
    """An evaluation's sampled posts to each logger, each as it keeps text: the store's evaluation_samples rows,
    TensorBoard's text tab (tag "samples"), an MLflow artifact samples/step-<N>.txt, a W&B table."""
    from pytorch_lightning import loggers as pl_loggers

    numbered = [f"{i + 1}. {text}" for i, text in enumerate(texts)]
    for logger in loggers:
        if isinstance(logger, (StoreLogger, SinkLogger)):
            logger.log_samples(texts, step)
        elif isinstance(logger, pl_loggers.TensorBoardLogger):
            logger.experiment.add_text("samples", "\n\n".join(numbered), global_step=step)
        elif isinstance(logger, pl_loggers.MLFlowLogger):
            logger.experiment.log_text(logger.run_id, "\n".join(numbered), f"samples/step-{step:06d}.txt")
        elif isinstance(logger, pl_loggers.WandbLogger):
            logger.log_text(key="samples", columns=["sample", "text"], data=[[i, t] for i, t in enumerate(texts)],
                            step=step)
