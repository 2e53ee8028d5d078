"""The loop shared by the adaptive reference samplers (eb.py, threshold.py): each step a sampler
decides how many masked positions to commit, so rows finish after different numbers of steps.

The loop owns the canvas: it calls the denoiser on the rows that still have masked positions,
asks the sampler's `select` which positions of those rows to commit, draws their tokens, and
counts forward passes per row. `steps` is a per-row budget: a row's last budgeted step commits
every position it still has masked, so no row spends more than `steps` forward passes.

Semi-autoregressive blocks (`block_size`, as LLaDA, Fast-dLLM and dParallel decode) restrict the
candidates of a step to each row's leftmost block that still has masked positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from teachers.samplers.base import SampleOutput, draw_tokens, make_canvas


def entropy(logits: Tensor, temperature: float = 1.0, float64: bool = False) -> Tensor:
    """Entropy (nats) of softmax(logits / temperature) over the last dimension: (...)."""
    log_p = F.log_softmax(logits.to(torch.float64 if float64 else torch.float32) / temperature, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def span_blocks(start_mask: Tensor, block_size: int | None) -> Tensor:
    """(B, L) block of each position, counted within the masked span (other positions get -1)."""
    rank = start_mask.long().cumsum(-1) - 1
    if block_size is None:
        return torch.where(start_mask, 0, -1)
    return torch.where(start_mask, rank // block_size, -1)


def current_block(masked: Tensor, blocks: Tensor) -> Tensor:
    """(B, L) bool: the masked positions of each row's leftmost unfinished block."""
    first = blocks.masked_fill(~masked, blocks.shape[1]).amin(-1, keepdim=True)  # (B, 1)
    return masked & (blocks == first)


def fill_after_eos(tokens: Tensor, start_mask: Tensor, eos_id: int) -> Tensor:
    """Every answer position after a row's first answer end token becomes the end token."""
    eos = (tokens == eos_id) & start_mask
    after = (eos.long().cumsum(-1) - eos.long()) > 0  # strictly after the first end token
    return torch.where(after & start_mask, eos_id, tokens)


class AdaptiveSampler:
    """Base of the adaptive samplers: the loop; subclasses define `select`.

    Args:
        temperature: tokens are drawn from softmax(logits / temperature); 0 means argmax.
        block_size: positions per semi-autoregressive block of the masked span; None: one block.
        max_steps: the step budget fewstep-eval uses when eval.steps is null (None: one step per
            generated position, i.e. no budget: the sampler alone decides).
        eos_fill: once a row commits the end token (the denoiser's `eos_id`) at an answer position,
            every later answer position of that row becomes the end token; off: the model decides
            every position, as the reference decoders do.
    """

    name = "adaptive"

    def __init__(self, temperature: float = 1.0, block_size: int | None = None, max_steps: int | None = None,
                 eos_fill: bool = False) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = argmax), got {temperature}")
        if block_size is not None and block_size < 1:
            raise ValueError(f"block_size must be >= 1 or null (one block), got {block_size}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null (no budget), got {max_steps}")
        self.temperature = float(temperature)
        self.block_size = block_size
        self.max_steps = max_steps
        self.eos_fill = bool(eos_fill)

    def select(self, logits: Tensor, candidates: Tensor) -> Tensor:
        """(B, L) bool: the candidates to commit this step, at least one in each row that has any."""
        raise NotImplementedError

    def default_steps(self, generated: int) -> list[int]:
        """fewstep-eval's step count when eval.steps is null: the budget, at most one step per position."""
        return [min(self.max_steps or generated, generated)]

    @torch.no_grad()
    def sample(
        self,
        denoiser: nn.Module,
        steps: int | None = None,
        *,
        batch_size: int | None = None,
        seq_len: int | None = None,
        prompt: Tensor | None = None,
        attention_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        return_trace: bool = False,
    ) -> SampleOutput:
        """Fill every masked position, each row in as many steps as `select` needs, at most `steps`.

        steps: forward passes each row may spend (None: no budget). Returns tokens, nfe = mean
            forward passes per row, and nfe_per_row (B,).
        """
        if steps is not None and steps < 1:
            raise ValueError(f"steps is the per-row budget of forward passes: >= 1 or None (no budget), got {steps}")
        eos_id = getattr(denoiser, "eos_id", None)
        if self.eos_fill and eos_id is None:
            raise ValueError("eos_fill=true needs a denoiser with an end token (eos_id), and this one has none; "
                             "set sampler.eos_fill=false")
        tokens = make_canvas(denoiser.mask_id, batch_size, seq_len, prompt)
        if attention_mask is not None and attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask must have the canvas's shape {tuple(tokens.shape)}, got {tuple(attention_mask.shape)}")
        start_mask = tokens == denoiser.mask_id
        blocks = span_blocks(start_mask, self.block_size)
        nfe_per_row = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        trace = [] if return_trace else None
        active = start_mask.any(-1)
        while active.any():
            rows = active.nonzero().squeeze(1)
            x = tokens[rows]
            masked = x == denoiser.mask_id
            logits = denoiser(x) if attention_mask is None else denoiser(x, attention_mask=attention_mask[rows])
            nfe_per_row[rows] += 1
            commit = self.select(logits, current_block(masked, blocks[rows]))
            if steps is not None:  # the budget's last step commits what is left
                commit |= masked & (nfe_per_row[rows] >= steps)[:, None]
            x = torch.where(commit, draw_tokens(logits, self.temperature, generator), x)
            if self.eos_fill:
                x = fill_after_eos(x, start_mask[rows], eos_id)
            tokens[rows] = x
            if trace is not None:
                trace.append(tokens.clone())
            active = (tokens == denoiser.mask_id).any(-1)
        nfe = nfe_per_row.double().mean().item() if len(nfe_per_row) else 0.0
        return SampleOutput(tokens=tokens, nfe=nfe, trace=trace, nfe_per_row=nfe_per_row)
