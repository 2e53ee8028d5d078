"""The ancestral sampler with a denoiser of its own: the student of SDTT (self-distillation through
time, Deschenaux & Gulcehre 2025).

It decodes exactly as `teachers.AncestralSampler` does (MDLM's ancestral rule with even counts: step
i of M reveals its share n/M of the masked positions in a uniformly random order, each drawn from
softmax(logits / temperature)), but calls its own fine-tuned copy of the teacher's network instead
of the denoiser passed to `sample`. So the teacher at M steps and this student at M steps differ only
in the network's weights, and a row of the one compares with a row of the other.

`steps` is the step count it was distilled for (fewstep-eval's default); it samples at any other
step count too, with the same rule.
"""

from __future__ import annotations

from torch import nn

from students.own_denoiser import copy_denoiser, denoiser_spec
from teachers.samplers.ancestral import AncestralSampler
from teachers.transformer import TransformerDenoiser


class AncestralStudentSampler(AncestralSampler, nn.Module):
    """Args:
        steps: the step count the student was distilled for (its default in fewstep-eval).
        denoiser: its own network's TransformerDenoiser config (None until `init_denoiser`).
        temperature: tokens are drawn from softmax(logits / temperature); 1 is the model's own
            distribution, the setting SDTT trains for.
    """

    name = "ancestral_student"

    def __init__(self, steps: int | None = None, denoiser: dict | None = None, temperature: float = 1.0) -> None:
        nn.Module.__init__(self)
        AncestralSampler.__init__(self, temperature=temperature)  # counts="even", schedule="even"
        if steps is not None and int(steps) < 1:
            raise ValueError(f"student.steps must be >= 1, got {steps}")
        self.steps = None if steps is None else int(steps)
        self.denoiser_config = dict(denoiser) if denoiser is not None else None
        self.denoiser: nn.Module | None = TransformerDenoiser(**self.denoiser_config) if denoiser is not None else None

    @property
    def config(self) -> dict:
        return {"steps": self.steps, "denoiser": self.denoiser_config, "temperature": self.temperature}

    def init_denoiser(self, teacher: nn.Module) -> None:
        """Start the own network as a trainable copy of `teacher` (all weights, float32)."""
        model = copy_denoiser(teacher, float32=True)
        self.denoiser_config = denoiser_spec(model)
        self.denoiser = model.requires_grad_(True)

    def network(self, denoiser: nn.Module) -> nn.Module:
        if self.denoiser is None:
            raise ValueError("this student has no network yet: train it (objective=sdtt) or load its export")
        return self.denoiser

    def default_steps(self, generated: int) -> list[int]:
        return [min(self.steps or generated, generated)]

    def describe(self, num_masked: int) -> str:
        return "\n".join(["| setting | value |", "|---|---|", f"| distilled for | {self.steps} steps |",
                          f"| decoding | ancestral, even counts, random order, temperature {self.temperature:g} |",
                          f"| own denoiser | all weights fine-tuned ({sum(p.numel() for p in self.denoiser.parameters())} "
                          "parameters) |"])
