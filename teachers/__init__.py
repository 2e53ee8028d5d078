"""Frozen denoisers, ground-truth sources and reference multi-step samplers (plain torch)."""

from teachers.samplers.ancestral import AncestralSampler
from teachers.samplers.blockwise import BlockwiseSampler
from teachers.samplers.confidence import ConfidenceSampler
from teachers.samplers.dilated import DilatedSampler
from teachers.samplers.eb import EBSampler
from teachers.samplers.threshold import ThresholdSampler
from teachers.sources.hmm import HiddenMarkovSource, SourceConfig
from teachers.oracle import OracleDenoiser
from teachers.sources.paths import PathsConfig, PathsTask
from teachers.samplers.base import MaskedSampler, SampleOutput, Sampler
from teachers.saved import load_teacher, save_teacher
from teachers.transformer import TransformerDenoiser

load = load_teacher

__all__ = [
    "AncestralSampler", "BlockwiseSampler", "ConfidenceSampler", "DilatedSampler", "EBSampler", "HiddenMarkovSource",
    "MaskedSampler", "OracleDenoiser", "PathsConfig", "PathsTask", "SampleOutput", "Sampler", "SourceConfig",
    "ThresholdSampler", "TransformerDenoiser", "load", "load_teacher", "save_teacher",
]
