"""Masked-diffusion training (MDLM, Sahoo et al. 2024): how the teacher itself is trained.

Each sequence draws a mask ratio t ~ U(eps, 1) (antithetic across the batch), every generated
position is masked with probability t, and the network predicts the clean tokens at masked
positions. `loss_weighting="elbo"` weights by 1/t (the NELBO); "none" is the plain masked
cross-entropy, which trained better on the embedded benchmark within a CPU budget.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import lightning as L
import torch
from torch import Tensor, nn

from distill.evaluation.evaluate import evaluate_sampler
from distill.objectives.losses import masked_ce
from distill.objectives.schedule import optimizer_config
from distill.seeding import step_generator
from teachers.saved import save_teacher

WEIGHTINGS = ("none", "elbo")


def mask_tokens(tokens: Tensor, answer_mask: Tensor, mask_id: int, generator: torch.Generator | None = None, eps: float = 1e-3):
    """Forward process: (xt, noise_mask, t) with t (B, 1) antithetic in [eps, 1)."""
    B = tokens.shape[0]
    u = torch.rand((), generator=generator, device=tokens.device)
    t = eps + (1 - eps) * ((u + torch.arange(B, device=tokens.device) / B) % 1.0)[:, None]  # (B, 1)
    noise_mask = (torch.rand(tokens.shape, generator=generator, device=tokens.device) < t) & answer_mask
    return torch.where(noise_mask, mask_id, tokens), noise_mask, t




class MaskedDiffusionObjective(L.LightningModule):
    """Trains a denoiser from scratch with the masked-diffusion loss (the teacher's objective).

    Args:
        network: builds the denoiser to train (Denoiser contract) from vocab_size and seq_len.
        optimizer: a partial optimizer, called with the parameters.
        warmup_steps: linear warm-up, then cosine decay to 5% over trainer.max_steps.
        loss_weighting: "none" (masked CE) or "elbo" (1/t weights).
        val_samples: sequences sampled at every validation to log sample quality (0: none, only the loss).
        data_spec: what defines the training data (recorded in checkpoints and exports).
        seed: with the rank and the step, seeds each training step's masks (distill/seeding.py).
    """

    def __init__(
        self,
        network: Callable[..., nn.Module],
        optimizer: partial,
        vocab_size: int,
        seq_len: int,
        warmup_steps: int = 200,
        loss_weighting: str = "none",
        val_samples: int = 256,
        data_spec: dict | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        network = network(vocab_size=vocab_size, seq_len=seq_len)
        if loss_weighting not in WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {WEIGHTINGS}, got {loss_weighting!r}")
        data_spec = dict(data_spec) if data_spec is not None else None
        self.save_hyperparameters({"objective": "masked_diffusion", "network": network.config, "warmup_steps": warmup_steps,
                                   "loss_weighting": loss_weighting, "val_samples": val_samples, "data_spec": data_spec,
                                   "seed": seed})
        self.seed = seed
        self.network = network
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.loss_weighting = loss_weighting
        self.val_samples = val_samples
        self.data_spec = data_spec
        self.val_sampler = None  # set by the app: the sampler used to score samples at validation
        self.trained_steps: int | None = None  # the checkpoint's step, when rebuilt from one without a trainer

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        tokens = batch["tokens"]
        xt, noise_mask, t = mask_tokens(tokens, batch["answer_mask"], self.network.mask_id, generator)
        logits = self.network(xt)
        return masked_ce(logits, tokens, noise_mask, 1.0 / t if self.loss_weighting == "elbo" else None)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(batch, step_generator(self, self.seed, batch_idx, batch["tokens"].device))
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # train/lr: LearningRateMonitor
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        generator = torch.Generator(device=batch["tokens"].device).manual_seed(batch_idx)  # same masks every time
        self.log("val/loss", self.loss(batch, generator), prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.val_sampler is None or self.trainer.sanity_checking or self.val_samples <= 0:
            return
        benchmark = self.trainer.datamodule.benchmark(split="val")  # never the test prompts
        steps = int(self.trainer.datamodule.answer_mask.sum())  # one token per step
        row, _, _ = evaluate_sampler(self.network, self.val_sampler, benchmark, steps, self.val_samples,
                                  self.val_samples, seed=0, sampler_name="val")
        self.log_dict({f"val/{k}": row[k] for k in ("gen_nll", "bigram_kl", "accuracy", "entropy") if k in row},
                      prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.network.parameters())
        return optimizer_config(optimizer, self.warmup_steps, self.trainer.max_steps)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.trained_steps = int(checkpoint.get("global_step", 0))

    def export(self, path: str, rows: list[dict] | None = None) -> None:
        """Save the trained denoiser as a teacher directory other objectives load frozen (the one export
        path: the training run and `fewstep-export CKPT` both call it; `rows` are not recorded)."""
        steps = int(self.global_step) if self._trainer is not None else int(self.trained_steps or 0)
        save_teacher(self.network, path, data=self.data_spec or {}, extra={"trained_steps": steps})
