"""The README.md written into a student export: what it is, how to load it, what it measured."""

from __future__ import annotations

from torch import nn

from distill.evaluation.report import markdown_table


def model_card(method: str, student: nn.Module, teacher_ref: dict, rows: list[dict], generated: int) -> str:
    teacher = (f"saved teacher at `{teacher_ref.get('path')}` (SHA-256 `{teacher_ref.get('sha256')}`)"
               if teacher_ref.get("kind") == "saved" else f"the {teacher_ref.get('kind')} of its data source")
    parts = [
        f"# fewstep student: {method}",
        "",
        f"`{type(student).__name__}` distilled from {teacher}.",
        f"Data: `{teacher_ref.get('data')}`.",
        "",
        "```python",
        "import students",
        "student = students.load('THIS_DIR')   # checks the weights' SHA-256",
        "out = student.sample(teacher, prompt=canvas, generator=torch.Generator().manual_seed(0))",
        "```",
        "",
        "Evaluate it: `fewstep-eval sampler=saved sampler.path=THIS_DIR` with the teacher above.",
    ]
    if hasattr(student, "describe"):
        parts += ["", "## Learned parts", "", student.describe(generated)]
    if rows:
        parts += ["", "## Quality at the end of training", "", markdown_table(rows)]
    return "\n".join(parts) + "\n"
