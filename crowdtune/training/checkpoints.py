"""What a training run (SFT or RL) writes into its checkpoint folder, each write atomic (a temp
name, then a rename), so a run killed at any moment leaves the last complete version behind:

    save_checkpoint(trainer, folder)        last.ckpt (all ranks call it; rank 0 writes)
    save_adapter(model, folder, tokenizer)  a plain PEFT adapter folder
    write_json(path, data)                  result.json, emitted.json, an algorithm's state
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytorch_lightning as pl


def save_checkpoint(trainer: pl.Trainer, folder: Path) -> None:
    """Write last.ckpt atomically (all ranks call this; rank 0 writes)."""
    tmp = folder / "last.ckpt.tmp"
    trainer.save_checkpoint(tmp)
    if trainer.is_global_zero:
        if not tmp.exists():  # Lightning's atomic save swallows the PermissionError of a read-only folder
            raise PermissionError(errno.EACCES, "could not write the checkpoint; is the folder writable?", str(tmp))
        os.replace(tmp, folder / "last.ckpt")


def save_adapter(model, folder: Path, tokenizer=None) -> None:
    """Write a PEFT adapter folder (with the tokenizer, if given) atomically."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def write_json(path: Path, data: dict) -> None:
    """Write `data` as JSON atomically (numpy and torch scalars as floats), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, default=float))
    os.replace(tmp, path)
