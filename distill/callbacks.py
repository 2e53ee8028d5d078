"""Training callbacks fewstep adds to Lightning's."""

from __future__ import annotations

import math

import lightning as L
import torch


class NonFiniteLossError(ValueError):
    """A training loss became NaN or infinite."""


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first non-finite training loss, naming the step; the last good checkpoint stays.

    Runs before ModelCheckpoint (Lightning always runs checkpoint callbacks last), so the step
    with the bad loss is never saved and `last.ckpt` is the last good state to resume from.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
            raise NonFiniteLossError(
                f"training loss is {value} at step {trainer.global_step} (batch {batch_idx}); stopped. The last good "
                f"checkpoint is {last}: lower the learning rate or enable gradient clipping, then resume with ckpt_path=")
