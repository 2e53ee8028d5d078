"""Save and load a trained denoiser as a self-describing directory (no pickles).

    DIR/model.safetensors   weights
    DIR/config.json         architecture, the data it was trained on, SHA-256 of the weights

Saving builds the directory under a temporary name beside DIR and renames it at the end, so an
interrupted save leaves nothing at DIR.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from teachers.files import atomic_directory
from teachers.transformer import TransformerDenoiser

FORMAT = "fewstep-teacher/1"


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in chunks (large weight files never sit in memory whole)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def data_mismatch(recorded: dict, given: dict, subject: str, model: str, what: str = "other data",
                  hint: str = "") -> str | None:
    """The error for a model meeting data other than its own, None when they agree.

    Args:
        recorded: the data spec the model records (what it was trained on).
        given: the data spec of this run; every key of it is compared.
        subject: who differs, e.g. "the teacher at DIR was trained" or "this student was distilled".
        model: its name in the per-key detail ("vocab_size: teacher 6 vs data 8").
        what: what it was trained on instead ("other data", "another prompt split").
        hint: appended to "run on its data" (e.g. the data= group to pick).
    The message lists each difference and the `data.KEY=VALUE` overrides that restore the model's own data.
    """
    differs = {k: (recorded.get(k), v) for k, v in given.items() if recorded.get(k) != v}
    if not differs:
        return None
    detail = ", ".join(f"{k}: {model} {a!r} vs data {b!r}" for k, (a, b) in differs.items())
    fixes = " ".join(f"data.{k}={a}" for k, (a, _) in differs.items() if k != "kind")
    return f"{subject} on {what} ({detail}); run on its data{hint} by adding: {fixes}".rstrip()


def save_teacher(model: TransformerDenoiser, path: str | os.PathLike, data: dict, extra: dict | None = None) -> Path:
    """Write `model` and its metadata to the directory `path` (which must not exist)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another export_dir or delete it first")
    with atomic_directory(path) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, tmp / "model.safetensors")
        meta = {
            "format": FORMAT,
            "architecture": {"class": "TransformerDenoiser", **model.config},
            "data": data,
            "sha256": sha256_file(tmp / "model.safetensors"),
            **(extra or {}),
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
    return path


def read_meta(meta_file: Path, fmt: str, missing_hint: str, corrupt_hint: str) -> dict:
    """The JSON metadata of an export directory, with errors that say what is wrong and what to do."""
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file.parent} {missing_hint}: {meta_file} is missing")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_file} is not valid JSON ({err}); {corrupt_hint}") from err
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise ValueError(f"{meta_file} has format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                         f"expected {fmt!r}")
    return meta


def read_teacher_config(path: str | os.PathLike) -> dict:
    return read_meta(Path(path) / "config.json", FORMAT,
                     "is not a saved teacher (pass the export_dir of a `fewstep-train experiment=teacher_*` run)",
                     "the teacher directory is corrupt, re-export it")


def load_teacher(path: str | os.PathLike) -> nn.Module:
    """Rebuild a saved teacher, frozen and in eval mode; checks the weights' SHA-256 first."""
    path = Path(path)
    meta = read_teacher_config(path)
    weights_file = path / "model.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file} is missing; the teacher directory is incomplete, re-export it")
    if sha256_file(weights_file) != meta["sha256"]:
        raise ValueError(
            f"{weights_file} does not match the SHA-256 recorded in config.json (truncated or modified); re-export the teacher"
        )
    try:
        state = load_file(weights_file)
    except SafetensorError as err:
        raise ValueError(f"{weights_file} cannot be read as safetensors ({err}); re-export the teacher") from err
    arch = {k: v for k, v in meta["architecture"].items() if k != "class"}
    model = TransformerDenoiser(**arch)
    model.load_state_dict(state)
    model.data_spec = meta["data"]
    model.sha256 = meta["sha256"]
    model.path = str(path.resolve())
    return model.eval().requires_grad_(False)
