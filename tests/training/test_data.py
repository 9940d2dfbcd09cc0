"""Cleaning, de-duplication, time split and packing of posts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_pack_starts_every_block_at_a_post_and_keeps_posts_whole():
    blocks = pack([[1, 2, 3], [4, 5], [6]], block_size=6, eos_id=0, pad_id=9)
    assert blocks.input_ids.tolist() == [[0, 1, 2, 3, 0, 9], [0, 4, 5, 0, 6, 0]]
    assert blocks.labels.tolist()[0] == [0, 1, 2, 3, 0, -100]
    assert blocks.real_tokens == 11 and blocks.padding_fraction == pytest.approx(1 / 12)


def test_pack_continues_a_post_longer_than_a_block_after_a_quarter_block_of_context():
    blocks = pack([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11]], block_size=8, eos_id=0, pad_id=99)
    assert blocks.input_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7], [6, 7, 8, 9, 10, 0, 99, 99],
                                         [0, 11, 0, 99, 99, 99, 99, 99]]
    # the context (6, 7) is seen but not predicted again; 8 is predicted from it
    assert blocks.labels.tolist()[1] == [-100, -100, 8, 9, 10, 0, -100, -100]


posts_tokens = st.lists(st.lists(st.integers(1, 50), min_size=0, max_size=40), min_size=1, max_size=60)


@given(posts_tokens, st.integers(3, 48))
@settings(max_examples=300, deadline=None)
def test_pack_loses_no_token_and_opens_blocks_at_post_starts(token_lists, block_size):
    blocks = pack(token_lists, block_size, eos_id=0, pad_id=99)
    ids, masks, labels = (blocks.input_ids.tolist(), blocks.attention_mask.tolist(), blocks.labels.tolist())
    rows = [[t for t, m in zip(row, mask, strict=True) if m] for row, mask in zip(ids, masks, strict=True)]
    assert all(len(row) > 0 for row in rows)
    # padding only at the end of a block, never read as a label
    for mask, row_labels in zip(masks, labels, strict=True):
        assert mask == sorted(mask, reverse=True)
        assert all(lab == -100 for lab, m in zip(row_labels, mask, strict=True) if m == 0)
    fitting = [t for t in token_lists if len(t) + 2 <= block_size]
    # a post that fits sits whole in one block, right after an EOS and followed by one
    for tokens in fitting:
        piece = [0, *tokens, 0]
        assert any(any(row[i:i + len(piece)] == piece for i in range(len(row))) for row in rows)
    # every token is predicted once: each post's tokens and closing EOS (and no more, bar opening EOS)
    labelled = [t for row_labels in labels for t in row_labels[1:] if t != -100]
    assert sorted(labelled) == sorted(t for tokens in token_lists for t in [*tokens, 0])
    # a long post's continuation opens with context from its own post: no block opens on nothing
    assert all(row[0] == 0 or row_labels[0] == -100 for row, row_labels in zip(rows, labels, strict=True))


def test_packing_real_posts_whole_wastes_little(tiny_model_dir, fresh_posts):
    from crowdtune.training.models import load_base_model

    _, tokenizer = load_base_model(tiny_model_dir)
    # the default block of 128 tokens; the tiny tokenizer makes ~40 tokens of a tweet (SmolLM2: ~30,
    # 1.3% padding on 3,000 tweets)
    data = PostsDataModule(fresh_posts, tokenizer, block_size=128, batch_size=8, val_fraction=0.1)
    stats = data.stats()
    assert stats["train_padding_fraction"] < 0.05
    assert stats["train_posts"] + stats["val_posts"] <= len(fresh_posts)
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].shape == (8, 128)
    # every post's tokens are in the blocks: post tokens + one EOS per post + each block's opening EOS
    n_tokens = sum(len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in data.train_posts)
    assert stats["train_tokens"] == n_tokens + len(data.train_posts) + stats["train_blocks"]
    assert (data.train_blocks.input_ids[:, 0] == tokenizer.eos_token_id).all()
