"""fewstep-train: train any objective (the teacher is one), export the result, and optionally
print its quality-vs-steps table.

    fewstep-train experiment=teacher_markov export_dir=DIR
    fewstep-train experiment=lsd_joint_oracle student.steps=8 export_dir=DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from distill.apps.cli import CONF_DIR, check_new_dir, check_override_keys, set_threads, user_errors
from distill.apps.compare import compare
from distill.apps.eval import check_eval, run_evaluation
from distill.apps.export import read_checkpoint
from distill.objectives.base import StudentObjective


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@user_errors
def run(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    export_dir = check_new_dir(Path(cfg.export_dir) if cfg.export_dir else out_dir / "export", "export_dir")
    if cfg.get("ckpt_path") not in (None, "last"):
        read_checkpoint(cfg.ckpt_path)  # missing, truncated or foreign checkpoints fail before any work
    set_threads(cfg.get("threads"))
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    generated = int(datamodule.answer_mask.sum())
    if cfg.eval.after_training:  # bad evaluation settings fail now, not after training
        check_eval(cfg.eval, generated, datamodule.seq_len)

    # 1. optional frozen teacher and student, objective
    runtime = {"vocab_size": datamodule.vocab_size, "seq_len": datamodule.seq_len, "data_spec": datamodule.spec(),
               "seed": cfg.seed}
    if cfg.get("student"):
        if not cfg.get("teacher"):
            raise ValueError("a student needs a frozen teacher: add teacher=oracle or teacher=saved teacher.path=DIR")
        runtime["student"] = instantiate(cfg.student, _convert_="all")
        runtime["method"] = HydraConfig.get().runtime.choices.get("student") or "student"
    if cfg.get("teacher"):
        runtime["teacher"] = instantiate(cfg.teacher, datamodule=datamodule)
        if hasattr(datamodule, "use_teacher"):  # data the teacher generates (certainty forcing on prompt files)
            datamodule.use_teacher(runtime["teacher"])
    objective = instantiate(cfg.objective, **runtime, _convert_="all")  # primitive hparams: weights_only loads
    objective.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)  # in every checkpoint; exported as config.yaml
    choices = HydraConfig.get().runtime.choices
    if isinstance(objective, StudentObjective):
        denoiser, sampler, name = objective.teacher, objective.student, choices.get("student") or "student"
        bad = [s for s in sampler.default_steps(generated) if not 1 <= s <= generated]
        if bad:
            raise ValueError(f"the student would take {bad} steps for {generated} generated positions; a step count "
                             f"must be between 1 and {generated} (set student.steps, or student.tokens_per_forward "
                             "for the joint head, to fit)")
    else:
        sampler, name = instantiate(cfg.sampler), choices.get("sampler") or "sampler"
        objective.val_sampler = sampler

    # 2. fit
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if not logger:  # logger=null: nothing to write the learning rate to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    checkpoint_dir = Path((cfg.get("callbacks") or {}).get("checkpoint", {}).get("dirpath") or out_dir / "checkpoints")
    selection = objective.selection_checkpoint(str(checkpoint_dir)) if hasattr(objective, "selection_checkpoint") else None
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=([selection] if selection else []) + callbacks)  # the choice before last.ckpt
    trainer.fit(objective, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    # what the export below writes, as a checkpoint (after on_fit_end: selected weights, chosen threshold):
    # `fewstep-export checkpoints/final.ckpt DIR` writes the same files (every rank calls it; rank 0 writes)
    trainer.save_checkpoint(checkpoint_dir / "final.ckpt", weights_only=False)  # full state: it also resumes
    if not trainer.is_global_zero:
        return

    # 3. the quality-vs-steps table of what was trained, then the export
    rows = []
    if isinstance(objective, StudentObjective):
        objective.teacher.to(objective.device)
        if hasattr(sampler, "describe"):
            print(sampler.describe(generated))
    else:
        denoiser = objective.network
    if cfg.eval.after_training:
        rows = run_evaluation(denoiser.eval(), sampler.eval() if hasattr(sampler, "eval") else sampler, name,
                              datamodule, cfg.eval, out_dir, OmegaConf.to_container(cfg, resolve=True), print_table=False)
        compare([str(out_dir / "metrics.json")], out_dir / "compare", reference=name)
    objective.export(str(export_dir), rows=rows)  # the one export path (fewstep-export CKPT calls it too)
    print(f"exported to {export_dir}")


def main() -> None:
    """Console entry point (fewstep-train)."""
    check_override_keys("train", sys.argv[1:])
    run()


if __name__ == "__main__":
    main()
