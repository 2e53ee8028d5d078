"""Build the frozen teacher an app runs with: the oracle of the data's source, or a saved teacher
checked against the data it is asked to run on. A saved teacher is a teacher export or the
fine-tuned denoiser of a student export (`students.load_denoiser`): distilled networks teach too."""

from __future__ import annotations

from pathlib import Path

from torch import nn

import students
from teachers.hf import HFDiffusionLM, HFMaskedLM
from teachers.oracle import OracleDenoiser
from teachers.saved import data_mismatch, load_teacher


def oracle_teacher(datamodule) -> nn.Module:
    """Exact conditionals of the data's source (data=markov or data=hmm)."""
    if not hasattr(datamodule, "source"):
        raise ValueError(
            f"teacher=oracle needs a source with exact conditionals, but data is {type(datamodule).__name__}; "
            "use data=markov or data=hmm, or teacher=saved teacher.path=DIR"
        )
    return OracleDenoiser(datamodule.source).eval()


def load_saved(path: str) -> nn.Module:
    """The denoiser at `path`, frozen: a teacher export (config.json), or a student export (sampler.json)
    whose own fine-tuned denoiser it returns (certainty, trajectory or composed students)."""
    if (Path(path) / "sampler.json").is_file():
        return students.load_denoiser(path)
    return load_teacher(path)


def saved_teacher(path: str, datamodule) -> nn.Module:
    """A teacher saved by `fewstep-train experiment=teacher_*` (or a student export's own denoiser), frozen;
    its data must match."""
    if path is None or path == "???":
        raise ValueError("teacher=saved needs teacher.path=DIR (the export_dir of a teacher training run, or of a "
                         "certainty/trajectory student, whose fine-tuned denoiser then teaches)")
    teacher = load_saved(path)
    expected = datamodule.spec()
    saved = teacher.data_spec
    kind_hint = f" with data={'paths' if saved.get('kind') == 'paths' else 'markov or hmm'}" \
        if "kind" in expected and saved.get("kind") != expected["kind"] else ""
    message = data_mismatch(saved, expected, f"the teacher at {path} was trained", "teacher", hint=kind_hint)
    if message:
        raise ValueError(message)
    return teacher


def _check_text_teacher(teacher: nn.Module, datamodule) -> nn.Module:
    if datamodule is None:  # fewstep-generate: prompts come as text, tokenized with the teacher's own tokenizer
        return teacher
    if teacher.vocab_size < datamodule.vocab_size:
        raise ValueError(f"the teacher's vocabulary ({teacher.vocab_size}) is smaller than its tokenizer's "
                         f"({datamodule.vocab_size}); data.tokenizer must be the teacher's own tokenizer")
    return teacher


def hf_masked_lm(path: str, datamodule=None, dtype: str = "float32", mask_id: int | None = None,
                 suppress_special: bool = True, trust_remote_code: bool = False) -> nn.Module:
    """A transformers AutoModelForMaskedLM (BERT, RoBERTa, ModernBERT, ...), frozen."""
    if path is None or path == "???":
        raise ValueError("teacher=hf_masked_lm needs teacher.path=DIR (a save_pretrained directory) or a hub id")
    return _check_text_teacher(HFMaskedLM(path, dtype, mask_id, suppress_special, trust_remote_code), datamodule)


def hf_diffusion_lm(path: str, datamodule=None, dtype: str = "bfloat16", mask_id: int | None = None,
                    suppress_special: bool = True, trust_remote_code: bool = False, shift_logits: bool = False) -> nn.Module:
    """A LLaDA/Dream-style diffusion LM (AutoModel), frozen."""
    if path is None or path == "???":
        raise ValueError("this teacher needs teacher.path=DIR or a hub id")
    model = HFDiffusionLM(path, dtype, mask_id, suppress_special, trust_remote_code, shift_logits)
    return _check_text_teacher(model, datamodule)
