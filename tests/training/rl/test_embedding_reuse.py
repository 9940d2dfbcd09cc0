"""Each post is embedded once: two offline runs and an online update share the embedding cache (issue 17 #2)."""

from __future__ import annotations

from crowdtune.embeddings import cache_misses, texts_embedded
from crowdtune.training.guards import CopyIndex, StyleProbe
from crowdtune.training.rl import run_update

from .conftest import sampled_batch
from .test_reward_model import history_of


def offline_run_guards(train: list[str], heldout: list[str], samples: list[str]) -> list[bool]:
    """The guards an offline run builds (crowdtune.training.sft), used on one evaluation's samples."""
    copy_index = CopyIndex(train, min_ngram=12, embedding_threshold=0.95)
    style = StyleProbe(heldout, train[:256])
    style.similarity(samples)
    return copy_index.copy_flags(samples)


class Counted:
    """Texts embedded since it was made: all of them, and the kept ones (posts rather than samples)."""

    def __init__(self):
        self.total, self.kept = texts_embedded(), cache_misses()["kept"]

    def __call__(self) -> tuple[int, int]:
        return texts_embedded() - self.total, cache_misses()["kept"] - self.kept


def test_two_runs_and_an_online_update_embed_each_post_once(tweets, tiny_model_dir, tiny_policy, tmp_path,
                                                            monkeypatch):
    train, heldout = [t["text"] for t in tweets[2000:2300]], [t["text"] for t in tweets[2300:2350]]
    monkeypatch.setenv("CROWDTUNE_ARTIFACTS_URL", str(tmp_path / "artifacts"))  # shared by all "machines"

    # 1) the first offline run embeds the held-out posts, the style reference and the copy guard's
    #    candidates (posts sharing a 4-word run with a sample), each once, plus its samples once
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path / "machine-1"))
    counted = Counted()
    samples = [t["text"] + " Really!" for t in tweets[2600:2603]] + [train[5]]
    assert offline_run_guards(train, heldout, samples) == [False, False, False, True]
    total, kept = counted()
    assert total == kept + 3 and len(heldout) + 256 <= kept <= len(set(train) | set(heldout))
    embedded_posts = kept

    # 2) a second run, in another process on another machine, embeds its own samples and at most the
    #    new candidates of those samples, never a post of run 1 again
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path / "machine-2"))
    counted = Counted()
    assert offline_run_guards(train, heldout, [t["text"] for t in tweets[2700:2702]]) == [False, False]
    total, kept = counted()
    assert total == kept + 2 and kept < 20
    embedded_posts += kept

    # 3) an online update (reward model + copy guard over the same posts) embeds the scored posts it has
    #    not seen, the policy's samples and their new copy-guard candidates, never a training post again
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path / "machine-3"))
    model, tokenizer = tiny_policy
    history, batch = history_of(48), sampled_batch(model, tokenizer, 2, seed=1)
    scored = {p["text"] for p in history + batch}  # the update fits its reward model on these
    counted = Counted()
    result = run_update("reward_model", {"eval_samples": 2, "min_fit_posts": 16, "agreement_posts": 16,
                                         "rloo_steps": 1, "rloo_prompts": 1, "rloo_samples": 2},
                        base_model=tiny_model_dir, policy_url=None, batch=batch,
                        history=history, state_dir=tmp_path / "state", checkpoint_dir=tmp_path / "ck",
                        model_cache_dir=tmp_path / "cache", train_texts=train)
    assert result.metrics["reward_model_posts"] == len(scored) and result.metrics["steps"] == 1
    total, kept = counted()
    assert len(scored) <= kept < len(scored) + 20 and total - kept <= 2 * 2 + 2  # + RLOO and guard samples
    embedded_posts += kept

    # 4) a process needing every post embeds exactly those no one embedded before: each post once in all
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path / "machine-4"))
    everything = CopyIndex([*scored, *train, *heldout], candidate_ngram=None)
    counted = Counted()
    everything.post_vectors()
    total, kept = counted()
    assert total == kept and embedded_posts + kept == len(set(everything.posts))
    counted = Counted()
    CopyIndex(everything.posts, candidate_ngram=None).post_vectors()
    assert counted() == (0, 0)
