import math

from crowdtune import embeddings
from crowdtune.training.rl import run_update

from .conftest import sampled_batch

SUNNY = ["What a wonderful sunny day at the beach with friends {}", "Great victory tonight, thank you all {}",
         "Loved the puppies at the park this morning {}", "Beautiful sunset and a happy crowd {}"]
GLOOMY = ["Budget deficit report shows rising taxes again {}", "Another long delay in the tax committee {}",
          "Terrible traffic and rain ruined the commute {}", "The fiscal audit found more accounting errors {}"]


def history_of(n: int, *, reversed_newest: int = 0) -> list[dict]:
    """n posts alternating sunny/gloomy; sunny ones score high, except the newest `reversed_newest`."""
    posts = []
    for i in range(n):
        sunny = i % 2 == 0
        text = (SUNNY if sunny else GLOOMY)[(i // 2) % 4].format(i)
        good = sunny if i < n - reversed_newest else not sunny
        score = (40.0 if good else 5.0) + (i % 5)
        posts.append({"post_id": f"h{i}", "text": text, "score": score, "reward": 1.0 if good else -1.0,
                      "published_at": i})
    return posts


def _update(tiny_model_dir, tiny_policy, tmp_path, history, **settings):
    model, tokenizer = tiny_policy
    batch = sampled_batch(model, tokenizer, 4, seed=1, first_id=1000)
    config = {"eval_samples": 2, "min_fit_posts": 16, "agreement_posts": 16, "rloo_steps": 2, "rloo_prompts": 1,
              "rloo_samples": 4, **settings}
    return run_update("reward_model", config, base_model=tiny_model_dir, policy_url=None, batch=batch,
                      history=history, state_dir=tmp_path / "state", checkpoint_dir=tmp_path / "ck",
                      model_cache_dir=tmp_path / "cache", train_texts=[h["text"] for h in history])


def test_a_reward_model_that_tracks_reality_trains_with_rloo(tiny_model_dir, tiny_policy, tmp_path):
    result = _update(tiny_model_dir, tiny_policy, tmp_path, history_of(48))
    assert not result.pause and result.pause_reason is None
    assert result.metrics["reward_model_agreement"] > 0.5
    assert result.metrics["steps"] == 2
    assert math.isfinite(result.metrics["kl"]) and math.isfinite(result.metrics["loss"])
    assert abs(result.metrics["importance_weight_mean"] - 1) < 1e-2  # RLOO samples are on-policy
    assert (result.adapter_dir / "adapter_config.json").is_file()
    before = embeddings.texts_embedded()
    embeddings.shared_cache().embed([h["text"] for h in history_of(48)])
    assert embeddings.texts_embedded() == before  # the scored posts' vectors were kept in the shared cache


def test_it_pauses_when_fresh_scores_contradict_its_predictions(tiny_model_dir, tiny_policy, tmp_path):
    result = _update(tiny_model_dir, tiny_policy, tmp_path, history_of(48, reversed_newest=16))
    assert result.pause
    assert result.metrics["reward_model_agreement"] < 0
    assert "Spearman" in result.pause_reason and "newest 16 matured posts" in result.pause_reason
    assert result.metrics["reward_model_agreement_bound"] < 0.1
    assert result.metrics["steps"] == 0  # nothing trained on a model that disagrees with reality


def test_an_agreement_just_below_the_threshold_on_16_posts_is_noise_and_trains_on(tiny_model_dir, tiny_policy,
                                                                                  tmp_path):
    # half the newest 16 reversed: Spearman ~0 on 16 posts, whose upper 95% bound is ~0.4 (guided's rule too)
    history = history_of(48, reversed_newest=8)
    result = _update(tiny_model_dir, tiny_policy, tmp_path / "a", history)
    assert result.metrics["reward_model_agreement"] < 0.1 < result.metrics["reward_model_agreement_bound"]
    assert not result.pause and result.metrics["steps"] == 2
    pointwise = _update(tiny_model_dir, tiny_policy, tmp_path / "b", history, agreement_confidence=0.5)
    assert pointwise.pause and pointwise.metrics["steps"] == 0
    assert (result.adapter_dir / "adapter_config.json").is_file()
