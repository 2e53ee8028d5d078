"""fewstep-compare: collect every metrics.json under the given paths into one quality-vs-steps
table (printed, and written as Markdown and CSV) and quality-vs-NFE plots (PNG).

    fewstep-compare multirun/2026-11-25/10-00-00 --out compare/
    fewstep-compare runs/eval/oracle_markov/* --reference ancestral --tolerance 0.05

For each method it states the fewest steps whose quality is within `tolerance` (relative) of the
reference, the reference sampler's one-token-per-step row (the teacher's own quality): gen NLL and
sample entropy both within tolerance on either side (sharper is not better), or accuracy no more
than tolerance below.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from distill.evaluation.report import markdown_table

COLUMNS = ["method", "steps", "nfe", "head_passes", "tokens_per_forward", "gen_nll", "gen_ppl", "bigram_kl", "entropy",
           "accuracy", "distinct_answers", "low_prob_rate", "wall_s", "speedup"]


def find_metrics(paths: list[str]) -> list[Path]:
    """metrics.json files at or below each path (a run dir, a sweep dir, or the file itself)."""
    found = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist; pass run directories, sweep directories or metrics.json files")
        found += [p] if p.is_file() else sorted(p.rglob("metrics.json"))
    if not found:
        raise FileNotFoundError(f"no metrics.json under {', '.join(paths)}; run fewstep-eval first")
    return found


def teacher_label(config: dict) -> str:
    teacher = config.get("teacher") or {}
    if teacher.get("path"):
        return Path(teacher["path"]).name
    return str(teacher.get("_target_", "teacher")).rsplit(".", 1)[-1].replace("_teacher", "")


def read_metrics(path: Path) -> dict:
    """One metrics.json, or a ValueError naming the file when it is not one written by fewstep-eval/-train."""
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); pass metrics.json files written by fewstep-eval or "
                         "fewstep-train, or delete the broken one") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
        raise ValueError(f"{path} has no list of rows; pass metrics.json files written by fewstep-eval or fewstep-train")
    return payload


def collect_rows(files: list[Path]) -> tuple[list[dict], dict | None]:
    """All sampler rows labelled by method, and one true-data row (the first found)."""
    rows, truth = [], None
    payloads = [(f, read_metrics(f)) for f in files]
    teachers = {teacher_label(p.get("config", {})) for _, p in payloads}
    for path, payload in payloads:
        teacher = teacher_label(payload.get("config", {}))
        for row in payload["rows"]:
            if row["sampler"] == "data":
                truth = truth or {**row, "method": "data"}
                continue
            method = row["sampler"] if len(teachers) == 1 else f"{teacher}/{row['sampler']}"
            rows.append({**row, "method": method, "source_file": str(path)})
    rows.sort(key=lambda r: (r["method"], r["steps"]))
    return rows, truth


def quality_key(rows: list[dict]) -> str:
    """accuracy (conditional tasks), gen NLL (ground-truth sources), judge perplexity or entropy (text)."""
    for key in ("accuracy", "gen_nll", "gen_ppl"):
        if any(key in r for r in rows):
            return key
    return "entropy"


def reference_row(rows: list[dict], reference: str) -> dict | None:
    """The reference method's one-token-per-step row (the teacher's quality at full steps)."""
    full = [r for r in rows if abs(r["tokens_per_forward"] - 1.0) < 1e-9]
    preferred = [r for r in full if r["method"].split("/")[-1] == reference]
    return (preferred or full or [None])[0]


def within(row: dict, ref: dict, key: str, tolerance: float) -> bool:
    """Accuracy: no more than `tolerance` (relative) below the reference. gen NLL: within `tolerance`
    on either side, and so must the sample entropy be: a sampler that is sharper than the
    reference (NLL below it, entropy collapsed) is not as good as it."""
    if key == "accuracy":
        return row[key] >= ref[key] * (1 - tolerance)
    close = abs(row[key] - ref[key]) <= ref[key] * tolerance
    if "entropy" in row and "entropy" in ref:
        close = close and abs(row["entropy"] - ref["entropy"]) <= ref["entropy"] * tolerance
    return close


def summarize(rows: list[dict], ref: dict | None, tolerance: float) -> list[str]:
    """One line per method: the fewest steps within tolerance of the reference quality."""
    if ref is None:
        return ["no one-token-per-step row to compare with: add steps = number of generated tokens to eval.steps"]
    key = quality_key(rows)
    lines = []
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and within(r, ref, key, tolerance)]
        best = min(ok, key=lambda r: r["nfe"], default=None)
        if best is None:
            lines.append(f"{method}: no step count within {tolerance:.0%} of the reference {key} {ref[key]:.4f}"
                         + (" (and its entropy)" if key == "gen_nll" else ""))
        else:
            lines.append(f"{method}: {best['steps']} steps ({best['nfe']:g} NFE, {best['speedup']:.1f}x fewer than the "
                         f"reference) reach {key} {best[key]:.4f}, within {tolerance:.0%} of {ref[key]:.4f}"
                         + (f" (entropy {best['entropy']:.3f} vs {ref['entropy']:.3f})" if key == "gen_nll" else ""))
    return lines


def plot(rows: list[dict], truth: dict | None, ref: dict | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = {"accuracy": ["accuracy"], "gen_nll": ["gen_nll", "bigram_kl"], "gen_ppl": ["gen_ppl", "entropy"],
            "entropy": ["entropy"]}[quality_key(rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted((r["nfe"], r[key]) for r in rows if r["method"] == method and key in r)
            if not pts:
                continue
            is_ref = ref is not None and method == ref["method"]
            ax.plot(*zip(*pts), marker="o", label=method + (" (reference)" if is_ref else ""), lw=2.5 if is_ref else 1.5)
        if truth is not None and key in truth:
            floor = " (finite-sample floor)" if key not in ("accuracy", "gen_nll") else ""
            ax.axhline(truth[key], color="k", ls="--", lw=1, label=f"true data{floor}")
        ax.set_xscale("log", base=2)
        if key in ("bigram_kl", "gen_ppl"):
            ax.set_yscale("log")
        ax.set(xlabel="NFE (denoiser forward passes)", ylabel=key, title=f"{key} vs NFE")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def compare(paths: list[str], out_dir: Path, reference: str = "ancestral", tolerance: float = 0.05) -> dict:
    """Build the table, summary and plot; returns {"rows", "summary", "files"}."""
    rows, truth = collect_rows(find_metrics(paths))
    if not rows:
        raise ValueError(f"the metrics.json files under {', '.join(paths)} hold no sampler rows")
    ref = reference_row(rows, reference)
    for r in rows:
        r["speedup"] = ref["nfe"] / r["nfe"] if ref else None
    summary = summarize(rows, ref, tolerance)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows + ([truth] if truth else []), COLUMNS)
    (out_dir / "compare.md").write_text(table + "\n\n" + "\n".join(f"- {s}" for s in summary) + "\n")
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    with open(out_dir / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows + ([truth] if truth else []))
    plot(rows, truth, ref, out_dir / "compare.png")
    print(table)
    print("\n".join(summary))
    print(f"wrote {out_dir / 'compare.md'}, compare.csv, compare.png")
    return {"rows": rows, "summary": summary, "files": [out_dir / n for n in ("compare.md", "compare.csv", "compare.png")]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="fewstep-compare", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="run directories, sweep directories or metrics.json files")
    ap.add_argument("--out", type=Path, default=Path("compare"), help="where compare.md/.csv/.png go")
    ap.add_argument("--reference", default="ancestral", help="sampler whose one-token-per-step row is the reference")
    ap.add_argument("--tolerance", type=float, default=0.05, help="relative quality tolerance (0.05 = 5%%)")
    args = ap.parse_args(argv)
    if not 0 <= args.tolerance < 1:
        ap.error(f"--tolerance must be in [0, 1), got {args.tolerance}")
    blocking = next((p for p in [args.out, *args.out.parents] if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        ap.error(f"--out {args.out}: {blocking} is a file; give a directory for compare.md/.csv/.png")
    try:
        compare(args.paths, args.out, args.reference, args.tolerance)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
