"""fewstep-train: train any objective (the teacher is one), export the result, and optionally
print its quality-vs-steps table.

    fewstep-train experiment=teacher_markov export_dir=DIR
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from distill.cli import CONF_DIR, user_errors
from distill.compare_app import compare
from distill.eval_app import resolve_steps, run_evaluation


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@user_errors
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    export_dir = Path(cfg.export_dir) if cfg.export_dir else out_dir / "export"
    if export_dir.exists():
        raise FileExistsError(f"export_dir {export_dir} already exists; choose another export_dir or delete it first")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    if cfg.eval.after_training:  # bad step counts fail now, not after training
        resolve_steps(cfg.eval.steps, int(datamodule.answer_mask.sum()))

    # 1. optional frozen teacher, objective
    runtime = {"vocab_size": datamodule.vocab_size, "seq_len": datamodule.seq_len, "data_spec": datamodule.spec()}
    if cfg.get("teacher"):
        runtime["teacher"] = instantiate(cfg.teacher, datamodule=datamodule)
    objective = instantiate(cfg.objective, **runtime, _convert_="all")  # primitive hparams: weights_only loads
    sampler = instantiate(cfg.sampler)
    objective.val_sampler = sampler

    # 2. fit
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    trainer.fit(objective, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    # 3. export, then the quality-vs-steps table of what was trained
    if trainer.is_global_zero:
        objective.export(str(export_dir))
        print(f"exported to {export_dir}")
        if cfg.eval.after_training:
            name = HydraConfig.get().runtime.choices.get("sampler", "sampler")
            run_evaluation(objective.network.eval(), sampler, name, datamodule, cfg.eval, out_dir,
                           OmegaConf.to_container(cfg, resolve=True), print_table=False)
            compare([str(out_dir / "metrics.json")], out_dir / "compare", reference=name)


if __name__ == "__main__":
    main()
