"""The online benchmark's arms: an algorithm as the product runs it, or with N candidates a slot, and the
goals' ratios taken against policy_gradient as it was (one sample a slot) once that arm is measured."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import online_sandbox
from crowdtune.training.rl import ALGORITHMS


def test_the_default_arms_are_every_algorithm_and_policy_gradient_with_one_candidate():
    args = online_sandbox.parse_args([])
    assert args.algorithms == [*ALGORITHMS, "policy_gradient@1"]
    assert online_sandbox.split_arm("policy_gradient@1") == ("policy_gradient", 1)
    assert online_sandbox.split_arm("guided") == ("guided", None)
    assert online_sandbox.arm_folder("policy_gradient@1") == "policy_gradient-n1"


def test_the_parts_go_to_the_folder_kept_in_git_and_smoke_runs_stay_out_of_it(tmp_path):
    from pathlib import Path

    kept = Path("benchmarks/results/online-sandbox").absolute()
    assert online_sandbox.parse_args([]).results == kept
    assert online_sandbox.parse_args(["--quick"]).results != kept
    assert online_sandbox.parse_args(["--results", str(tmp_path)]).results == tmp_path
    rules = (Path(online_sandbox.__file__).parent / "results" / "online-sandbox" / ".gitignore").read_text()
    assert {"!runs.jsonl", "!pools/*.json"} <= set(rules.split())


def test_git_keeps_the_starting_model_the_pools_were_sampled_from_but_not_its_checkpoints():
    import subprocess
    from pathlib import Path

    results = Path(online_sandbox.__file__).parent / "results" / "online-sandbox"

    def ignored(relative: str) -> bool:
        check = subprocess.run(["git", "check-ignore", "-q", str(results / relative)], cwd=results)
        assert check.returncode in (0, 1), "git check-ignore failed"
        return check.returncode == 0

    assert not ignored("start-model/0123abcd/version/adapter_model.safetensors")
    assert not ignored("start-model/0123abcd/done.json")
    assert not ignored("pools/start-s0-0123abcd.json")
    assert ignored("start-model/0123abcd/checkpoints/last.ckpt")
    assert ignored("data/embeddings/shard.npy") and ignored("sandbox/guided-likes-s0/posts.json")


@pytest.mark.parametrize("value", ["nope", "nope@2", "policy_gradient@0", "policy_gradient@65", "guided@",
                                   "guided@two", "guided@-1", "guided@\u00b2", "guided@ 8"])
def test_an_unknown_algorithm_or_count_is_refused_with_the_valid_names(value, capsys):
    with pytest.raises(SystemExit):
        online_sandbox.parse_args(["--algorithms", value])
    assert "NAME@N" in capsys.readouterr().err


@settings(max_examples=80, deadline=None)
@given(st.one_of(st.text(max_size=24),
                 st.builds(lambda a, n: f"{a}@{n}", st.sampled_from(list(ALGORITHMS)), st.integers(-3, 80))))
def test_any_arm_text_either_names_an_algorithm_with_1_to_64_candidates_or_is_refused(value):
    try:
        args = online_sandbox.parse_args(["--algorithms", value])
    except SystemExit:
        return
    algorithm, count = online_sandbox.split_arm(args.algorithms[0])
    assert algorithm in ALGORITHMS and (count is None or 1 <= count <= 64)


def summary_row(relative_at_128: float, minutes: float) -> dict:
    return {"last_32_at_128": {"relative": relative_at_128, "share_of_oracle_gain": 0.5},
            "copy_rate": 0.0, "distinct_2_vs_start": 0.9, "wall_minutes": minutes}


def test_the_goals_ratios_are_against_policy_gradient_with_one_candidate_once_it_is_measured():
    both = {"likes": {"guided": summary_row(2.0, 60.0), "policy_gradient": summary_row(2.0, 65.0),
                      "policy_gradient@1": summary_row(1.25, 40.0)}}
    goal = online_sandbox.goals(both, "guided")
    assert goal["ratios_against"] == "policy_gradient@1"
    assert goal["gain_vs_policy_gradient_at_128"] == pytest.approx(4.0)   # 1.0 / 0.25
    assert goal["wall_time_vs_policy_gradient"] == pytest.approx(1.5)     # 60 / 40
    without = {"likes": {k: v for k, v in both["likes"].items() if k != "policy_gradient@1"}}
    goal = online_sandbox.goals(without, "guided")
    assert goal["ratios_against"] == "policy_gradient"
    assert goal["gain_vs_policy_gradient_at_128"] == pytest.approx(1.0)


def test_each_part_names_its_machine_and_the_wall_time_ratio_lists_the_machines_it_mixes():
    machine = online_sandbox.machine_profile(1)
    assert machine["cpu"] and machine["cores"] >= 1 and machine["threads"] == 1
    assert machine["matmul_gflops"] > 0 and isinstance(machine["avx512"], bool)
    fast = {**machine, "cpu": "Fast CPU", "avx512": True}
    assert online_sandbox.machine_label({"machine": fast}) == "Fast CPU (AVX-512)"
    assert online_sandbox.machine_label({}) == "unrecorded"  # parts from before parts named their machine
    rows = {"likes": {"guided": {**summary_row(2.0, 60.0), "machines": ["Slow CPU"]},
                      "policy_gradient@1": {**summary_row(1.25, 40.0), "machines": ["Fast CPU (AVX-512)"]}}}
    assert online_sandbox.goals(rows, "guided")["wall_time_machines"] == ["Fast CPU (AVX-512)", "Slow CPU"]
    rows["likes"]["guided"]["machines"] = ["Fast CPU (AVX-512)"]
    assert online_sandbox.goals(rows, "guided")["wall_time_machines"] == ["Fast CPU (AVX-512)"]


def test_the_kl_figure_is_the_last_trained_updates_not_a_paused_ones():
    updates = [{"kl": 0.2, "pause": False}, {"kl": 0.31, "pause": False}, {"kl": 0.0, "pause": True}]
    assert online_sandbox.last_kl({"updates": updates}) == 0.31
    assert online_sandbox.last_kl({"updates": updates[2:]}) is None
    assert online_sandbox.last_kl({"updates": []}) is None


def test_the_phase_clock_adds_each_phase_s_wall_time_even_when_the_phase_raises():
    import time

    clock = online_sandbox.PhaseClock()
    for _ in range(2):
        with clock("slots"):
            time.sleep(0.01)
    with pytest.raises(RuntimeError), clock("updates"):
        raise RuntimeError("a failed update still took its time")
    assert set(clock.seconds) == {"slots", "updates"}
    assert clock.seconds["slots"] >= 0.02
    assert 0 <= clock.seconds["updates"] < clock.seconds["slots"]


def test_a_part_names_the_arm_code_changed_since_its_commit_and_not_other_files(tmp_path):
    import subprocess

    def git(*argv):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *argv],
                       check=True, capture_output=True)

    (tmp_path / "crowdtune").mkdir()
    (tmp_path / "crowdtune" / "guided.py").write_text("STEPS = 4\n")
    (tmp_path / "README.md").write_text("figures\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    part = {"code": online_sandbox.code_version(tmp_path)}
    assert part["code"]["changed"] is False and len(part["code"]["commit"]) == 40

    (tmp_path / "README.md").write_text("new figures\n")
    git("commit", "-qam", "docs only")
    assert online_sandbox.stale_code(part, tmp_path) == []

    (tmp_path / "crowdtune" / "guided.py").write_text("STEPS = 8\n")
    assert online_sandbox.code_version(tmp_path)["changed"] is True
    git("commit", "-qam", "what the arm does")
    assert online_sandbox.stale_code(part, tmp_path) == ["crowdtune/guided.py"]
    assert online_sandbox.stale_code({}, tmp_path) == []  # a part recorded before parts carried their commit
    assert online_sandbox.code_version(tmp_path / "nowhere") == {"commit": None, "changed": None}
