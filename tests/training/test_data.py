"""Cleaning, de-duplication, time split and packing of posts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crowdtune.training.data import DatasetError, PostsDataModule, clean_text, pack, prepare_posts, split_by_time

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def post(text, minutes):
    return {"text": text, "created_at": T0 + timedelta(minutes=minutes)}


def test_clean_collapses_whitespace_and_drops_url_only_posts():
    assert clean_text("  Big   news\n\ttoday!  ") == "Big news today!"
    assert clean_text("https://t.co/abc  http://x.y/z") == ""
    assert clean_text("   ") == ""
    assert clean_text("Read THIS https://t.co/abc") == "Read THIS https://t.co/abc"
    assert clean_text("Read THIS", lowercase=True) == "read this"


def test_prepare_deduplicates_keeping_the_earliest_and_sorts_by_time():
    posts = [post("Same  text", 5), post("same text", 1), post("Other", 3), post("http://t.co/x", 0),
             {"text": "iso time", "created_at": "2019-12-31T23:00:00Z"}]
    cleaned = prepare_posts(posts)
    assert [p.text for p in cleaned] == ["iso time", "same text", "Other"]


def test_split_holds_out_the_newest_posts():
    cleaned = prepare_posts([post(f"post {i}", i) for i in range(20)])
    train, val = split_by_time(cleaned, 0.25)
    assert [p.text for p in val] == [f"post {i}" for i in range(15, 20)]
    assert max(p.created_at for p in train) < min(p.created_at for p in val)


def test_empty_and_too_small_datasets_are_clear_errors():
    with pytest.raises(DatasetError, match="empty"):
        split_by_time(prepare_posts([post("https://t.co/only-a-link", 0), post("  ", 1)]), 0.1)
    with pytest.raises(DatasetError, match="too few"):
        split_by_time(prepare_posts([post("one post", 0)]), 0.1)
    with pytest.raises(DatasetError, match="created_at"):
        prepare_posts([{"text": "no time"}])


def test_pack_separates_posts_with_eos_and_pads_only_the_last_block():
    blocks = pack([[1, 2, 3], [4, 5], [6]], block_size=4, eos_id=0, pad_id=9)
    assert blocks.input_ids.tolist() == [[0, 1, 2, 3], [0, 4, 5, 0], [6, 0, 9, 9]]
    assert blocks.labels.tolist()[-1] == [6, 0, -100, -100]
    assert blocks.real_tokens == 10 and blocks.padding_fraction == pytest.approx(2 / 12)


def test_packing_real_posts_wastes_almost_nothing(tiny_model_dir, fresh_posts):
    from crowdtune.training.models import load_base_model

    _, tokenizer = load_base_model(tiny_model_dir)
    data = PostsDataModule(fresh_posts, tokenizer, block_size=64, batch_size=8, val_fraction=0.1)
    stats = data.stats()
    assert stats["train_padding_fraction"] < 0.01
    assert stats["train_posts"] + stats["val_posts"] <= len(fresh_posts)
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape == (8, 64)
    # every post's tokens are in the stream: real tokens = post tokens + one EOS per post + 1
    n_tokens = sum(len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in data.train_posts)
    assert stats["train_tokens"] == n_tokens + len(data.train_posts) + 1
