"""Merge the metrics.json files under each folder of DIR into one Markdown table per folder.

    python benchmarks/collect_tables.py runs/eval
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from distill.apps.compare import collect_rows, find_metrics
from distill.evaluation.report import markdown_table


def main(root: str) -> None:
    for group in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        files = find_metrics([str(group)])
        rows, data_row = collect_rows(files)
        truth = json.loads(files[-1].read_text())["reference"]
        print(f"### {group.name}\n")
        print(markdown_table(rows + ([data_row] if data_row else [])))
        summary = ", ".join(f"{k} {v:.4f}" for k, v in truth.items() if isinstance(v, float) and v)
        print(f"\n{summary}\n" if summary else "")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/eval")
