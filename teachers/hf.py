"""transformers models behind the Denoiser contract (logits, hidden states, embeddings, LM head).

    HFMaskedLM("path/or/hub-id")                  any AutoModelForMaskedLM (BERT, RoBERTa, ModernBERT, ...)
    HFDiffusionLM("GSAI-ML/LLaDA-8B-Instruct", trust_remote_code=True)
    HFDiffusionLM("Dream-org/Dream-v0-Instruct-7B", trust_remote_code=True, shift_logits=True)

The mask token comes from the tokenizer (or `mask_id`, e.g. LLaDA's 126336, when the tokenizer has
none). Only what must never be generated gets logit -1e4: the mask token, the pad token when it is
not also the end token (LLaDA and Dream pad with their end-of-text id, which must stay drawable so
answers can end), and ids past the tokenizer (`suppress_special=False` keeps them all). Every other
logit is left as the model gives it, as the reference decoders leave them: suppressing a token
renormalises the rest and so changes every confidence. `eos_id` is the tokenizer's end token.

Left-padded prompt batches pass `attention_mask` (B, L) (True: a real token). It reaches the model
as each reference decoder passes it: LLaDA's generate() and masked LMs get the (B, L) mask; Dream's
diffusion_generate (`shift_logits=True`) gets a (B, 1, L, L) mask and shifted position ids
(cumsum(mask) - 1, padding at 1), and only when some position is padding. Weights load in `dtype` (bfloat16 on GPU); the module
is frozen. Dream predicts token i+1 at position i: `shift_logits=True` moves its logits one place
right so position i scores token i, as every sampler here expects.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

SUPPRESSED = -1e4  # the logit of a token never to draw: probability 0, and finite so coefficients stay differentiable
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"teacher.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def left_padding_mask(tokens: Tensor, pad_id: int, prompt_len: int) -> Tensor:
    """(B, L) bool, False on each row's leading run of `pad_id` inside the first `prompt_len` positions:
    the attention mask of a left-padded prompt batch (pad may equal the end token, so only the leading
    run counts; a prompt that itself starts with that token loses it, as a tokenizer's own mask would not)."""
    leading = (tokens[:, :prompt_len] == pad_id).long().cumprod(-1).bool()  # (B, prompt_len)
    return torch.cat([~leading, torch.ones_like(tokens[:, prompt_len:], dtype=torch.bool)], dim=1)


def _mask_id(tokenizer, config, mask_id: int | None, path: str) -> int:
    for candidate in (mask_id, getattr(tokenizer, "mask_token_id", None), getattr(config, "mask_token_id", None)):
        if candidate is not None:
            return int(candidate)
    raise ValueError(f"the tokenizer at {path} has no mask token and the model config names none; pass "
                     "teacher.mask_id=ID (the id the model was trained to denoise) or add a mask token to the tokenizer")


def _lm_head(model: nn.Module):
    """The module mapping last hidden states to logits (not always one Linear)."""
    if hasattr(model, "cls"):  # BERT
        return model.cls
    if hasattr(model, "lm_head"):  # RoBERTa, Dream, most decoder-style code
        return model.lm_head
    if hasattr(model, "head") and hasattr(model, "decoder"):  # ModernBERT
        return lambda h: model.decoder(model.head(h))
    return model.get_output_embeddings()


class _HFDenoiser(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, path: str, mask_id: int | None, suppress_special: bool,
                 shift_logits: bool, dtype: str = "float32", trust_remote_code: bool = False, digest: bool = True) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.path = str(path)
        self.dtype_name, self.trust_remote_code, self.suppress_special = dtype, trust_remote_code, suppress_special
        self.mask_id = _mask_id(tokenizer, model.config, mask_id, path)
        self.vocab_size = int(model.config.vocab_size)
        self.seq_len = None
        self.shift_logits = shift_logits
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        # never drawn: the mask token, and padding unless it is also the end token (LLaDA, Dream)
        pad = getattr(tokenizer, "pad_token_id", None)
        special = {self.mask_id} | ({pad} if pad is not None and pad != self.eos_id else set())
        special = {i for i in special if i < self.vocab_size}
        special |= set(range(len(tokenizer), self.vocab_size))  # padded ids no tokenizer can decode
        special = sorted(special)
        self.register_buffer("special_ids", torch.tensor(special if suppress_special else [], dtype=torch.long),
                             persistent=False)
        self.sha256 = _weights_digest(path) if digest else None

    def spec(self) -> dict:
        """How to rebuild this adapter around a saved copy of its model (what a student export records)."""
        return {"class": type(self).__name__, "dtype": self.dtype_name, "mask_id": self.mask_id,
                "suppress_special": self.suppress_special, "trust_remote_code": self.trust_remote_code,
                "shift_logits": self.shift_logits}

    def with_model(self, model: nn.Module) -> "_HFDenoiser":
        """This adapter (tokenizer, mask id, logit handling) around another model of the same architecture."""
        new = type(self).__new__(type(self))
        _HFDenoiser.__init__(new, model, self.tokenizer, self.path, self.mask_id, self.suppress_special,
                             self.shift_logits, self.dtype_name, self.trust_remote_code, digest=False)
        return new.to(next(model.parameters()).device)  # the special-id buffer follows the model

    def trainable_copy(self, float32: bool = False) -> "_HFDenoiser":
        """A copy with its own weights (trainable, train mode; float32 master weights if asked): the start
        of a fine-tuned student. It has no SHA-256: its weights are about to change."""
        model = copy.deepcopy(self.model)
        new = self.with_model(model.float() if float32 else model)
        new.model.train().requires_grad_(True)
        return new

    def save(self, path: str | os.PathLike) -> None:
        """save_pretrained of the model (one safetensors file, the model's own code if it ships any) and
        the tokenizer: a directory transformers loads as it is, and `load_hf_denoiser` rebuilds from."""
        self.model.save_pretrained(path, safe_serialization=True, max_shard_size="1000GB")
        self.tokenizer.save_pretrained(path)

    def _finish(self, logits: Tensor) -> Tensor:
        logits = logits[..., : self.vocab_size].float()
        if self.shift_logits:  # Dream: position i predicts token i + 1
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        if len(self.special_ids):
            logits = logits.index_fill(-1, self.special_ids, SUPPRESSED)
        return logits

    def _padding(self, attention_mask: Tensor | None) -> dict:
        """The model's padding arguments for `attention_mask` (B, L), as its reference decoder passes them."""
        if attention_mask is None:
            return {}
        if not self.shift_logits:  # LLaDA's generate(), masked LMs: the (B, L) mask
            return {"attention_mask": attention_mask.long()}
        if bool(attention_mask.all()):  # Dream: "full" attention and default positions when nothing is padding
            return {}
        keep = attention_mask.bool()
        position_ids = (keep.long().cumsum(-1) - 1).masked_fill(~keep, 1)  # (B, L)
        pairs = keep[:, None, None, :] & keep[:, None, :, None]  # (B, 1, L, L): query and key both real
        return {"attention_mask": pairs, "position_ids": position_ids}

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self._finish(self.model(input_ids=tokens, **self._padding(attention_mask)).logits)

    def hidden_states(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids=tokens, output_hidden_states=True, **self._padding(attention_mask)).hidden_states[-1]

    def embed(self, tokens: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(tokens)

    def lm_head(self, hidden: Tensor) -> Tensor:
        return self._finish(_lm_head(self.model)(hidden))


def _weights_digest(path: str) -> str | None:
    """SHA-256 of a local model's weight files (None for hub ids): what student exports record."""
    from teachers.saved import sha256_file

    if not os.path.isdir(path):
        return None
    files = sorted(f for f in os.listdir(path) if f.endswith((".safetensors", ".bin")))
    if not files:
        return None
    import hashlib

    digest = hashlib.sha256()
    for f in files:
        digest.update(f.encode() + sha256_file(os.path.join(path, f)).encode())
    return digest.hexdigest()


def check_local_path(path: str, what: str = "teacher.path") -> None:
    """A path that looks local (absolute, ./, ../, ~, or with an existing parent directory) but is no
    directory fails with "no such directory" here; transformers would call it a malformed hub id."""
    text = str(path)
    local = Path(text).expanduser()
    looks_local = (local.is_absolute() or text.startswith(("./", "../", "~", ".\\", "..\\"))
                   or (local.parent != Path(".") and local.parent.is_dir()))
    if looks_local and not local.is_dir():
        raise FileNotFoundError(f"{what} {text}: no such directory; give a save_pretrained directory that exists, "
                                "or a hub id (org/name)")


def _tokenizer(path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(f"no tokenizer could be loaded from {path} ({err}); a teacher directory needs its tokenizer "
                         "files (save them with tokenizer.save_pretrained(DIR))") from err


class HFMaskedLM(_HFDenoiser):
    """Any transformers AutoModelForMaskedLM, by local path or hub id."""

    kind = "hf_masked_lm"

    def __init__(self, path: str, dtype: str = "float32", mask_id: int | None = None, suppress_special: bool = True,
                 trust_remote_code: bool = False) -> None:
        from transformers import AutoModelForMaskedLM

        check_local_path(path)
        tokenizer = _tokenizer(path, trust_remote_code)
        model = AutoModelForMaskedLM.from_pretrained(path, dtype=_dtype(dtype), trust_remote_code=trust_remote_code)
        super().__init__(model, tokenizer, path, mask_id, suppress_special, False, dtype, trust_remote_code)


class HFDiffusionLM(_HFDenoiser):
    """LLaDA/Dream-style diffusion LMs (AutoModel); remote code runs only with trust_remote_code=True."""

    kind = "hf_diffusion_lm"

    def __init__(self, path: str, dtype: str = "bfloat16", mask_id: int | None = None, suppress_special: bool = True,
                 trust_remote_code: bool = False, shift_logits: bool = False) -> None:
        from transformers import AutoConfig, AutoModel

        check_local_path(path)
        config_file = os.path.join(path, "config.json")
        ships_code = os.path.isfile(config_file) and "auto_map" in json.loads(open(config_file).read())
        if ships_code and not trust_remote_code:
            raise ValueError(f"the model at {path} ships its own code (auto_map in config.json); read it, then pass "
                             "teacher.trust_remote_code=true to run it")
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)  # fails early on a bad config
        tokenizer = _tokenizer(path, trust_remote_code)
        model = AutoModel.from_pretrained(path, dtype=_dtype(dtype), trust_remote_code=trust_remote_code)
        super().__init__(model, tokenizer, path, mask_id, suppress_special, shift_logits, dtype, trust_remote_code)


ADAPTERS = {"HFMaskedLM": HFMaskedLM, "HFDiffusionLM": HFDiffusionLM}


def load_hf_denoiser(path: str | os.PathLike, spec: dict) -> _HFDenoiser:
    """The adapter `spec` (from `_HFDenoiser.spec`) around the model saved at `path`."""
    spec = dict(spec)
    cls = ADAPTERS.get(spec.pop("class", None))
    if cls is None:
        raise ValueError(f"unknown transformers adapter in {spec}; known: {sorted(ADAPTERS)}")
    if cls is HFMaskedLM:
        spec.pop("shift_logits", None)
    return cls(str(path), **spec)
