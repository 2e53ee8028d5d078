"""Every config composes with Hydra's compose API and every group option instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict

from distill.cli import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


@pytest.fixture(autouse=True)
def clean_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def compose_cfg(name: str, overrides: list[str], tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    return cfg


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment, tmp_path):
    cfg = compose_cfg("train", [f"experiment={experiment}"], tmp_path)
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    assert cfg.trainer.max_steps > 0 and cfg.eval.after_training
    if cfg.get("student"):  # a distillation: its objective needs a trained teacher (built in test_apps/test_certainty)
        assert cfg.get("teacher") and hasattr(instantiate(cfg.student, _convert_="all"), "sample")
        return
    datamodule = instantiate(cfg.data)
    objective = instantiate(cfg.objective, vocab_size=datamodule.vocab_size, seq_len=datamodule.seq_len)
    assert objective.network.vocab_size == datamodule.vocab_size


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(CONF_DIR) / "data").glob("*.yaml")))
def test_every_data_option_instantiates(option, tmp_path):
    cfg = compose_cfg("eval", [f"data={option}"], tmp_path)
    datamodule = instantiate(cfg.data)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["tokens"].shape == (cfg.data.batch_size, datamodule.seq_len)


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(CONF_DIR) / "sampler").glob("*.yaml")))
def test_every_sampler_option_instantiates(option, tmp_path):
    cfg = compose_cfg("eval", [f"sampler={option}"], tmp_path)
    if option == "saved":  # a student export: loading one is tested in test_apps and test_certainty
        with pytest.raises(Exception, match="sampler.path"):
            instantiate(cfg.sampler)
        return
    assert hasattr(instantiate(cfg.sampler), "sample")


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks"])
def test_every_trainer_logger_and_callbacks_option_instantiates(group, tmp_path):
    from hydra.core.hydra_config import HydraConfig

    for option in sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")):
        if group == "trainer" and option in ("gpu", "ddp"):
            continue  # need a GPU; composed below
        cfg = compose_cfg("train", [f"{group}={option}"], tmp_path)
        HydraConfig.instance().set_config(cfg)
        node = cfg[group]
        built = [instantiate(c) for c in node.values()] if group == "callbacks" else instantiate(node)
        assert built is not None
    for option in ("gpu", "ddp"):
        cfg = compose_cfg("train", [f"trainer={option}"], tmp_path)
        assert cfg.trainer.accelerator == "gpu"


def test_teacher_options_build_against_data(tmp_path):
    cfg = compose_cfg("eval", ["teacher=oracle", "data=hmm"], tmp_path)
    datamodule = instantiate(cfg.data)
    teacher = instantiate(cfg.teacher, datamodule=datamodule)
    assert teacher.vocab_size == 32
    cfg = compose_cfg("eval", ["teacher=oracle", "data=paths"], tmp_path)
    with pytest.raises(Exception, match="needs a source with exact conditionals"):
        instantiate(cfg.teacher, datamodule=instantiate(cfg.data))


@pytest.mark.parametrize("launcher, target", [("slurm", "SlurmLauncher"), ("local_parallel", "JoblibLauncher"),
                                              ("basic", "BasicLauncher")])
def test_sweep_launchers_compose(launcher, target, tmp_path):
    cfg = compose_cfg("eval", [f"hydra/launcher={launcher}"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith(target)
