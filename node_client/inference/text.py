"""Text generation with transformers: causal LMs from a local folder, chat formatted."""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crynux_common.schemas import ArgsError, TextTaskArgs

from .cache import module_bytes
from .errors import ModelUnavailable

log = logging.getLogger(__name__)


@dataclass
class TextModel:
    model: Any
    tokenizer: Any

    @property
    def size_bytes(self) -> int:
        return module_bytes([self.model])

    @property
    def max_length(self) -> int | None:
        """Context length from the model config, when it declares one."""
        cfg = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


def load_text_model(folder: Path, device: torch.device, dtype: torch.dtype) -> TextModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        if (folder / "model_index.json").is_file():  # a diffusers pipeline: the task's fault
            raise ArgsError(f"{folder.name} is not a language model (it is a diffusers pipeline)")
        raise ModelUnavailable(f"{folder} holds no model (incomplete download?)")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, dtype=dtype, use_safetensors=True
        )
    except ValueError as e:  # e.g. a config that is no causal LM
        raise ArgsError(f"{folder.name} is not a causal language model: {e}") from e
    model.to(device)
    model.eval()
    return TextModel(model=model, tokenizer=tokenizer)


def fallback_prompt(messages: list[dict[str, str]]) -> str:
    """Plain chat format for tokenizers without a chat template."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def build_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, bool]:
    """(prompt text, add_special_tokens): the chat template already adds the special ones."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, False
    return fallback_prompt(messages), True


def generate_text(
    tm: TextModel, args: TextTaskArgs, model_id: str, device: torch.device
) -> dict[str, Any]:
    """Generate a chat completion; returns the response object (hashed canonically)."""
    tok, model = tm.tokenizer, tm.model
    messages = [m.model_dump() for m in args.messages]
    prompt, add_special = build_prompt(tok, messages)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=add_special)
    input_ids = enc["input_ids"].to(device)
    attention_mask = enc["attention_mask"].to(device)
    n_prompt = int(input_ids.shape[1])
    gc = args.generation_config
    limit = tm.max_length
    if limit is not None and n_prompt + gc.max_new_tokens > limit:
        raise ArgsError(
            f"prompt ({n_prompt} tokens) + max_new_tokens ({gc.max_new_tokens}) exceeds the "
            f"model's context of {limit} tokens"
        )

    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    gen_cfg = copy.deepcopy(model.generation_config)
    updates: dict[str, Any] = dict(
        max_new_tokens=gc.max_new_tokens,
        min_new_tokens=gc.min_new_tokens,
        do_sample=gc.do_sample,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    if gc.do_sample:
        updates.update(temperature=gc.temperature, top_p=gc.top_p, top_k=gc.top_k)
    else:
        updates.update(temperature=None, top_p=None, top_k=None)
    gen_cfg.update(**updates)

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(args.seed)
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=gen_cfg
        )
    new_tokens = out[0, n_prompt:].tolist()
    finish = "length"
    if eos is not None and new_tokens and new_tokens[-1] == eos:
        finish = "stop"
    # Trailing pad tokens (after an early EOS) are not part of the answer.
    while new_tokens and new_tokens[-1] == pad and pad != eos:
        new_tokens.pop()
    content = tok.decode(new_tokens, skip_special_tokens=True)
    return {
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": n_prompt,
            "completion_tokens": len(new_tokens),
            "total_tokens": n_prompt + len(new_tokens),
        },
    }
