"""A composed student: a distilled denoiser (certainty forcing or trajectory distillation), optionally a
joint-sampling head trained on that denoiser, and the decoding rule, in one export.

The parts are the existing students, held whole: the denoiser and its rule are an
`EntropyThresholdSampler` (students/entropy_threshold.py: its own fine-tuned denoiser, the entropy
threshold, semi-autoregressive blocks), the head is a `JointHeadSampler`'s (students/joint_head.py).
One loop step (one full forward of the distilled denoiser):

    no head:    commit every masked position of the current block whose entropy is below
                `threshold`, and at least the most certain one (the certainty student's own rule).
    with head:  h = denoiser.hidden_states(x), then up to `head_passes` head passes, each
                    h, logits = head(embed(x), h);  x = threshold commit on logits
                so a pass sees the tokens the passes before it committed in the same forward (ADJUST's
                joint draw, with dParallel's commit rule instead of one token per pass). The first
                pass commits at least one token per row, as the certainty student's step does; later
                passes commit only what clears the threshold, so the head adds tokens where it is sure
                and never forces one. A forward's passes stop when a pass commits nothing (then the
                next full forward) or the answer is complete.

`nfe` counts full forwards per answer, `head_passes` the head passes an answer went through while it
still had masked positions. `students.compose(DIR, ...)` builds one from a certainty or trajectory student's
export; objective=composed trains its head (distill/objectives/composed.py).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from students.entropy_threshold import EntropyThresholdSampler
from students.joint_head import JointHeadSampler
from teachers.samplers.base import AdaptiveSampler, draw_tokens, fill_after_end
from teachers.samplers.selection import certainty, current_block, span_blocks, threshold_set


class ComposedSampler(AdaptiveSampler, nn.Module):
    """Args:
        decoder: the distilled denoiser and its decoding rule: an EntropyThresholdSampler or its config
            (threshold, block_size, temperature, ..., denoiser: its TransformerDenoiser config or
            transformers spec); it must carry its own denoiser.
        head: a JointHeadSampler's config (its head is used; `tokens_per_forward` is the number of
            passes it was trained to unroll from one forward), or None: no head.
        head_passes: most head passes per full forward when decoding (None: the head's tokens_per_forward;
            without a head there are none).
        forced_passes: every head pass commits at least its most certain position, as the first does
            (ADJUST's one token per pass, plus whatever clears the threshold): a forward then reveals at
            least min(head_passes, masked) tokens. False: later passes commit only what clears the threshold.
    """

    name = "composed"

    def __init__(self, decoder: EntropyThresholdSampler | dict, head: dict | None = None,
                 head_passes: int | None = None, forced_passes: bool = False) -> None:
        nn.Module.__init__(self)
        self.decoder = decoder if isinstance(decoder, EntropyThresholdSampler) else EntropyThresholdSampler(**decoder)
        if self.decoder.denoiser_config is None:
            raise ValueError("a composed student decodes with its own distilled denoiser: build it from a certainty or "
                             "trajectory student's export (students.compose(DIR) or student.denoiser_path=DIR)")
        self.head = JointHeadSampler(**head) if head is not None else None
        self.head_passes = int(head_passes if head_passes is not None else self.head.tokens_per_forward) \
            if self.head is not None else None
        if self.head_passes is not None and self.head_passes < 1:
            raise ValueError(f"head_passes must be >= 1, got {self.head_passes}")
        self.forced_passes = bool(forced_passes)

    # --- the decoding rule is the decoder's -----------------------------------------------------
    threshold = property(lambda self: self.decoder.threshold,
                         lambda self, value: setattr(self.decoder, "threshold", float(value)))
    block_size = property(lambda self: self.decoder.block_size)
    temperature = property(lambda self: self.decoder.temperature,
                           lambda self, value: setattr(self.decoder, "temperature", float(value)))
    eos_fill = property(lambda self: self.decoder.eos_fill)
    max_steps = property(lambda self: self.decoder.max_steps)

    @property
    def counts_head_passes(self) -> bool:
        return self.head is not None

    @property
    def config(self) -> dict:
        return {"decoder": self.decoder.config, "head": self.head.config if self.head is not None else None,
                "head_passes": self.head_passes, "forced_passes": self.forced_passes}

    def network(self, denoiser: nn.Module) -> nn.Module:
        return self.decoder.network(denoiser)

    def plan(self, start_mask: Tensor, steps: int | None) -> int:
        return self.decoder.plan(start_mask, steps)

    def fill_id(self, denoiser: nn.Module) -> int | None:
        return self.decoder.fill_id(denoiser)

    def select(self, logits: Tensor, candidates: Tensor) -> Tensor:
        return self.decoder.select(logits, candidates)

    # --- the head, as objective=joint_head trains it ----------------------------------------------
    def resolve(self, denoiser: nn.Module, seq_len: int) -> "ComposedSampler":
        """Size the head for the distilled denoiser (`denoiser` binds an adapter-only decoder)."""
        if self.head is None:
            raise ValueError("this composed student has no head to train: set student.head")
        self.head.resolve(self.network(denoiser), seq_len)
        return self

    @property
    def tokens_per_forward(self) -> int:
        return self.head.tokens_per_forward

    @property
    def rule(self):
        return self.head.rule

    def head_pass(self, denoiser: nn.Module, tokens: Tensor, hidden: Tensor,
                  columns: slice = slice(None)) -> tuple[Tensor, Tensor]:
        return self.head.head_pass(denoiser, tokens, hidden, columns)

    # --- decoding ------------------------------------------------------------------------------
    def advance(self, denoiser: nn.Module, tokens: Tensor, masked: Tensor, i: int, steps: int, start_mask: Tensor,
                attention_mask: Tensor | None, generator: torch.Generator | None) -> list[Tensor]:
        """One full forward and its threshold commit; with a head, one commit per head pass instead."""
        if self.head is None:
            return super().advance(denoiser, tokens, masked, i, steps, start_mask, attention_mask, generator)
        padding = {} if attention_mask is None else {"attention_mask": attention_mask}
        hidden = denoiser.hidden_states(tokens, **padding)  # the full forward
        eos_id = self.fill_id(denoiser)
        states = []
        for p in range(self.head_passes):
            hidden, logits = self.head_pass(denoiser, tokens, hidden)
            masked = tokens == denoiser.mask_id
            if p == 0 or self.forced_passes:  # the certainty student's step: at least one token per row
                new = self.step(logits, tokens, masked, i, steps, start_mask, generator)
            else:  # later passes only add what clears the threshold: the head never forces a token
                commit = self.confident(logits, current_block(masked, span_blocks(start_mask, self.block_size)))
                new = torch.where(commit, draw_tokens(logits, self.temperature, generator), tokens)
            if eos_id is not None:  # after every pass, so later passes see the filled tail
                new = fill_after_end(new, start_mask, eos_id)
            if p > 0 and torch.equal(new, tokens):  # nothing cleared the threshold: the next full forward
                states.append(tokens)  # the pass was made, so it counts
                break
            tokens = new
            states.append(tokens)
            if not (tokens == denoiser.mask_id).any():
                break
        return states

    def confident(self, logits: Tensor, candidates: Tensor) -> Tensor:
        """(B, L) bool: the candidates past the decoder's threshold, none forced."""
        rule = self.decoder.rule
        return threshold_set(certainty(logits, rule), candidates, self.threshold, rule, strict=rule == "entropy",
                             at_least_one=False)

    # --- export: the decoder's files and tensors, and the head's tensors ---------------------------
    def export_state(self) -> dict[str, Tensor]:
        state = {f"decoder.{k}": v for k, v in self.decoder.export_state().items()}
        if self.head is not None:
            state.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return state

    def load_export_state(self, state: dict[str, Tensor]) -> None:
        part = lambda prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
        self.decoder.load_export_state(part("decoder."))
        if self.head is not None:
            self.head.load_state_dict(part("head."))

    def save_files(self, path) -> list[str]:
        return self.decoder.save_files(path)

    def load_files(self, path) -> None:
        self.decoder.load_files(path)

    def describe(self, num_masked: int) -> str:
        head = "none" if self.head is None else (
            f"{sum(p.numel() for p in self.head.parameters())} parameters, trained to unroll "
            f"{self.head.tokens_per_forward} passes; up to {self.head_passes} passes per full forward")
        return self.decoder.describe(num_masked) + f"\n| joint head | {head} |"


def compose_on(student: EntropyThresholdSampler, head: dict | None = None, head_passes: int | None = None,
               threshold: float | None = None, block_size: int | None = None,
               forced_passes: bool = False) -> ComposedSampler:
    """A ComposedSampler around a loaded certainty or trajectory student (its denoiser and rule), with a new
    (untrained) head if `head` is given; `threshold` and `block_size` replace the student's when given."""
    if isinstance(student, ComposedSampler):  # a composed student's denoiser and rule, its head replaced
        student = student.decoder
    if not isinstance(student, EntropyThresholdSampler) or student.denoiser_config is None:
        raise ValueError(f"a composed student is built on a certainty or trajectory student's export (its own "
                         f"fine-tuned denoiser), got {type(student).__name__}")
    if threshold is not None:
        student.threshold = float(threshold)
    if block_size is not None:
        if int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        student.block_size = int(block_size)
    composed = ComposedSampler(student, head, head_passes, forced_passes)
    for name in ("teacher_ref", "prompt_split"):  # where the denoiser came from: checked when it is trained on
        setattr(composed, name, getattr(student, name, None))
    composed.denoiser_from = {"path": os.path.abspath(student.export_path), "method": student.method} \
        if getattr(student, "export_path", None) else None
    return composed
