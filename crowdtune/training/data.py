"""Training examples from a channel's posts: clean, de-duplicate, split by time, pack.

In: posts as dicts with `text` and `created_at` (datetime, ISO string or epoch seconds).
Out: fixed-length token blocks. Posts are laid end to end as `EOS post EOS post ...` and cut
into blocks of `block_size` tokens, so short posts cost no padding (only the very last block of
each split is padded). The model learns both to start a post after EOS and to end it with EOS,
which is how generation prompts it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from crowdtune.errors import CrowdtuneError

URL = re.compile(r"https?://\S+|www\.\S+")
WHITESPACE = re.compile(r"\s+")


class DatasetError(CrowdtuneError):
    """The posts cannot make a training set (empty, too small, malformed)."""


@dataclass(frozen=True)
class Post:
    """A cleaned post: its text and its time as epoch seconds."""

    text: str
    created_at: float


def clean_text(text: str, *, lowercase: bool = False) -> str:
    """Strip and collapse whitespace; "" when nothing but URLs/whitespace is left (drop it)."""
    text = WHITESPACE.sub(" ", text or "").strip()
    if not URL.sub("", text).strip():
        return ""
    return text.lower() if lowercase else text


def _timestamp(value) -> float:
    if isinstance(value, datetime):
        # naive datetimes are taken as UTC so that mixed inputs still order correctly
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return _timestamp(datetime.fromisoformat(value.replace("Z", "+00:00")))
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp
        return _timestamp(value.to_pydatetime())
    raise DatasetError(f"created_at {value!r} is not a datetime, ISO string or epoch seconds.",
                       "Give each post a created_at the store or face provides.")


def prepare_posts(posts: list[dict], *, lowercase: bool = False) -> list[Post]:
    """Clean, drop empty/URL-only posts, de-duplicate (exact after cleaning; the earliest copy
    stays) and sort oldest first."""
    by_text: dict[str, Post] = {}
    for i, post in enumerate(posts):
        if "text" not in post or "created_at" not in post:
            raise DatasetError(f"Post #{i} lacks 'text' or 'created_at' (keys: {sorted(post)}).",
                               "Pass dicts with at least text and created_at.")
        text = clean_text(post["text"], lowercase=lowercase)
        if not text:
            continue
        # de-duplicate case- and URL-insensitively, but keep the first spelling seen
        key = URL.sub("", text).lower().strip()
        when = _timestamp(post["created_at"])
        if key not in by_text or when < by_text[key].created_at:
            by_text[key] = Post(text, when)
    return sorted(by_text.values(), key=lambda p: p.created_at)


def split_by_time(posts: list[Post], val_fraction: float, *, min_val: int = 1) -> tuple[list[Post], list[Post]]:
    """Split posts (sorted oldest first) so the newest `val_fraction` validates.

    Validating on the newest posts asks the model to generalise forward in time, as it must
    when it writes tomorrow's posts. Raises DatasetError when there are too few posts.
    """
    if not posts:
        raise DatasetError("No usable posts: the dataset is empty after removing empty, URL-only and duplicate posts.",
                           "Import the channel's history first, or pick a channel that has text posts.")
    n_val = max(min_val, round(len(posts) * val_fraction))
    if len(posts) - n_val < 1:
        raise DatasetError(
            f"Only {len(posts)} usable post(s): too few to hold out {n_val} for validation and still train.",
            "Import more posts (a few hundred is a sensible minimum) or lower val_fraction.")
    return posts[:-n_val], posts[-n_val:]


@dataclass
class PackedBlocks:
    """Token blocks ready for a causal LM.

    input_ids, attention_mask, labels: LongTensors [n_blocks, block_size]; labels are -100 on
    padding. real_tokens counts non-padding tokens; padding_fraction = 1 - real / total.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def padding_fraction(self) -> float:
        total = self.attention_mask.numel()
        return 1.0 - self.real_tokens / total if total else 0.0


def pack(token_lists: list[list[int]], block_size: int, eos_id: int, pad_id: int) -> PackedBlocks:
    """Pack posts whole into blocks that each begin at a post's start: `EOS a EOS b EOS pad...`.

    Why whole posts: sampling starts from a lone EOS at position 0. Blocks cut anywhere in one long
    stream taught the model that position 0 is mid-post, and 72% of the first version's samples
    began mid-word. Here every block opens with EOS and a post's first token.

    A post of n tokens takes n + 1 slots (with its closing EOS), placed by best fit, longest first,
    so padding stays small. A post too long for a block fills one from its start, and its rest goes
    on in blocks of its own, each opening with the quarter block before it as context (labels -100),
    so no token is predicted without context. Padding (pad_id, mask 0, label -100) ends blocks that
    are not full.
    """
    room_for_posts = block_size - 1          # each block's opening EOS
    if room_for_posts < 2:
        raise ValueError(f"block_size {block_size} is too small to hold a post: use 3 or more")
    context = max(1, block_size // 4)
    blocks: list[list[int]] = []
    context_of: dict[int, int] = {}          # block index -> leading context tokens of a long post
    # open blocks by the room they have left: best fit scans at most block_size buckets per post
    open_by_room: list[list[int]] = [[] for _ in range(block_size)]
    for tokens in sorted(token_lists, key=len, reverse=True):
        piece = [*tokens, eos_id]
        if len(piece) > room_for_posts:
            blocks.append([eos_id, *piece[:room_for_posts]])
            done = room_for_posts
            while done < len(piece):
                context_of[len(blocks)] = context
                blocks.append(piece[done - context:done - context + block_size])
                done += block_size - context
            continue
        room = next((r for r in range(len(piece), block_size) if open_by_room[r]), None)
        if room is None:
            blocks.append([eos_id])
            index, room = len(blocks) - 1, room_for_posts
        else:
            index = open_by_room[room].pop()
        blocks[index].extend(piece)
        if room - len(piece) > 0:
            open_by_room[room - len(piece)].append(index)
    ids = torch.full((len(blocks), block_size), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, block in enumerate(blocks):
        ids[row, :len(block)] = torch.tensor(block, dtype=torch.long)
        mask[row, :len(block)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    for row, n_context in context_of.items():
        labels[row, :n_context] = -100
    return PackedBlocks(ids, mask, labels)


class BlockDataset(Dataset):
    """Rows of a PackedBlocks as dicts the HF model takes directly."""

    def __init__(self, blocks: PackedBlocks):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.blocks.input_ids[i], "attention_mask": self.blocks.attention_mask[i],
                "labels": self.blocks.labels[i]}


class PostsDataModule(pl.LightningDataModule):
    """Posts -> cleaned, de-duplicated, time-split, packed train/val blocks.

    Everything is prepared in the constructor (it is cheap: ~1 s for 20k posts) so the caller
    knows the dataset size before training. Attributes: train_posts, val_posts (list[Post]),
    train_blocks, val_blocks (PackedBlocks).
    """

    def __init__(
        self,
        posts: list[dict],
        tokenizer: PreTrainedTokenizerBase,
        *,
        block_size: int = 128,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        lowercase: bool = False,
        num_workers: int = 0,
    ):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        cleaned = prepare_posts(posts, lowercase=lowercase)
        self.train_posts, self.val_posts = split_by_time(cleaned, val_fraction)
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        if pad is None:
            pad = eos

        def encode(items: list[Post]) -> list[list[int]]:
            return tokenizer([p.text for p in items], add_special_tokens=False)["input_ids"]

        self.train_blocks = pack(encode(self.train_posts), block_size, eos, pad)
        self.val_blocks = pack(encode(self.val_posts), block_size, eos, pad)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(BlockDataset(self.train_blocks), batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(BlockDataset(self.val_blocks), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)

    def stats(self) -> dict[str, float]:
        """Sizes and padding of both splits, for logs and reports."""
        return {
            "train_posts": len(self.train_posts), "val_posts": len(self.val_posts),
            "train_blocks": len(self.train_blocks.input_ids), "val_blocks": len(self.val_blocks.input_ids),
            "train_tokens": self.train_blocks.real_tokens, "val_tokens": self.val_blocks.real_tokens,
            "train_padding_fraction": self.train_blocks.padding_fraction,
            "val_padding_fraction": self.val_blocks.padding_fraction,
        }
