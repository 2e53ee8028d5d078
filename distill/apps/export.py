"""fewstep-export: turn a training checkpoint into a self-describing export directory.

    fewstep-export outputs/DATE/TIME/checkpoints/final.ckpt DIR

The checkpoint holds everything that defines the student besides its teacher (hyperparameters, tensors,
and `on_save_checkpoint`'s record: chosen threshold, selected weights, prompt split, config); the teacher
is found again by reference. The objective is rebuilt from it and its `export` writes the same files the
training run wrote (final.ckpt: the state the run exported; last.ckpt and step checkpoints: that step's).
The checkpoint is read with torch.load(weights_only=True) (nothing unpickled); the export is built under
a temporary name and renamed at the end, so a failure leaves nothing at DIR.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn

from distill.apps.cli import check_new_dir
from distill.apps.teacher_setup import load_saved
from distill.objectives.masked_diffusion import MaskedDiffusionObjective
from teachers.oracle import OracleDenoiser
from teachers.sources.hmm import HiddenMarkovSource, SourceConfig
from teachers.transformer import TransformerDenoiser


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .ckpt from <run dir>/checkpoints/")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is truncated or "
                         "not a Lightning checkpoint: use another one, e.g. checkpoints/last.ckpt") from err


def _substate(checkpoint: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def network_from_checkpoint(checkpoint: dict) -> TransformerDenoiser:
    """The trained denoiser of a masked-diffusion (teacher) checkpoint."""
    network = TransformerDenoiser(**checkpoint["hyper_parameters"]["network"])
    network.load_state_dict(_substate(checkpoint, "network."))
    return network.eval()


def teacher_from_reference(ref: dict) -> nn.Module:
    """The frozen teacher a student checkpoint names: the oracle of its data source, a saved teacher (its
    SHA-256 checked on load) or a transformers teacher (by path and adapter spec, its digest compared)."""
    kind = ref.get("kind")
    if kind == "oracle":
        data = dict(ref.get("data") or {})
        if data.pop("kind", None) != "hidden_markov":
            raise ValueError(f"the checkpoint's oracle teacher has data {ref.get('data')!r}, which has no exact "
                             "conditionals fewstep can rebuild")
        return OracleDenoiser(HiddenMarkovSource.random(SourceConfig(**data))).eval()
    if kind == "saved":  # a teacher export, or a student export whose own denoiser taught
        teacher = load_saved(ref["path"])
        if ref.get("sha256") is not None and teacher.sha256 != ref["sha256"]:
            raise ValueError(f"the teacher at {ref['path']} is not the one the student was distilled from (SHA-256 "
                             f"{str(teacher.sha256)[:12]}... vs {ref['sha256'][:12]}... in the checkpoint)")
        return teacher
    if "spec" in ref:  # transformers teachers
        from teachers.hf import load_hf_denoiser

        if not Path(ref["path"]).is_dir():
            raise FileNotFoundError(f"the checkpoint's teacher directory {ref['path']} does not exist; the teacher "
                                    "must stay where it was trained from (or be copied back there)")
        teacher = load_hf_denoiser(ref["path"], ref["spec"])
        if ref.get("sha256") is not None and teacher.sha256 != ref["sha256"]:
            raise ValueError(f"the teacher at {ref['path']} is not the one the student was distilled from (SHA-256 "
                             f"{str(teacher.sha256)[:12]}... vs {ref['sha256'][:12]}... in the checkpoint)")
        return teacher.eval().requires_grad_(False)
    raise ValueError(f"the checkpoint names a teacher of kind {kind!r} that fewstep-export cannot rebuild")


def _objective_class(hparams: dict) -> type:
    module, _, name = str(hparams.get("_target_", "")).rpartition(".")
    if not module.startswith("distill.objectives."):
        raise ValueError(f"the checkpoint names objective class {hparams.get('_target_')!r}; it was written by an "
                         "older fewstep: train again with this version")
    return getattr(importlib.import_module(module), name)


def objective_from_checkpoint(checkpoint: dict) -> L.LightningModule:
    """The objective of a training checkpoint, rebuilt from its hyperparameters with its teacher (never
    stored in it), its tensors and what defines the student (`on_load_checkpoint`): what `export` needs."""
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    if hparams.get("objective") == "masked_diffusion":
        network = dict(hparams.pop("network"))
        objective = MaskedDiffusionObjective(lambda vocab_size, seq_len: TransformerDenoiser(**network), optimizer=None,
                                             vocab_size=network["vocab_size"], seq_len=network["seq_len"],
                                             **{k: v for k, v in hparams.items() if k != "objective"})
    elif "student" in hparams:
        cls = _objective_class(hparams)
        teacher = teacher_from_reference(hparams["teacher_ref"])
        kwargs = {k: v for k, v in hparams.items() if k not in ("objective", "_target_", "teacher_ref")}
        objective = cls(teacher=teacher, optimizer=None, **kwargs)
    else:
        raise ValueError(f"this is a checkpoint of objective {hparams.get('objective')!r}, which has neither a network "
                         "nor a student to export; pass a checkpoint written by fewstep-train")
    objective.load_state_dict(checkpoint["state_dict"])
    objective.on_load_checkpoint(checkpoint)
    return objective.eval()


def export_checkpoint(checkpoint_path: str | Path, export_dir: str | Path) -> Path:
    """Rebuild the objective from the checkpoint and call its `export`, the one the training run calls; the
    model card has no evaluation rows (run fewstep-eval on the export for them)."""
    export_dir = Path(export_dir)
    if export_dir.exists():
        raise FileExistsError(f"{export_dir} already exists; choose another directory or delete it first")
    objective = objective_from_checkpoint(read_checkpoint(checkpoint_path))
    objective.export(str(export_dir))
    return export_dir


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="fewstep-export", description="Export a training checkpoint (safetensors + JSON).")
    ap.add_argument("checkpoint", help="a Lightning .ckpt written by fewstep-train")
    ap.add_argument("export_dir", help="the directory to create (must not exist)")
    args = ap.parse_args(argv)
    try:
        check_new_dir(args.export_dir, "export_dir")  # before the checkpoint is read
        path = export_checkpoint(args.checkpoint, args.export_dir)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"exported to {path}")


if __name__ == "__main__":
    main()
