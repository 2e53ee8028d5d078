"""Every config composes with Hydra's compose API and every group option instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import open_dict

from distill.apps.cli import CONF_DIR
from students import LearnedSampler, save_student
from teachers import TransformerDenoiser, save_teacher

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


def tiny_saved_teacher(datamodule, path: Path) -> Path:
    """A 1-layer teacher saved for `datamodule`'s data, standing in for a trained one."""
    net = TransformerDenoiser(datamodule.vocab_size, datamodule.seq_len, n_layer=1, n_head=2, d_model=16)
    return save_teacher(net, path, data=datamodule.spec())


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment, tmp_path):
    cfg = compose_cfg("train", [f"experiment={experiment}"], tmp_path)
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    if cfg.trainer.accelerator == "gpu":  # GPU experiments on hub models: compose here, build on a GPU machine
        assert cfg.trainer.precision == "bf16-mixed" and cfg.teacher.dtype == "bfloat16" and cfg.teacher.path
        assert cfg.student._target_.startswith("students.") and cfg.objective._target_.startswith("distill.")
        return
    if "teacher_path" in cfg.data:  # data the teacher generates (certainty forcing): built in test_certainty
        assert cfg.teacher._target_.endswith("saved_teacher")
        if cfg.student._target_ != "students.compose":  # a composed student needs a trained one: test_composed
            assert hasattr(instantiate(cfg.student, _convert_="all"), "sample")
        return
    if cfg.get("teacher") and cfg.teacher._target_.endswith("hf_masked_lm"):  # a transformers teacher: a tiny one
        from tests.hf_fixtures import qa_file, tiny_bert

        cfg.teacher.path = str(tiny_bert(tmp_path / "bert"))
        cfg.data.file = str(qa_file(tmp_path / "qa.jsonl"))
        cfg.data.question_field, cfg.data.answer_field = "q", "a"
    datamodule = instantiate(cfg.data)
    runtime = {"vocab_size": datamodule.vocab_size, "seq_len": datamodule.seq_len, "data_spec": datamodule.spec()}
    if cfg.get("teacher"):
        if cfg.teacher._target_.endswith("saved_teacher"):
            cfg.teacher.path = str(tiny_saved_teacher(datamodule, tmp_path / "teacher"))
        runtime["teacher"] = instantiate(cfg.teacher, datamodule=datamodule)
        runtime["student"] = instantiate(cfg.student, _convert_="all")
    objective = instantiate(cfg.objective, **runtime, _convert_="all")
    if cfg.get("teacher"):  # a distillation objective: the teacher is frozen and not part of the module
        assert not any(k.startswith("teacher") for k in objective.state_dict())
        assert all(not p.requires_grad for p in runtime["teacher"].parameters())
        assert any(p.requires_grad for p in objective.student.parameters())
    else:
        assert objective.network.vocab_size == datamodule.vocab_size
    assert cfg.trainer.max_steps > 0 and cfg.eval.after_training


GPU_EXPERIMENTS = [e for e in EXPERIMENTS if e.startswith(("llada_", "dream_"))]
HIDDEN_SIZE = {"llada": 4096, "dream": 3584}  # LLaDA-8B-Instruct, Dream-v0-Instruct-7B (their config.json)
OBJECTIVES = {"certainty": "distill.objectives.certainty.CertaintyObjective", "joint_head": "distill.objectives.joint_head.JointHeadObjective",
              "lsd_joint": "distill.objectives.lsd_joint.LSDJointObjective"}


@pytest.mark.parametrize("experiment", GPU_EXPERIMENTS)
def test_gpu_experiments_compose_for_each_objective(experiment, tmp_path):
    """Compose-only (no GPU here): bf16 teacher with its own code, bf16-mixed DDP, the objective's student builds."""
    model, objective = experiment.split("_", 1)
    cfg = compose_cfg("train", [f"experiment={experiment}", "data.file=gsm8k_train.jsonl"], tmp_path)
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.teacher.dtype == "bfloat16" and cfg.teacher.trust_remote_code and cfg.teacher.shift_logits == (model == "dream")
    assert cfg.data.tokenizer == cfg.teacher.path and cfg.data.trust_remote_code is True
    assert cfg.objective._target_ == OBJECTIVES[objective]
    student = instantiate(cfg.student, _convert_="all")
    assert hasattr(student, "sample")
    if objective == "certainty":
        assert cfg.data._target_.endswith("SelfGeneratedPromptsDataModule") and cfg.data.block_size == cfg.student.block_size
        assert student.lora["r"] == 128 and "q_proj" in student.lora["target_modules"]
        assert cfg.objective.beta == (2.0 if model == "llada" else 1.0)
    if objective == "joint_head":
        assert HIDDEN_SIZE[model] % cfg.student.n_head == 0 and cfg.data.answer_len % cfg.student.tokens_per_forward == 0


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(CONF_DIR) / "data").glob("*.yaml")))
def test_every_data_option_instantiates(option, tmp_path):
    overrides = []
    if option == "prompts_self_generated":  # needs the teacher's answers: built in test_hf_objectives
        cfg = compose_cfg("eval", [f"data={option}", "teacher=hf_masked_lm", "teacher.path=BERT", "data.file=x"], tmp_path)
        assert cfg.data._target_.endswith("SelfGeneratedPromptsDataModule") and cfg.data.tokenizer == "BERT"
        return
    if option in ("text_files", "prompts_json"):  # transformers data: a tiny model's tokenizer and files
        from tests.hf_fixtures import corpus, tiny_bert
        from tests.hf_fixtures import qa_file

        overrides = ["teacher=hf_masked_lm", f"teacher.path={tiny_bert(tmp_path / 'bert')}"]
        if option == "text_files":
            overrides += [f"data.files=[{corpus(tmp_path / 'a.txt')}]", "data.seq_len=16"]
        else:
            overrides += [f"data.file={qa_file(tmp_path / 'qa.jsonl')}", "data.question_field=q", "data.answer_field=a"]
    cfg = compose_cfg("eval", [f"data={option}", *overrides], tmp_path)
    datamodule = instantiate(cfg.data)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["tokens"].shape == (cfg.data.batch_size, datamodule.seq_len)


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(CONF_DIR) / "sampler").glob("*.yaml")))
def test_every_sampler_option_instantiates(option, tmp_path):
    overrides = []
    if option == "saved":  # an exported student
        overrides = [f"sampler.path={save_student(LearnedSampler(2), tmp_path / 'student', teacher={'kind': 'oracle'})}"]
    cfg = compose_cfg("eval", [f"sampler={option}", *overrides], tmp_path)
    assert hasattr(instantiate(cfg.sampler), "sample")


@pytest.mark.parametrize("group", ["trainer", "logger", "callbacks"])
def test_every_trainer_logger_and_callbacks_option_instantiates(group, tmp_path):
    from hydra.core.hydra_config import HydraConfig

    for option in sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml")):
        if group == "trainer" and option in ("gpu", "ddp", "fsdp"):
            continue  # need a GPU; composed below
        cfg = compose_cfg("train", [f"{group}={option}"], tmp_path)
        HydraConfig.instance().set_config(cfg)
        node = cfg[group]
        built = [instantiate(c) for c in node.values()] if group == "callbacks" else instantiate(node)
        assert built is not None
    for option in ("gpu", "ddp", "fsdp"):
        cfg = compose_cfg("train", [f"trainer={option}"], tmp_path)
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"


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
