"""A sweep of 3 step counts x 2 samplers, then fewstep-compare on its output; the table's numbers
must be the runs' own."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from distill.apps.compare import compare


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    proc = subprocess.run(
        ["fewstep-eval", "-m", "teacher=oracle", "data.vocab_size=6", "data.seq_len=8", "sampler=ancestral,dilated",
         "eval.steps=[8,4,2]", "eval.num_samples=64", f"hydra.sweep.dir={root / 'sweep'}"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def test_sweep_writes_one_run_per_sampler(sweep):
    files = sorted((sweep / "sweep").rglob("metrics.json"))
    assert len(files) == 2
    payload = json.loads(files[0].read_text())
    assert payload["provenance"]["versions"]["torch"].startswith("2.13")
    assert "git_commit" in payload["provenance"] and payload["wall_s"] > 0


def test_compare_table_matches_the_runs(sweep):
    out = sweep / "cmp"
    proc = subprocess.run(["fewstep-compare", str(sweep / "sweep"), "--out", str(out), "--tolerance", "0.5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "compare.csv") as f:
        table = {(r["method"], r["steps"]): r for r in csv.DictReader(f)}
    expected = {}
    for file in (sweep / "sweep").rglob("metrics.json"):
        for row in json.loads(file.read_text())["rows"]:
            if row["sampler"] != "data":
                expected[(row["sampler"], str(row["steps"]))] = row
    assert set(table) - {("data", "")} == set(expected)
    for key, row in expected.items():
        for metric in ("gen_nll", "bigram_kl", "entropy", "nfe", "wall_s"):
            assert float(table[key][metric]) == pytest.approx(row[metric], rel=1e-12)
        assert float(table[key]["speedup"]) == pytest.approx(8 / row["nfe"])  # reference: ancestral at 8 steps
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ancestral:" in proc.stdout and "dilated:" in proc.stdout


def test_fewest_steps_within_tolerance(sweep, tmp_path):
    result = compare([str(sweep / "sweep")], tmp_path, reference="ancestral", tolerance=10.0)
    assert any(line.startswith("dilated: 2 steps") for line in result["summary"])  # everything is within 1000%
    result = compare([str(sweep / "sweep")], tmp_path, reference="ancestral", tolerance=0.0)
    ancestral = next(line for line in result["summary"] if line.startswith("ancestral"))
    assert "ancestral: 8 steps" in ancestral  # only the reference row itself is within 0%


def test_compare_on_nothing_is_a_clear_error(tmp_path):
    proc = subprocess.run(["fewstep-compare", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no metrics.json" in proc.stderr
