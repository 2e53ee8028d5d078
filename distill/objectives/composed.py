"""A composed student's head, trained on its distilled denoiser; then its decoding threshold.

The student (students.ComposedSampler, built by `students.compose` from a certainty or trajectory
student's export) holds the distilled denoiser, its decoding rule and a new joint-sampling head. The
head is trained exactly as objective=joint_head trains it (distill/objectives/joint_head.py: forward
KL to the network's own next distribution along its one-token-per-forward trajectories, the head
unrolled over chunks of `tokens_per_forward` states), with the distilled denoiser in the teacher's
place: it is the network the head sits on. That denoiser is frozen, so only the head trains.

The root teacher (`teacher=saved teacher.path=T`, the one the denoiser was distilled from; checked
against the export's record) is what the export names as its teacher, so `fewstep-eval teacher=saved
teacher.path=T sampler=saved sampler.path=DIR` checks the pair as for any student. It is never trained
and never in a checkpoint; it decodes the validation prompts once, as the reference of the threshold choice.

After training the decoding rule is chosen on validation pairs (and the data's mid-answer validation
states, where it has them): for each candidate (head passes per forward, forced passes or not) the
threshold the certainty objective would choose (distill/evaluation/threshold_choice.py), now with the
head in the decoding; then the candidate with the fewest full forwards within tolerance.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from torch import nn

import students
from distill.evaluation.threshold_choice import (choose_threshold, print_choice, reference_decoder, score_canvases,
                                                 state_reference, sweep_thresholds)
from distill.objectives.frozen import teacher_reference
from distill.objectives.joint_head import JointHeadObjective


class ComposedObjective(JointHeadObjective):
    """Args (besides JointHeadObjective's):
        student: a ComposedSampler with a head (student=composed student.denoiser_path=DIR), or its config
            (a checkpoint: the denoiser's architecture; its weights come with the state dict).
        teacher: the root teacher the student's denoiser was distilled from.
        thresholds: candidate entropy thresholds tried on validation after training (None: keep the
            denoiser export's own and the student's rule).
        rules: candidate decoding rules {head_passes, forced_passes} tried with every threshold (None: the
            student's own); see `select_rule`.
        tolerance: accuracy the chosen threshold may lose against the root teacher on validation.
        decode_batch_size: prompts decoded at once when scoring validation.
    """

    objective_name = "composed"

    def __init__(self, student: nn.Module | dict, teacher: nn.Module, *args, data_spec: dict | None = None,
                 thresholds: list[float] | None = None, rules: list[dict] | None = None, tolerance: float = 0.005,
                 decode_batch_size: int = 512, **kwargs) -> None:
        if not isinstance(student, nn.Module):
            student = students.build(OmegaConf.to_container(student, resolve=True) if OmegaConf.is_config(student)
                                     else dict(student))
        if not isinstance(student, students.ComposedSampler) or student.head is None:
            raise ValueError(f"objective=composed trains the head of a composed student, got {type(student).__name__}"
                             f"{' without a head' if isinstance(student, students.ComposedSampler) else ''}; use "
                             "student=composed student.denoiser_path=DIR (a certainty or trajectory student's export)")
        if getattr(student, "teacher_ref", None) is not None:  # built from an export: distilled from this teacher?
            students.check_teacher(student.teacher_ref, teacher, data_spec)
        denoiser = student.network(teacher)  # the distilled denoiser: the network the head sits on
        thresholds = sorted(float(t) for t in thresholds) if thresholds else None
        rules = [{k: (int(v) if k == "head_passes" else bool(v)) for k, v in dict(r).items()} for r in rules or []]
        super().__init__(student, denoiser, *args, data_spec=data_spec, thresholds=thresholds, rules=rules,
                         tolerance=tolerance, decode_batch_size=decode_batch_size, **kwargs)
        self.__dict__["root_teacher"] = teacher.eval().requires_grad_(False)  # unregistered: never in a checkpoint
        self.teacher_ref = teacher_reference(teacher, data_spec)  # what the export names: the root teacher
        self.hparams["teacher_ref"] = self.teacher_ref  # fewstep-export rebuilds with it
        self.thresholds, self.rules, self.tolerance = thresholds, rules, tolerance
        self.decode_batch_size = decode_batch_size
        self.denoiser_from = getattr(student, "denoiser_from", None)
        self.prompt_split = getattr(student, "prompt_split", None)
        self.selection: dict | None = None

    def train(self, mode: bool = True) -> "ComposedObjective":
        """Train mode for the head only: the distilled denoiser stays in eval mode (no dropout)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = self.trainer.datamodule
        if hasattr(datamodule, "split_spec"):  # the head trained on these pairs' prompts too
            self.prompt_split = datamodule.split_spec()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.root_teacher.to(self.device)

    # --- the decoding rule, chosen on validation with the head in the decoding ----------------------
    def on_fit_end(self) -> None:
        if self.thresholds:
            self.select_rule()

    @torch.no_grad()
    def select_rule(self) -> dict:
        """Set the student's decoding rule on the validation pairs (and the mid-answer validation states where
        the data have them): for every candidate of `rules` (head passes per forward, forced passes) the
        threshold `choose_threshold` picks against the root teacher's argmax, one token per step; then the
        rule whose choice is within tolerance with the fewest full forwards (ties: the earlier rule).

        The state reference (the accuracy on the states that a threshold may not fall below) is the first
        rule's at its smallest threshold, so list the most sequential rule first. If that row is itself out
        of tolerance of the teacher, every rule is held to the first rule's own accuracy there instead, and
        the choice is recorded as not within tolerance (choose_threshold's fallback, for all rules at once)."""
        datamodule = self.trainer.datamodule
        mask_id, check = self.teacher.mask_id, getattr(datamodule, "check", None) or datamodule.task.check
        canvases, weights = validation_canvases(datamodule, mask_id)
        states_fn = getattr(datamodule, "selection_states", None)
        states = states_fn(mask_id) if states_fn is not None else None
        reference = reference_decoder(getattr(datamodule, "sampler", None))
        n = int((canvases == mask_id).sum(-1).max())
        teacher_accuracy, _ = score_canvases(reference, self.root_teacher, canvases, weights, check, n,
                                             batch_size=self.decode_batch_size)
        teacher_row = {"sampler": "teacher (argmax, 1 token/step)", "threshold": None, "accuracy": teacher_accuracy,
                       "nfe": n}
        if states is not None:
            teacher_row["state_accuracy"], teacher_row["state_nfe"] = score_canvases(
                reference, self.root_teacher, *states, check, batch_size=self.decode_batch_size)
        rows, sweeps = [teacher_row], []
        for rule in self.rules or [{}]:
            self.student.head_passes = rule.get("head_passes", self.student.head_passes)
            self.student.forced_passes = rule.get("forced_passes", self.student.forced_passes)
            name = f"composed, {self.student.head_passes} passes{', forced' if self.student.forced_passes else ''}"
            sweeps.append((self.student.head_passes, self.student.forced_passes, [
                {**row, "sampler": name} for row in sweep_thresholds(self.student, self.teacher, self.thresholds, canvases,
                                                                     weights, check, states, batch_size=self.decode_batch_size)]))
            rows += sweeps[-1][2]
        # the references: the teacher's accuracy and the first rule's state accuracy at its smallest threshold; if
        # that row is out of tolerance of the teacher, the first rule's own accuracy there (as choose_threshold does)
        first = sweeps[0][2][0]
        bar = state_reference(sweeps[0][2])
        within_teacher = passes_bar(first, teacher_accuracy, self.tolerance, bar)
        accuracy_ref = teacher_accuracy if within_teacher else first["accuracy"]
        choices = []
        for head_passes, forced, swept in sweeps:
            if passes_bar(swept[0], accuracy_ref, self.tolerance, bar):  # its smallest threshold
                best, ok = choose_threshold(swept, accuracy_ref, self.tolerance, bar)
            else:  # out of tolerance even at its smallest threshold: not a candidate
                best, ok = swept[0], False
            choices.append({"head_passes": head_passes, "forced_passes": forced, "threshold": best["threshold"],
                            "accuracy": best["accuracy"], "nfe": best["nfe"], "candidate": ok})
        ok = [c for c in choices if c["candidate"]] or choices[:1]
        chosen = min(ok, key=lambda c: c["nfe"])
        within = within_teacher
        self.student.head_passes, self.student.forced_passes = chosen["head_passes"], chosen["forced_passes"]
        self.student.threshold = chosen["threshold"]
        self.selection = {"split": "val", "pairs": len(canvases), "states": len(states[0]) if states else 0,
                          "state_reference": bar, "tolerance": self.tolerance, "rows": rows, "rules": choices,
                          "chosen": chosen["threshold"], "chosen_rule": chosen, "within_tolerance": within}
        print_choice(self.selection)
        print(f"decoding rule chosen: {chosen['head_passes']} head passes per forward"
              f"{', forced' if chosen['forced_passes'] else ''}, threshold {chosen['threshold']:g} "
              f"({chosen['nfe']:.2f} full forwards on validation)")
        return self.selection

    # --- what defines the student beyond its tensors --------------------------------------------
    def student_record(self) -> dict:
        return {**super().student_record(), "threshold": self.student.threshold, "head_passes": self.student.head_passes,
                "forced_passes": self.student.forced_passes, "selection": self.selection,
                "prompt_split": self.prompt_split, "denoiser_from": self.denoiser_from}

    def restore_record(self, record: dict) -> None:
        super().restore_record(record)
        self.student.threshold, self.selection = record["threshold"], record["selection"]
        self.student.head_passes, self.student.forced_passes = record["head_passes"], record["forced_passes"]
        self.prompt_split, self.denoiser_from = record["prompt_split"], record["denoiser_from"]

    def export_extra(self) -> dict:
        return {"prompt_split": self.prompt_split, "denoiser_from": self.denoiser_from,
                "threshold_selection": self.selection}


def passes_bar(row: dict, teacher_accuracy: float, tolerance: float, state_bar: float | None) -> bool:
    """A sweep row within `tolerance` of the teacher's accuracy and of the state accuracy bar (choose_threshold's test)."""
    if row["accuracy"] < teacher_accuracy - tolerance - 1e-12:
        return False
    return state_bar is None or row["state_accuracy"] >= state_bar - tolerance - 1e-12


def validation_canvases(datamodule, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation pairs with their answers masked, and their prompt weights (any `paths` data module)."""
    if hasattr(datamodule, "selection_canvases"):
        return datamodule.selection_canvases(mask_id)
    pairs = datamodule.pairs["val"]
    canvas = torch.cat([pairs, torch.full((len(pairs), datamodule.task.config.answer_len), mask_id)], dim=1)
    return canvas, datamodule.task.prompt_weights(pairs)
