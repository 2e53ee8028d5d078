"""The one sampling loop: reference schedules (LLaDA, Dream) against plain transcriptions of their
decoders, end-token filling on every sampler, and the attention mask reaching the denoiser."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from students import EntropyThresholdSampler, JointHeadSampler, LearnedSampler, RuleSampler
from teachers import (AncestralSampler, BlockwiseSampler, ConfidenceSampler, DilatedSampler, HiddenMarkovSource,
                      OracleDenoiser, SourceConfig, TransformerDenoiser)
from teachers.samplers.base import reveal_schedule


# --- reference schedules: the step counts ---------------------------------------------------------
def llada_reference(gen_length: int, block_length: int, steps: int) -> list[int]:
    """LLaDA's generate(): steps // num_blocks per block; get_num_transfer_tokens inside each block
    (mask count // steps each, the first mask count % steps steps one more). A short last block
    (gen_length not a multiple of block_length) holds the rest."""
    num_blocks = math.ceil(gen_length / block_length)
    per_block = steps // num_blocks
    counts = []
    for b in range(num_blocks):
        mask_num = min(block_length, gen_length - b * block_length)
        base, remainder = mask_num // per_block, mask_num % per_block
        counts += [base + 1 if i < remainder else base for i in range(per_block)]
    return counts


def dream_reference(gen_length: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Dream's diffusion_generate: timesteps = linspace(1, eps, steps + 1); at step i with t, s the
    number to transfer is int(num_mask_token * (1 - s / t)), the last step all that is left."""
    timesteps = torch.linspace(1, eps, steps + 1)
    left, counts = torch.tensor(float(gen_length)), []
    for i in range(steps):
        t, s = timesteps[i], timesteps[i + 1]
        n = int(left * (1 - s / t)) if i < steps - 1 else int(left)
        counts.append(n)
        left = left - n
    return counts


CASES = [  # (length, block, steps): even, remainders, a short last block, one block
    (32, 32, 8), (32, 8, 8), (30, 8, 8), (10, 4, 6), (13, 5, 9), (64, 16, 12), (7, 7, 3), (12, 5, 3), (5, 2, 3),
]


@pytest.mark.parametrize("length, block, steps", CASES)
def test_llada_schedule_equals_the_reference_counts(length, block, steps):
    got = reveal_schedule("llada", torch.tensor([length, length]), steps, block)
    assert got.tolist() == [llada_reference(length, block, steps)] * 2
    assert got.sum(1).tolist() == [length, length]


@pytest.mark.parametrize("length, block, steps", CASES)
def test_dream_schedule_equals_the_reference_counts(length, block, steps):
    got = reveal_schedule("dream", torch.tensor([length]), steps)
    assert got[0].tolist() == dream_reference(length, steps) and int(got.sum()) == length


def test_llada_schedule_without_blocks_gives_the_remainder_to_the_first_steps():
    got = reveal_schedule("llada", torch.tensor([10, 7]), 4)  # one block each: 10 = 3+3+2+2, 7 = 2+2+2+1
    assert got.tolist() == [[3, 3, 2, 2], [2, 2, 2, 1]]
    assert reveal_schedule("even", torch.tensor([10]), 4).tolist() == [[2, 3, 2, 3]]  # the even spread differs


@pytest.mark.parametrize("schedule", ["llada", "dream"])
def test_sampler_reveals_exactly_the_schedules_counts(schedule):
    oracle = OracleDenoiser(HiddenMarkovSource.random(SourceConfig(seed=0, hidden_states=4, vocab_size=4, seq_len=14)))
    sampler = BlockwiseSampler(block_size=4, order="confidence", schedule=schedule)  # 4 blocks (4, 4, 4, 2)
    out = sampler.sample(oracle, 8, batch_size=3, seq_len=14, generator=torch.Generator().manual_seed(0), return_trace=True)
    masked = [14] + [int((t[0] == oracle.mask_id).sum()) for t in out.trace]
    revealed = [a - b for a, b in zip(masked, masked[1:])]
    expected = llada_reference(14, 4, 8) if schedule == "llada" else dream_reference(14, 8)
    assert revealed == expected and out.nfe == 8


def test_llada_steps_not_a_multiple_of_the_blocks_is_a_clear_error():
    net = TransformerDenoiser(6, 12, n_layer=1, n_head=2, d_model=16).eval()
    with pytest.raises(ValueError, match="not a multiple of the 3 blocks"):  # 12 / 5 -> 3 blocks
        BlockwiseSampler(block_size=5, schedule="llada").sample(net, 4, batch_size=2, seq_len=12)
    with pytest.raises(ValueError, match="schedule must be one of"):
        ConfidenceSampler(schedule="linear")
    with pytest.raises(ValueError, match="needs counts='even'"):
        AncestralSampler(counts="binomial", schedule="llada")


# --- reference decoders, token for token ----------------------------------------------------------
def llada_generate(model, prompt, steps, gen_length, block_length, mask_id):
    """LLaDA's generate() (temperature 0, cfg 0, low_confidence remasking) transcribed; the last block may be short."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt.clone()
    num_blocks = math.ceil(gen_length / block_length)
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        start = prompt.shape[1] + num_block * block_length
        end = min(start + block_length, x.shape[1])
        block_mask_index = x[:, start:end] == mask_id
        mask_num = block_mask_index.sum(dim=1, keepdim=True)
        num_transfer_tokens = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + mask_num // steps
        for j in range(mask_num.size(0)):
            num_transfer_tokens[j, : (mask_num % steps)[j]] += 1
        for i in range(steps):
            mask_index = x == mask_id
            logits = model(x)
            x0 = torch.argmax(logits, dim=-1)
            p = F.softmax(logits, dim=-1)
            x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            x0_p[:, end:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -math.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


def dream_generate(model, prompt, steps, gen_length, mask_id, alg, eps=1e-3):
    """Dream's diffusion_generate sampling loop (temperature 0, alg_temp 0) transcribed. The logit
    shift of Dream's network (position i predicts i + 1) is the denoiser adapter's job, not the sampler's."""
    x = torch.cat([prompt, torch.full((prompt.shape[0], gen_length), mask_id, dtype=torch.long)], dim=1)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_id
        logits = model(x)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        probs = torch.softmax(mask_logits, dim=-1)
        confidence, x0 = probs.max(dim=-1)
        if alg == "topk_margin":
            sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
            confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
        if alg == "entropy":
            confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        num_mask_token = mask_index.sum() / mask_index.shape[0]
        number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
        full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
        full_confidence[mask_index] = confidence
        if number_transfer_tokens > 0:
            _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
            x_ = torch.zeros_like(x) + mask_id
            x_[mask_index] = x0.clone()
            row_indices = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
            x[row_indices, transfer_index] = x_[row_indices, transfer_index]
    return x


@pytest.fixture(scope="module")
def tiny_model() -> TransformerDenoiser:
    """Random weights of a larger scale than the training init, so confidences rarely come near a tie."""
    torch.manual_seed(0)
    model = TransformerDenoiser(vocab_size=24, seq_len=20, n_layer=1, n_head=2, d_model=32, absolute_positions=True)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def canvas(model, prompt_len: int, gen_length: int, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    prompt = torch.randint(0, model.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    return prompt, torch.cat([prompt, torch.full((batch, gen_length), model.mask_id)], dim=1)


@pytest.mark.parametrize("gen_length, block, steps", [(12, 4, 6), (12, 4, 12), (10, 4, 6), (14, 5, 9), (12, 12, 5)])
@pytest.mark.parametrize("float64", [False, True])
def test_blockwise_llada_schedule_is_llada_generate_token_for_token(tiny_model, gen_length, block, steps, float64):
    prompt, start = canvas(tiny_model, 4, gen_length)
    sampler = BlockwiseSampler(temperature=0, block_size=block, order="confidence", schedule="llada",
                               float64_confidence=float64)
    got = sampler.sample(tiny_model, steps, prompt=start)
    expected = llada_generate(tiny_model, prompt, steps, gen_length, block, tiny_model.mask_id)
    assert torch.equal(got.tokens, expected) and got.nfe == steps


@pytest.mark.parametrize("alg, score", [("maskgit_plus", "max_prob"), ("topk_margin", "margin"), ("entropy", "neg_entropy")])
@pytest.mark.parametrize("steps", [3, 7, 16])
def test_confidence_dream_schedule_is_dream_generate_token_for_token(tiny_model, alg, score, steps):
    prompt, start = canvas(tiny_model, 4, 16)
    got = ConfidenceSampler(temperature=0, score=score, schedule="dream").sample(tiny_model, steps, prompt=start)
    expected = dream_generate(tiny_model, prompt, steps, 16, tiny_model.mask_id, alg)
    assert torch.equal(got.tokens, expected) and got.nfe == steps


# --- end-token filling ----------------------------------------------------------------------------
class EosLikelyDenoiser(nn.Module):
    """Fixed random logits (L, V) whatever the input, with the end token likely everywhere; the oracle's
    network reading (hidden = logits, one-hot embedding, identity LM head) so the joint head runs too."""

    def __init__(self, seq_len: int = 12, vocab_size: int = 6, eos_id: int = 5) -> None:
        super().__init__()
        logits = torch.randn(seq_len, vocab_size, generator=torch.Generator().manual_seed(0))
        logits[:, eos_id] = 1.0  # about one in four draws is the end token
        self.register_buffer("logits", logits)
        self.vocab_size, self.mask_id, self.eos_id = vocab_size, vocab_size, eos_id
        self.received: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def embed(self, tokens):
        return F.one_hot(tokens, self.vocab_size + 1)[..., : self.vocab_size].float()

    def hidden_states(self, tokens, attention_mask=None):
        self.received.append((tokens[:, :3].clone(), attention_mask))  # which rows (by their prompt), which mask
        return self.logits[: tokens.shape[1]].expand(tokens.shape[0], -1, -1)

    def lm_head(self, hidden):
        return hidden

    def forward(self, tokens, attention_mask=None):
        return self.lm_head(self.hidden_states(tokens, attention_mask))


def entropy_threshold(eos_fill: bool) -> EntropyThresholdSampler:
    sampler = EntropyThresholdSampler(threshold=0.0, block_size=4, temperature=1.0)
    sampler.eos_fill = eos_fill
    return sampler


SAMPLERS = {  # name: (sampler with eos_fill on or off, steps for 8 to 10 answer positions)
    "ancestral": (lambda fill: AncestralSampler(eos_fill=fill), 4),
    "confidence": (lambda fill: ConfidenceSampler(eos_fill=fill), 4),
    "blockwise": (lambda fill: BlockwiseSampler(block_size=5, order="confidence", schedule="llada", eos_fill=fill), 4),
    "dilated": (lambda fill: DilatedSampler(eos_fill=fill), 4),
    "learned": (lambda fill: LearnedSampler(4, eos_fill=fill), 4),
    "rule": (lambda fill: RuleSampler({"adjacent_chosen": -30.0}, eos_fill=fill), 4),
    "joint_head": (lambda fill: JointHeadSampler(2, hidden_size=6, embed_size=6, n_head=2, temperature=1.0, eos_fill=fill), 4),
    "entropy_threshold": (entropy_threshold, None),  # picks its own step count
}


def after_first_end(tokens: torch.Tensor, answer: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, L) bool: answer positions strictly after the row's first end token."""
    seen = ((tokens == eos_id) & answer).long().cumsum(-1)
    return answer & (seen - ((tokens == eos_id) & answer).long() > 0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_eos_fill_turns_every_later_answer_position_into_the_end_token(name):
    net = EosLikelyDenoiser()
    start = torch.cat([torch.zeros(16, 2, dtype=torch.long), torch.full((16, 10), net.mask_id)], dim=1)
    answer = start == net.mask_id
    make, steps = SAMPLERS[name]
    filled = make(True).sample(net, steps, prompt=start, generator=torch.Generator().manual_seed(0), return_trace=True)
    for state in filled.trace:  # after every step, not only at the end: filled positions count as revealed
        after = after_first_end(state, answer, net.eos_id)
        assert (state[after] == net.eos_id).all()
    assert (filled.tokens[:, :2] == 0).all() and not (filled.tokens == net.mask_id).any()
    assert ((filled.tokens == net.eos_id) & answer).any(-1).sum() >= 12  # the end token is likely: most rows end
    free = make(False).sample(net, steps, prompt=start, generator=torch.Generator().manual_seed(0))
    after = after_first_end(free.tokens, answer, net.eos_id)
    assert (free.tokens[after] != net.eos_id).any()  # off: the model decides every position


def test_eos_fill_saves_forward_passes_once_every_row_has_ended():
    net = EosLikelyDenoiser(vocab_size=6, eos_id=5)
    net.logits[:, :] = -10.0
    net.logits[:, 5] = 10.0  # the end token is certain: the first step ends every row
    out = ConfidenceSampler(eos_fill=True).sample(net, 5, batch_size=3, seq_len=10)
    assert out.nfe == 1 and (out.tokens == 5).all()
    assert ConfidenceSampler(eos_fill=False).sample(net, 5, batch_size=3, seq_len=10).nfe == 5


def test_eos_fill_does_nothing_without_an_end_token_in_the_vocabulary():
    oracle = OracleDenoiser(HiddenMarkovSource.random(SourceConfig(seed=0, hidden_states=4, vocab_size=4, seq_len=8)))
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = AncestralSampler(eos_fill=True).sample(oracle, 4, batch_size=5, seq_len=8, generator=gen()).tokens
    b = AncestralSampler(eos_fill=False).sample(oracle, 4, batch_size=5, seq_len=8, generator=gen()).tokens
    assert torch.equal(a, b)


# --- padding: the attention mask reaches the denoiser ---------------------------------------------
@pytest.mark.parametrize("name", SAMPLERS)
def test_left_padded_batch_reaches_the_denoiser_with_its_mask(name):
    net = EosLikelyDenoiser()
    pad = 0
    prompts = [[1, 2, 3], [4], [2, 3]]  # left-padded to 3, then 9 answer positions
    make, steps = SAMPLERS[name]
    start = torch.full((3, 12), net.mask_id)
    mask = torch.ones(3, 12, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        start[row, : 3 - len(prompt)] = pad
        start[row, 3 - len(prompt): 3] = torch.tensor(prompt)
        mask[row, : 3 - len(prompt)] = False
    out = make(False).sample(net, steps, prompt=start, attention_mask=mask, generator=torch.Generator().manual_seed(0))
    assert not (out.tokens == net.mask_id).any() and torch.equal(out.tokens[:, :3], start[:, :3])
    assert net.received
    for heads, got in net.received:  # an adaptive sampler calls the denoiser on its unfinished rows only
        rows = [next(r for r in range(3) if torch.equal(start[r, :3], head)) for head in heads]
        assert got is not None and got.dtype == torch.bool and torch.equal(got, mask[rows])
    net.received.clear()
    make(False).sample(net, steps, prompt=start, generator=torch.Generator().manual_seed(0))
    assert all(got is None for _, got in net.received)  # no mask given: the denoiser is called without one


def test_attention_mask_of_the_wrong_shape_is_a_clear_error():
    net = EosLikelyDenoiser()
    with pytest.raises(ValueError, match="attention_mask must have the canvas's shape"):
        AncestralSampler().sample(net, 2, batch_size=2, seq_len=12, attention_mask=torch.ones(2, 10, dtype=torch.bool))
