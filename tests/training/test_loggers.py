"""Runs log to Lightning's own trackers the same figures the store gets: TensorBoard event files, CSV rows,
an MLflow file store; a tracker whose package is missing is named with its extra."""

from __future__ import annotations

import csv
import importlib.util
import math

import pytest

from crowdtune.training.loggers import SinkLogger, TrackerUnavailable, log_figures, tracker_loggers
from crowdtune.training.sft import SFTConfig, train_sft

FAST = dict(batch_size=4, block_size=64, learning_rate=1e-2, warmup_steps=0, lora_rank=16, lora_alpha=32,
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
    config = SFTConfig(**{**FAST, "eval_samples": 2}, max_steps=10, eval_every=5, eval_max_new_tokens=8)
    result = train_sft(config, fresh_posts[:60], tiny_model_dir, checkpoint_dir=tmp_path / "ckpt",
                       loggers=[*trackers, SinkLogger(lambda step, m: stored.append((step, m)))])
    evaluations = [(step, m) for step, m in stored if "val_loss" in m]
    assert [step for step, _ in evaluations] == [m["step"] for m in result.metrics] == [5, 10]
    val = {step: m["val_loss"] for step, m in evaluations}
    train_loss = {step: m["train/loss"] for step, m in stored if "train/loss" in m}
    assert sorted(train_loss) == [5, 10]  # the step figures, every log_every_n_steps (5) steps

    # TensorBoard: one event folder per face and run, every evaluation figure at its step
    events = EventAccumulator(str(tmp_path / "tracking" / "tensorboard" / "tweets" / "offline-1"))
    events.Reload()
    assert {"val_loss", "train_loss", "gap", "lr", "best_val_loss"} <= set(events.Tags()["scalars"])
    assert {e.step: e.value for e in events.Scalars("val_loss")} == pytest.approx(val, rel=1e-6)
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(train_loss, rel=1e-6)
    assert {"train/lr", "train/grad_norm"} <= set(events.Tags()["scalars"])
    # each evaluation's sampled posts in the text tab, at its step
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("samples/text_summary")}
    assert sorted(texts) == [5, 10] and texts[5].startswith("1. ") and "\n\n2. " in texts[5]

    # CSV: one row per evaluation, one per logged step
    rows = csv_rows(tmp_path / "tracking" / "csv" / "tweets" / "offline-1" / "metrics.csv")
    evaluated = [r for r in rows if r.get("val_loss")]
    assert [int(r["step"]) for r in evaluated] == [5, 10]
    assert {int(r["step"]): float(r["val_loss"]) for r in evaluated} == pytest.approx(val)
    assert float(evaluated[-1]["train_loss"]) == pytest.approx(evaluations[-1][1]["train_loss"])
    assert {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")} == pytest.approx(train_loss)

    if HAS_MLFLOW:  # the mlflow-skinny client reads its own file store
        from mlflow.tracking import MlflowClient

        mlflow_logger = trackers[2]
        client = MlflowClient(mlflow_logger._tracking_uri)
        history = client.get_metric_history(mlflow_logger.run_id, "val_loss")
        assert {m.step: m.value for m in history} == pytest.approx(val)
        assert [a.path for a in client.list_artifacts(mlflow_logger.run_id, "samples")] == [
            "samples/step-000005.txt", "samples/step-000010.txt"]


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


def test_the_store_keeps_an_evaluation_its_samples_and_the_step_figures_of_one_step_each_once(settings, redis_conn):
    from crowdtune.runtime.queues import queue
    from crowdtune.runtime.workers import StoreWorker
    from crowdtune.store.reads import StoreReader
    from crowdtune.store.writer import initialise
    from crowdtune.store.writes import StoreWriter
    from crowdtune.training.loggers import StoreLogger

    initialise(settings.store_path)
    logger = StoreLogger(StoreWriter(redis_conn), "offline-1")

    def apply_queued_writes():
        StoreWorker([queue("store", redis_conn)], connection=redis_conn).work(burst=True)

    logger.log_metrics({"val_loss": 2.0, "train_loss": 2.5}, 10)
    logger.log_metrics({"train/loss": 2.4, "train/lr": 1e-3}, 10)
    logger.log_samples(["first post", "second post"], 10)  # the evaluation's sampled posts
    apply_queued_writes()
    # a run resumed from an older checkpoint logs the same step again, with other values: the first stays
    logger.log_metrics({"val_loss": 9.0, "train_loss": 9.0}, 10)
    logger.log_metrics({"train/loss": 9.0, "train/lr": 9.0}, 10)
    logger.log_samples(["other", "texts"], 10)
    apply_queued_writes()
    reader = StoreReader(settings.store_path)
    rows = reader.rows("SELECT name, step, value FROM metrics ORDER BY name")
    assert rows == [("train/loss", 10, 2.4), ("train/lr", 10, 1e-3), ("train_loss", 10, 2.5), ("val_loss", 10, 2.0)]
    assert reader.rows("SELECT step, sample, text FROM evaluation_samples ORDER BY sample") == [
        (10, 0, "first post"), (10, 1, "second post")]


@pytest.mark.skipif(not HAS_MLFLOW, reason='needs the [mlflow] extra')
def test_every_process_of_a_run_logs_to_one_mlflow_run(tmp_path):
    # An online run builds its trackers anew for every update: they must all land in the run's one MLflow run.
    from mlflow.tracking import MlflowClient

    first = tracker_loggers(["mlflow"], folder=tmp_path, face_id="sandbox", run_id="online-1")[0]
    log_figures([first], 1, {"score_mean": 1.0})
    first.finalize("success")
    other = tracker_loggers(["mlflow"], folder=tmp_path, face_id="sandbox", run_id="online-2")[0]
    log_figures([other], 1, {"score_mean": 5.0})
    again = tracker_loggers(["mlflow"], folder=tmp_path, face_id="sandbox", run_id="online-1")[0]
    log_figures([again], 2, {"score_mean": 2.0})
    again.finalize("success")

    assert again.run_id == first.run_id != other.run_id
    client = MlflowClient(first._tracking_uri)
    history = client.get_metric_history(first.run_id, "score_mean")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0)]
    assert len(client.search_runs([first.experiment_id])) == 2
