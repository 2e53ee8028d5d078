"""Save and load a distilled student as a self-describing directory (no pickles).

    DIR/model.safetensors   the student's trained tensors (never the teacher's; a certainty-forced
                            student stores its fine-tuned denoiser, or its LoRA adapter alone)
    DIR/denoiser/           a fine-tuned transformers denoiser (merged LoRA or full weights), written
                            with save_pretrained: loadable by transformers as it is; its files' SHA-256
                            digest is recorded in sampler.json ("files") and checked on load
    DIR/sampler.json        format, class and constructor config, the teacher it was distilled from
                            (kind, data, and for saved teachers path + SHA-256), SHA-256 of the weights
    DIR/config.yaml         the resolved training config (optional)
    DIR/README.md           model card: what it is, how to load it, its quality-vs-steps table

`load_denoiser(DIR)` returns the fine-tuned denoiser alone, frozen, with the Denoiser contract, so a
student's network can be the teacher of another objective (`teacher=saved teacher.path=DIR`: e.g. a
joint-sampling head trained on a certainty-forced denoiser); it records the student's own teacher as
its `root_ref`, and exports distilled from it record that root too.

The directory is built under a temporary name beside DIR and renamed at the end, so an
interrupted export leaves nothing at DIR.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from teachers.files import atomic_directory
from teachers.saved import data_mismatch, load_teacher, read_meta, sha256_file

FORMAT = "fewstep-student/1"


def save_student(
    student: nn.Module,
    path: str | os.PathLike,
    teacher: dict,
    extra: dict | None = None,
    config_yaml: str | None = None,
    card: str | None = None,
) -> Path:
    """Write `student` (which has a `.config` dict) to the new directory `path`.

    teacher: how to find the teacher again, e.g. {"kind": "saved", "path": ..., "sha256": ...}
    or {"kind": "oracle", "data": {...}}.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another export_dir or delete it first")
    with atomic_directory(path) as tmp:
        state = student.export_state() if hasattr(student, "export_state") else student.state_dict()
        weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(weights, tmp / "model.safetensors")
        written = student.save_files(tmp) if hasattr(student, "save_files") else []
        meta = {
            "format": FORMAT,
            "class": type(student).__name__,
            "config": student.config,
            "teacher": teacher,
            "sha256": sha256_file(tmp / "model.safetensors"),
            **({"files": {name: sha256_dir(tmp / name) for name in written}} if written else {}),
            **(extra or {}),
        }
        (tmp / "sampler.json").write_text(json.dumps(meta, indent=2))
        if config_yaml is not None:
            (tmp / "config.yaml").write_text(config_yaml)
        if card is not None:
            (tmp / "README.md").write_text(card)
    return path


def sha256_dir(path: str | os.PathLike) -> str:
    """SHA-256 over every file under `path` (relative names and contents, in sorted order)."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f.relative_to(path).as_posix().encode() + sha256_file(f).encode())
    return digest.hexdigest()


def read_student_meta(path: str | os.PathLike) -> dict:
    return read_meta(Path(path) / "sampler.json", FORMAT,
                     "is not a student export (pass the export_dir of a `fewstep-train experiment=...` distillation "
                     "run, or run fewstep-export on its checkpoint)",
                     "the export is corrupt, export it again")


def ships_code(path: str | os.PathLike, meta: dict) -> list[str]:
    """The code an export would run when loaded: Python files under its stored directories (e.g. a
    LLaDA/Dream denoiser saved with its modeling code) and configs naming their own classes (auto_map)."""
    path = Path(path)
    found = [f.relative_to(path).as_posix() for name in (meta.get("files") or {}) for f in sorted((path / name).rglob("*.py"))]
    for name in meta.get("files") or {}:
        config = path / name / "config.json"
        if config.is_file() and "auto_map" in json.loads(config.read_text()):
            found.append(f"{name}/config.json (auto_map)")
    return found  # an adapter-only export runs the teacher's code, which the caller loaded itself


def load_student(path: str | os.PathLike, registry: dict[str, Callable[..., nn.Module]],
                 trust_remote_code: bool = False) -> nn.Module:
    """Rebuild an exported student in eval mode; checks the weights' SHA-256 first.

    The SHA-256 digests sit in the export itself, so they detect damage, not tampering: code the
    export ships (`ships_code`) runs only when the caller passes `trust_remote_code=True`.

    The loaded module carries `teacher_ref` (the sampler.json "teacher" entry) so that callers can
    check they pair it with the teacher it was distilled from (`check_teacher`).
    """
    path = Path(path)
    meta = read_student_meta(path)
    cls = registry.get(meta.get("class"))
    if cls is None:
        raise ValueError(f"{path}/sampler.json names class {meta.get('class')!r}, which this fewstep does not know "
                         f"(known: {', '.join(sorted(registry))}); upgrade fewstep or re-export")
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file} is missing; the export is incomplete, export it again")
    if sha256_file(weights_file) != meta.get("sha256"):
        raise ValueError(f"{weights_file} does not match the SHA-256 recorded in sampler.json (truncated or "
                         "modified); export the student again from its checkpoint with fewstep-export")
    for name, digest in (meta.get("files") or {}).items():
        if not (path / name).is_dir() or sha256_dir(path / name) != digest:
            raise ValueError(f"{path / name} is missing or does not match the SHA-256 recorded in sampler.json "
                             "(incomplete or modified); export the student again")
    code = ships_code(path, meta)
    if code and not trust_remote_code:
        raise ValueError(f"the student at {path} ships code its denoiser runs ({', '.join(code[:4])}); read it, then load "
                         "it with students.load(path, trust_remote_code=True) (CLI: teacher.trust_remote_code=true)")
    try:
        state = load_file(weights_file)
    except SafetensorError as err:
        raise ValueError(f"{weights_file} cannot be read as safetensors ({err}); export it again") from err
    student = cls(**meta["config"])
    if hasattr(student, "load_export_state"):  # e.g. an adapter-only export: the base is the teacher
        student.load_export_state(state)
    else:
        student.load_state_dict(state)
    if hasattr(student, "load_files"):  # e.g. a transformers denoiser saved beside model.safetensors
        student.load_files(path)
    student.teacher_ref = meta["teacher"]
    student.prompt_split = meta.get("prompt_split")  # the prompts it was trained on, if it records them
    student.method = meta.get("method", meta["class"])
    student.export_path = str(path)
    return student.eval()


def load_denoiser(path: str | os.PathLike, registry: dict[str, Callable[..., nn.Module]],
                  trust_remote_code: bool = False) -> nn.Module:
    """The fine-tuned denoiser of the student export at `path` (its own weights, LoRA merged; an adapter-only
    export is bound to the saved teacher it names), frozen and in eval mode.

    Like a saved teacher it carries `data_spec` (the data the student was distilled on), `sha256` (the
    digest of the export's sampler.json, which holds the digests of everything the export stores) and
    `path`; `root_ref` is the student's own teacher reference (the teacher it was distilled from).
    """
    path = Path(path)
    student = load_student(path, registry, trust_remote_code=trust_remote_code)
    ref = student.teacher_ref
    base = None
    if getattr(student, "adapter_only", False):  # the base weights are the teacher's
        if ref.get("kind") != "saved" or not ref.get("path"):
            raise ValueError(f"the adapter-only student at {path} needs its teacher ({ref.get('kind')}), which cannot be "
                             "loaded by path; export the student with merged weights (objective.export_adapter=false)")
        base = load_teacher(ref["path"])
    network = student.network(base) if hasattr(student, "network") else None
    if network is None:
        raise ValueError(f"the student at {path} ({type(student).__name__}) has no denoiser of its own; only students "
                         "that fine-tune the teacher (objective=certainty, objective=trajectory, composed) can be a teacher")
    meta = read_student_meta(path)
    network.data_spec = meta.get("data") or ref.get("data")
    network.sha256 = sha256_file(path / "sampler.json")
    network.path = str(path.resolve())
    network.kind = "saved"  # found again by path (teacher=saved teacher.path=DIR), checked by digest
    network.root_ref = ref.get("root", ref)  # the first teacher of a chain of students
    return network.eval().requires_grad_(False)


def check_teacher(teacher_ref: dict, teacher: nn.Module, data: dict | None = None) -> None:
    """Raise a ValueError naming the mismatch if `teacher` is not the one the student was distilled from."""
    kind = teacher_ref.get("kind")
    if kind != "oracle" and teacher_ref.get("sha256") is not None:  # saved or transformers teachers
        actual = getattr(teacher, "sha256", None)
        if actual != teacher_ref.get("sha256"):
            raise ValueError(
                f"this student was distilled from the teacher at {teacher_ref.get('path')} (SHA-256 "
                f"{str(teacher_ref.get('sha256'))[:12]}...), but the teacher given has SHA-256 {str(actual)[:12]}...; "
                f"pass teacher={kind} teacher.path={teacher_ref.get('path')} (or that teacher's copy)"
            )
    elif kind == "oracle":
        if getattr(teacher, "sha256", None) is not None or not hasattr(teacher, "source"):
            raise ValueError("this student was distilled from the oracle of its data source; evaluate it with "
                             "teacher=oracle and the same data")
    if data is not None and teacher_ref.get("data") is not None:
        message = data_mismatch(teacher_ref["data"], data, "this student was distilled", "student")
        if message:
            raise ValueError(message)
