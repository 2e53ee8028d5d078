"""Choosing a certainty student's decoding threshold on validation data.

A sweep decodes the validation prompts (and, where the data module has them, mid-answer states of
the validation pairs) with the teacher's argmax one-token-per-step decoding and with the student
at every candidate threshold; `choose_threshold` then takes the largest threshold that, with every
smaller one, stays within a tolerance of the teacher. The objective (distill/objectives/certainty.py)
only trains; it calls these after training, and at every validation with `select_checkpoint`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from distill.evaluation.report import markdown_table
from teachers.samplers.blockwise import BlockwiseSampler


@torch.no_grad()
def score_canvases(sampler, denoiser: nn.Module, canvases: Tensor, weights: Tensor, check, steps: int | None = None,
                   generator: torch.Generator | None = None, batch_size: int = 512) -> tuple[float, float]:
    """Weighted accuracy (by `check`) and mean NFE of `sampler` completing every canvas once (`steps`
    defaults to one per masked position, the bound of the threshold decoder)."""
    device = next(denoiser.parameters()).device
    steps = steps or int((canvases == denoiser.mask_id).sum(-1).max())
    tokens, nfe = [], []
    for chunk in canvases.split(batch_size):
        out = sampler.sample(denoiser, steps, prompt=chunk.to(device), generator=generator)
        tokens.append(out.tokens.cpu())
        per_row = out.nfe_per_row.cpu().double() if out.nfe_per_row is not None else torch.full((len(chunk),), float(out.nfe))
        nfe.append(per_row.double())
    weights = weights.double() / weights.double().sum()
    ok = check(torch.cat(tokens)).double()
    return float((weights * ok).sum()), float((weights * torch.cat(nfe)).sum())


def score_pairs(sampler, denoiser: nn.Module, task, pairs: Tensor, steps: int | None = None,
                generator: torch.Generator | None = None) -> tuple[float, float]:
    """Exact prompt-weighted accuracy and mean NFE of `sampler` over every `paths` pair (each decoded once)."""
    canvas = torch.cat([pairs, torch.full((len(pairs), task.config.answer_len), denoiser.mask_id)], dim=1)
    return score_canvases(sampler, denoiser, canvas, task.prompt_weights(pairs), task.check, steps, generator,
                          batch_size=max(len(pairs), 1))


def choose_threshold(rows: list[dict], reference: float, tolerance: float,
                     state_reference: float | None = None) -> tuple[dict, bool]:
    """The row to decode with, from rows {threshold, accuracy, nfe[, state_accuracy]} of one sweep, and
    whether it is within `tolerance` of the `reference` accuracy.

    Walks the thresholds upward and stops at the first one that falls out of tolerance: the chosen row
    is the last one before it. A failure at a small threshold is read as a warning for the larger
    ones, not as noise to skip past. With `state_reference` (the student's accuracy on the
    mid-answer validation states at its smallest threshold), a row is also out when its
    `state_accuracy` falls more than `tolerance` below that: the cost of parallel commits, measured
    where there are enough decisions to see it. If even the smallest threshold is out of tolerance of
    the teacher, the same walk is made against the student's own accuracy at its smallest threshold
    (the cost of parallel commits alone), and the row is returned with False.
    """
    def within(row: dict) -> bool:
        if row["accuracy"] < reference - tolerance - 1e-12:
            return False
        return state_reference is None or row["state_accuracy"] >= state_reference - tolerance - 1e-12

    rows = sorted(rows, key=lambda r: r["threshold"])
    chosen = None
    for row in rows:
        if not within(row):
            break
        chosen = row
    if chosen is not None:
        return chosen, True
    return choose_threshold(rows, rows[0]["accuracy"], tolerance, state_reference)[0], False


def state_reference(rows: list[dict]) -> float | None:
    """The student's accuracy on the validation states at its smallest threshold (None without states)."""
    smallest = min(rows, key=lambda r: r["threshold"])
    return smallest.get("state_accuracy")


def reference_decoder(data_sampler) -> BlockwiseSampler:
    """The teacher's argmax, one-token-per-step decoding, in the block order its data were decoded with."""
    return BlockwiseSampler(temperature=0.0, block_size=getattr(data_sampler, "block_size", 32),
                            order=getattr(data_sampler, "order", "left_to_right"))


@torch.no_grad()
def sweep_thresholds(student: nn.Module, denoiser: nn.Module, thresholds: list[float], canvases: Tensor,
                     weights: Tensor, check: Callable[[Tensor], Tensor],
                     states: tuple[Tensor, Tensor] | None = None, batch_size: int = 512) -> list[dict]:
    """One row {sampler, threshold, accuracy, nfe[, state_accuracy, state_nfe]} per candidate threshold
    of the student decoding the validation canvases (and states); the student's threshold and mode are
    left as they were."""
    threshold, was_training = student.threshold, student.training
    student.eval()
    rows = []
    for candidate in thresholds:
        student.threshold = candidate
        accuracy, nfe = score_canvases(student, denoiser, canvases, weights, check, batch_size=batch_size)
        row = {"sampler": "student", "threshold": candidate, "accuracy": accuracy, "nfe": nfe}
        if states is not None:
            row["state_accuracy"], row["state_nfe"] = score_canvases(student, denoiser, *states, check,
                                                                     batch_size=batch_size)
        rows.append(row)
    student.threshold = threshold
    student.train(was_training)
    return rows


def print_choice(selection: dict) -> None:
    """The chosen threshold in one line, then the sweep table (`selection` as CertaintyObjective records it)."""
    prompts, states, reference = selection["pairs"], selection["states"], selection["state_reference"]
    on = f"{prompts} validation prompts" + (f" and {states} mid-answer states" if states else "")
    print(f"threshold chosen on {on}: {selection['chosen']:g} "
          f"({'within' if selection['within_tolerance'] else 'NOT within'} {selection['tolerance']:g} of the teacher's "
          "accuracy" + (f" and of the student's state accuracy at its smallest threshold, {reference:.4f}" if states else "")
          + ")")
    print(markdown_table(selection["rows"], ["sampler", "threshold", "accuracy", "nfe"]
                         + (["state_accuracy", "state_nfe"] if states else [])))
