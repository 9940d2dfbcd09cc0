"""Learning from the operator (rl/feedback.py): rejections as the floor reward, picks as DPO pairs against the
reference, edits never in a policy-gradient step; on the tiny model where the policy has to move."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as hyp

from crowdtune.errors import SettingsError
from crowdtune.training.models import add_lora, load_version, save_version
from crowdtune.training.rl import algorithm_config, run_update
from crowdtune.training.rl.configs import RLConfig
from crowdtune.training.rl.feedback import OperatorFeedback, preference_loss, preference_pairs, rejected_posts
from crowdtune.training.rl.guided import best_of_n_groups
from crowdtune.training.rl.logprobs import encode_rollouts, model_logprobs, sequence_stats, usable_posts
from crowdtune.training.sampling_policy import sampling_policy

from .conftest import as_history, sampled_batch


def post(post_id: str, **values) -> dict:
    return {"post_id": post_id, "prompt": "", "text": post_id, "token_ids": [5, 6, 7], "logprob": -4.0, **values}


def logprob_of(model, tokenizer, posts: list[dict]) -> np.ndarray:
    """Each post's log-probability under the sampling policy (what publishing recorded), (n,)."""
    rollouts = encode_rollouts(tokenizer, [p["prompt"] for p in posts], [p["token_ids"] for p in posts])
    model.eval()
    with torch.no_grad():
        return sequence_stats(model, rollouts, sampling_policy(RLConfig(), tokenizer), reference=False).logprob.numpy()


def pick_margin(model, tokenizer, picked: dict, unpicked: list[dict]) -> float:
    """Mean of (log pi/ref of the pick) - (log pi/ref of an unpicked candidate): what DPO raises."""
    posts = [picked, *unpicked]
    with torch.no_grad():
        policy, reference = model_logprobs(model, encode_rollouts(tokenizer, [""] * len(posts),
                                                                  [p["token_ids"] for p in posts]))
    ratios = (policy - reference).numpy()
    return float(ratios[0] - ratios[1:].mean())


# --------------------------------------------------------------------------------------------
# Settings, and what the decisions become, on fixed numbers


@given(field=hyp.sampled_from(["rejection_reward", "preference_weight", "preference_beta"]),
       algorithm=hyp.sampled_from(["guided", "policy_gradient"]),
       value=hyp.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6))
def test_the_feedback_settings_refuse_a_value_of_the_wrong_sign_naming_the_field(field, algorithm, value):
    valid = {"rejection_reward": value <= 0, "preference_weight": value >= 0, "preference_beta": value > 0}[field]
    if valid:
        assert getattr(algorithm_config(algorithm, {field: value}), field) == value
    else:
        with pytest.raises(SettingsError) as error:
            algorithm_config(algorithm, {field: value})
        assert field in error.value.problem and "config-docs" in error.value.fix



def test_an_edited_post_and_its_candidates_never_become_policy_gradient_rows():
    edited = post("edited", review="edit", reward=1.0, candidates=[post("edited-c1"), post("edited-c2")])
    kept = post("kept", review="approve", reward=0.5, candidates=[post("kept-c1")])
    assert usable_posts([edited, kept]) == [kept]
    groups = best_of_n_groups([edited, kept], {}, None)
    assert groups.figures["dr_members"] == 2 and len(groups.members) == 1  # kept and its one candidate


def test_a_rejection_is_its_groups_real_outcome_at_the_floor_and_a_pick_is_corrected_with_probability_one():
    rejected = rejected_posts(OperatorFeedback(rejected=[
        post("r", predicted_reward=0.0, selection_probability=0.5, candidates=[post("rc", predicted_reward=0.0)]),
        post("no-tokens", token_ids=[])]), -3.0)
    assert [p["post_id"] for p in rejected] == ["r"] and rejected[0]["reward"] == -3.0
    picked = post("w", review="pick", reward=1.0, predicted_reward=0.0, selection_probability=0.25,
                  candidates=[post("l", predicted_reward=0.0)])
    groups = best_of_n_groups([picked, *rejected], {"w": 1.0, "r": 2.5}, None)  # a rejection ignores the history
    # the pick: y = (1, 0), not (1 / 0.25, 0); the rejection: y = (-3 / 0.5, 0); then leave-one-out
    assert [r["advantage"] for r in groups.rows] == pytest.approx([1.0, -1.0, -6.0, 6.0])
    # without candidates, rejections are compared with the batch's mean real reward (here 1), not each other
    singles = rejected_posts(OperatorFeedback(rejected=[post("b"), post("c")]), -3.0)
    alone = best_of_n_groups([post("a", reward=1.0, candidates=[post("ac")]), *singles], {"a": 1.0}, None)
    assert [r["advantage"] for r in alone.rows] == pytest.approx([2.0, -2.0, -4.0, -4.0])  # y = (1 / 0.5, 0)
    assert [r["advantage"] for r in best_of_n_groups(singles, {}, None).rows] == [-3.0, -3.0]  # no posts: 0


def test_a_pick_makes_a_pair_with_each_unpicked_candidate_of_its_slot():
    feedback = OperatorFeedback.from_value({"picks": [
        {"chosen": post("w"), "unpicked": [post("l1"), post("l2"), post("edit", review="edit")]},
        {"chosen": post("lonely"), "unpicked": []}]})
    assert [[(w["post_id"], lose["post_id"]) for w, lose in pairs] for pairs in preference_pairs(feedback)] == \
        [[("w", "l1"), ("w", "l2")]]
    assert not OperatorFeedback.from_value(None) and feedback


def test_the_dpo_loss_is_log_2_at_the_reference(tiny_policy):
    model, tokenizer = tiny_policy
    model = add_lora(model).eval()  # a fresh adapter: the policy is the reference
    batch = sampled_batch(model, tokenizer, 4, seed=2)
    loss, figures = preference_loss(model, tokenizer, [(batch[0], batch[1]), (batch[0], batch[2])], beta=0.1)
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-5)
    assert figures["preference_margin"] == pytest.approx(0.0, abs=1e-5)
    assert loss.requires_grad


# --------------------------------------------------------------------------------------------
# Updates that learn from them


def test_policy_gradient_lowers_a_rejected_post_and_raises_a_pick_over_its_rivals(tiny_model_dir, tiny_policy,
                                                                                  tmp_path):
    model, tokenizer = tiny_policy
    batch = sampled_batch(model, tokenizer, 4, seed=0)
    others = sampled_batch(model, tokenizer, 4, seed=1, first_id=10)
    rejected, picked, unpicked = others[0], others[1], others[2:]
    feedback = {"rejected": [rejected], "picks": [{"chosen": picked, "unpicked": unpicked}]}
    before = logprob_of(model, tokenizer, [rejected])[0]  # the update starts from a fresh adapter: the reference,
    margin_before = 0.0                                   # so every log-ratio to it is 0
    result = run_update("policy_gradient", {"eval_samples": 0, "epochs": 2, "minibatch_size": 8, "learning_rate": 3e-3,
                                            "replay_posts": 0},
                        base_model=tiny_model_dir, policy_url=None, batch=batch, history=as_history(batch),
                        state_dir=tmp_path / "state", checkpoint_dir=tmp_path / "u1", model_cache_dir=tmp_path / "c",
                        seed=1, feedback=feedback)
    m = result.metrics
    assert (m["rejected_posts"], m["preference_pairs"]) == (1.0, 2.0)
    assert math.isfinite(m["preference_loss"]) and m["steps"] == 2
    policy, _ = load_version(save_version(result.adapter_dir, str(tmp_path / "v1"), base_model=tiny_model_dir))
    after = logprob_of(policy, tokenizer, [rejected])[0]
    assert after < before - 1.0, (before, after)
    assert pick_margin(policy, tokenizer, picked, unpicked) > margin_before + 0.1


def test_an_update_whose_only_post_was_edited_trains_nothing(tiny_model_dir, tiny_policy, tmp_path):
    model, tokenizer = tiny_policy
    edited = {**sampled_batch(model, tokenizer, 1, seed=4)[0], "review": "edit", "text": "Written by a person."}
    for algorithm in ("policy_gradient", "guided"):
        result = run_update(algorithm, {"eval_samples": 0, "guard_samples": 4, "max_new_tokens": 8}
                            if algorithm == "guided" else {"eval_samples": 0},
                            base_model=tiny_model_dir, policy_url=None, batch=[edited], history=[],
                            state_dir=tmp_path / algorithm, checkpoint_dir=tmp_path / f"{algorithm}-u1",
                            model_cache_dir=tmp_path / "c", seed=1)
        assert result.metrics.get("steps", 0.0) == 0.0, algorithm
