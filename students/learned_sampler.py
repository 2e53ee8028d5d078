"""A few-step sampler with learnable coefficients (LSD / LSD+) and a learned reveal rule.

M steps; at step i the frozen denoiser is called once, tokens are drawn for every masked
position from softmax(coefficient_i * logits), and k_i of them are revealed, picked by the reveal
rule (see `students.reveal_rule`). Learnable parts, each optional (`learn`):
  coefficient  per-step logit multiplier (LSD); stored as its log, so it stays positive
  grid         tokens revealed per step (LSD+): fractions softmax(grid_logits) of the masked
               positions, every step revealing at least one and all steps covering the sequence
  rule         per-step weights of the reveal rule's features
At the identity initialisation (all zeros) the sampler is the ancestral sampler with even counts:
same generator, same tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from students.reveal_rule import FEATURES, STATIC, race_select, static_features
from teachers.samplers.base import Sampler, draw_tokens

PARTS = ("coefficient", "grid", "rule")


class LearnedSampler(Sampler, nn.Module):
    """Args:
        steps: M, the number of denoiser calls.
        learn: which parts train (the others keep their initial values).
        rule_init: initial rule weights by feature name, the same at every step (default all 0:
            uniformly random order). E.g. {"adjacent_chosen": -30} keeps neighbours apart.
        eos_fill: a committed end token turns every later answer position into the end token.
    """

    name = "learned"

    def __init__(self, steps: int, learn: list[str] | tuple[str, ...] = PARTS, rule_init: dict[str, float] | None = None,
                 eos_fill: bool = False) -> None:
        super().__init__()
        if int(steps) < 1:
            raise ValueError(f"student.steps must be >= 1, got {steps}")
        unknown = set(learn) - set(PARTS)
        if unknown:
            raise ValueError(f"student.learn has unknown parts {sorted(unknown)}; choose from {list(PARTS)}")
        rule_init = dict(rule_init or {})
        bad = set(rule_init) - set(FEATURES)
        if bad:
            raise ValueError(f"student.rule_init has unknown features {sorted(bad)}; choose from {list(FEATURES)}")
        self.steps = int(steps)
        self.learn = [p for p in PARTS if p in learn]
        self.rule_init = rule_init
        self.eos_fill = bool(eos_fill)
        self.log_coefficient = nn.Parameter(torch.zeros(self.steps), requires_grad="coefficient" in learn)
        self.grid_logits = nn.Parameter(torch.zeros(self.steps), requires_grad="grid" in learn)
        init = torch.tensor([float(rule_init.get(f, 0.0)) for f in FEATURES])
        self.rule_weights = nn.Parameter(init.repeat(self.steps, 1), requires_grad="rule" in learn)

    @property
    def config(self) -> dict:
        return {"steps": self.steps, "learn": list(self.learn), "rule_init": dict(self.rule_init), "eos_fill": self.eos_fill}

    def default_steps(self, generated: int) -> list[int]:
        return [self.steps]

    def check_steps(self, steps: int) -> None:
        if steps != self.steps:
            raise ValueError(f"this student was distilled for {self.steps} steps, got steps={steps}; "
                             f"use eval.steps=[{self.steps}] or distill a student with student.steps={steps}")

    # --- the schedule -------------------------------------------------------------------------
    def coefficients(self) -> Tensor:
        return self.log_coefficient.exp()

    def boundaries(self, num_masked: Tensor, shift: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Positions revealed after each step, (B, M), and the log-probability of that draw (B,).

        Step i reveals 1 + its share of the other n - M positions: boundary_i =
        (i + 1) + floor((n - M) * c_i + shift) with c the cumulative softmax(grid_logits), so every
        step reveals >= 1 and the last boundary is n, whatever the parameters. shift=None is the
        deterministic floor (sampling; exactly the ancestral counts at init); a uniform shift per
        row is randomised rounding, whose boundaries have mean (i+1) + (n-M) c_i and a
        differentiable log-probability (training the grid with a score-function gradient).
        """
        n = num_masked.to(torch.float64)[:, None]
        if (n < self.steps).any():
            raise ValueError(f"this student takes {self.steps} steps, more than the {int(n.min())} masked positions")
        fractions = torch.softmax(self.grid_logits.to(torch.float64), dim=0)
        cumulative = torch.cat([fractions.cumsum(0)[:-1], fractions.new_ones(1)])  # last exactly 1
        target = (n - self.steps) * cumulative  # (B, M)
        offset = torch.full_like(n, 1e-9) if shift is None else shift.to(torch.float64)[:, None]
        rounded = torch.floor(target + offset).detach()
        steps = torch.arange(1, self.steps + 1, device=n.device, dtype=torch.float64)
        if shift is None:
            log_prob = torch.zeros_like(n[:, 0])
        else:  # P(shift lands in the interval giving these boundaries) = hi - lo
            lo = (rounded - target).amax(-1).clamp_min(0)
            hi = (rounded + 1 - target).amin(-1).clamp_max(1)
            log_prob = (hi - lo).clamp_min(1e-12).log()
        return (rounded + steps).long(), log_prob

    def counts(self, num_masked: Tensor, shift: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Tokens revealed at each step (B, M) and the log-probability of the draw (see `boundaries`)."""
        bounds, log_prob = self.boundaries(num_masked, shift)
        return torch.diff(bounds, dim=-1, prepend=torch.zeros_like(bounds[:, :1])), log_prob

    # --- one step -----------------------------------------------------------------------------
    def step_logits(self, logits: Tensor, i: int) -> Tensor:
        return logits.float() * self.coefficients()[i]

    def select(self, logits: Tensor, masked: Tensor, k: Tensor, i: int, uniforms: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The reveal rule at step i: (chosen (B, L), order (B, max k), log-probability (B,))."""
        w = self.rule_weights[i]
        revealed = ~masked  # prompt and earlier steps
        static = static_features(logits, revealed) @ w[: len(STATIC)]
        return race_select(static, w[len(STATIC):], masked, k, uniforms)

    def plan(self, start_mask: Tensor, steps: int | None) -> int:
        """Always `self.steps` denoiser calls (`steps`, if given, must match)."""
        if steps is not None:
            self.check_steps(steps)
        return self.steps

    def step(self, logits: Tensor, tokens: Tensor, masked: Tensor, i: int, steps: int, start_mask: Tensor,
             generator: torch.Generator | None) -> Tensor:
        """Draw tokens from softmax(coefficient_i * logits) and reveal the grid's count, picked by the rule."""
        counts, _ = self.counts(start_mask.sum(-1).cpu())
        draws = draw_tokens(self.step_logits(logits, i), 1.0, generator)
        uniforms = torch.rand(masked.shape, generator=generator, device=masked.device)
        k = torch.minimum(counts[:, i].to(masked.device), masked.sum(-1))  # fewer left after end-token filling
        chosen, _, _ = self.select(logits, masked, k, i, uniforms)
        return torch.where(chosen, draws, tokens)

    def describe(self, num_masked: int) -> str:
        """The learned coefficients as a Markdown table: per step count, coefficient, rule weights."""
        counts, _ = self.counts(torch.tensor([num_masked]))
        head = "| step | count | coefficient | " + " | ".join(FEATURES) + " |"
        lines = [head, "|" + "---|" * (3 + len(FEATURES))]
        for i in range(self.steps):
            w = " | ".join(f"{v:+.2f}" for v in self.rule_weights[i].tolist())
            lines.append(f"| {i + 1} | {int(counts[0, i])} | {self.coefficients()[i].item():.3f} | {w} |")
        return "\n".join(lines)
