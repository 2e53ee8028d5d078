"""Frozen denoisers, ground-truth sources and reference multi-step samplers (plain torch)."""

from teachers.ancestral import AncestralSampler
from teachers.blockwise import BlockwiseSampler
from teachers.confidence import ConfidenceSampler
from teachers.dilated import DilatedSampler
from teachers.hmm import HiddenMarkovSource, SourceConfig
from teachers.oracle import OracleDenoiser
from teachers.paths import PathsConfig, PathsTask
from teachers.sampling import MaskedSampler, SampleOutput
from teachers.saved import load_teacher, save_teacher
from teachers.transformer import TransformerDenoiser

load = load_teacher

__all__ = [
    "AncestralSampler", "BlockwiseSampler", "ConfidenceSampler", "DilatedSampler", "HiddenMarkovSource",
    "MaskedSampler", "OracleDenoiser", "PathsConfig", "PathsTask", "SampleOutput", "SourceConfig",
    "TransformerDenoiser", "load", "load_teacher", "save_teacher",
]
