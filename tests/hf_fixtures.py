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

    def __init__(self, vocab_size=20, hidden_size=16, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
'''

MODEL_CODE = '''
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tinydiff import TinyDiffConfig


class TinyDiffLayer(nn.Module):
    """Bidirectional attention and an MLP, with LLaDA/Dream-style projection names (q_proj, ..., down_proj)."""

    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.q_proj, self.k_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.v_proj, self.o_proj = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.up_proj, self.down_proj = nn.Linear(hidden, 2 * hidden), nn.Linear(2 * hidden, hidden)

    def forward(self, x):
        B, L, H = x.shape
        y = self.norm1(x)
        q, k, v = (p(y).view(B, L, self.heads, H // self.heads).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        x = x + self.o_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, H))
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

    def forward(self, input_ids, output_hidden_states=False, **kwargs):
        first = self.wte(input_ids) + self.wpe(torch.arange(input_ids.shape[1], device=input_ids.device))
        last = self.ln_f(self.layer(first))
        return MaskedLMOutput(logits=self.lm_head(last), hidden_states=(first, last) if output_hidden_states else None)
'''


def word_tokenizer(path: Path, with_mask: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = SPECIAL if with_mask else [s for s in SPECIAL if s != "[MASK]"]
    vocab = {w: i for i, w in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs, **({"mask_token": "[MASK]"} if with_mask else {}))
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


def tiny_diffusion_lm(path: Path, with_mask: bool = True, seed: int = 0) -> Path:
    """A model with its own code (auto_map), loaded only with trust_remote_code, like LLaDA/Dream."""
    import importlib.util
    import sys

    import torch

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(path, with_mask=with_mask)
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
    model = model_mod.TinyDiffModel(config_mod.TinyDiffConfig(vocab_size=len(tokenizer), hidden_size=16))
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
