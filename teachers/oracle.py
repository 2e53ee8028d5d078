"""The oracle denoiser: exact conditionals of a ground-truth source behind the Denoiser contract.

On the oracle a sampler's loss of quality at few steps is pure sampler error (no network error).
Read as a network, its "hidden states" are the log-probabilities, its embedding is one-hot and its
LM head is the identity, so heads built on the contract apply with H = vocab size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from teachers.sources.hmm import HiddenMarkovSource


class OracleDenoiser(nn.Module):
    """logits (B, L, V) = log p(x_i | revealed tokens) under the true source, for every position."""

    def __init__(self, source: HiddenMarkovSource) -> None:
        super().__init__()
        self.source = source
        self.vocab_size = source.vocab_size
        self.mask_id = source.vocab_size
        self.seq_len = source.seq_len
        self.eos_id = None  # the embedded sources have no end token

    def embed(self, tokens: Tensor) -> Tensor:
        return F.one_hot(tokens, self.vocab_size + 1)[..., : self.vocab_size].to(torch.float32)

    def hidden_states(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """`attention_mask` is accepted for the Denoiser contract and ignored: the source has no padding."""
        revealed = tokens != self.mask_id
        probs = self.source.conditionals(tokens.cpu(), revealed.cpu())
        return probs.clamp_min(1e-30).log().to(device=tokens.device, dtype=torch.float32)

    def lm_head(self, hidden: Tensor) -> Tensor:
        return hidden

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.lm_head(self.hidden_states(tokens))
