"""The learning-rate schedule of every objective: linear warm-up, then cosine decay to 5% of the
base rate at the last step. transformers' scheduler, so the formula is a kept library's, not ours:

    lr(s) / lr = s / W                                    for s < W (warm-up steps W)
    lr(s) / lr = 0.05 + 0.95 * (1 + cos(pi * p)) / 2      p = (s - W) / (T - W), T = total steps
"""

from __future__ import annotations

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

MIN_LR_RATE = 0.05
UNBOUNDED_TOTAL = 10_000  # the decay length when trainer.max_steps is -1 (train until max_time)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule over `total_steps` optimizer steps (total_steps <= 0: UNBOUNDED_TOTAL)."""
    total = total_steps if total_steps > 0 else UNBOUNDED_TOTAL
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup_steps, total, min_lr_rate=MIN_LR_RATE)


def optimizer_config(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> dict:
    """What `configure_optimizers` returns: the schedule stepped every optimizer step, its rate
    logged as `train/lr` by Lightning's LearningRateMonitor (conf/callbacks/default.yaml)."""
    schedule = warmup_cosine(optimizer, warmup_steps, total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "train/lr"}}
