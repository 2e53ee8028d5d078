"""A non-finite loss stops training with the step number, and the last good checkpoint stays."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from distill.callbacks import NonFiniteLossError, StopOnNonFiniteLoss


class Diverging(L.LightningModule):
    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.bad_step = bad_step

    def training_step(self, batch, batch_idx):
        loss = (self.w * batch).pow(2).mean()
        return loss * float("nan") if self.global_step == self.bad_step else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = L.Trainer(max_steps=10, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[StopOnNonFiniteLoss(), checkpoint], default_root_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at step 4 .*last\.ckpt"):
        trainer.fit(Diverging(bad_step=3), DataLoader(torch.ones(20, 1), batch_size=2))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 3 and torch.isfinite(saved["state_dict"]["w"]).all()
