"""Plain-text tables of metrics.json rows."""

from __future__ import annotations

COLUMNS = [
    "sampler", "steps", "nfe", "head_passes", "tokens_per_forward", "gen_nll", "gen_ppl", "pair_kl_d1", "pair_kl_d2",
    "pair_kl_d4", "pair_kl_d8", "entropy", "low_prob_rate", "accuracy", "distinct_answers", "wall_s",
]


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e6:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    """A Markdown table of the columns that appear in any row, in `columns` order."""
    cols = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
