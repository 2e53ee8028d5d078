"""Chunk head: the joint-sampling head made cheap in seconds, for a fixed reveal order.

The ADJUST head (students/joint_head.py) re-runs a transformer layer over the whole sequence for
every token it reveals, so its L passes cost, on a small teacher, about as much as the teacher
forwards they save. With a fixed order (dilated, or left to right) the K positions a full forward reveals
are known before the forward, and only they need work. The chunk head is a small causal decoder
over those K positions, in reveal order:

    query row m:  q_m = query_in(norm(h[p_m]))                   h: the teacher's hidden states of the forward
    token row i:  t_i = token_in(concat(norm(h[p_i]), norm(embed(x_{p_i}))))   for the tokens drawn before m
    n_layer x:    q_m += Attn(q_m -> [t_0 .. t_{m-1}, q_m]) with a learned bias on p_i - p_m;  q_m += MLP(q_m)
    logits_m = lm_head(h[p_m] + proj_out(norm(q_m)))             proj_out starts at 0: the untrained head is the teacher

Token rows are not updated across layers, so each layer's keys and values of a drawn token are
computed once and cached: pass m costs one query row and one token row, not a pass over L.
Training runs every pass of a chunk at once with a causal mask (`forward`); sampling runs them
one by one (`start` / `query` / `add_token`), and the two agree (tests/test_chunk_head.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from students.joint_head import FIXED_ORDERS, JointHeadSampler, full_forward, head_width
from teachers.samplers.base import draw_tokens, fill_after_end, reveal_counts


def distance_bias(n_head: int, max_distance: int) -> Tensor:
    """Initial bias (n_head, 2 * max_distance + 1) per relative offset: heads decay with distance at
    slopes 1/2, 1/8, 1/32, ... (the last head flat), so nearer drawn tokens start weighing more."""
    offsets = torch.arange(-max_distance, max_distance + 1, dtype=torch.float32).abs()
    return torch.stack([-(0.25 ** h) / 2 * offsets if h < n_head - 1 else 0 * offsets for h in range(n_head)])


def embeds_positions(denoiser: nn.Module, tokens: Tensor) -> bool:
    """Whether the denoiser's `embed` adds absolute positions (one token at two positions embeds differently)."""
    probe = tokens[:1, :1].expand(1, 2)
    embedded = denoiser.embed(probe)
    return not torch.equal(embedded[0, 0], embedded[0, 1])


def embed_at(denoiser: nn.Module, tokens: Tensor, rows: Tensor, at: Tensor, positional: bool) -> Tensor:
    """(B, E) the embedding of tokens[rows, at] as the whole canvas's embedding has it; only a model whose
    embedding carries positions pays for embedding the whole canvas."""
    if positional:
        return denoiser.embed(tokens)[rows, at]
    return denoiser.embed(tokens[rows, at][:, None])[:, 0]


class ChunkLayer(nn.Module):
    """Query rows attend to the cached token rows before them and to themselves, then an MLP."""

    def __init__(self, width: int, n_head: int, mlp_ratio: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.norm_query, self.norm_token = nn.LayerNorm(width), nn.LayerNorm(width)
        self.query_qkv = nn.Linear(width, 3 * width)
        self.token_kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def heads(self, x: Tensor) -> Tensor:  # (B, R, W) -> (B, nh, R, hs)
        B, R, W = x.shape
        return x.view(B, R, self.n_head, W // self.n_head).transpose(1, 2)

    def token_keys(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, nh, R, hs) of token rows (B, R, W)."""
        k, v = self.token_kv(self.norm_token(tokens)).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, query: Tensor, token_k: Tensor, token_v: Tensor, bias: Tensor) -> Tensor:
        """query (B, Q, W); token keys/values (B, nh, R, hs); bias (B, nh, Q, R + Q) with -inf where not seen."""
        q, k, v = self.query_qkv(self.norm_query(query)).chunk(3, dim=-1)
        q, k, v = self.heads(q), self.heads(k), self.heads(v)
        # plain attention: with one or a few query rows it is several times faster on CPU than SDPA's kernel
        scores = q @ torch.cat([token_k, k], 2).transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        y = scores.softmax(-1) @ torch.cat([token_v, v], 2)
        query = query + self.proj(y.transpose(1, 2).reshape(query.shape))
        return query + self.mlp(self.norm_mlp(query))


class ChunkHead(nn.Module):
    """Causal decoder over a forward's K reveal positions (see the module docstring).

    Args:
        embed_size, hidden_size: the denoiser's token-embedding and hidden widths (E, H).
        width, n_layer, n_head, mlp_ratio: the decoder's size (width null: H).
        max_distance: the attention bias per relative offset p_i - p_m is clipped at this distance.
        zero_init: zero the output projection, so the untrained head returns the teacher's logits.
    """

    def __init__(self, embed_size: int, hidden_size: int, width: int | None = None, n_layer: int = 2, n_head: int = 4,
                 mlp_ratio: int = 4, max_distance: int = 32, zero_init: bool = True) -> None:
        super().__init__()
        width = head_width(width, hidden_size, n_head)
        self.max_distance = max_distance
        self.norm_hidden, self.norm_embed = nn.LayerNorm(hidden_size), nn.LayerNorm(embed_size)
        self.query_in = nn.Linear(hidden_size, width)
        self.token_in = nn.Linear(hidden_size + embed_size, width)
        self.rel_bias = nn.Parameter(distance_bias(n_head, max_distance))
        self.layers = nn.ModuleList(ChunkLayer(width, n_head, mlp_ratio) for _ in range(n_layer))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, hidden_size)
        if zero_init:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def offset_bias(self, query_pos: Tensor, key_pos: Tensor) -> Tensor:
        """(B, nh, Q, R): the learned bias on key position - query position (B, Q) x (B, R)."""
        offsets = (key_pos[:, None, :] - query_pos[:, :, None]).clamp(-self.max_distance, self.max_distance)
        return self.rel_bias[:, offsets + self.max_distance].permute(1, 0, 2, 3)

    def token_rows(self, hidden: Tensor, embedded: Tensor) -> Tensor:
        return self.token_in(torch.cat([self.norm_hidden(hidden), self.norm_embed(embedded)], dim=-1))

    def output(self, hidden: Tensor, query: Tensor) -> Tensor:
        return hidden + self.proj_out(self.norm_out(query))

    def forward(self, hidden: Tensor, embedded: Tensor, positions: Tensor) -> Tensor:
        """Every pass of a chunk at once (training). hidden (B, K, H) at the chunk's positions (B, K) in
        reveal order, embedded (B, K, E) the tokens drawn there. Row m sees rows < m's tokens. -> (B, K, H)."""
        K = positions.shape[1]
        tokens = self.token_rows(hidden, embedded)
        query = self.query_in(self.norm_hidden(hidden))
        before = torch.ones(K, K, dtype=torch.bool, device=hidden.device).tril(-1)  # token i is seen by query m > i
        seen = torch.cat([before, torch.eye(K, dtype=torch.bool, device=hidden.device)], dim=1)  # and itself
        bias = torch.cat([self.offset_bias(positions, positions)] * 2, dim=-1).masked_fill(~seen, float("-inf"))
        for layer in self.layers:
            query = layer(query, *layer.token_keys(tokens), bias)
        return self.output(hidden, query)

    # --- sampling: one pass at a time, token rows cached ------------------------------------------
    def start(self, hidden: Tensor, positions: Tensor) -> dict:
        """A chunk's cache: hidden (B, K, H) at the positions (B, K) in reveal order; no token drawn yet."""
        empty = hidden.new_zeros(hidden.shape[0], self.layers[0].n_head, 0, self.query_in.out_features // self.layers[0].n_head)
        return {"hidden": hidden, "query": self.query_in(self.norm_hidden(hidden)),
                "bias": self.offset_bias(positions, positions),  # (B, nh, K, K): row m reads keys 0..m
                "keys": [(empty, empty) for _ in self.layers]}

    def query(self, cache: dict, m: int) -> Tensor:
        """The head's hidden state (B, H) for the chunk's position m, given the tokens drawn at 0..m-1."""
        bias = cache["bias"][:, :, m:m + 1, : m + 1]  # keys: tokens 0..m-1, then itself
        query = cache["query"][:, m:m + 1]
        for layer, (k, v) in zip(self.layers, cache["keys"]):
            query = layer(query, k, v, bias)
        return self.output(cache["hidden"][:, m], query[:, 0])

    def add_token(self, cache: dict, m: int, embedded: Tensor) -> None:
        """Cache the keys and values of the token (B, E) drawn at the chunk's position m (contiguous
        concatenation: attention over a slice of a preallocated buffer is slower on CPU)."""
        row = self.token_rows(cache["hidden"][:, m:m + 1], embedded[:, None])
        cache["keys"] = [tuple(torch.cat([old, new], 2) for old, new in zip(kv, layer.token_keys(row)))
                         for layer, kv in zip(self.layers, cache["keys"])]


class ChunkHeadSampler(JointHeadSampler):
    """One full denoiser forward, then one cheap head pass per token the forward reveals, in a fixed order.

    Same interface, training trajectory and step counts as JointHeadSampler with reveal="dilated" (the
    default, for unconditional sources) or "left_to_right" (a conditional answer written in order);
    the head is a `ChunkHead`. `steps` counts full forwards; head passes are reported separately.
    """

    name = "chunk_head"

    def __init__(self, tokens_per_forward: int = 4, hidden_size: int | None = None, embed_size: int | None = None,
                 width: int | None = 64, n_layer: int = 2, n_head: int = 4, mlp_ratio: int = 4, max_distance: int = 32,
                 reveal: str = "dilated", temperature: float = 1.0, zero_init: bool = True, eos_fill: bool = False) -> None:
        if reveal not in FIXED_ORDERS:
            raise ValueError(f"the chunk head needs a reveal order known before the forward: student.reveal must be "
                             f"one of {FIXED_ORDERS}, got {reveal!r} (for an order that depends on the logits use "
                             "student=joint_head)")
        super().__init__(tokens_per_forward, hidden_size, embed_size, width, n_layer, n_head, mlp_ratio, max_distance,
                         reveal, temperature, zero_init, eos_fill)

    def build(self, embed_size: int, hidden_size: int) -> None:
        self.embed_size, self.hidden_size = int(embed_size), int(hidden_size)
        self.head = ChunkHead(self.embed_size, self.hidden_size, self.width, self.n_layer, self.n_head, self.mlp_ratio,
                              self.max_distance, self.zero_init)

    def resolve(self, denoiser: nn.Module, seq_len: int) -> ChunkHeadSampler:
        if getattr(denoiser, "shift_logits", False):
            raise ValueError("the chunk head applies the LM head to single positions, which a model that shifts its "
                             "logits (Dream: column i scores from hidden i - 1) does not allow; use student=joint_head")
        return super().resolve(denoiser, seq_len)

    def chunk_positions(self, masked: Tensor, start_mask: Tensor, count: int) -> Tensor:
        """(B, count) the next `count` masked positions in the fixed order, first revealed first."""
        scores = self.rule.scores(None, None, masked, start_mask, None).masked_fill(~masked, -math.inf)
        return scores.topk(count, dim=-1).indices

    def advance(self, denoiser: nn.Module, tokens: Tensor, masked: Tensor, i: int, steps: int, start_mask: Tensor,
                attention_mask: Tensor | None, generator: torch.Generator | None) -> list[Tensor]:
        """One full forward, then this step's share of masked positions, one per head pass: the state after each pass."""
        if self.head is None:
            raise ValueError("the head has no parameters yet: call resolve(teacher, seq_len) or load a trained export")
        counts = reveal_counts(start_mask.sum(-1), i, steps)
        hidden = full_forward(denoiser, tokens, attention_mask)
        positions = self.chunk_positions(masked, start_mask, int(counts.max()))
        cache = self.head.start(hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1])), positions)
        eos_id = self.fill_id(denoiser)
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        positional = embeds_positions(denoiser, tokens)
        states = []
        for m in range(positions.shape[1]):
            logits = denoiser.lm_head(self.head.query(cache, m)[:, None])[:, 0]  # (B, V)
            draws = draw_tokens(logits[:, None], self.temperature, generator)[:, 0]
            at = positions[:, m]
            tokens = tokens.clone()
            tokens[rows, at] = torch.where(m < counts, draws, tokens[rows, at])
            if eos_id is not None:
                tokens = fill_after_end(tokens, start_mask, eos_id)
            self.head.add_token(cache, m, embed_at(denoiser, tokens, rows, at, positional))
            states.append(tokens)
        return states
