"""Runs log to Lightning's own trackers the same figures the store gets: TensorBoard event files, CSV rows,
an MLflow file store; a tracker whose package is missing is named with its extra."""

from __future__ import annotations

import csv
import importlib.util
import math

import pytest

from crowdtune.training.loggers import SinkLogger, TrackerUnavailable, log_figures, tracker_loggers
from crowdtune.training.sft import SFTConfig, train_sft

FAST = dict(batch_size=4, block_size=32, learning_rate=1e-2, warmup_steps=0, lora_rank=16, lora_alpha=32,
            lora_dropout=0.0, eval_samples=0, style_metrics=False, copy_embedding_threshold=None)
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason='needs the [tensorboard] extra')
def test_an_sft_run_logs_its_evaluations_to_tensorboard_csv_and_mlflow_as_to_the_store(
        tiny_model_dir, fresh_posts, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    names = ["tensorboard", "csv", *(["mlflow"] if HAS_MLFLOW else [])]
    trackers = tracker_loggers(names, folder=tmp_path / "tracking", face_id="tweets", run_id="offline-1")
    stored: list[tuple[int, dict]] = []  # what the store's logger receives, through the same Logger API
    config = SFTConfig(**FAST, max_steps=10, eval_every=5)
    result = train_sft(config, fresh_posts[:60], tiny_model_dir, checkpoint_dir=tmp_path / "ckpt",
                       loggers=[*trackers, SinkLogger(lambda step, m: stored.append((step, m)))])
    assert [step for step, _ in stored] == [m["step"] for m in result.metrics] == [5, 10]
    val = {step: m["val_loss"] for step, m in stored}

    # TensorBoard: one event folder per face and run, every evaluation figure at its step
    events = EventAccumulator(str(tmp_path / "tracking" / "tensorboard" / "tweets" / "offline-1"))
    events.Reload()
    assert {"val_loss", "train_loss", "gap", "lr", "best_val_loss"} <= set(events.Tags()["scalars"])
    assert {e.step: e.value for e in events.Scalars("val_loss")} == pytest.approx(val, rel=1e-6)

    # CSV: one row per evaluation
    rows = csv_rows(tmp_path / "tracking" / "csv" / "tweets" / "offline-1" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [5, 10]
    assert {int(r["step"]): float(r["val_loss"]) for r in rows} == pytest.approx(val)
    assert float(rows[-1]["train_loss"]) == pytest.approx(stored[-1][1]["train_loss"])

    if HAS_MLFLOW:  # the mlflow-skinny client reads its own file store
        from mlflow.tracking import MlflowClient

        mlflow_logger = trackers[2]
        history = MlflowClient(mlflow_logger._tracking_uri).get_metric_history(mlflow_logger.run_id, "val_loss")
        assert {m.step: m.value for m in history} == pytest.approx(val)


def test_later_processes_append_to_a_runs_csv_even_with_other_columns(tmp_path):
    # each online update is a job of its own, logging its figures at its update step
    for step, figures in [(0, {"loss": 1.0}), (1, {"loss": 0.5, "score_mean": 3.0}), (2, {"score_mean": math.nan})]:
        log_figures(tracker_loggers(["csv"], folder=tmp_path, face_id="sandbox", run_id="online-1"), step, figures)
    rows = csv_rows(tmp_path / "csv" / "sandbox" / "online-1" / "metrics.csv")
    assert [(r["step"], r["loss"], r["score_mean"]) for r in rows] == [("0", "1.0", ""), ("1", "0.5", "3.0")]


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_without_its_package_names_the_extra_to_install(tmp_path):
    with pytest.raises(TrackerUnavailable) as error:
        tracker_loggers(["csv", "wandb"], folder=tmp_path, face_id="f", run_id="r")
    assert "wandb" in error.value.problem and '".[wandb]"' in error.value.fix
    with pytest.raises(TrackerUnavailable, match="no logger called 'neptune'"):
        tracker_loggers(["neptune"], folder=tmp_path, face_id="f", run_id="r")
