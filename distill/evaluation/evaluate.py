"""Sample a denoiser with a sampler at several step counts and score the samples.

Every row can be recomputed from what `write_run` saves: the generated token ids per row
(samples.safetensors), the source's defining tensors (chain.safetensors or graph.safetensors)
and the resolved config (metrics.json).
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from torchmetrics import MetricCollection
from tqdm.auto import tqdm

from distill.evaluation.metrics import ForwardPassMetric
from teachers.samplers.base import MaskedSampler


# Every row is computed by the calling process alone: it draws all `num_samples` sequences itself, so
# its metrics must not gather states from other processes. Under DDP the end-of-training table runs
# on rank 0 only (the other ranks have left: a sync would hang or fail, "Connection closed by peer"),
# and at validation every rank draws the same sequences from the same seed, so the row is the same
# on every rank and `self.log(..., sync_dist=True)` averages equal values. Splitting one row's
# samples over the ranks would save validation time but makes the table depend on the world size.
SINGLE_PROCESS = {"sync_on_compute": False}


def _value(x) -> float:
    return float(x.item() if isinstance(x, Tensor) else x)


def _score(benchmark, tokens_list: list[Tensor]) -> dict[str, float]:
    # compute_groups=False: two pair-KL metrics can hold equal counts after one batch by chance
    metrics = MetricCollection(benchmark.metrics(**SINGLE_PROCESS), compute_groups=False)
    for tokens in tokens_list:
        metrics.update(tokens)
    row = {name: _value(value) for name, value in metrics.compute().items()}
    if "pair_kl_d1" in row:
        row["bigram_kl"] = row["pair_kl_d1"]
    return row


def evaluate_sampler(
    denoiser: nn.Module,
    sampler: MaskedSampler,
    benchmark,
    steps: int,
    num_samples: int,
    batch_size: int,
    seed: int,
    sampler_name: str,
) -> tuple[dict, Tensor]:
    """One table row: `num_samples` sequences at `steps` steps. Returns (row, tokens, forward passes
    per sequence): samplers that stop each row on its own (the entropy-threshold decoder) report
    them per row, the others spend `steps` on every row."""
    device = next(iter(denoiser.parameters()), torch.empty(0)).device
    generator = torch.Generator(device=device).manual_seed(seed)
    canvases = benchmark.canvases(num_samples, denoiser.mask_id, generator).to(device)
    group = benchmark_group(benchmark)
    batch_size = max(group, batch_size - batch_size % group)
    forwards = ForwardPassMetric(**SINGLE_PROCESS)
    outputs, nfe_per_row, wall, head_passes = [], [], 0.0, None
    for chunk in tqdm(canvases.split(batch_size), desc=f"{sampler_name} steps={steps}", leave=False):
        start = time.perf_counter()
        padding = {"attention_mask": benchmark.attention_mask(chunk)} if hasattr(benchmark, "attention_mask") else {}
        out = sampler.sample(denoiser, steps, prompt=chunk, generator=generator, **padding)  # prompts: left padding
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # GPU work is asynchronous: time it to completion
        wall += time.perf_counter() - start
        forwards.update(out.nfe, int((chunk == denoiser.mask_id).sum()), chunk.shape[0])
        outputs.append(out.tokens.cpu())
        per_row = out.nfe_per_row if out.nfe_per_row is not None else torch.full((chunk.shape[0],), out.nfe)
        nfe_per_row.append(per_row.cpu().double())
        if out.head_passes is not None:  # summed over sequences, like nfe
            head_passes = (head_passes or 0) + out.head_passes * chunk.shape[0]
    row = {"sampler": sampler_name, "steps": steps, **{k: _value(v) for k, v in forwards.compute().items()}}
    if head_passes is not None:
        row["head_passes"] = head_passes / canvases.shape[0]
    row.update(_score(benchmark, outputs))
    row["wall_s"] = round(wall, 4)
    return row, torch.cat(outputs), torch.cat(nfe_per_row)


def benchmark_group(benchmark) -> int:
    """Rows that must stay in one batch (repeated draws of one prompt)."""
    return getattr(benchmark, "repeats", 1)


def reference_row(benchmark, num_samples: int, seed: int) -> tuple[dict, Tensor]:
    """The same metrics on true data: the floor every sampler is compared with."""
    canvases = benchmark.canvases(num_samples, -1, torch.Generator().manual_seed(seed))
    tokens = benchmark.true_samples(canvases, torch.Generator().manual_seed(seed + 1))
    return {"sampler": "data", "steps": None, **_score(benchmark, [tokens])}, tokens


def write_run(out_dir: str | Path, rows: list[dict], samples: dict[str, Tensor], benchmark, config: dict,
              wall_s: float | None = None) -> Path:
    """metrics.json (rows + summary + resolved config), samples.safetensors (token ids under
    `SAMPLER/steps=T`, forward passes per sequence under `SAMPLER/steps=T/nfe`, true data under
    `data`), and the source tensors."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in samples.items()}, out_dir / "samples.safetensors")
    for name, tensors in benchmark.files().items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, out_dir / name)
    if hasattr(benchmark, "decode"):  # text: the samples a person can read
        lines = []
        for key, tokens in samples.items():
            if key.endswith("/nfe"):
                continue
            lines += [f"## {key}", *(t.replace("\n", " ") for t in benchmark.decode(tokens)), ""]
        (out_dir / "samples.txt").write_text("\n".join(lines))
    payload = {"rows": rows, "reference": benchmark.summary(), "samples_keys": list(samples), "config": config,
               "provenance": provenance(), "wall_s": wall_s}
    (out_dir / "metrics.json").write_text(json.dumps(payload, indent=2))
    return out_dir


def provenance() -> dict:
    """Package versions and the git commit of the code that produced a run."""
    versions = {}
    for pkg in ("fewstep", "torch", "lightning", "hydra-core", "torchmetrics"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    repo = Path(__file__).resolve().parents[2]
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        commit = git.stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"versions": versions, "git_commit": commit, "git_dirty": dirty}


def sample_key(sampler_name: str, steps: int | None) -> str:
    return "data" if steps is None else f"{sampler_name}/steps={steps}"
