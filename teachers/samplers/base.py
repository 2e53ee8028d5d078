"""The Sampler contract and the one sampling loop every sampler plugs into.

diffusers' scheduler contract is the model: the loop (`Sampler.sample`) owns the canvas, the
prompt, the attention mask, the generator, NFE counting, the trace and `eos_fill`; a sampler owns
"which positions, which tokens" in a small `step(logits, tokens, masked, i, steps, start_mask,
generator)`. Two kinds plug into it:

`AdaptiveSampler` (EB-sampler, threshold decoding, the certainty student): each step commits as many
positions as its selection rule (`select`, from selection.py) accepts, so rows finish after different
numbers of steps; the loop runs the denoiser on the unfinished rows only and counts passes per row.
`steps` is a per-row budget: the loop's last step commits whatever a row still has masked.

`MaskedSampler` (the reference samplers) only ranks masked positions (`scores`); the step-count
grid comes from `schedule`:

  even   n/T per step, spread evenly over all masked positions (`reveal_counts`);
  llada  LLaDA's `generate()`: steps split evenly over the blocks (steps must be a multiple of the
         number of blocks), each block's masked count split evenly over its steps, the remainder
         to the block's first steps (`get_num_transfer_tokens`);
  dream  Dream's `diffusion_generate`: t = linspace(1, eps, T + 1); step i reveals
         int(n_masked * (1 - t[i+1] / t[i])) of the currently masked, the last step all the rest.

All randomness comes from the explicit `torch.Generator`, so the same generator state gives the
same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from teachers.samplers.selection import current_block, span_blocks

SCHEDULES = ("even", "llada", "dream")
DREAM_EPS = 1e-3  # Dream's default `eps`: the schedule stops at t = eps, not 0


@dataclass
class SampleOutput:
    """tokens: (B, L) with no mask left; nfe: denoiser forward passes per sequence (the mean over
    rows for samplers whose rows stop at different steps); trace: (B, L) states after each step when
    asked for (return_trace=True), else None; head_passes: passes of a light head on top of the
    denoiser (students.JointHeadSampler, students.ComposedSampler), not in nfe (per sequence, the mean
    over rows for adaptive samplers); nfe_per_row: (B,) forward passes of each row, given by samplers
    with adaptive step counts, else None."""

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


def check_attention_mask(attention_mask: Tensor | None, tokens: Tensor) -> Tensor | None:
    """The (B, L) bool mask (True = real token) on the canvas's device, or None; a clear error if it does not fit."""
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != tuple(tokens.shape):
        raise ValueError(f"attention_mask must have the canvas's shape {tuple(tokens.shape)} (True for real tokens, "
                         f"False at left padding), got {tuple(attention_mask.shape)}")
    return attention_mask.to(device=tokens.device, dtype=torch.bool)


def call_denoiser(denoiser: nn.Module, tokens: Tensor, attention_mask: Tensor | None) -> Tensor:
    """denoiser(tokens), passing `attention_mask` only when there is one (the oracle takes none)."""
    if attention_mask is None:
        return denoiser(tokens)
    return denoiser(tokens, attention_mask=attention_mask)


def fill_after_end(tokens: Tensor, start_mask: Tensor, eos_id: int) -> Tensor:
    """(B, L): every answer position (start_mask) after a row's first committed end token becomes the end token."""
    ended = ((tokens == eos_id) & start_mask).long().cumsum(-1) > 0  # at or after the first end token
    return torch.where(ended & start_mask, eos_id, tokens)


def reveal_counts(num_masked: Tensor, step: int, steps: int) -> Tensor:
    """Positions to reveal per row at `step` (0-based) so that `steps` steps reveal `num_masked` evenly."""
    return (num_masked * (step + 1)) // steps - (num_masked * step) // steps


def llada_counts(num_masked: Tensor, steps: int, block_size: int | None = None) -> Tensor:
    """(B, steps) tokens per step as LLaDA's generate(): blocks of `block_size` masked positions (None:
    one block), `steps // blocks` steps per block, each block's count split evenly with the remainder
    to its first steps. `check_llada_steps` must accept (num_masked, steps, block_size)."""
    n = num_masked.long()[:, None]  # (B, 1)
    size = n.clamp_min(1) if block_size is None else torch.full_like(n, block_size)
    blocks = (n + size - 1) // size  # ceil; 0 for a row with nothing to generate
    per_block = steps // blocks.clamp_min(1)  # (B, 1)
    i = torch.arange(steps, device=n.device)[None]  # (1, steps)
    block, j = i // per_block, i % per_block  # which block step i works on, and its step within it
    in_block = (n - block * size).clamp(0).minimum(size)  # masked positions of that block at its start
    return in_block // per_block + (j < in_block % per_block).long()


def check_llada_steps(num_masked: Tensor, steps: int, block_size: int | None) -> None:
    """LLaDA's generate() divides steps evenly over the blocks; say which step counts fit when they don't."""
    if block_size is None:
        return
    blocks = sorted({-(-int(n) // block_size) for n in num_masked.tolist() if n > 0})
    bad = [b for b in blocks if steps % b]
    if bad:
        raise ValueError(f"schedule=llada gives every block the same number of steps (as LLaDA's generate() does): "
                         f"steps={steps} is not a multiple of the {bad[0]} blocks of block_size={block_size}; "
                         f"use steps a multiple of {bad[0]}, another block_size, or schedule=even")


def dream_count(num_masked: Tensor, step: int, steps: int, eps: float = DREAM_EPS) -> Tensor:
    """(B,) tokens Dream's diffusion_generate reveals at `step` out of the `num_masked` still masked:
    int(n * (1 - s / t)) with t, s = linspace(1, eps, steps + 1)[step : step + 2], all of them at the last step.
    Computed in float32 as Dream does, per row (Dream uses the batch mean: the same when every row
    masks as many positions, as in its left-padded batches)."""
    if step == steps - 1:
        return num_masked.long()
    t = torch.linspace(1, eps, steps + 1)
    return (num_masked.float() * (1 - t[step + 1] / t[step]).to(num_masked.device)).long()


def reveal_schedule(schedule: str, num_masked: Tensor, steps: int, block_size: int | None = None) -> Tensor:
    """(B, steps) tokens revealed per step from `num_masked` (B,) masked positions (no end-token filling)."""
    if schedule == "even":
        return torch.stack([reveal_counts(num_masked, i, steps) for i in range(steps)], dim=1)
    if schedule == "llada":
        check_llada_steps(num_masked, steps, block_size)
        return llada_counts(num_masked, steps, block_size)
    if schedule == "dream":
        left, counts = num_masked.long(), []
        for i in range(steps):
            counts.append(dream_count(left, i, steps))
            left = left - counts[-1]
        return torch.stack(counts, dim=1)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


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


class Sampler:
    """The sampling loop. Subclasses define `step` (or, for several passes per step, `advance`).

    Attributes a sampler sets:
        eos_fill: after each step, answer positions after a row's first committed end token
            (`denoiser.eos_id`) become the end token; off, the model decides every position.
        adaptive: the sampler picks its own step count per row; the loop calls the denoiser on the
            unfinished rows only and reports `nfe_per_row` (else every row rides along every step).
        counts_head_passes: report the passes `advance` makes (`head_passes`) beside the NFE.
    """

    eos_fill: bool = False
    adaptive: bool = False
    counts_head_passes: bool = False

    def network(self, denoiser: nn.Module) -> nn.Module:
        """The denoiser the loop calls (a student with its own denoiser returns that one)."""
        return denoiser

    def plan(self, start_mask: Tensor, steps: int | None) -> int:
        """Check `steps` against the canvas before any work and return the loop's step count."""
        most = int(start_mask.sum(-1).max()) if start_mask.numel() else 0
        if steps is None or not 1 <= steps <= max(most, 1):
            raise ValueError(f"steps must be between 1 and the number of masked positions ({most}), got {steps}")
        return steps

    def fill_id(self, denoiser: nn.Module) -> int | None:
        """The end token `eos_fill` spreads, or None (off, or a vocabulary without one)."""
        return getattr(denoiser, "eos_id", None) if self.eos_fill else None

    def step(self, logits: Tensor, tokens: Tensor, masked: Tensor, i: int, steps: int, start_mask: Tensor,
             generator: torch.Generator | None) -> Tensor:
        """The tokens (B, L) after step i, given the denoiser's logits (B, L, V) on `tokens`."""
        raise NotImplementedError

    def advance(self, denoiser: nn.Module, tokens: Tensor, masked: Tensor, i: int, steps: int, start_mask: Tensor,
                attention_mask: Tensor | None, generator: torch.Generator | None) -> list[Tensor]:
        """One loop step: one denoiser call and `step`. Returns the states it went through (the last is the new canvas)."""
        logits = call_denoiser(denoiser, tokens, attention_mask)
        return [self.step(logits, tokens, masked, i, steps, start_mask, generator)]

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
        """Generate every masked position of the canvas.

        Args:
            steps: denoiser calls (a sampler may fix or bound it, see `plan`).
            prompt: (B, L) tokens with mask_id where to generate; else batch_size x seq_len all-mask.
            attention_mask: (B, L) bool, False at a left-padded prompt's padding; passed to the
                denoiser when given.
        """
        net = self.network(denoiser)
        mask_id = net.mask_id
        tokens = make_canvas(mask_id, batch_size, seq_len, prompt)
        attention_mask = check_attention_mask(attention_mask, tokens)
        start_mask = tokens == mask_id  # the answer positions
        steps = self.plan(start_mask, steps)
        eos_id = self.fill_id(net)
        everyone = torch.arange(tokens.shape[0], device=tokens.device)
        nfe_per_row = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        passes_per_row = torch.zeros_like(nfe_per_row)  # adaptive samplers with a head: passes while unfinished
        nfe, passes = 0, 0
        trace = [] if return_trace else None
        for i in range(steps):
            active = (tokens == mask_id).any(-1)
            if not active.any():  # every row done early (end-token filling; LLaDA blocks finished before their steps)
                break
            rows = active.nonzero().squeeze(1) if self.adaptive else everyone
            x = tokens[rows]
            states = self.advance(net, x, x == mask_id, i, steps, start_mask[rows],
                                  attention_mask[rows] if attention_mask is not None else None, generator)
            if eos_id is not None:
                states[-1] = fill_after_end(states[-1], start_mask[rows], eos_id)
            if self.adaptive and self.counts_head_passes:
                for before in [x, *states[:-1]]:
                    passes_per_row[rows] += (before == mask_id).any(-1).long()
            tokens[rows] = states[-1]
            nfe += 1
            nfe_per_row[rows] += 1
            passes += len(states)
            if trace is not None:
                for state in states:
                    full = tokens.clone()
                    full[rows] = state
                    trace.append(full)
        if self.adaptive:
            mean = nfe_per_row.double().mean().item() if len(nfe_per_row) else 0.0
            head = passes_per_row.double().mean().item() if len(nfe_per_row) else 0.0
            return SampleOutput(tokens=tokens, nfe=mean, trace=trace, nfe_per_row=nfe_per_row,
                                head_passes=head if self.counts_head_passes else None)
        return SampleOutput(tokens=tokens, nfe=nfe, trace=trace, head_passes=passes if self.counts_head_passes else None)


class MaskedSampler(Sampler):
    """Base of the reference samplers: `steps` denoiser calls, each revealing its share (`schedule`)
    of the masked positions, the ones ranked highest by `scores`.

    Args:
        temperature: tokens are drawn from softmax(logits / temperature); 0 means argmax.
        schedule: tokens per step: "even" | "llada" | "dream" (see the module docstring).
        eos_fill: a committed end token turns every later answer position into the end token.
    """

    name = "masked"
    block_size: int | None = None  # blocks for schedule="llada" (None: the whole answer is one block)

    def __init__(self, temperature: float = 1.0, schedule: str = "even", eos_fill: bool = False) -> None:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = argmax), got {temperature}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.temperature = temperature
        self.schedule = schedule
        self.eos_fill = bool(eos_fill)

    def plan(self, start_mask: Tensor, steps: int | None) -> int:
        steps = super().plan(start_mask, steps)
        if self.schedule == "llada":
            check_llada_steps(start_mask.sum(-1), steps, self.block_size)
        return steps

    def step_counts(self, masked: Tensor, i: int, steps: int, start_mask: Tensor) -> Tensor:
        """(B,) positions to reveal at step i under `schedule`."""
        if self.schedule == "even":
            return reveal_counts(start_mask.sum(-1), i, steps)
        if self.schedule == "llada":
            return llada_counts(start_mask.sum(-1), steps, self.block_size)[:, i]
        return dream_count(masked.sum(-1), i, steps)  # Dream counts from what is still masked

    def scores(self, logits: Tensor, draws: Tensor, masked: Tensor, start_mask: Tensor, generator) -> Tensor:
        raise NotImplementedError

    def step(self, logits: Tensor, tokens: Tensor, masked: Tensor, i: int, steps: int, start_mask: Tensor, generator) -> Tensor:
        """Reveal this step's share of masked positions, chosen by `scores`, with drawn tokens."""
        draws = draw_tokens(logits, self.temperature, generator)
        k = self.step_counts(masked, i, steps, start_mask)
        reveal = top_k_mask(self.scores(logits, draws, masked, start_mask, generator), masked, k)
        return torch.where(reveal, draws, tokens)


class AdaptiveSampler(Sampler):
    """Base of the adaptive samplers: each step commits the candidates `select` accepts (at least
    one per unfinished row), inside each row's leftmost unfinished block; subclasses define `select`.

    Args:
        temperature: tokens are drawn from softmax(logits / temperature); 0 means argmax.
        block_size: positions per semi-autoregressive block of the masked span; None: one block.
        max_steps: the step budget fewstep-eval uses when eval.steps is null (None: one step per
            generated position, i.e. no budget: the sampler alone decides).
        eos_fill: a committed end token turns every later answer position into the end token (the
            denoiser must have one).
    """

    name = "adaptive"
    adaptive = True

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

    def default_steps(self, generated: int) -> list[int]:
        """fewstep-eval's step count when eval.steps is null: the budget, at most one step per position."""
        return [min(self.max_steps or generated, generated)]

    def plan(self, start_mask: Tensor, steps: int | None) -> int:
        """steps: the per-row budget of forward passes (None: none). Every step commits at least one
        position, so no row needs more steps than it has masked positions: the loop runs that many at most."""
        if steps is not None and steps < 1:
            raise ValueError(f"steps is the per-row budget of forward passes: >= 1 or None (no budget), got {steps}")
        most = int(start_mask.sum(-1).max()) if start_mask.numel() else 0
        return most if steps is None else min(steps, most)

    def fill_id(self, denoiser: nn.Module) -> int | None:
        eos_id = getattr(denoiser, "eos_id", None)
        if self.eos_fill and eos_id is None:
            raise ValueError("eos_fill=true needs a denoiser with an end token (eos_id), and this one has none; "
                             "set sampler.eos_fill=false")
        return eos_id if self.eos_fill else None

    def select(self, logits: Tensor, candidates: Tensor) -> Tensor:
        """(B, L) bool: the candidates to commit this step, at least one in each row that has any."""
        raise NotImplementedError

    def step(self, logits: Tensor, tokens: Tensor, masked: Tensor, i: int, steps: int, start_mask: Tensor,
             generator: torch.Generator | None) -> Tensor:
        """Commit what `select` accepts in the current block; the last step commits all that is left.
        (A row the loop still runs at step i has spent exactly i passes: rows only drop out.)"""
        commit = self.select(logits, current_block(masked, span_blocks(start_mask, self.block_size)))
        if i == steps - 1:  # the budget's last step
            commit = commit | masked
        return torch.where(commit, draw_tokens(logits, self.temperature, generator), tokens)
