"""ProgressReport's ETA and keep-alive, on its own (the Lightning side is tested through train_sft)."""

from __future__ import annotations

import time

from crowdtune.training.callbacks import ProgressReport


def test_keep_alive_reports_a_call_that_cannot_report_from_inside():
    reports: list[str] = []
    report = ProgressReport(lambda step, total, loss, eta, phase: reports.append(phase), total=10)
    with report.keep_alive("loading the base model", every=0.1):
        time.sleep(0.45)
    assert reports[0] == "loading the base model"
    assert len(reports) >= 4 and all(r.startswith("loading the base model (") for r in reports[1:])
    count = len(reports)
    time.sleep(0.25)
    assert len(reports) == count  # the beat ends with the block


def test_a_sink_of_four_arguments_hears_of_steps_only():
    steps: list[int] = []
    report = ProgressReport(lambda step, total, loss, eta: steps.append(step), total=10)
    report.phase("evaluating: sampling 8 posts")
    report.report(ProgressReport.TRAINING)
    assert steps == [0]


def test_the_eta_counts_the_evaluations_left_at_their_measured_time():
    report = ProgressReport(lambda *args: None, total=100, eval_every=20)
    now = time.monotonic()
    # 25 steps in 25 s of training plus the evaluation at step 20 (30 s): 75 steps and 4 evaluations are left
    report.start_time, report.start_step, report.eval_seconds = now - 55.0, 0, [30.0]
    assert report.evals_left(25) == 4
    assert abs(report.eta(25) - (75 * 1.0 + 4 * 30.0)) < 0.5
