"""The learning-rate schedule (transformers' cosine with warm-up and a 5% floor) against its
formula, and `train/lr` as Lightning's LearningRateMonitor logs it from the default callbacks."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from distill.apps.cli import CONF_DIR
from distill.objectives.schedule import optimizer_config, warmup_cosine


def formula(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("warmup", [0, 4])
def test_the_rate_at_every_step_is_the_formula(warmup):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    schedule = warmup_cosine(optimizer, warmup, 20)
    for step in range(21):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * formula(step, warmup, 20), rel=1e-9), step
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] < 0.5 * 0.06  # the end of the decay is near the 5% floor, not 0


def test_no_max_steps_decays_over_ten_thousand_steps():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_cosine(optimizer, 0, -1)
    for _ in range(5000):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(formula(5000, 0, 10_000))


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def training_step(self, batch, batch_idx):
        return (self.w * batch).sum()

    def configure_optimizers(self):
        return optimizer_config(torch.optim.SGD(self.parameters(), lr=0.1), 2, self.trainer.max_steps)


def test_default_callbacks_log_train_lr_every_step(tmp_path):
    callbacks = OmegaConf.load(f"{CONF_DIR}/callbacks/default.yaml")
    monitor = instantiate(callbacks.lr_monitor)
    trainer = L.Trainer(max_steps=6, logger=CSVLogger(tmp_path, name="", version=""), callbacks=[monitor],
                        log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(Tiny(), torch.utils.data.DataLoader([torch.ones(2)] * 6, batch_size=None))
    with open(tmp_path / "metrics.csv") as f:
        logged = {int(r["step"]): float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr")}
    assert logged == pytest.approx({s: 0.1 * formula(s, 2, 6) for s in range(6)})
