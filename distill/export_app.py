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


def network_from_checkpoint(checkpoint: dict) -> TransformerDenoiser:
    """The trained denoiser of a masked-diffusion (teacher) checkpoint."""
    hparams = checkpoint.get("hyper_parameters", {})
    if hparams.get("objective") != "masked_diffusion":
        raise ValueError(f"checkpoint of objective {hparams.get('objective')!r}: only teacher (masked_diffusion) "
                         "checkpoints export yet")
    network = TransformerDenoiser(**hparams["network"])
    prefix = "network."
    network.load_state_dict({k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)})
    return network.eval()


def export_checkpoint(checkpoint_path: str | Path, export_dir: str | Path) -> Path:
    checkpoint = read_checkpoint(checkpoint_path)
    network = network_from_checkpoint(checkpoint)
    data = checkpoint["hyper_parameters"].get("data_spec") or {}
    extra = {"trained_steps": int(checkpoint.get("global_step", 0)), "checkpoint": str(checkpoint_path)}
    return save_teacher(network, export_dir, data=data, extra=extra)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="fewstep-export", description="Export a training checkpoint (safetensors + JSON).")
    ap.add_argument("checkpoint", help="a Lightning .ckpt written by fewstep-train")
    ap.add_argument("export_dir", help="the directory to create (must not exist)")
    args = ap.parse_args(argv)
    try:
        path = export_checkpoint(args.checkpoint, args.export_dir)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"exported to {path}")


if __name__ == "__main__":
    main()
