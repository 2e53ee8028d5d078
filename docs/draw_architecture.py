"""Draw docs/architecture.png from the code itself: the three packages as floors, their folders and
files as rooms sized by lines of code, and the imports between packages as counted arrows.

    python docs/draw_architecture.py            # writes docs/architecture.png, prints the counts

Read from the source with `ast` (nothing is imported or run), so the picture follows the code.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["distill", "students", "teachers"]  # top floor first: each imports only those below it
CAPTIONS = {
    "distill": "Lightning + Hydra: objectives, data, evaluation, console apps (configs: conf/ = distill.conf)",
    "students": "learned few-step samplers and the export format (plain torch)",
    "teachers": "ground-truth sources, denoisers, reference samplers and the sampling loop (plain torch)",
}
COLOURS = {"distill": "#c9d9ec", "students": "#cfe8cf", "teachers": "#f1d4da"}


def imported_roots(path: Path) -> set[str]:
    """Top-level names this file imports (absolute imports only; the project uses no relative ones)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def rooms(package: str) -> list[tuple[str, int]]:
    """(name, lines) for each sub-folder and module of a package, largest first (__init__ left out)."""
    base = ROOT / package
    found = []
    for child in sorted(base.iterdir()):
        files = sorted(child.rglob("*.py")) if child.is_dir() else [child] if child.suffix == ".py" else []
        files = [f for f in files if "__pycache__" not in f.parts]
        if not files or child.name == "__init__.py":
            continue
        name = child.name + "/" if child.is_dir() else child.name
        found.append((name, sum(len(f.read_text().splitlines()) for f in files)))
    return sorted(found, key=lambda room: -room[1])


def import_counts() -> tuple[dict[tuple[str, str], int], dict[str, set[str]]]:
    """Files of package A that import package B, and the frameworks each package imports."""
    counts: dict[tuple[str, str], int] = {}
    frameworks: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            roots = imported_roots(path)
            frameworks[package] |= roots & {"lightning", "hydra", "omegaconf"}
            for other in PACKAGES:
                if other != package and other in roots:
                    counts[(package, other)] = counts.get((package, other), 0) + 1
    return counts, frameworks


def draw(out: Path) -> None:
    counts, frameworks = import_counts()
    fig, ax = plt.subplots(figsize=(14, 8.5))
    ax.set_xlim(0, 108)
    ax.set_ylim(0, 100)
    ax.axis("off")
    floor_h, gap, top = 24, 8, 96
    for i, package in enumerate(PACKAGES):
        y = top - (i + 1) * floor_h - i * gap
        ax.add_patch(Rectangle((2, y), 96, floor_h, facecolor=COLOURS[package], edgecolor="#333", lw=1.2))
        ax.text(3, y + floor_h - 2.2, f"{package}/", fontsize=13, weight="bold", va="center")
        free = "imports Lightning/Hydra" if frameworks[package] else "imports neither Lightning nor Hydra"
        ax.text(3, y + floor_h - 5.2, f"{CAPTIONS[package]}; {free}", fontsize=8.5, va="center", color="#333")
        parts = rooms(package)
        total = sum(lines for _, lines in parts)
        x = 3.0
        for name, lines in parts:
            w = 94 * lines / total
            ax.add_patch(Rectangle((x, y + 1.5), w - 0.4, floor_h - 9, facecolor="white", edgecolor="#666", lw=0.8))
            if w > 3.5:
                ax.text(x + 0.5, y + floor_h - 9.5, name, fontsize=7.5 if w > 8 else 6, va="top", rotation=0 if w > 8 else 90)
                ax.text(x + 0.5, y + 2.5, str(lines), fontsize=6.5, color="#555")
            x += w
        if i + 1 < len(PACKAGES):
            below = PACKAGES[i + 1]
            ax.add_patch(FancyArrowPatch((50, y), (50, y - gap), arrowstyle="-|>", mutation_scale=18, lw=1.5))
            ax.text(51, y - gap / 2, f"{counts.get((package, below), 0)} files import {below}", fontsize=8, va="center")
    y_distill, y_teachers = top - floor_h, top - 3 * floor_h - 2 * gap
    ax.add_patch(FancyArrowPatch((98.5, y_distill + floor_h / 2), (98.5, y_teachers + floor_h / 2), arrowstyle="-|>",
                                 connectionstyle="arc3,rad=-0.25", mutation_scale=18, lw=1.2, color="#555"))
    ax.text(103, 50, f"{counts.get(('distill', 'teachers'), 0)} files\nimport\nteachers", fontsize=8, va="center")
    upward = {k: v for k, v in counts.items() if PACKAGES.index(k[0]) > PACKAGES.index(k[1])}
    ax.text(2, 1.5, f"room width = lines of code (unlabelled: small modules); arrow = A imports B; "
            f"imports running upward: {sum(upward.values())}", fontsize=8, color="#333")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}; imports between packages: {counts}; upward: {upward or 'none'}; frameworks: {frameworks}")


if __name__ == "__main__":
    draw(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "architecture.png")
