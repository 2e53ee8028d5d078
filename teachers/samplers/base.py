"""The Sampler contract and the loop shared by the reference samplers.

A sampler owns the schedule (how many and which masked positions are revealed at each step);
the denoiser only predicts x0. `sample` writes the loop; each sampler defines `scores`, the
priority of masked positions at one step (higher is revealed first), or overrides `step`.

All randomness comes from the explicit `torch.Generator`, so the same generator state gives the
same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class SampleOutput:
    """tokens: (B, L) with no mask left; nfe: denoiser forward passes per sequence (the mean over
    rows for samplers whose rows stop at different steps); trace: (B, L) states after each step when
    asked for (return_trace=True), else None; head_passes: passes of a light head on top of the
    denoiser (students.JointHeadSampler), not in nfe; nfe_per_row: (B,) forward passes of each row,
    given by samplers with adaptive step counts, else None."""

    tokens: Tensor
    nfe: int | float
    trace: list[Tensor] | None = None
    head_passes: int | None = None
    nfe_per_row: Tensor | None = None


def make_canvas(mask_id: int, batch_size: int | None, seq_len: int | None, prompt: Tensor | None) -> Tensor:
    """The start state: `prompt` as given (mask_id where tokens are to be generated), or all-mask."""
    if prompt is not None:
        return prompt.clone()
    if batch_size is None or seq_len is None:
        raise ValueError("give either prompt=(B, L) tokens with mask_id where to generate, or batch_size and seq_len")
    return torch.full((batch_size, seq_len), mask_id, dtype=torch.long)


def reveal_counts(num_masked: Tensor, step: int, steps: int) -> Tensor:
    """Positions to reveal per row at `step` (0-based) so that `steps` steps reveal `num_masked` evenly."""
    return (num_masked * (step + 1)) // steps - (num_masked * step) // steps


def draw_tokens(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """One token per position (B, L) from softmax(logits / temperature); temperature 0 is argmax."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.view(probs.shape[:-1])


def top_k_mask(scores: Tensor, masked: Tensor, k: Tensor) -> Tensor:
    """(B, L) bool: the k[b] highest-scoring masked positions of each row (ties: lower index first)."""
    scores = scores.masked_fill(~masked, float("-inf"))
    order = scores.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (ranks < k[:, None]) & masked


def uniform_scores(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device)


class MaskedSampler:
    """Base of the reference samplers: `steps` denoiser calls, each revealing an even share.

    Args:
        temperature: tokens are drawn from softmax(logits / temperature); 0 means argmax.
    """

    name = "masked"

    def __init__(self, temperature: float = 1.0) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = argmax), got {temperature}")
        self.temperature = temperature

    def scores(self, logits: Tensor, draws: Tensor, masked: Tensor, start_mask: Tensor, generator) -> Tensor:
        raise NotImplementedError

    def step(self, logits: Tensor, tokens: Tensor, masked: Tensor, i: int, steps: int, start_mask: Tensor, generator) -> Tensor:
        """Reveal this step's share of masked positions, chosen by `scores`, with drawn tokens."""
        draws = draw_tokens(logits, self.temperature, generator)
        k = reveal_counts(start_mask.sum(-1), i, steps)
        reveal = top_k_mask(self.scores(logits, draws, masked, start_mask, generator), masked, k)
        return torch.where(reveal, draws, tokens)

    @torch.no_grad()
    def sample(
        self,
        denoiser: nn.Module,
        steps: int,
        *,
        batch_size: int | None = None,
        seq_len: int | None = None,
        prompt: Tensor | None = None,
        attention_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        return_trace: bool = False,
    ) -> SampleOutput:
        """Generate every masked position of the canvas in `steps` denoiser calls; `attention_mask` (B, L)
        (False at a prompt's left padding) goes to the denoiser when given."""
        tokens = make_canvas(denoiser.mask_id, batch_size, seq_len, prompt)
        start_mask = tokens == denoiser.mask_id
        most = int(start_mask.sum(-1).max())
        if not 1 <= steps <= max(most, 1):
            raise ValueError(f"steps must be between 1 and the number of masked positions ({most}), got {steps}")
        trace = [] if return_trace else None
        nfe = 0
        for i in range(steps):
            masked = tokens == denoiser.mask_id
            logits = denoiser(tokens) if attention_mask is None else denoiser(tokens, attention_mask=attention_mask)
            nfe += 1
            tokens = self.step(logits, tokens, masked, i, steps, start_mask, generator)
            if trace is not None:
                trace.append(tokens.clone())
        return SampleOutput(tokens=tokens, nfe=nfe, trace=trace)
