"""fewstep-export: turn a training checkpoint into a self-describing export directory.

    fewstep-export outputs/DATE/TIME/checkpoints/last.ckpt DIR

The checkpoint is read with torch.load(weights_only=True) (nothing unpickled); the export is built
under a temporary name and renamed at the end, so a failure leaves nothing at DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import students
from distill.apps.cli import check_new_dir
from teachers.saved import save_teacher
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


def student_from_checkpoint(checkpoint: dict):
    """The trained student of a distillation checkpoint (the teacher is never in it)."""
    student = students.build(checkpoint["hyper_parameters"]["student"])
    student.load_state_dict(_substate(checkpoint, "student."))
    return student.eval()


def export_checkpoint(checkpoint_path: str | Path, export_dir: str | Path) -> Path:
    checkpoint = read_checkpoint(checkpoint_path)
    hparams = checkpoint.get("hyper_parameters", {})
    extra = {"trained_steps": int(checkpoint.get("global_step", 0)), "checkpoint": str(checkpoint_path)}
    if hparams.get("objective") == "masked_diffusion":
        return save_teacher(network_from_checkpoint(checkpoint), export_dir, data=hparams.get("data_spec") or {},
                            extra=extra)
    if "student" in hparams:
        extra.update(objective=hparams.get("objective"), data=hparams.get("data_spec"),
                     method=hparams.get("method", hparams["student"].get("_target_", "student").rsplit(".", 1)[-1]))
        return students.save_student(student_from_checkpoint(checkpoint), export_dir, teacher=hparams["teacher_ref"],
                                     extra=extra)
    raise ValueError(f"{checkpoint_path} is a checkpoint of objective {hparams.get('objective')!r}, which has neither a "
                     "network nor a student to export; pass a checkpoint written by fewstep-train")


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
