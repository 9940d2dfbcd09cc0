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
    """Lay the token lists end to end as `EOS a EOS b ... EOS` and cut into blocks.

    Only the last block is padded (pad_id, mask 0, label -100).
    """
    stream: list[int] = []
    for tokens in token_lists:
        stream.append(eos_id)
        stream.extend(tokens)
    stream.append(eos_id)
    n_blocks = -(-len(stream) // block_size)
    pad = n_blocks * block_size - len(stream)
    ids = torch.tensor(stream + [pad_id] * pad, dtype=torch.long).view(n_blocks, block_size)
    mask = torch.ones_like(ids)
    if pad:
        mask.view(-1)[-pad:] = 0
    labels = ids.masked_fill(mask == 0, -100)
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
