"""Tiny models with seeded random weights, for tests and for a demo without real weights.

No package ships diffusion or GPT weights and this network cannot download any, so these
builders make small models from configs with `torch.manual_seed`, then `save_pretrained`
them to a folder. The node loads them back through exactly the same
`from_pretrained(folder, local_files_only=True)` path as real weights. The same builder
and seed give the same weights on every machine, so two nodes agree on their results.

Public API:
    TINY_MODELS                      model ID -> TinySpec (builder, kind)
    build_tiny_sd(folder, seed)      SD 1.x-style pipeline (UNet 32/64, CLIP hidden 32)
    build_tiny_sdxl(folder, seed)    SDXL-style pipeline (two text encoders)
    build_tiny_sd_lora(folder, seed) LoRA weights for the tiny SD UNet (needs peft)
    build_tiny_gpt2(folder, seed)    GPT-2, ByteLevel BPE tokenizer, no chat template
    build_tiny_llama(folder, seed)   Llama, ByteLevel BPE tokenizer, with a chat template
    materialize(model_id, cache_dir) -> Path   build once into cache_dir (atomic), reuse after
"""
from __future__ import annotations

import logging
import os
import shutil
import string
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

#: Bump when a builder changes: the cache folder name includes it, so stale builds are ignored.
TINY_VERSION = 1

DEFAULT_SEED = 0

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A decentralized network runs image and text generation on many GPUs.",
    "Nodes stake tokens, execute tasks and commit to their results.",
    "Hello! How are you today? I am fine, thank you.",
    "user: write a short poem about the sea.\nassistant: the sea is wide and blue.",
    "system: you are a helpful assistant. 0123456789 + - * / = ( ) [ ] { } < > | : ;",
]

_LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


# --- Stable Diffusion ---------------------------------------------------------------


def _clip_tokenizer(model_max_length: int = 77) -> Any:
    """A CLIP tokenizer over a small hand-written vocabulary (characters, no merges)."""
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = string.ascii_lowercase + string.digits + string.punctuation
    vocab: dict[str, int] = {}
    for tok in [*specials, *chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def _clip_text_config(vocab_size: int, projection_dim: int | None = None) -> Any:
    from transformers import CLIPTextConfig

    kwargs = dict(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
    )
    if projection_dim is not None:
        kwargs["projection_dim"] = projection_dim
    return CLIPTextConfig(**kwargs)


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )


def _ddim() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_sd(folder: Path, seed: int = DEFAULT_SEED) -> None:
    """A Stable Diffusion 1.x-style pipeline; 64x64 with 4 steps runs in ~0.3 s on a CPU."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    vae = _tiny_vae()
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_text_config(len(tokenizer)))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def build_tiny_sdxl(folder: Path, seed: int = DEFAULT_SEED) -> None:
    """An SDXL-style pipeline: two CLIP text encoders, text-time conditioning."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 * 8 time ids + 32 pooled text
        cross_attention_dim=64,  # 32 + 32 from the two text encoders
        norm_num_groups=32,
    )
    vae = _tiny_vae()
    tokenizer = _clip_tokenizer()
    tokenizer_2 = _clip_tokenizer()
    text_encoder = CLIPTextModel(_clip_text_config(len(tokenizer)))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(len(tokenizer_2), 32))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_ddim(),
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def build_tiny_sd_lora(folder: Path, seed: int = DEFAULT_SEED) -> None:
    """LoRA weights (rank 4, attention projections) for the tiny SD UNet, saved the
    diffusers way (`pytorch_lora_weights.safetensors`)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_sd(Path(tmp), DEFAULT_SEED)
        unet = UNet2DConditionModel.from_pretrained(Path(tmp) / "unet", local_files_only=True)
    torch.manual_seed(seed + 1)
    cfg = LoraConfig(
        r=4,
        lora_alpha=32,  # scale 8: a visible change on random weights
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        init_lora_weights=False,  # random A and B: the LoRA visibly changes the image
    )
    unet.add_adapter(cfg)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=layers, safe_serialization=True
    )


# --- text ---------------------------------------------------------------------------


def _bpe_tokenizer(special_tokens: list[str], vocab_size: int = 384) -> Any:
    """A ByteLevel BPE tokenizer trained on a fixed corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok


def _tokenizer(specials: list[str], bos: str, eos: str, pad: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_bpe_tokenizer(specials), bos_token=bos, eos_token=eos, pad_token=pad, model_max_length=512,
    )


def _save_causal_lm(folder: Path, tokenizer: Any, model: Any) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)


def build_tiny_gpt2(folder: Path, seed: int = DEFAULT_SEED) -> None:
    """GPT-2 (hidden 64, 2 layers); its tokenizer has no chat template."""
    from transformers import GPT2Config, GPT2LMHeadModel

    eos = "<|endoftext|>"
    tokenizer = _tokenizer([eos], eos, eos, eos)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    _save_causal_lm(folder, tokenizer, GPT2LMHeadModel(config))


def build_tiny_llama(folder: Path, seed: int = DEFAULT_SEED) -> None:
    """Llama (hidden 64, 2 layers, GQA); its tokenizer carries a chat template."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(["<s>", "</s>", "<pad>"], "<s>", "</s>", "<pad>")
    tokenizer.chat_template = _LLAMA_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    _save_causal_lm(folder, tokenizer, LlamaForCausalLM(config))


# --- registry -----------------------------------------------------------------------


@dataclass(frozen=True)
class TinySpec:
    builder: Callable[[Path, int], None]
    description: str


TINY_MODELS: dict[str, TinySpec] = {
    "base:tiny-sd": TinySpec(build_tiny_sd, "tiny Stable Diffusion 1.x (seeded random weights)"),
    "base:tiny-sdxl": TinySpec(build_tiny_sdxl, "tiny SDXL (seeded random weights)"),
    "lora:tiny-sd-lora": TinySpec(build_tiny_sd_lora, "tiny LoRA for base:tiny-sd"),
    "base:tiny-gpt2": TinySpec(build_tiny_gpt2, "tiny GPT-2 (no chat template)"),
    "base:tiny-llama": TinySpec(build_tiny_llama, "tiny Llama (chat template)"),
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crynux-node" / "tiny-models"


def tiny_folder(model_id: str, cache_dir: Path, seed: int = DEFAULT_SEED) -> Path:
    name = model_id.replace(":", "-")
    return Path(cache_dir) / f"{name}-v{TINY_VERSION}-s{seed}"


def materialize(model_id: str, cache_dir: Path | None = None, seed: int = DEFAULT_SEED) -> Path:
    """Build the tiny model `model_id` into the cache once; return its folder.

    Built in a temporary sibling folder and renamed into place, so a crash or a concurrent
    builder never leaves a half-written model behind.
    """
    spec = TINY_MODELS.get(model_id)
    if spec is None:
        raise KeyError(f"{model_id!r} is not a built-in tiny model ({sorted(TINY_MODELS)})")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = tiny_folder(model_id, cache_dir, seed)
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        log.info("building tiny model %s into %s", model_id, target)
        # Builders must not disturb the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            spec.builder(tmp, seed)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # another process won the race: use its copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
