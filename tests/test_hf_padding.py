"""Special tokens and padding on transformers teachers as their authors run them (issue 20): the end
token stays drawable when it is also the pad token, and a left-padded prompt gets the completion it
gets alone (LLaDA-like: rotary positions and a (B, L) mask; Dream-like: absolute positions, shifted
position ids and a (B, 1, L, L) mask)."""

from __future__ import annotations

import pytest
import torch

from teachers import ConfidenceSampler, HiddenMarkovSource, OracleDenoiser, SourceConfig, TransformerDenoiser
from teachers.hf import SUPPRESSED, HFDiffusionLM, HFMaskedLM, left_padding_mask

from tests.hf_fixtures import tiny_bert, tiny_diffusion_lm

PROMPTS = ["the cat sat on the mat", "a dog ran", "bird flew under the log and then", "tree"]
ANSWER = 5


def padded_batch(model, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Left-padded [prompt | masks] rows, their attention mask, and each prompt's canvas alone (no padding)."""
    tok = model.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(map(len, ids))
    rows = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i + [model.mask_id] * ANSWER for i in ids])
    alone = [torch.tensor([i + [model.mask_id] * ANSWER]) for i in ids]
    return rows, left_padding_mask(rows, tok.pad_token_id, width), alone


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("padding")
    llada = HFDiffusionLM(str(tiny_diffusion_lm(root / "llada", rotary=True, pad_is_eos=True, seed=1)),
                          dtype="float32", trust_remote_code=True)
    dream = HFDiffusionLM(str(tiny_diffusion_lm(root / "dream", pad_is_eos=True, seed=2)), dtype="float32",
                          trust_remote_code=True, shift_logits=True)
    return {"llada": llada, "dream": dream, "bert": HFMaskedLM(str(tiny_bert(root / "bert")))}


def test_left_padding_mask_is_the_leading_pad_run():
    tokens = torch.tensor([[0, 0, 7, 0, 9, 4], [5, 0, 6, 7, 4, 4]])
    expected = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    assert torch.equal(left_padding_mask(tokens, pad_id=0, prompt_len=4), expected)


def test_end_token_is_drawable_when_pad_is_eos(models):
    """LLaDA and Dream pad with their end-of-text id: it must keep its logit, and win when the model says so."""
    model = models["llada"]
    eos = model.tokenizer.eos_token_id
    assert model.eos_id == eos == model.tokenizer.pad_token_id == 0
    rows, mask, _ = padded_batch(model, PROMPTS)
    logits = model(rows, attention_mask=mask)
    assert (logits[..., model.mask_id] == SUPPRESSED).all() and (logits[..., eos] > SUPPRESSED).all()
    assert torch.equal(model.special_ids, torch.tensor([model.mask_id]))
    with torch.no_grad():
        model.model.lm_head.bias[eos] += 50.0  # the model is sure every answer ends here
    try:
        out = ConfidenceSampler(temperature=0, score="max_prob").sample(model, ANSWER, prompt=rows,
                                                                        attention_mask=mask)
    finally:
        with torch.no_grad():
            model.model.lm_head.bias[eos] -= 50.0
    assert (out.tokens[:, -ANSWER:] == eos).all()


def test_pad_distinct_from_eos_is_never_drawn(models):
    """BERT-style: [PAD] is not an end token (the tokenizer has none): suppressed, and eos_id is None."""
    model = models["bert"]
    assert model.eos_id is None and model.tokenizer.pad_token_id == 0
    assert sorted(model.special_ids.tolist()) == [0, model.mask_id]
    logits = model(torch.full((1, 6), model.mask_id))
    assert (logits[..., 0] == SUPPRESSED).all() and (logits[..., [1, 2, 3]] > SUPPRESSED).all()  # unk, cls, sep drawable


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_prompt_batch_gives_each_prompt_its_completion_alone(models, name):
    model = models[name]
    rows, mask, alone = padded_batch(model, PROMPTS)
    assert not mask.all()  # the batch has padding
    sampler = ConfidenceSampler(temperature=0, score="max_prob")
    batched = sampler.sample(model, ANSWER, prompt=rows, attention_mask=mask).tokens[:, -ANSWER:]
    for row, canvas in zip(batched, alone):
        assert torch.equal(row, sampler.sample(model, ANSWER, prompt=canvas).tokens[0, -ANSWER:])
    # without the mask the padding is attended to: the logits of a padded row move
    short = PROMPTS.index("tree")
    n = alone[short].shape[1] - 1  # Dream's shift: a prompt's first position scores from the one before it
    assert torch.allclose(model(rows, attention_mask=mask)[short, -n:], model(alone[short])[0, -n:], atol=1e-5)
    assert not torch.allclose(model(rows)[short, -n:], model(alone[short])[0, -n:], atol=1e-3)


def test_masked_lm_takes_the_attention_mask(models):
    model = models["bert"]
    rows = torch.tensor([[0, 0, 7, 8, 4, 4], [5, 6, 7, 8, 4, 4]])
    mask = left_padding_mask(rows, 0, 4)
    unmasked = model(rows)
    masked = model(rows, attention_mask=mask)
    assert torch.allclose(masked[1], unmasked[1], atol=1e-5)  # nothing padded in row 1
    assert not torch.allclose(masked[0, 2:], unmasked[0, 2:], atol=1e-4)


def test_builtin_transformer_ignores_padding_it_is_told_about():
    torch.manual_seed(0)
    model = TransformerDenoiser(vocab_size=7, seq_len=12, n_layer=2, n_head=2, d_model=16).eval()
    assert model.eos_id is None and TransformerDenoiser(7, 12, eos_id=3).eos_id == 3
    alone = torch.tensor([[2, 5, 1, 7, 7, 7]])
    rows = torch.cat([torch.tensor([[0, 0, 0]]), alone], dim=1)  # three padding tokens on the left
    mask = torch.tensor([[False] * 3 + [True] * 6])
    assert torch.allclose(model(rows, attention_mask=mask)[:, 3:], model(alone), atol=1e-5)
    assert not torch.allclose(model(rows)[:, 3:], model(alone), atol=1e-3)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(rows, attention_mask=mask[:, 1:])


def test_oracle_accepts_and_ignores_the_mask():
    oracle = OracleDenoiser(HiddenMarkovSource.random(SourceConfig(hidden_states=5, vocab_size=5, seq_len=6)))
    x = torch.tensor([[0, 5, 2, 5, 5, 1]])
    assert oracle.eos_id is None
    assert torch.equal(oracle(x, attention_mask=torch.tensor([[False] + [True] * 5])), oracle(x))


def test_chat_template_wraps_each_question(tmp_path):
    from distill.data.prompts import PromptsDataModule
    from tests.hf_fixtures import qa_file, word_tokenizer

    qa = qa_file(tmp_path / "qa.jsonl", rows=8)
    chat, plain = word_tokenizer(tmp_path / "chat", chat_template=True), word_tokenizer(tmp_path / "plain")
    kwargs = dict(question_field="q", answer_field="a", prompt_len=12, answer_len=4, checker="exact")
    data = PromptsDataModule(str(qa), str(tmp_path / "chat"), chat_template=True, **kwargs)
    question = data.rows[0][0]
    expected = chat(f"[CLS] {question} [SEP] [CLS]", add_special_tokens=False)["input_ids"]  # user turn, assistant opening
    prompt = data.tokens[0, : data.prompt_len].tolist()
    assert prompt[-len(expected):] == expected and set(prompt[: -len(expected)]) <= {chat.pad_token_id}
    assert data.spec()["chat_template"] is True
    off = PromptsDataModule(str(qa), str(tmp_path / "chat"), **kwargs)
    assert "chat_template" not in off.spec()
    assert off.tokens[0, : off.prompt_len].tolist()[-len(expected) + 3:] == expected[1:-2]  # the bare question
    mask = data.attention_mask(data.tokens)
    assert torch.equal(mask[:, : data.prompt_len], data.tokens[:, : data.prompt_len] != chat.pad_token_id)
    assert plain.chat_template is None
    with pytest.raises(ValueError, match="has no chat template.*data.chat_template=false"):
        PromptsDataModule(str(qa), str(tmp_path / "plain"), chat_template=True, **kwargs)
