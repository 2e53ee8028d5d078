"""What every distillation objective shares: a frozen teacher, a student built from its config,
validation by sampling, the optimizer over the student's trainable tensors, and the export.

Subclasses define `loss(batch, generator) -> (loss to minimise, dict of values to log)`.

Everything that defines the exported student and is not a tensor of it (the run's resolved config, the
number of generated positions, and whatever a subclass adds in `student_record`) is written into every
checkpoint by `on_save_checkpoint` as primitives, so `fewstep-export CKPT` rebuilds this module and calls
the same `export` the training run calls (distill/apps/export.py).
"""

from __future__ import annotations

from functools import partial

import lightning as L
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

import students
from distill.evaluation.evaluate import evaluate_sampler
from distill.evaluation.model_card import model_card
from distill.objectives.frozen import attach_frozen, teacher_reference
from distill.objectives.schedule import optimizer_config
from distill.seeding import step_generator


def start_canvas(batch: dict[str, Tensor], mask_id: int) -> Tensor:
    """(B, L) the batch's sequences with every generated position masked: where a student starts."""
    return torch.where(batch["answer_mask"], mask_id, batch["tokens"])


class StudentObjective(L.LightningModule):
    """Args:
        student: the student module, or its config ({"_target_": "students.<Class>", ...}); the
            hyperparameters keep only the config, so checkpoints stay primitive.
        teacher: the frozen denoiser (oracle or saved); never trained or saved.
        optimizer: a partial optimizer, called with the student's trainable parameters.
        warmup_steps: linear warm-up, then cosine decay to 5% over trainer.max_steps.
        val_samples: sequences sampled by the student at every validation.
        data_spec: what defines the data (recorded in the export with the teacher reference).
        method: the name rows and exports carry (the student config's name, e.g. lsd_joint).
        seed: with the rank and the step, seeds each training step's rollouts (distill/seeding.py).
    """

    objective_name = "student"

    def __init__(
        self,
        student: nn.Module | dict,
        teacher: nn.Module,
        optimizer: partial,
        vocab_size: int,
        seq_len: int,
        warmup_steps: int = 0,
        val_samples: int = 256,
        data_spec: dict | None = None,
        method: str = "student",
        seed: int = 0,
        **hparams,
    ) -> None:
        super().__init__()
        if isinstance(student, nn.Module):
            self.student = student
            student = {"_target_": f"students.{type(student).__name__}", **student.config}
        else:
            student = OmegaConf.to_container(student, resolve=True) if OmegaConf.is_config(student) else dict(student)
            self.student = students.build(student)
        if getattr(teacher, "vocab_size", vocab_size) < vocab_size:
            raise ValueError(f"teacher vocab_size {teacher.vocab_size} != data vocab_size {vocab_size}; "
                             "use the teacher trained on this data")
        attach_frozen(self, teacher)
        data_spec = dict(data_spec) if data_spec is not None else None
        self.teacher_ref = teacher_reference(teacher, data_spec)
        self.save_hyperparameters({"objective": self.objective_name,
                                   "_target_": f"{type(self).__module__}.{type(self).__qualname__}",
                                   "student": student, "teacher_ref": self.teacher_ref,
                                   "vocab_size": vocab_size, "seq_len": seq_len, "warmup_steps": warmup_steps, "val_samples": val_samples, "data_spec": data_spec,
                                   "method": method, "seed": seed, **hparams})
        self.method = method
        self.seed = seed
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        self.val_samples = val_samples
        self.data_spec = data_spec
        self.config_yaml: str | None = None  # the run's resolved config (set by fewstep-train), exported as config.yaml
        self.generated = seq_len  # generated positions per sequence (all, until setup reads the data's answer mask)
        self.trained_steps: int | None = None  # the checkpoint's step, when rebuilt from one without a trainer

    def loss(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        self.generated = int(self.trainer.datamodule.answer_mask.sum())

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)

    # --- what defines the student, beyond its tensors: kept in every checkpoint ---------------------
    def student_record(self) -> dict:
        """Primitives (no tensors, no objects) that `export` needs and the student's tensors do not hold."""
        return {"method": self.method, "teacher_ref": self.teacher_ref, "config_yaml": self.config_yaml,
                "generated": self.generated}

    def restore_record(self, record: dict) -> None:
        self.method, self.teacher_ref = record["method"], record["teacher_ref"]
        self.config_yaml, self.generated = record["config_yaml"], record["generated"]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fewstep"] = self.student_record()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "fewstep" not in checkpoint:
            raise ValueError("this checkpoint was written by an older fewstep (no 'fewstep' entry): it lacks what defines "
                             "the student; train again with this version")
        self.restore_record(checkpoint["fewstep"])
        self.trained_steps = int(checkpoint.get("global_step", 0))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, values = self.loss(batch, step_generator(self, self.seed, batch_idx, batch["tokens"].device))
        for name, value in values.items():
            self.log(f"train/{name}", value, prog_bar=name == "objective", sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        generator = torch.Generator(device=batch["tokens"].device).manual_seed(batch_idx)
        with torch.no_grad():
            _, values = self.loss(batch, generator)
        for name, value in values.items():
            self.log(f"val/{name}", value, prog_bar=name == "objective", sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.val_samples <= 0:
            return
        benchmark = self.trainer.datamodule.benchmark(split="val")  # never the test prompts
        for steps in self.student.default_steps(self.generated):
            row, _, _ = evaluate_sampler(self.teacher, self.student, benchmark, steps, self.val_samples, self.val_samples,
                                      seed=0, sampler_name="val")
            self.log_dict({f"val/{k}": row[k] for k in ("gen_nll", "bigram_kl", "accuracy", "entropy", "nfe") if k in row},
                          prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.student.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the student has nothing to train: set student.learn to at least one part")
        return optimizer_config(self.optimizer_factory(params), self.warmup_steps, self.trainer.max_steps)

    def exported_student(self) -> nn.Module:
        """What `export` saves (a subclass may save a merged or reduced copy)."""
        return self.student

    def export_extra(self) -> dict:
        """Objective-specific entries for sampler.json."""
        return {}

    def export(self, path: str, rows: list[dict] | None = None) -> None:
        """The student alone (safetensors + sampler.json, config.yaml, model card), its teacher by reference.

        The one export path: the training run calls it after fitting (with its evaluation rows for the model
        card) and `fewstep-export` calls it on the module rebuilt from a checkpoint (no rows)."""
        steps = int(self.global_step) if self._trainer is not None else int(self.trained_steps or 0)
        card = model_card(self.method, self.student, self.teacher_ref, rows or [], self.generated)
        students.save_student(self.exported_student(), path, teacher=self.teacher_ref, config_yaml=self.config_yaml,
                              card=card, extra={"method": self.method, "objective": self.objective_name,
                                                "data": self.data_spec, "trained_steps": steps, **self.export_extra()})
