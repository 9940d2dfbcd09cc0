"""AdapterModule: the LightningModule base of SFT and RL runs, which train only a model's adapter.

The trainable weights are those with requires_grad (the LoRA adapter); AdamW runs over them
alone, and checkpoints carry only them, since the frozen base model is reloaded from its files.
Subclasses set `last_loss` in `training_step` (callbacks.ProgressReport reports it).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch


class AdapterModule(pl.LightningModule):
    """`model` with a trainable adapter; `config` has learning_rate and weight_decay."""

    def __init__(self, model: torch.nn.Module, config):
        super().__init__()
        self.model = model
        self.config = config
        self.strict_loading = False  # checkpoints carry only the adapter: the base model is reloaded
        self.last_loss = float("nan")

    def adamw(self) -> torch.optim.AdamW:
        """AdamW over the trainable (adapter) weights, at the config's learning rate and weight decay."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

    def configure_optimizers(self):
        return self.adamw()  # a constant learning rate; SFT adds its warm-up and cosine schedule

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
