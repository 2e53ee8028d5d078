"""The lm-evaluation-harness model `fewstep`: a task's generate_until requests answered by a
transformers teacher with a reference sampler, or by a distilled student (LoRA adapter-only exports
included), built from the same config as fewstep-generate (conf/generate.yaml, model_args as overrides).

    fewstep-lm-eval --model fewstep \
        --model_args teacher=llada,teacher_path=DIR,sampler=blockwise,sampler_order=confidence,steps=64,gen_length=64 \
        --tasks TASK --include_path TASKS_DIR

fewstep-lm-eval is lm-eval's own command line with this model registered: lm-eval 0.4 looks models
up only among its own modules (no plugin entry points; EleutherAI/lm-evaluation-harness#1621), so a
bare `lm_eval --model fewstep` cannot find it. From Python, `import distill.apps.lm_eval_model`
first, then `lm_eval.simple_evaluate(model="fewstep", model_args=...)`.

model_args keys: `teacher` / `sampler` pick the config group; `teacher_X` / `sampler_X` set
`teacher.X` / `sampler.X` (dotted keys work too); anything else is a top-level key of
conf/generate.yaml (steps, gen_length, seed, chat_template, ...). --batch_size and --device set
batch_size and device. The answer length is gen_length, whatever the task's max_gen_toks; the
task's `until` strings cut the decoded text. Forward passes per answer are logged and reported in
the results under config.fewstep.
"""

from __future__ import annotations

import logging
import sys

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from distill.apps.cli import CONF_DIR
from distill.apps.generate import build, check_request, complete, decode, prompt_ids

log = logging.getLogger(__name__)
GROUPS = ("teacher", "sampler")
NO_LIKELIHOOD = (
    "fewstep answers generate_until requests only: a masked-diffusion LM has no exact log-likelihood (only a "
    "Monte-Carlo bound on it, which would score answers by an estimate, not the likelihood the task assumes). "
    "Run tasks whose output_type is generate_until (gsm8k, minerva_math, humaneval, mbpp, or the generative / "
    "_cot variants of multiple-choice tasks)")


def _value(value) -> str:
    """A parsed model_args value back as Hydra override text."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def overrides(model_args: dict) -> list[str]:
    """Hydra overrides of conf/generate.yaml from lm-eval model_args (teacher_path=DIR -> teacher.path=DIR)."""
    out = []
    for key, value in model_args.items():
        group, _, rest = key.partition("_")
        if group in GROUPS and rest and "." not in key:
            key = f"{group}.{rest}"
        out.append(f"{key}={_value(value)}")
    return out


def compose_config(model_args: dict):
    """conf/generate.yaml with the model_args applied; an unknown key or group option is named."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        try:
            return compose("generate", overrides=overrides(model_args))
        except ConfigCompositionException as err:
            cause = err.__cause__ or err
            raise ValueError(f"--model_args {','.join(f'{k}={v}' for k, v in model_args.items())} do not fit "
                             f"conf/generate.yaml ({cause}); keys are teacher, sampler, teacher_X, sampler_X or a "
                             "top-level key of generate.yaml (steps, gen_length, seed, chat_template, ...)") from None


@register_model("fewstep")
class FewstepLM(LM):
    """A teacher + sampler (or a saved student) behind lm-eval's LM interface, generate_until only."""

    def __init__(self, batch_size: int | str | None = None, max_batch_size: int | None = None,
                 device: str | None = None, **model_args) -> None:
        super().__init__()
        if isinstance(batch_size, int) or (isinstance(batch_size, str) and batch_size.isdigit()):
            model_args["batch_size"] = int(batch_size)  # "auto" keeps generate.yaml's batch_size
        if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("fewstep: --device %s but this torch sees no CUDA GPU; running on device=%s", device,
                        model_args.get("device", "cpu"))  # lm-eval's default is cuda:0, asked for or not
        elif device is not None:
            model_args["device"] = device
        self.cfg = compose_config(model_args)
        check_request(self.cfg)
        self.gen = build(self.cfg)
        self.nfe: list[float] = []

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.gen.tokenizer, "name_or_path", "fewstep")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.gen.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as text through the tokenizer's template (--apply_chat_template)."""
        return self.gen.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt,
                                                      tokenize=False)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(NO_LIKELIHOOD)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(NO_LIKELIHOOD)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Answers of gen_length tokens, cut at the first end token and then at the task's `until` strings."""
        cfg, tokenizer = self.cfg, self.gen.tokenizer
        ids = [prompt_ids(tokenizer, {"prompt": r.args[0]}, cfg.chat_template, cfg.add_special_tokens) for r in requests]
        results = complete(self.gen, ids, cfg.gen_length, cfg.batch_size, cfg.seed, progress=not disable_tqdm)
        answers = []
        for request, (tokens, nfe) in zip(requests, results):
            text = decode(tokenizer, tokens, self.gen.end_id)
            until = request.args[1].get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                if stop:
                    text = text.split(stop)[0]
            answers.append(text)
            self.nfe.append(float(nfe))
            self.cache_hook.add_partial("generate_until", request.args, text)
        if results:
            log.info("fewstep: %d answers, %.2f forward passes per answer (mean of this batch of requests)",
                     len(results), sum(n for _, n in results) / len(results))
        return answers

    def get_model_info(self) -> dict:
        """What lm-eval adds to results["config"]: the sampler settings and the forward passes per answer."""
        mean = sum(self.nfe) / len(self.nfe) if self.nfe else None
        return {"fewstep": {"settings": self.gen.settings, "answers": len(self.nfe), "nfe_per_answer": mean}}


def main(argv: list[str] | None = None) -> None:
    """Console entry point (fewstep-lm-eval): lm-eval's command line with `--model fewstep` available."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
