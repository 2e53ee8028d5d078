"""Tiny transformers models, tokenizers and corpora built offline for the adapter tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = "the a cat dog bird sat ran flew on under mat log tree and then".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

CONFIG_CODE = '''
from transformers import PretrainedConfig


class TinyDiffConfig(PretrainedConfig):
    model_type = "tinydiff"

    def __init__(self, vocab_size=20, hidden_size=16, rotary=False, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.rotary = rotary  # rotary positions (as LLaDA and Dream): attention sees only relative positions
'''

MODEL_CODE = '''
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tinydiff import TinyDiffConfig


def rotate(x, positions):
    """Rotary position embedding of x (B, nh, L, hs) at positions (B, L)."""
    half = x.shape[-1] // 2
    freqs = 1.0 / (10000 ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
    angles = positions[:, None, :, None].float() * freqs  # (B, 1, L, half)
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * angles.cos() - b * angles.sin(), a * angles.sin() + b * angles.cos()], dim=-1)


def attention_mask_for(attention_mask):
    """SDPA mask from what a caller passes: (B, L) keys to keep, a (B, 1, L, L) bool mask, or None / "full"."""
    if attention_mask is None or isinstance(attention_mask, str):
        return None
    if attention_mask.dim() == 2:
        return attention_mask.bool()[:, None, None, :]
    return attention_mask.bool()


class TinyDiffLayer(nn.Module):
    """Bidirectional attention and an MLP, with LLaDA/Dream-style projection names (q_proj, ..., down_proj)."""

    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.q_proj, self.k_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.v_proj, self.o_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.up_proj, self.down_proj = nn.Linear(hidden, 2 * hidden), nn.Linear(2 * hidden, hidden)

    def forward(self, x, mask=None, positions=None):
        B, L, H = x.shape
        y = self.norm1(x)
        q, k, v = (p(y).view(B, L, self.heads, H // self.heads).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        if positions is not None:
            q, k = rotate(q, positions), rotate(k, positions)
        x = x + self.o_proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, L, H))
        return x + self.down_proj(F.gelu(self.up_proj(self.norm2(x))))


class TinyDiffModel(PreTrainedModel):
    """A LLaDA/Dream-like bidirectional denoiser: embeddings, one layer, a final norm, an LM head."""

    config_class = TinyDiffConfig

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(64, config.hidden_size)
        self.layer = TinyDiffLayer(config.hidden_size, 2)
        self.ln_f = nn.LayerNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states=False, **kwargs):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        first = self.wte(input_ids)
        if not getattr(self.config, "rotary", False):
            first = first + self.wpe(position_ids)
        last = self.ln_f(self.layer(first, attention_mask_for(attention_mask),
                                    position_ids if getattr(self.config, "rotary", False) else None))
        return MaskedLMOutput(logits=self.lm_head(last), hidden_states=(first, last) if output_hidden_states else None)
'''


CHAT_TEMPLATE = ("{% for m in messages %}[CLS] {{ m['content'] }} [SEP] {% endfor %}"
                 "{% if add_generation_prompt %}[CLS] {% endif %}")  # a user turn, then the answer's opening


def word_tokenizer(path: Path, with_mask: bool = True, pad_is_eos: bool = False, chat_template: bool = False):
    """A word-level tokenizer; pad_is_eos: [PAD] is also the end token (as LLaDA's and Dream's pad with
    their end-of-text id); chat_template: a tiny chat template (user turns, then the answer's opening)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = SPECIAL if with_mask else [s for s in SPECIAL if s != "[MASK]"]
    vocab = {w: i for i, w in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    kwargs.update({"mask_token": "[MASK]"} if with_mask else {}, **({"eos_token": "[PAD]"} if pad_is_eos else {}))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    return fast


def tiny_bert(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = word_tokenizer(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(path)
    return path


def tiny_gpt2(path: Path, seed: int = 0) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = word_tokenizer(path)
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2,
                               bos_token_id=None, eos_token_id=None)).save_pretrained(path)
    return path


def tiny_diffusion_lm(path: Path, with_mask: bool = True, seed: int = 0, rotary: bool = False,
                      pad_is_eos: bool = False, chat_template: bool = False) -> Path:
    """A model with its own code (auto_map), loaded only with trust_remote_code, like LLaDA/Dream.

    rotary: rotary positions instead of learned absolute ones (LLaDA and Dream use rotary positions;
    a left-padded prompt then gets the completion it gets alone). pad_is_eos, chat_template: see
    `word_tokenizer`."""
    import importlib.util
    import sys

    import torch

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(path, with_mask=with_mask, pad_is_eos=pad_is_eos, chat_template=chat_template)
    (path / "configuration_tinydiff.py").write_text(CONFIG_CODE)
    (path / "modeling_tinydiff.py").write_text(MODEL_CODE)
    package = f"tinydiff_{abs(hash(str(path)))}"
    sys.modules[package] = importlib.util.module_from_spec(importlib.util.spec_from_loader(package, loader=None))
    sys.modules[package].__path__ = [str(path)]
    spec = importlib.util.spec_from_file_location(f"{package}.configuration_tinydiff", path / "configuration_tinydiff.py")
    config_mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = config_mod
    spec.loader.exec_module(config_mod)
    spec = importlib.util.spec_from_file_location(f"{package}.modeling_tinydiff", path / "modeling_tinydiff.py")
    model_mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = model_mod
    spec.loader.exec_module(model_mod)
    torch.manual_seed(seed)
    model = model_mod.TinyDiffModel(config_mod.TinyDiffConfig(vocab_size=len(tokenizer), hidden_size=16, rotary=rotary))
    model.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_tinydiff.TinyDiffConfig", "AutoModel": "modeling_tinydiff.TinyDiffModel"}
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def corpus(path: Path, lines: int = 300, seed: int = 0) -> Path:
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(lines)))
    return path


def qa_file(path: Path, rows: int = 40, seed: int = 0) -> Path:
    """Questions of words whose answer is the last word repeated (checkable, exact)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        lines.append(json.dumps({"q": q, "a": q.split()[-1] + " " + q.split()[-1]}))
    path.write_text("\n".join(lines))
    return path


def fit_on_prompts(path: Path, file: Path, prompt_len: int = 8, answer_len: int = 4, steps: int = 60, lr: float = 2e-2,
                   seed: int = 0) -> Path:
    """Train the saved model at `path` a little on `file`'s answers (random masks of the answer span), so
    that its own answers are right on part of the prompts; saved back in place."""
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM

    from distill.data.prompts import PromptsDataModule

    remote = (path / "modeling_tinydiff.py").is_file()
    auto = AutoModel if remote else AutoModelForMaskedLM
    model = auto.from_pretrained(path, trust_remote_code=remote).train()
    data = PromptsDataModule(str(file), str(path), question_field="q", answer_field="a", prompt_len=prompt_len,
                             answer_len=answer_len, checker="exact", trust_remote_code=remote)
    mask_id = data.tokenizer.mask_token_id
    tokens = data.tokens
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only spin on a shared 2-core machine
    try:
        for _ in range(steps):
            masked = (torch.rand(tokens.shape, generator=gen) < 0.7) & data.answer_mask
            logits = model(input_ids=torch.where(masked, mask_id, tokens)).logits
            loss = torch.nn.functional.cross_entropy(logits[masked], tokens[masked])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(path)
    return path
