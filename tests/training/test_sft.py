"""train_sft for real on the tiny model: early stopping, copy metric, stop flag, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from peft import PeftModel

from crowdtune.errors import CrowdtuneError
from crowdtune.training.data import DatasetError
from crowdtune.training.generation import GenerationConfig, sample
from crowdtune.training.guards import CopyIndex
from crowdtune.training.loggers import SinkLogger
from crowdtune.training.models import ModelError, load_base_model
from crowdtune.training.sft import SFTConfig, lr_lambda, train_sft

# Small, fast settings shared by the tests: no embedding model unless a test needs it.
FAST = dict(batch_size=4, block_size=64, learning_rate=1e-2, warmup_steps=0, lora_rank=16, lora_alpha=32,
            lora_dropout=0.0, eval_samples=0, style_metrics=False, copy_embedding_threshold=None)


def test_schedule_warms_up_then_decays_to_the_floor():
    factor = lr_lambda(warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == 1.0 and factor(12) == pytest.approx(0.55) and factor(20) == pytest.approx(0.1)


def test_early_stopping_fires_on_a_dataset_built_to_overfit(tiny_model_dir, fresh_posts, tmp_path):
    # 10 posts to memorise, 10 newer ones to validate on: val loss must turn up while train loss falls
    config = SFTConfig(**FAST, max_steps=400, eval_every=10, early_stopping_patience=2, val_fraction=0.5,
                       min_lr_ratio=1.0)
    seen: list[tuple[int, dict]] = []
    result = train_sft(config, fresh_posts[:20], tiny_model_dir, checkpoint_dir=tmp_path,
                       on_metrics=lambda step, m: seen.append((step, m)))
    assert result.stopped_reason == "early_stopped"
    assert result.steps < 400
    val = {step: m["val_loss"] for step, m in seen}
    assert result.best_step == min(val, key=val.get) and result.best_val_loss == min(val.values())
    # stopped after exactly `patience` evaluations without improvement
    assert [s for s in val if s > result.best_step] == [result.best_step + 10, result.best_step + 20]
    assert seen[-1][1]["train_loss"] < seen[0][1]["train_loss"]  # it kept learning the training posts
    assert seen[-1][1]["gap"] > seen[0][1]["gap"]
    assert result.adapter_dir == tmp_path / f"adapter-step{result.best_step}"
    assert sorted(p.name for p in tmp_path.glob("adapter-step*")) == [result.adapter_dir.name]


def test_copy_rate_catches_a_memorising_model_but_not_a_fresh_one(tiny_model_dir, fresh_posts, tmp_path):
    handful = fresh_posts[:10]
    config = SFTConfig(**{**FAST, "eval_samples": 16}, max_steps=300, eval_every=100, early_stopping_patience=None,
                       min_lr_ratio=1.0, eval_temperature=0.7)
    result = train_sft(config, handful, tiny_model_dir, checkpoint_dir=tmp_path)
    memorised = result.metrics[-1]
    assert memorised["step"] == 300 and memorised["copy_rate"] >= 0.5
    assert memorised["distinct_2"] < 0.8

    model, tokenizer = load_base_model(tiny_model_dir)
    fresh = sample(model, tokenizer,
                   GenerationConfig(num_samples=16, max_new_tokens=48, temperature=0.7, top_p=0.95, seed=1))
    train_texts = sorted(handful, key=lambda p: p["created_at"])[:9]
    copies = CopyIndex([p["text"] for p in train_texts], embedding_threshold=None)
    assert copies.copy_rate([s.text for s in fresh]) <= 0.1


def test_guard_and_style_metrics_are_reported_at_each_evaluation(tiny_model_dir, fresh_posts, tmp_path):
    config = SFTConfig(**{**FAST, "eval_samples": 4, "style_metrics": True, "copy_embedding_threshold": 0.95},
                       max_steps=10, eval_every=5, eval_max_new_tokens=16, progress_every=5)
    progress = []
    result = train_sft(config, fresh_posts[:60], tiny_model_dir, checkpoint_dir=tmp_path,
                       on_progress=lambda *args: progress.append(args))
    assert [m["step"] for m in result.metrics] == [5, 10]
    for name in ["val_loss", "val_ppl", "train_loss", "gap", "copy_rate", "distinct_1", "distinct_2",
                 "style_similarity", "style_reference"]:
        assert name in result.metrics[-1]
    steps = [p for p in progress if p[4] == "training"]
    assert [p[0] for p in steps] == [5, 5, 10, 10]  # every 5 steps, and once more when an evaluation ends
    assert steps[-1][1] == 10 and steps[-1][3] == 0.0
    # 60 tweets of ~40 tiny-tokenizer tokens, whole in blocks of 64: about one a block
    assert 0 < result.data["train_padding_fraction"] < 0.3


def test_should_stop_leaves_a_loadable_adapter(tiny_model_dir, fresh_posts, tmp_path):
    steps = []
    config = SFTConfig(**FAST, max_steps=200, eval_every=50, progress_every=1)
    result = train_sft(config, fresh_posts[:60], tiny_model_dir, checkpoint_dir=tmp_path,
                       on_progress=lambda step, *rest: steps.append(step) if rest[-1] == "training" else 0,
                       should_stop=lambda: len(steps) >= 7)
    assert result.stopped_reason == "stopped"
    # Lightning validates once more when stopped mid-epoch; a stop skips that evaluation: the adapter is the last step's
    assert result.steps == 7 and result.best_step is None and result.metrics == []
    assert result.adapter_dir == tmp_path / "adapter-step7"
    base, _ = load_base_model(tiny_model_dir)
    PeftModel.from_pretrained(base, str(result.adapter_dir))
    assert (tmp_path / "last.ckpt").is_file() and not (tmp_path / "result.json").exists()


@pytest.mark.parametrize("phase", ["evaluating: validation loss", "evaluating: sampling",
                                   "evaluating: saving the checkpoint"])
def test_a_stop_during_evaluation_ends_the_run_within_10_s_with_a_loadable_adapter(tiny_model_dir, fresh_posts,
                                                                                    tmp_path, phase):
    # a second evaluation long enough to stop in: 32 samples of up to 400 tokens at a temperature that rarely ends
    config = SFTConfig(**{**FAST, "eval_samples": 32}, max_steps=200, eval_every=5, max_val_batches=None,
                       eval_max_new_tokens=400, eval_temperature=3.0, progress_every=1)
    asked: list[float] = []
    phases: list[tuple[int, str]] = []

    def on_progress(step, total, loss, eta, text):
        phases.append((step, text))
        if step == 10 and text.startswith(phase) and not asked:
            asked.append(time.monotonic())

    result = train_sft(config, fresh_posts[:120], tiny_model_dir, checkpoint_dir=tmp_path, on_progress=on_progress,
                       should_stop=lambda: bool(asked))
    ended = time.monotonic()
    assert asked, f"the run never reached {phase!r} at step 10: {phases[-5:]}"
    assert ended - asked[0] <= 10.0
    assert result.stopped_reason == "stopped" and result.steps == 10
    # the stopped evaluation is dropped (its figures would be partial), unless only its checkpoint was left to write
    assert [m["step"] for m in result.metrics] == ([5, 10] if "checkpoint" in phase else [5])
    assert not any(text.startswith("evaluating") for step, text in phases if step > 10)
    base, _ = load_base_model(tiny_model_dir)
    PeftModel.from_pretrained(base, str(result.adapter_dir))
    assert (tmp_path / "last.ckpt").is_file() and not (tmp_path / "result.json").exists()


def test_progress_reports_evaluation_phases_and_an_eta_that_counts_evaluations(tiny_model_dir, fresh_posts,
                                                                                 tmp_path):
    # evaluations (16 samples of up to 64 tokens) cost far more than the tiny model's steps
    config = SFTConfig(**{**FAST, "eval_samples": 16}, max_steps=20, eval_every=5, eval_max_new_tokens=64,
                       eval_temperature=3.0, progress_every=1, early_stopping_patience=None)
    reports: list[tuple[float, int, float | None, str]] = []
    result = train_sft(config, fresh_posts[:60], tiny_model_dir, checkpoint_dir=tmp_path,
                       on_progress=lambda step, total, loss, eta, phase: reports.append(
                           (time.monotonic(), step, eta, phase)))
    ended = time.monotonic()
    at_five = [phase for _, step, _, phase in reports if step == 5]
    for expected in ["evaluating: validation loss, batch 1 of", "evaluating: sampling 16 posts",
                     "evaluating: copy and style guards on 16 posts", "evaluating: saving the checkpoint"]:
        assert any(p.startswith(expected) for p in at_five), (expected, at_five)
    assert at_five[0] == "training" and at_five[-1] == "training"  # step 5 trained, evaluated, went on
    assert result.eval_seconds > 0
    # At step 6 the first evaluation has been timed; three more are to come (10, 15, 20). The ETA then
    # must match the time that was really left, which the 14 steps alone are far from.
    when, _, eta, _ = next(r for r in reports if r[1] == 6 and r[3] == "training")
    left = ended - when
    # Within a factor of 3: `make test` runs two test processes on the same cores, so how fast the
    # remaining steps go depends on the neighbour's load (the steps-only estimate below is further off).
    assert left / 3 <= eta <= 3.0 * left, (eta, left)
    steps_only = 14 / result.tokens_per_second * 4 * 32  # 14 steps of 4 x 32 tokens at the measured speed
    assert steps_only < 0.5 * left, (steps_only, left)


def test_the_copy_guard_embeds_only_candidates_and_still_finds_a_near_copy():
    from crowdtune.embeddings import embed
    from crowdtune.training.guards import CopyIndex  # what train_sft builds for its evaluations

    posts = [f"Post number {i} talks about topic {i * 7} and nothing else at all" for i in range(500)]
    posts.append("The failing New York Times wrote a totally dishonest story about our great rally in Ohio today")
    embedded: list[int] = []

    def counting(texts):
        embedded.append(len(texts))
        return embed(texts)

    index = CopyIndex(posts, embedding_threshold=0.9, embedder=counting)
    near_copy = "The failing NY Times wrote a totally dishonest story about our big rally in Ohio today!"
    unrelated = "Sunny weather is expected all week in the mountains"
    assert index.ngram_copies([near_copy]) == [False]  # small edits break every 12-word run
    assert index.copy_flags([near_copy, unrelated]) == [True, False]
    assert sum(embedded) <= 2 + 10  # the samples and their few candidates, not 501 posts


def test_auto_defaults_are_small_on_a_cpu_and_explicit_values_stay():
    config = SFTConfig(accelerator="cpu").resolved()
    assert (config.max_steps, config.eval_samples, config.progress_every) == (60, 8, 1)
    explicit = SFTConfig(accelerator="cpu", max_steps=500, eval_samples=0).resolved()
    assert (explicit.max_steps, explicit.eval_samples) == (500, 0)


def test_bad_settings_raise_clear_errors(tiny_model_dir, fresh_posts, tmp_path):
    config = SFTConfig(**FAST, max_steps=2)
    with pytest.raises(ModelError, match="no-such-model"):
        train_sft(config, fresh_posts, "no-such-org/no-such-model", checkpoint_dir=tmp_path / "a")
    with pytest.raises(DatasetError, match="empty"):
        train_sft(config, [{"text": "https://t.co/x", "created_at": 0}], tiny_model_dir, checkpoint_dir=tmp_path / "b")
    with pytest.raises(ModelError, match="q_proj") as error:
        train_sft(config.model_copy(update={"lora_targets": ["q_proj"]}), fresh_posts, tiny_model_dir,
                  checkpoint_dir=tmp_path / "c")
    assert isinstance(error.value, CrowdtuneError) and "c_attn" in error.value.fix


CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
from crowdtune.training.sft import SFTConfig, train_sft
config = SFTConfig.model_validate_json(sys.argv[1])
posts = json.loads(open(sys.argv[2]).read())
log = open(sys.argv[4], "a")
def on_metrics(step, metrics):
    log.write(json.dumps({"step": step, "names": sorted(metrics)}) + "\\n"); log.flush()
train_sft(config, posts, sys.argv[3], checkpoint_dir=sys.argv[5], on_metrics=on_metrics,
          on_progress=lambda *a: time.sleep(0.15))  # slow enough to be killed mid-run
"""


def test_kill_and_resume_continues_steps_without_repeating_metrics(tiny_model_dir, fresh_posts, tmp_path):
    config = SFTConfig(**FAST, max_steps=40, eval_every=5, progress_every=1, early_stopping_patience=None)
    posts = tmp_path / "posts.json"
    posts.write_text(json.dumps([{"text": p["text"], "created_at": str(p["created_at"])} for p in fresh_posts[:80]]))
    log, checkpoints = tmp_path / "metrics.jsonl", tmp_path / "ckpt"
    child = subprocess.Popen([sys.executable, "-c", CHILD, config.model_dump_json(), str(posts), tiny_model_dir,
                              str(log), str(checkpoints)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not ((checkpoints / "last.ckpt").is_file() and log.is_file() and log.read_text().count("\n") >= 2):
        assert child.poll() is None, "the training process ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    first = [json.loads(line) for line in log.read_text().splitlines()]
    assert first[-1]["step"] < 40, "killed too late to test resuming"

    second: list[tuple[int, str]] = []
    progress: list[int] = []
    result = train_sft(config, json.loads(posts.read_text()), tiny_model_dir, checkpoint_dir=checkpoints,
                       on_metrics=lambda step, m: second.extend((step, name) for name in m),
                       on_progress=lambda step, *rest: progress.append(step) if rest[-1] == "training" else 0)
    emitted = [(row["step"], name) for row in first for name in row["names"]] + second
    assert len(emitted) == len(set(emitted)), "a (metric, step) pair was emitted twice"
    assert sorted({step for step, _ in emitted}) == list(range(5, 41, 5))
    assert min(step for step, _ in second) > first[-1]["step"]
    assert progress[0] > 1 and progress[-1] == 40  # resumed mid-run, not from step 0
    assert result.steps == 40 and result.stopped_reason == "completed"
    assert [m["step"] for m in result.metrics] == list(range(5, 41, 5))
    # running a finished run again returns its stored result without training
    again = train_sft(config, [], tiny_model_dir, checkpoint_dir=checkpoints)
    assert again.steps == 40 and again.adapter_dir == result.adapter_dir


def test_chunked_loss_equals_the_models_own_loss_and_gradients(tiny_model_dir, fresh_posts):
    import torch

    from crowdtune.training.data import PostsDataModule
    from crowdtune.training.models import add_lora
    from crowdtune.training.sft import causal_lm_loss

    model, tokenizer = load_base_model(tiny_model_dir)
    model = add_lora(model, rank=4, dropout=0.0)
    batch = next(iter(PostsDataModule(fresh_posts[:40], tokenizer, block_size=32, batch_size=4).val_dataloader()))
    reference = model(**batch).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    for chunk_tokens in (7, 10_000):  # many checkpointed chunks; one chunk, computed directly
        model.zero_grad()
        chunked = causal_lm_loss(model, batch, chunk_tokens=chunk_tokens)
        chunked.backward()
        assert chunked.item() == pytest.approx(reference.item(), abs=1e-5)
        for name, param in model.named_parameters():
            if param.requires_grad:
                assert torch.allclose(param.grad, expected[name], atol=1e-6), (chunk_tokens, name)


def test_step_figures_and_evaluation_samples_reach_the_loggers(tiny_model_dir, fresh_posts, tmp_path):
    config = SFTConfig(**{**FAST, "warmup_steps": 2, "eval_samples": 2}, max_steps=6, eval_every=3, max_val_batches=1,
                       eval_max_new_tokens=8, log_every_n_steps=2, progress_every=1, early_stopping_patience=None)
    logged: list[tuple[int, dict]] = []
    samples: list[tuple[int, list[str]]] = []
    evaluations: list[int] = []
    progress: dict[int, float] = {}
    train_sft(config, fresh_posts[:60], tiny_model_dir, checkpoint_dir=tmp_path,
              loggers=[SinkLogger(lambda step, m: logged.append((step, m)),
                                  samples=lambda step, texts: samples.append((step, texts)))],
              on_metrics=lambda step, m: evaluations.append(step),
              on_progress=lambda step, total, loss, *rest: progress.setdefault(step, loss))
    steps = [(step, m) for step, m in logged if "train/loss" in m]
    assert [step for step, _ in steps] == [2, 4, 6]
    assert evaluations == [3, 6]  # on_metrics still hears the evaluations only
    # each evaluation's sampled posts, which its copy rate was measured on, go to the loggers that keep text
    assert [step for step, _ in samples] == [3, 6] and all(len(texts) == 2 for _, texts in samples)
    schedule = lr_lambda(2, 6, config.min_lr_ratio)
    for step, figures in steps:
        assert set(figures) == {"train/loss", "train/lr", "train/grad_norm"}
        assert figures["train/loss"] == pytest.approx(progress[step])  # one micro-batch per step: its loss
        assert figures["train/lr"] == pytest.approx(config.learning_rate * schedule(step - 1))  # the lr step used
        assert 0.0 < figures["train/grad_norm"] < float("inf")


def test_a_step_done_again_after_a_resume_from_an_older_checkpoint_is_not_logged_twice(
        tiny_model_dir, fresh_posts, tmp_path):
    import shutil

    config = SFTConfig(**FAST, max_steps=6, eval_every=3, max_val_batches=1, log_every_n_steps=2,
                       progress_every=1, early_stopping_patience=None)
    logged: list[int] = []
    older = tmp_path / "step3.ckpt"

    def on_progress(step, total, loss, eta, phase):
        if step == 4 and phase == "training" and not older.exists():
            shutil.copy(tmp_path / "ckpt" / "last.ckpt", older)  # the evaluation's checkpoint at step 3

    def sink(step, figures):
        if "train/loss" in figures:
            logged.append(step)

    first = train_sft(config, fresh_posts[:60], tiny_model_dir, checkpoint_dir=tmp_path / "ckpt",
                      loggers=[SinkLogger(sink)], on_progress=on_progress, should_stop=lambda: len(logged) >= 2)
    assert first.stopped_reason == "stopped" and logged == [2, 4]
    shutil.copy(older, tmp_path / "ckpt" / "last.ckpt")  # as if the run died after logging step 4
    second = train_sft(config, fresh_posts[:60], tiny_model_dir, checkpoint_dir=tmp_path / "ckpt",
                       loggers=[SinkLogger(sink)])
    assert second.steps == 6 and logged == [2, 4, 6]  # step 4 trained twice, logged once
