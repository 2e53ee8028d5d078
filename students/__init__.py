"""Few-step samplers with learnable parts, distilled from a frozen teacher (plain torch).

    import students, teachers
    student = students.load("runs/lsd_joint_oracle/export")
    out = student.sample(teacher, prompt=canvas, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import os

from torch import nn

from students.ancestral_student import AncestralStudentSampler
from students.chunk_head import ChunkHead, ChunkHeadSampler
from students.composed import ComposedSampler, compose_on
from students.entropy_threshold import EntropyThresholdSampler
from students.export import check_teacher, load_denoiser as _load_denoiser, load_student, save_student
from students.joint_head import JointHead, JointHeadSampler
from students.learned_sampler import LearnedSampler
from students.reveal_rule import FEATURES
from students.rule_sampler import RuleSampler

REGISTRY = {"LearnedSampler": LearnedSampler, "JointHeadSampler": JointHeadSampler, "ChunkHeadSampler": ChunkHeadSampler,
            "EntropyThresholdSampler": EntropyThresholdSampler, "AncestralStudentSampler": AncestralStudentSampler,
            "ComposedSampler": ComposedSampler}


def build(config: dict) -> nn.Module:
    """A student from its config: {"_target_": "students.<Class>", **constructor args}."""
    config = dict(config)
    name = str(config.pop("_target_", "")).rsplit(".", 1)[-1]
    if name not in REGISTRY:
        raise ValueError(f"unknown student {name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name](**config)


def load(path: str | os.PathLike, trust_remote_code: bool = False, temperature: float | None = None) -> nn.Module:
    """A ready-to-use student from an export directory (checks the weights' SHA-256). An export whose
    denoiser ships Python code is refused unless `trust_remote_code=True` (the CLI apps take it from
    `teacher.trust_remote_code`). `temperature` replaces the exported one for the draws (0: argmax), e.g.
    to measure how many distinct answers an argmax student can also give."""
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: argmax) or null (the export's own), got {temperature}")
    student = load_student(path, REGISTRY, trust_remote_code=trust_remote_code)
    if temperature is not None:
        if not hasattr(student, "temperature"):
            raise ValueError(f"the {type(student).__name__} at {path} draws no tokens at a temperature; "
                             "leave sampler.temperature null")
        student.temperature = float(temperature)
    return student


def load_denoiser(path: str | os.PathLike, trust_remote_code: bool = False) -> nn.Module:
    """The fine-tuned denoiser of a student export (certainty, trajectory or composed), frozen, with the
    Denoiser contract: it can be the teacher of another objective (`teacher=saved teacher.path=DIR`)."""
    return _load_denoiser(path, REGISTRY, trust_remote_code=trust_remote_code)


def compose(denoiser_path: str | os.PathLike, head: dict | None = None, head_passes: int | None = None,
            threshold: float | None = None, block_size: int | None = None, forced_passes: bool = False,
            trust_remote_code: bool = False) -> ComposedSampler:
    """A composed student (students/composed.py) on the certainty or trajectory student exported at
    `denoiser_path`: its denoiser and decoding rule, `threshold`/`block_size` replaced where given, and a
    new head (a JointHeadSampler config, trained by objective=composed) if `head` is given."""
    return compose_on(load(denoiser_path, trust_remote_code), head, head_passes, threshold, block_size,
                      forced_passes)


__all__ = ["AncestralStudentSampler", "ChunkHead", "ChunkHeadSampler", "ComposedSampler", "EntropyThresholdSampler",
           "FEATURES", "JointHead", "JointHeadSampler", "LearnedSampler", "REGISTRY", "RuleSampler", "build",
           "check_teacher", "compose", "load", "load_denoiser", "load_student", "save_student"]
