"""Randomness that is a pure function of (seed, rank, step): what makes a resumed run end where
an uninterrupted one would, and what makes ranks draw different rollouts.

Lightning checkpoints do not hold the global RNG state, so nothing in training draws from it:
every training batch and every training step's rollouts use a generator derived here.
"""

from __future__ import annotations

import hashlib

import lightning as L
import torch


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers; different tuples give unrelated streams."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def step_generator(module: L.LightningModule, seed: int, batch_idx: int, device: torch.device) -> torch.Generator:
    """The generator of one training micro-batch: (seed, rank, optimizer step, micro-batch)."""
    accumulate = module.trainer.accumulate_grad_batches if module._trainer is not None else 1
    parts = (seed, module.global_rank, module.global_step, batch_idx % accumulate)
    return torch.Generator(device=device).manual_seed(derived_seed(*parts))
