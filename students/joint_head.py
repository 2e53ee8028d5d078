"""Joint-sampling head (ADJUST: "Enabling Approximate Joint Sampling in Diffusion LMs") and its sampler.

Revealing K tokens from one denoiser forward draws them independently, which splices tokens that
do not fit together. The head is a small trainable layer on top of the frozen denoiser that is
applied K times per full forward, revealing one token per pass, so each token is drawn knowing the
ones revealed before it in the same forward:

    pass m:  h_m = h_{m-1} + out(norm(Block(in(concat(norm(embed(x_{m-1})), norm(h_{m-1}))))))
             logits_m = lm_head(h_m);  reveal one masked position of x_{m-1} -> x_m

h_0 is the denoiser's last hidden state of the full forward on x_0; weights are shared across
passes. `out` is zero-initialised, so an untrained head returns the denoiser's own logits.
Only the Denoiser contract is used (`hidden_states`, `embed`, `lm_head`), so the head works on
the built-in transformer and on the oracle (hidden states = log-probabilities, embedding =
one-hot, LM head = identity, H = vocabulary size).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from teachers.samplers.ancestral import AncestralSampler
from teachers.samplers.blockwise import BlockwiseSampler
from teachers.samplers.confidence import SCORES, ConfidenceSampler
from teachers.samplers.dilated import DilatedSampler
from teachers.samplers.base import MaskedSampler, Sampler, draw_tokens, fill_after_end, reveal_counts, top_k_mask
from teachers.transformer import Block

RULES = (*SCORES, "random", "dilated", "left_to_right")
FIXED_ORDERS = ("dilated", "left_to_right")  # known before the forward: the chunk head can use them


def denoiser_sizes(denoiser: nn.Module, seq_len: int) -> tuple[int, int]:
    """(embed_size, hidden_size) of a denoiser, read off one all-mask canvas (works for any adapter)."""
    canvas = torch.full((1, seq_len), denoiser.mask_id, dtype=torch.long, device=_device(denoiser))
    with torch.no_grad():
        return int(denoiser.embed(canvas).shape[-1]), int(denoiser.hidden_states(canvas).shape[-1])


def _device(module: nn.Module) -> torch.device:
    return next(iter(module.parameters()), torch.empty(0)).device


def reveal_rule(reveal: str, temperature: float) -> MaskedSampler:
    """The reference sampler whose `scores` rank masked positions (higher is revealed first)."""
    if reveal not in RULES:
        raise ValueError(f"student.reveal must be one of {RULES}, got {reveal!r}")
    if reveal == "random":
        return AncestralSampler(temperature)
    if reveal == "dilated":
        return DilatedSampler(temperature)
    if reveal == "left_to_right":  # one block over the whole masked span: the first masked position first
        return BlockwiseSampler(temperature, block_size=2**62, order="left_to_right")
    return ConfidenceSampler(temperature, score=reveal)


def reveal_one(rule: MaskedSampler, logits: Tensor, tokens: Tensor, mask_id: int, active: Tensor,
               generator: torch.Generator | None, start_mask: Tensor | None = None) -> Tensor:
    """Reveal the top-ranked masked position of every active row (B,) with a token drawn from `logits`.

    Same draws and ranking as `rule.step` at one token per step, so with the teacher's logits this
    is the exact one-token-per-forward sampler, token for token. `start_mask` is the canvas's masked
    set before any step (a fixed order such as the dilated one ranks positions within it).
    """
    masked = tokens == mask_id
    draws = draw_tokens(logits, rule.temperature, generator)
    scores = rule.scores(logits, draws, masked, masked if start_mask is None else start_mask, generator)
    reveal = top_k_mask(scores, masked, active.long())
    return torch.where(reveal, draws, tokens)


def head_width(width: int | None, hidden_size: int, n_head: int) -> int:
    """A head's layer width (null: the teacher's hidden size), checked against its number of attention heads."""
    width = width or hidden_size
    if width % n_head:
        raise ValueError(f"the head's width {width} (null: the teacher's hidden size) must be divisible by "
                         f"student.n_head={n_head}; pick a divisor or set student.width")
    return width


def full_forward(denoiser: nn.Module, tokens: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The denoiser's last hidden states (B, L, H) on `tokens`: the full forward a head's passes start from."""
    if attention_mask is None:
        return denoiser.hidden_states(tokens)
    return denoiser.hidden_states(tokens, attention_mask=attention_mask)


def local_attention_bias(n_head: int, max_distance: int) -> Tensor:
    """Initial attention bias (n_head, 2 * max_distance + 1) per relative offset: every head starts local.

    Head 0 peaks on the left neighbour, head 1 on the right one, the others decay symmetrically with
    slopes 1, 1/4, 1/16, ... A zero bias spreads attention evenly over the sequence, and Adam moves a
    bias by about lr per step, so at lr 1e-3 a head needs on the order of a thousand steps to become
    local; the head's job is mostly to pass a newly revealed token to its neighbours.
    """
    offsets = torch.arange(-max_distance, max_distance + 1, dtype=torch.float32)
    rows = []
    for h in range(n_head):
        if h < 2 and n_head > 1:
            rows.append(-2.0 * (offsets - (1 if h else -1)).abs())
        else:
            rows.append(-(0.25 ** max(h - 2, 0)) * offsets.abs())
    return torch.stack(rows)


class JointHead(nn.Module):
    """One head pass: embeddings of the current tokens (B, L, E) and previous hidden (B, L, H) -> new hidden (B, L, H).

    Args:
        width: W, the width of the new layer: in is Linear(E + H -> W), out Linear(W -> H). The
            paper's head has W = H; a wider layer helps where H is small (the oracle: H = V).
        n_layer: new transformer layers (the paper: 1). Attention values are linear in the inputs,
            so one layer cannot tell a neighbour revealed in the previous pass (its hidden state is
            still a spread distribution) from one revealed before; a second layer can.
        max_distance: attention gets a learned bias per head and relative offset, clipped at this
            distance; the head needs positions to know which tokens are neighbours. It starts local
            (`local_attention_bias`).
        zero_init: zero the output projection, so the head starts as the identity on hidden states.
    """

    def __init__(self, embed_size: int, hidden_size: int, width: int | None = None, n_layer: int = 1, n_head: int = 4,
                 mlp_ratio: int = 4, max_distance: int = 8, zero_init: bool = True) -> None:
        super().__init__()
        width = head_width(width, hidden_size, n_head)
        self.max_distance = max_distance
        self.norm_embed = nn.LayerNorm(embed_size)
        self.norm_hidden = nn.LayerNorm(hidden_size)
        self.proj_in = nn.Linear(embed_size + hidden_size, width)
        self.rel_bias = nn.Parameter(local_attention_bias(n_head, max_distance))  # shared by the layers
        self.blocks = nn.ModuleList(Block(width, n_head, mlp_ratio, dropout=0.0) for _ in range(n_layer))
        self.norm_out = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, hidden_size)
        if zero_init:
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def attention_bias(self, length: int) -> Tensor:
        idx = torch.arange(length, device=self.rel_bias.device)
        offsets = (idx[None, :] - idx[:, None]).clamp(-self.max_distance, self.max_distance) + self.max_distance
        return self.rel_bias[:, offsets].unsqueeze(0)  # (1, nh, L, L)

    def forward(self, embedded: Tensor, hidden: Tensor) -> Tensor:
        x = self.proj_in(torch.cat([self.norm_embed(embedded), self.norm_hidden(hidden)], dim=-1))  # (B, L, W)
        bias = self.attention_bias(x.shape[1])
        for block in self.blocks:
            x = block(x, bias)
        return hidden + self.proj_out(self.norm_out(x))  # residual add onto the previous hidden state


class JointHeadSampler(Sampler, nn.Module):
    """One full denoiser forward, then up to K head passes, each revealing one token.

    `steps` counts full forwards (NFE); head passes are reported separately (`head_passes`).

    Args:
        tokens_per_forward: K, head passes (tokens revealed) per full forward; the default step
            count is ceil(masked / K).
        hidden_size, embed_size: the denoiser's sizes; null until `resolve(denoiser, seq_len)` reads
            them off the denoiser (the objective does this before training; exports record them).
        width, n_layer: the head layers' width (null: hidden_size) and number (1), as in the paper by
            default; see `JointHead`.
        reveal: which masked position each pass reveals: "neg_entropy" (lowest entropy, default),
            "max_prob", "margin", "sampled", "random", or "dilated" (the fixed dilated order: the K
            passes of a forward reveal the positions the dilated sampler reveals together in one step,
            spread apart, and the head draws them jointly instead of independently), or "left_to_right"
            (the first masked position first: a conditional answer written in order).
        temperature: tokens are drawn from softmax(logits / temperature).
        eos_fill: a committed end token turns every later answer position into the end token
            (applied after each full forward's head passes).
    """

    name = "joint_head"
    counts_head_passes = True

    def __init__(self, tokens_per_forward: int = 4, hidden_size: int | None = None, embed_size: int | None = None,
                 width: int | None = None, n_layer: int = 1, n_head: int = 4, mlp_ratio: int = 4, max_distance: int = 8,
                 reveal: str = "neg_entropy", temperature: float = 1.0, zero_init: bool = True,
                 eos_fill: bool = False) -> None:
        super().__init__()
        if int(tokens_per_forward) < 1:
            raise ValueError(f"student.tokens_per_forward must be >= 1, got {tokens_per_forward}")
        self.tokens_per_forward = int(tokens_per_forward)
        self.width, self.n_layer, self.n_head, self.mlp_ratio = width, n_layer, n_head, mlp_ratio
        self.max_distance, self.zero_init = max_distance, zero_init
        self.reveal = reveal
        self.rule = reveal_rule(reveal, temperature)
        self.eos_fill = bool(eos_fill)
        self.hidden_size = self.embed_size = None
        self.head: JointHead | None = None
        if hidden_size is not None:
            self.build(embed_size or hidden_size, hidden_size)

    @property
    def temperature(self) -> float:
        """Tokens are drawn from softmax(logits / temperature); setting it changes the reveal rule's draws too."""
        return self.rule.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.rule.temperature = value

    def build(self, embed_size: int, hidden_size: int) -> None:
        self.embed_size, self.hidden_size = int(embed_size), int(hidden_size)
        self.head = JointHead(self.embed_size, self.hidden_size, self.width, self.n_layer, self.n_head, self.mlp_ratio,
                              self.max_distance, self.zero_init)

    def resolve(self, denoiser: nn.Module, seq_len: int) -> JointHeadSampler:
        """Build the head for `denoiser`'s sizes (or check that the built one fits it)."""
        embed_size, hidden_size = denoiser_sizes(denoiser, seq_len)
        if self.head is None:
            self.build(embed_size, hidden_size)
        elif (self.embed_size, self.hidden_size) != (embed_size, hidden_size):
            raise ValueError(f"this head was built for embed/hidden sizes {(self.embed_size, self.hidden_size)}, "
                             f"but the teacher has {(embed_size, hidden_size)}; use the teacher it was distilled from")
        return self

    @property
    def config(self) -> dict:
        return {"tokens_per_forward": self.tokens_per_forward, "hidden_size": self.hidden_size,
                "embed_size": self.embed_size, "width": self.width, "n_layer": self.n_layer, "n_head": self.n_head, "mlp_ratio": self.mlp_ratio,
                "max_distance": self.max_distance, "reveal": self.reveal, "temperature": self.temperature,
                "zero_init": self.zero_init, "eos_fill": self.eos_fill}

    def default_steps(self, generated: int) -> list[int]:
        return [math.ceil(generated / self.tokens_per_forward)]

    def check_steps(self, steps: int) -> None:
        """Any number of full forwards works (passes per forward = masked / steps, spread evenly)."""
        if steps < 1:
            raise ValueError(f"steps (full forwards) must be >= 1, got {steps}")

    def head_pass(self, denoiser: nn.Module, tokens: Tensor, hidden: Tensor,
                  columns: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """One head pass on the current tokens: (new hidden (B, L, H), logits (B, L', V)) with the LM head
        applied to `columns` only (training reads the generated span: a full-vocabulary row costs 4 V bytes)."""
        if self.head is None:
            raise ValueError("the head has no parameters yet: call resolve(teacher, seq_len) or load a trained export")
        hidden = self.head(denoiser.embed(tokens), hidden)
        return hidden, denoiser.lm_head(hidden[:, columns])

    def plan(self, start_mask: Tensor, steps: int | None) -> int:
        """`steps` full forwards, by default ceil(masked / K)."""
        most = int(start_mask.sum(-1).max())
        return super().plan(start_mask, steps if steps is not None else self.default_steps(most)[0])

    def advance(self, denoiser: nn.Module, tokens: Tensor, masked: Tensor, i: int, steps: int, start_mask: Tensor,
                attention_mask: Tensor | None, generator: torch.Generator | None) -> list[Tensor]:
        """One full forward, then this step's share of masked positions, one per head pass: the state after each pass."""
        counts = reveal_counts(start_mask.sum(-1), i, steps)  # (B,) tokens this forward reveals per row
        hidden = full_forward(denoiser, tokens, attention_mask)
        eos_id = self.fill_id(denoiser)
        states = []
        for m in range(int(counts.max())):
            hidden, logits = self.head_pass(denoiser, tokens, hidden)
            tokens = reveal_one(self.rule, logits, tokens, denoiser.mask_id, m < counts, generator, start_mask)
            if eos_id is not None:  # after every pass, so later passes see the filled tail
                tokens = fill_after_end(tokens, start_mask, eos_id)
            states.append(tokens)
        return states  # never empty: steps <= masked positions, so the fullest row reveals >= 1 per step

    def describe(self, generated: int) -> str:
        """Markdown: K, full forwards and head passes for `generated` tokens, head size."""
        params = sum(p.numel() for p in self.parameters())
        return "\n".join([
            "| tokens per forward | full forwards | head passes | head parameters | reveal |",
            "|---|---|---|---|---|",
            f"| {self.tokens_per_forward} | {self.default_steps(generated)[0]} | {generated} | {params} | {self.reveal} |",
        ])
