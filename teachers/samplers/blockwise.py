"""Semi-autoregressive block decoding (as in LLaDA and dParallel): the masked span is cut into
blocks of `block_size` positions, finished left to right; inside a block positions are revealed
left to right or by confidence. With schedule="even" steps are shared evenly over all masked
positions, so with `steps` a multiple of the number of blocks no step straddles two blocks; with
schedule="llada" each block gets steps / blocks steps, as LLaDA's generate() (order="confidence",
temperature 0: its low-confidence remasking, token for token).
"""

from __future__ import annotations

import torch
from torch import Tensor

from teachers.samplers.base import MaskedSampler
from teachers.samplers.selection import span_blocks

ORDERS = ("left_to_right", "confidence")


class BlockwiseSampler(MaskedSampler):
    name = "blockwise"

    def __init__(self, temperature: float = 1.0, block_size: int = 32, order: str = "left_to_right",
                 schedule: str = "even", eos_fill: bool = False, float64_confidence: bool = False) -> None:
        super().__init__(temperature, schedule, eos_fill)
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.block_size = block_size
        self.order = order
        self.float64_confidence = bool(float64_confidence)  # as Fast-dLLM / dParallel: no float32 near-ties

    def scores(self, logits, draws, masked, start_mask, generator) -> Tensor:
        dtype = torch.float64 if self.float64_confidence else torch.float32
        rank = start_mask.long().cumsum(-1) - 1  # index of each position within the masked span
        block = span_blocks(start_mask, self.block_size).to(dtype)  # only masked positions are ranked
        if self.order == "left_to_right":
            inner = -rank.to(dtype) / masked.shape[1]
        else:
            inner = torch.softmax(logits.to(dtype), -1).gather(-1, draws[..., None]).squeeze(-1)
        return inner - 2.0 * block  # earlier blocks always win; inner lies in (-1, 1]
