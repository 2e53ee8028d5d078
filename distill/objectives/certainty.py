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
own accuracy on those states at its smallest threshold (distill/evaluation/threshold_choice.py). With
`select_checkpoint`, every validation also runs that choice and logs its NFE, a Lightning ModelCheckpoint
monitoring it keeps the cheapest validation's checkpoint, and the student ends with its weights.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch import Tensor, nn

import students
from distill.evaluation.threshold_choice import (choose_threshold, print_choice, reference_decoder, score_canvases,
                                                 state_reference, sweep_thresholds)
from distill.objectives.base import StudentObjective
from distill.objectives.losses import certainty_loss
from students.lora import count_trainable
from teachers.samplers.selection import span_blocks as block_index

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
        teacher_accuracy, rows = self.validation_sweep()
        best, within = choose_threshold(rows[1:], teacher_accuracy, self.tolerance, state_reference(rows[1:]))
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
        if self.teacher_val_accuracy is None:
            reference = reference_decoder(getattr(datamodule, "sampler", None))
            self.teacher_val_accuracy, _ = score_canvases(reference, self.teacher, canvases, weights, datamodule.check,
                                                          n, batch_size=self.decode_batch_size)
            if states is not None:
                self.teacher_state_scores = score_canvases(reference, self.teacher, *states, datamodule.check,
                                                           batch_size=self.decode_batch_size)
        rows = [{"sampler": "teacher (argmax, 1 token/step)", "threshold": None, "accuracy": self.teacher_val_accuracy,
                 "nfe": n}]
        if states is not None:
            rows[0]["state_accuracy"], rows[0]["state_nfe"] = self.teacher_state_scores
        rows += sweep_thresholds(self.student, self.teacher, self.thresholds, canvases, weights, datamodule.check,
                                 states, batch_size=self.decode_batch_size)
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
        print_choice(self.selection)
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
