"""A small bidirectional transformer denoiser (x0-prediction) for the embedded benchmark.

Pre-norm encoder blocks with PyTorch SDPA attention. Positions enter as a learned relative bias
per head on (j - i), which lets the model find the nearest revealed neighbours, and optionally as
learned absolute embeddings (useful when the layout matters, as in `paths`: prompt then answer).
The token embedding has one extra row for the mask token, `mask_id = vocab_size`; the LM head
predicts only real tokens.

Left-padded batches pass `attention_mask` (B, L) (True: a real token): padding is dropped from the
keys, so with the relative bias a row's outputs do not depend on how much padding precedes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)
        q, k, v = (t.view(B, L, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, L, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_head, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        x = x + self.attn(self.ln1(x), bias)
        return x + self.mlp(self.ln2(x))


class TransformerDenoiser(nn.Module):
    """Bidirectional encoder: tokens (B, L) with `mask_id` at masked positions -> logits (B, L, V)."""

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        n_layer: int = 3,
        n_head: int = 4,
        d_model: int = 128,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        relative_bias: bool = True,
        absolute_positions: bool = False,
        eos_id: int | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} must be divisible by n_head={n_head}")
        self.config = dict(
            vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=n_head, d_model=d_model,
            mlp_ratio=mlp_ratio, dropout=dropout, relative_bias=relative_bias, absolute_positions=absolute_positions,
        )  # primitive, so it round-trips through JSON and Lightning's hparams
        if eos_id is not None:  # only when configured, so existing saved configs stay as they are
            self.config["eos_id"] = eos_id
        self.vocab_size = vocab_size
        self.eos_id = eos_id  # the end-of-text token, if the vocabulary has one
        self.mask_id = vocab_size
        self.seq_len = seq_len
        self.tok_emb = nn.Embedding(vocab_size + 1, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model) if absolute_positions else None
        self.rel_bias = nn.Parameter(torch.zeros(n_head, 2 * seq_len - 1)) if relative_bias else None
        self.blocks = nn.ModuleList(Block(d_model, n_head, mlp_ratio, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _attention_bias(self, length: int, attention_mask: Tensor | None = None) -> Tensor | None:
        """Additive attention bias (1 or B, nh or 1, L, L): relative positions, -inf on padded keys."""
        bias = None
        if self.rel_bias is not None:
            idx = torch.arange(length, device=self.rel_bias.device)
            offsets = idx[None, :] - idx[:, None] + self.seq_len - 1  # (L, L): j - i, shifted to >= 0
            bias = self.rel_bias[:, offsets].unsqueeze(0)  # (1, nh, L, L)
        if attention_mask is not None:
            keys = torch.zeros(attention_mask.shape, dtype=self.head.weight.dtype, device=attention_mask.device)
            keys = keys.masked_fill(~attention_mask.bool(), float("-inf"))[:, None, None, :]  # (B, 1, 1, L)
            bias = keys if bias is None else bias + keys  # (B, nh, L, L)
        return bias

    def embed(self, tokens: Tensor) -> Tensor:
        """Token (and absolute position) embeddings (B, L, D)."""
        x = self.tok_emb(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(tokens.shape[1], device=tokens.device))
        return x

    def hidden_states(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Last layer's normalised hidden states (B, L, D), the input of `lm_head`; `attention_mask` (B, L)
        is False at left padding (None: attend everywhere)."""
        if tokens.shape[1] > self.seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds the model's seq_len={self.seq_len}")
        if attention_mask is not None and attention_mask.shape != tokens.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, tokens {tuple(tokens.shape)}; "
                             "give one bool per token (True: a real token, False: padding)")
        x = self.embed(tokens)
        bias = self._attention_bias(tokens.shape[1], attention_mask)
        for block in self.blocks:
            x = block(x, bias)
        return self.ln_f(x)

    def lm_head(self, hidden: Tensor) -> Tensor:
        return self.head(hidden)

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.lm_head(self.hidden_states(tokens, attention_mask))
