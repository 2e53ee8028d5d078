"""The leaderboard's table, Pareto plot and verdicts, from the rows `fewstep-leaderboard` evaluated.

A row is a metrics.json row plus `kind` (teacher | reference | student) and `s_per_1k` (seconds of
sampling per 1000 sequences, measured in one process on the same threads as every other row).
"""

from __future__ import annotations

import csv
from pathlib import Path

from distill.evaluation.report import markdown_table

COLUMNS = ["sampler", "kind", "steps", "nfe", "head_passes", "gen_nll", "accuracy", "pair_kl_d1", "pair_kl_d8",
           "entropy", "s_per_1k", "matched_by", "time_vs_match"]


def _quality(rows: list[dict]) -> tuple[str, bool]:
    """The quality key and whether lower is better: gen NLL on ground-truth sources, accuracy on tasks."""
    if any("gen_nll" in r for r in rows):
        return "gen_nll", True
    return "accuracy", False


def _better(a: float, b: float, lower: bool) -> bool:
    return a <= b if lower else a >= b


def cheapest_match(row: dict, rows: list[dict]) -> dict | None:
    """The training-free row (reference or teacher) with the fewest seconds among those at least as good as `row`."""
    key, lower = _quality(rows)
    matching = [f for f in rows if f["kind"] in ("reference", "teacher") and _better(f[key], row[key], lower)]
    return min(matching, key=lambda f: f["s_per_1k"]) if matching else None


def with_matches(rows: list[dict]) -> list[dict]:
    """Student rows gain `matched_by` (the cheapest training-free row as good) and `time_vs_match` (their
    seconds over its seconds: below 1 is a saving in wall time)."""
    out = []
    for r in rows:
        cheap = cheapest_match(r, rows) if r["kind"] == "student" else None
        if cheap is not None:
            r = {**r, "matched_by": f"{cheap['sampler']} @ {cheap['nfe']:.3g} NFE ({cheap['s_per_1k']:.3g} s)",
                 "time_vs_match": r["s_per_1k"] / cheap["s_per_1k"]}
        elif r["kind"] == "student":
            r = {**r, "matched_by": "none in the table"}
        out.append(r)
    return out


def verdicts(rows: list[dict], truth: dict, tolerance: float) -> list[str]:
    """One line per student: against the best training-free row at no more forward passes, the
    cheapest training-free row that matches its quality (in forwards and in seconds), and the teacher."""
    key, lower = _quality(rows)
    free = [r for r in rows if r["kind"] in ("reference", "teacher")]
    teacher = next((r for r in rows if r["kind"] == "teacher"), None)
    lines = []
    for r in (r for r in rows if r["kind"] == "student"):
        head = f" + {r['head_passes']:g} head passes" if r.get("head_passes") else ""
        excess = f" ({(r[key] / truth[key] - 1):+.1%} over the truth's entropy)" if key == "gen_nll" else ""
        line = f"{r['sampler']} at {r['nfe']:.2f} NFE{head}: {key} {r[key]:.4f}{excess}"
        budget = [f for f in free if f["nfe"] <= r["nfe"] + 1e-9]
        if budget:
            best = min(budget, key=lambda f: f[key]) if lower else max(budget, key=lambda f: f[key])
            word = "beats" if _better(r[key], best[key], lower) and r[key] != best[key] else "does not beat"
            line += f"; {word} the best training-free row at <= {r['nfe']:.2f} NFE ({best['sampler']} {best['steps']} steps, {best[key]:.4f})"
        cheap = cheapest_match(r, rows)
        if cheap is not None:
            line += (f"; matching it without training takes {cheap['sampler']} {cheap['steps']} steps: "
                     f"{cheap['nfe'] / r['nfe']:.2g}x the forwards, {cheap['s_per_1k'] / r['s_per_1k']:.2g}x the seconds")
        else:
            line += "; no training-free row in the table matches it"
        if teacher is not None:
            close = abs(r[key] - teacher[key]) <= tolerance * abs(teacher[key])
            speed = teacher["s_per_1k"] / r["s_per_1k"]
            time_word = f"{speed:.2g}x less time" if speed >= 1 else f"{1 / speed:.2g}x more time"
            line += (f"; vs the teacher at one token per step: {teacher['nfe'] / r['nfe']:.2g}x fewer forwards, "
                     f"{time_word}, {key} {'within' if close else 'not within'} {tolerance:.0%} of its {teacher[key]:.4f}")
        lines.append(line)
    return lines


def write_table(rows: list[dict], truth: dict, lines: list[str], out_dir: Path) -> str:
    """leaderboard.md (table + verdicts) and leaderboard.csv; rows sorted by forward passes."""
    ordered = sorted(with_matches(rows), key=lambda r: (r["nfe"], r["kind"] != "student"))
    cols = [c for c in COLUMNS if any(c in r for r in ordered)]
    table = markdown_table(ordered + [{**truth, "kind": "truth"}], cols)
    (out_dir / "leaderboard.md").write_text(table + "\n\n" + "\n".join(f"- {s}" for s in lines) + "\n")
    with open(out_dir / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(ordered + [{**truth, "kind": "truth"}])
    return table


def pareto_plot(rows: list[dict], truth: dict, out: Path) -> None:
    """Quality vs mean forward passes and vs seconds per 1000 sequences; references as lines over
    their step counts, students as large markers, the truth as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, _ = _quality(rows)
    panels = [(key, "nfe"), (key, "s_per_1k")] + [(k, "nfe") for k in ("pair_kl_d1", "pair_kl_d8") if k in rows[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    for ax, (y, x) in zip(axes[0], panels):
        for name in dict.fromkeys(r.get("family", r["sampler"]) for r in rows):
            family = [r for r in rows if r.get("family", r["sampler"]) == name]
            pts = sorted((r[x], r[y]) for r in family)
            kind = family[0]["kind"]
            style = {"student": dict(marker="*", ms=14, ls="-"), "teacher": dict(marker="s", ms=8, ls=""),
                     "reference": dict(marker="o", ms=5, ls="-")}[kind]
            ax.plot(*zip(*pts), label=name, **style)
        if y in truth:
            ax.axhline(truth[y], color="k", ls="--", lw=1, label="true data" + ("" if y == key else " (floor)"))
        ax.set_xscale("log", base=2)
        if y.startswith("pair_kl"):
            ax.set_yscale("log")
        ax.set(xlabel={"nfe": "mean forward passes", "s_per_1k": "seconds per 1000 sequences"}[x], ylabel=y)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
