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

    # 1) the first offline run embeds every training and held-out post once, plus its samples
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path / "machine-1"))
    counted = Counted()
    samples = [t["text"] + " Really!" for t in tweets[2600:2603]] + [train[5]]
    assert offline_run_guards(train, heldout, samples) == [False, False, False, True]
    posts = len(set(train) | set(heldout))
    assert counted() == (posts + 3, posts)

    # 2) a second run, in another process on another machine, embeds only its own samples
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path / "machine-2"))
    counted = Counted()
    assert offline_run_guards(train, heldout, [t["text"] for t in tweets[2700:2702]]) == [False, False]
    assert counted() == (2, 0)

    # 3) an online update (reward model + copy guard over the same posts) embeds only the scored posts
    #    it has not seen and the policy's fresh samples, never the training posts again
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
    assert kept == len(scored) and total <= len(scored) + 2 * 2 + 2  # + RLOO samples + guard samples

    # 4) the next update's process embeds no scored post again
    monkeypatch.setenv("CROWDTUNE_DATA_DIR", str(tmp_path / "machine-4"))
    counted = Counted()
    CopyIndex([*scored, *train]).post_vectors()
    assert counted() == (0, 0)
