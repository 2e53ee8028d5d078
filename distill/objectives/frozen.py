"""The frozen teacher of a distillation objective: held, never trained, never saved.

The teacher is kept out of the LightningModule's submodules (so it is not in `state_dict`, not
in checkpoints, not wrapped by DDP/FSDP and not seen by the optimizer) and moved to the
module's device by the objective when fitting starts.
"""

from __future__ import annotations

from torch import nn


def attach_frozen(module: nn.Module, teacher: nn.Module) -> None:
    """Set `module.teacher` to `teacher` in eval mode with requires_grad False, unregistered."""
    teacher.eval().requires_grad_(False)
    module.__dict__["teacher"] = teacher  # bypasses nn.Module.__setattr__: not a submodule


def teacher_reference(teacher: nn.Module, data_spec: dict | None) -> dict:
    """How an export (and `fewstep-export`) finds its teacher again: by path + SHA-256 (saved; transformers
    teachers also record their adapter spec) or as the data's oracle."""
    if getattr(teacher, "sha256", None) is not None or getattr(teacher, "kind", None):
        ref = {"kind": getattr(teacher, "kind", "saved"), "path": getattr(teacher, "path", None),
               "sha256": getattr(teacher, "sha256", None), "data": data_spec}
        if hasattr(teacher, "spec"):  # transformers teachers: how to load it again (dtype, mask id, ...)
            ref["spec"] = teacher.spec()
        if getattr(teacher, "root_ref", None):  # a student's denoiser teaching: the teacher it was distilled from
            ref["root"] = teacher.root_ref
        return ref
    if hasattr(teacher, "source"):
        return {"kind": "oracle", "data": data_spec}
    return {"kind": type(teacher).__name__, "data": data_spec}
