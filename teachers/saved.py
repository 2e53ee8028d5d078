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
import shutil
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from teachers.transformer import TransformerDenoiser

FORMAT = "fewstep-teacher/1"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_teacher(model: TransformerDenoiser, path: str | os.PathLike, data: dict, extra: dict | None = None) -> Path:
    """Write `model` and its metadata to the directory `path` (which must not exist)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose another export_dir or delete it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
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
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_teacher_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{path} is not a saved teacher: {config_file} is missing; "
            "pass the export_dir of a `fewstep-train experiment=teacher_*` run"
        )
    try:
        meta = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the teacher directory is corrupt, re-export it") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{config_file} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


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
