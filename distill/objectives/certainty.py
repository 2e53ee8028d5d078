"""Certainty-forcing distillation (dParallel, Chen et al. 2025).

The student starts as a copy of the teacher (LoRA adapters via PEFT, or all weights) and is trained
on the teacher's own verified answers (distill/data/self_generated.py). Each answer's active block (one
semi-autoregressive block, drawn at random; earlier blocks shown, later blocks masked) is masked at a
random ratio r, and a second copy masks the complement, so each token of the block is supervised
exactly once per pair. Loss on the masked tokens of the block:

    cross-entropy toward the self-generated answer
    + beta * entropy of softmax(logits / tau) on the masked tokens the student already predicts
      correctly (argmax == answer): confidence is forced only where it is right.

After training the decoding threshold is chosen on the validation pairs (never the test pairs): the
largest candidate such that it and every smaller candidate stay within `tolerance` of the teacher's
one-token-per-step argmax decoding on the same prompts, and, where the data module provides
mid-answer states of the validation pairs (`selection_states`), within `tolerance` of the student's
own accuracy on those states at its smallest threshold (`choose_threshold`). With
`select_checkpoint`, every validation also runs that choice and logs its NFE, a Lightning ModelCheckpoint
monitoring it keeps the cheapest validation's checkpoint, and the student ends with its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch import Tensor, nn

import students
from distill.objectives.masked_diffusion import masked_ce
from distill.evaluation.report import markdown_table
from distill.objectives.base import StudentObjective
from students.entropy_threshold import block_index, tempered_entropy
from students.lora import count_trainable
from teachers.samplers.blockwise import BlockwiseSampler

SELECTION_METRIC = "val/selection_nfe"  # the chosen threshold's NFE on validation; inf when out of tolerance


def complementary_masks(answer_mask: Tensor, block_size: int, ratio_range: tuple[float, float],
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Masks (B, L) for one training pair per row: (first, second, later).

    first: the active block's positions masked at a ratio r ~ U(ratio_range); second: the rest of
    the active block (first + second cover the block exactly once); later: the blocks after the
    active one, masked in both copies and not supervised. Earlier blocks stay visible.
    """
    B, L = answer_mask.shape
    device = answer_mask.device
    block = block_index(answer_mask, block_size)  # (B, L), -1 outside the answer
    num_blocks = (block.amax(-1) + 1).clamp_min(1)  # (B,)
    active = (torch.rand(B, generator=generator, device=device) * num_blocks).long()  # (B,)
    in_block = block == active[:, None]
    lo, hi = ratio_range
    ratio = lo + (hi - lo) * torch.rand(B, 1, generator=generator, device=device)
    first = in_block & (torch.rand(B, L, generator=generator, device=device) < ratio)
    return first, in_block & ~first, block > active[:, None]


def already_correct(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """(B, L) bool: masked positions whose argmax prediction already equals the target."""
    return mask & (logits.argmax(-1) == target)


@dataclass
class CertaintyLoss:
    """loss = ce + beta * entropy; ce: mean cross-entropy over masked tokens; entropy: mean entropy of
    softmax(logits / tau) over the masked tokens already predicted correctly (0 if none);
    correct: fraction of masked tokens already predicted correctly."""

    loss: Tensor
    ce: Tensor
    entropy: Tensor
    correct: Tensor


def certainty_loss(logits: Tensor, target: Tensor, mask: Tensor, beta: float, tau: float) -> CertaintyLoss:
    ce = masked_ce(logits, target, mask)
    correct = already_correct(logits, target, mask)
    entropy = (tempered_entropy(logits, tau) * correct).sum() / correct.sum().clamp_min(1)
    frac = correct.sum() / mask.sum().clamp_min(1)
    return CertaintyLoss(loss=ce + beta * entropy, ce=ce, entropy=entropy, correct=frac)


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


class CertaintyObjective(StudentObjective):
    """Args (besides StudentObjective's):
        beta: weight of the certainty (entropy) term.
        tau: temperature of the softmax whose entropy is minimised.
        block_size: semi-autoregressive block of the training masks.
        mask_ratio: [lo, hi] range of the first mask's ratio inside the active block.
        export_adapter: export the LoRA adapter alone (base = the teacher) instead of merged weights.
        thresholds: candidate decoding thresholds (nats) tried on the validation pairs after training.
        tolerance: accuracy the chosen threshold may lose against the teacher on validation.
        select_checkpoint: choose the threshold at every validation as well and keep the weights whose
            chosen threshold needs the fewest forward passes on validation (the step count chosen on
            validation); False: the weights of the last step.
        decode_batch_size: prompts decoded at once when scoring validation (large models: small).

    The data module provides `selection_canvases(mask_id)` (validation prompts, answers masked, and
    their weights) and `check(tokens)`; its `sampler`, if it has one, is the teacher's reference decoding.
    """

    objective_name = "certainty"

    def __init__(self, student: nn.Module | dict, teacher: nn.Module, beta: float = 2.0, tau: float = 0.5,
                 block_size: int = 32, mask_ratio: tuple[float, float] = (0.0, 1.0), export_adapter: bool = False,
                 thresholds: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5), tolerance: float = 0.005,
                 select_checkpoint: bool = False, decode_batch_size: int = 512, **kwargs) -> None:
        if not isinstance(student, nn.Module):
            student = OmegaConf.to_container(student, resolve=True) if OmegaConf.is_config(student) else dict(student)
            student = students.build(student)
        student.init_denoiser(teacher)  # a copy of the teacher: LoRA adapters or all weights trainable
        lo, hi = (float(v) for v in mask_ratio)
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"objective.mask_ratio must be [lo, hi] with 0 <= lo <= hi <= 1, got {list(mask_ratio)}")
        if tau <= 0:
            raise ValueError(f"objective.tau must be > 0, got {tau}")
        if export_adapter and student.lora is None:
            raise ValueError("objective.export_adapter needs a LoRA student; full-weight students export their weights")
        thresholds = sorted(float(t) for t in thresholds)
        super().__init__(student, teacher, beta=beta, tau=tau, block_size=block_size, mask_ratio=[lo, hi],
                         export_adapter=export_adapter, thresholds=thresholds, tolerance=tolerance,
                         select_checkpoint=select_checkpoint, **kwargs)
        self.beta, self.tau, self.block_size = beta, tau, block_size
        self.mask_ratio = (lo, hi)
        self.export_adapter = export_adapter
        self.thresholds = thresholds
        self.tolerance = tolerance
        self.decode_batch_size = decode_batch_size
        self.trainable_parameters = count_trainable(self.student)
        self.select_checkpoint = select_checkpoint
        self.selection: dict | None = None
        self.teacher_val_accuracy: float | None = None
        self.teacher_state_scores: tuple[float, float] | None = None
        self.checkpoints: list[dict] = []  # every validation's choice (select_checkpoint)
        self.kept_step: int | None = None  # the step whose weights `restore_selected` loaded
        self.prompt_split: dict | None = None  # from the data module at setup: what eval checks the split against
        self.provenance: dict | None = None  # how the self-generated data were made

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        tokens, mask_id = batch["tokens"], self.teacher.mask_id
        first, second, later = complementary_masks(batch["answer_mask"], self.block_size, self.mask_ratio, generator)
        xt = torch.cat([torch.where(first | later, mask_id, tokens), torch.where(second | later, mask_id, tokens)])
        logits = self.student.denoiser(xt)  # (2B, L, V)
        out = certainty_loss(logits, tokens.repeat(2, 1), torch.cat([first, second]), self.beta, self.tau)
        return out.loss, {"objective": out.loss.detach(), "ce": out.ce.detach(), "entropy": out.entropy.detach(),
                          "correct": out.correct.detach()}

    def setup(self, stage: str) -> None:
        """Answers padded with an end token (prompt files): the decoder stops at it unless told otherwise."""
        super().setup(stage)
        datamodule = self.trainer.datamodule
        end_id = getattr(datamodule, "end_id", None)
        if self.student.eos_id is None and end_id is not None:
            self.student.eos_id = int(end_id)
        self.prompt_split = datamodule.split_spec() if hasattr(datamodule, "split_spec") else None
        self.provenance = getattr(datamodule, "provenance", None)

    def student_record(self) -> dict:
        """The chosen threshold and its choice table, the end token, the prompt split and the data's provenance."""
        return {**super().student_record(), "threshold": self.student.threshold, "eos_id": self.student.eos_id,
                "selection": self.selection, "checkpoints": list(self.checkpoints), "kept_step": self.kept_step,
                "prompt_split": self.prompt_split, "provenance": self.provenance}

    def restore_record(self, record: dict) -> None:
        super().restore_record(record)
        self.student.threshold, self.student.eos_id = record["threshold"], record["eos_id"]
        self.selection, self.checkpoints, self.kept_step = record["selection"], list(record["checkpoints"]), record["kept_step"]
        self.prompt_split, self.provenance = record["prompt_split"], record["provenance"]

    def on_validation_epoch_end(self) -> None:
        """The student's exact accuracy and NFE on the validation prompts at its current threshold; with
        `select_checkpoint`, the threshold choice too, keeping the weights whose choice is cheapest."""
        if self.trainer.sanity_checking:
            return
        datamodule = self.trainer.datamodule
        canvases, weights = datamodule.selection_canvases(self.teacher.mask_id)
        accuracy, nfe = score_canvases(self.student, self.teacher, canvases, weights, datamodule.check,
                                       batch_size=self.decode_batch_size)
        self.log("val/accuracy", accuracy, prog_bar=True, sync_dist=True)
        self.log("val/nfe", nfe, prog_bar=True, sync_dist=True)
        if not self.select_checkpoint:
            return
        threshold = self.student.threshold
        teacher_accuracy, rows = self.validation_sweep()
        best, within = choose_threshold(rows[1:], teacher_accuracy, self.tolerance, state_reference(rows[1:]))
        self.student.threshold = threshold
        self.log("val/chosen_threshold", best["threshold"], sync_dist=True)
        self.log("val/chosen_nfe", best["nfe"], sync_dist=True)
        self.log(SELECTION_METRIC, best["nfe"] if within else float("inf"), sync_dist=True)
        self.checkpoints.append({"step": int(self.global_step), "threshold": best["threshold"],
                                 "accuracy": best["accuracy"], "nfe": best["nfe"], "within_tolerance": within})

    def selection_checkpoint(self, dirpath: str) -> ModelCheckpoint | None:
        """With `select_checkpoint`: the callback that keeps the checkpoint of the validation whose chosen
        threshold needs the fewest forward passes (strictly fewer: a tie keeps the earlier, less trained
        weights; out of tolerance logs inf, so it is kept only while nothing within tolerance is)."""
        if not self.select_checkpoint:
            return None
        return ModelCheckpoint(dirpath=dirpath, filename="selected", monitor=SELECTION_METRIC, mode="min", save_top_k=1,
                               save_last=False, save_on_train_epoch_end=False, auto_insert_metric_name=False)

    def restore_selected(self) -> None:
        """Load the student weights of the checkpoint `selection_checkpoint` kept (nothing within tolerance:
        the weights stay as they are)."""
        kept = [c for c in self.trainer.checkpoint_callbacks
                if isinstance(c, ModelCheckpoint) and c.monitor == SELECTION_METRIC]
        if not kept or not kept[0].best_model_path or not torch.isfinite(torch.as_tensor(kept[0].best_model_score)):
            self.kept_step = None
            return
        checkpoint = torch.load(kept[0].best_model_path, map_location="cpu", weights_only=True)
        self.student.load_state_dict({k[len("student."):]: v for k, v in checkpoint["state_dict"].items()
                                      if k.startswith("student.")})
        self.kept_step = int(checkpoint["global_step"])
        print(f"kept the weights of step {self.kept_step} (on validation: {float(kept[0].best_model_score):.2f} NFE; "
              "every validation: "
              + ", ".join(f"step {c['step']} {c['nfe']:.2f}{'' if c['within_tolerance'] else ' (out)'}"
                          for c in self.checkpoints) + ")")

    def on_fit_end(self) -> None:
        if self.select_checkpoint:
            self.restore_selected()
        self.select_threshold()

    def selection_states(self) -> tuple[Tensor, Tensor] | None:
        """Mid-answer validation states (canvases, weights) if the data module has them."""
        states = getattr(self.trainer.datamodule, "selection_states", None)
        return states(self.teacher.mask_id) if states is not None else None

    @torch.no_grad()
    def validation_sweep(self) -> tuple[float, list[dict]]:
        """The teacher's reference accuracy on the validation prompts (argmax, one token per step, as
        it decoded the data; computed once, the teacher is frozen) and the rows of the threshold
        sweep (the teacher's row first). With mid-answer validation states, every row also has
        `state_accuracy` and `state_nfe` on them."""
        datamodule = self.trainer.datamodule
        canvases, weights = datamodule.selection_canvases(self.teacher.mask_id)
        states = self.selection_states()
        n = int((canvases == self.teacher.mask_id).sum(-1).max())
        was_training = self.student.training
        self.student.eval()
        if self.teacher_val_accuracy is None:
            data_sampler = getattr(datamodule, "sampler", None)  # how the data were decoded, but always argmax here
            reference = BlockwiseSampler(temperature=0.0, block_size=getattr(data_sampler, "block_size", 32),
                                         order=getattr(data_sampler, "order", "left_to_right"))
            self.teacher_val_accuracy, _ = score_canvases(reference, self.teacher, canvases, weights, datamodule.check,
                                                          n, batch_size=self.decode_batch_size)
            if states is not None:
                self.teacher_state_scores = score_canvases(reference, self.teacher, *states, datamodule.check,
                                                           batch_size=self.decode_batch_size)
        rows = [{"sampler": "teacher (argmax, 1 token/step)", "threshold": None, "accuracy": self.teacher_val_accuracy,
                 "nfe": n}]
        if states is not None:
            rows[0]["state_accuracy"], rows[0]["state_nfe"] = self.teacher_state_scores
        for threshold in self.thresholds:
            self.student.threshold = threshold
            accuracy, nfe = score_canvases(self.student, self.teacher, canvases, weights, datamodule.check,
                                           batch_size=self.decode_batch_size)
            row = {"sampler": "student", "threshold": threshold, "accuracy": accuracy, "nfe": nfe}
            if states is not None:
                row["state_accuracy"], row["state_nfe"] = score_canvases(
                    self.student, self.teacher, *states, datamodule.check, batch_size=self.decode_batch_size)
            rows.append(row)
        self.student.train(was_training)
        return self.teacher_val_accuracy, rows

    def select_threshold(self) -> dict:
        """Set the student's threshold by `choose_threshold` on the validation prompts."""
        teacher_accuracy, rows = self.validation_sweep()
        reference = state_reference(rows[1:])
        best, within = choose_threshold(rows[1:], teacher_accuracy, self.tolerance, reference)
        self.student.threshold = best["threshold"]
        datamodule = self.trainer.datamodule
        prompts = len(datamodule.selection_canvases(self.teacher.mask_id)[0])
        states = self.selection_states()
        self.selection = {"split": "val", "pairs": prompts, "states": len(states[0]) if states else 0,
                          "state_reference": reference, "tolerance": self.tolerance, "rows": rows,
                          "chosen": best["threshold"], "within_tolerance": within,
                          "checkpoints": self.checkpoints or None, "kept_step": self.kept_step}
        on = f"{prompts} validation prompts" + (f" and {len(states[0])} mid-answer states" if states else "")
        print(f"threshold chosen on {on}: {best['threshold']:g} "
              f"({'within' if within else 'NOT within'} {self.tolerance:g} of the teacher's accuracy"
              + (f" and of the student's state accuracy at its smallest threshold, {reference:.4f}" if states else "")
              + ")")
        print(markdown_table(rows, ["sampler", "threshold", "accuracy", "nfe"]
                             + (["state_accuracy", "state_nfe"] if states else [])))
        return self.selection

    def exported_student(self) -> nn.Module:
        return self.student.adapter() if self.export_adapter else self.student.merged()

    def export_extra(self) -> dict:
        return {
            "prompt_split": self.prompt_split,
            "self_generated_data": self.provenance,
            "finetune": {"lora": self.student.lora, "trainable_parameters": self.trainable_parameters,
                         "export": "adapter" if self.export_adapter else "merged"},
            "threshold_selection": self.selection,
        }
