"""Image generation with diffusers: SD 1.x/2.x and SDXL pipelines from a local folder."""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from crynux_common.schemas import ArgsError, ImageTaskArgs

from .cache import module_bytes
from .errors import ModelUnavailable, is_oom

log = logging.getLogger(__name__)

#: model_index.json `_class_name` -> pipeline class name. Nothing else is loaded (no custom code).
PIPELINE_CLASSES = {
    "StableDiffusionPipeline": "StableDiffusionPipeline",
    "StableDiffusionXLPipeline": "StableDiffusionXLPipeline",
}

LORA_ADAPTER = "task_lora"


@dataclass
class ImageModel:
    """A loaded pipeline plus its original scheduler (tasks may switch schedulers)."""

    pipe: Any
    kind: str
    default_scheduler: Any
    schedulers: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return module_bytes(self.pipe.components.values())


def pipeline_class_name(folder: Path) -> str:
    """The pipeline class a folder holds, from its model_index.json; ArgsError if none fits."""
    index = folder / "model_index.json"
    try:
        data = json.loads(index.read_text())
    except FileNotFoundError as e:
        if (folder / "config.json").is_file():  # a whole model of another kind: the task's fault
            raise ArgsError(
                f"{folder.name} is not a diffusers pipeline (no model_index.json)"
            ) from e
        raise ModelUnavailable(f"{folder} holds no model (incomplete download?)") from e
    except (OSError, json.JSONDecodeError) as e:
        raise ArgsError(f"{index} is unreadable: {e}") from e
    name = data.get("_class_name")
    if name not in PIPELINE_CLASSES:
        raise ArgsError(f"unsupported pipeline {name!r}; supported: {sorted(PIPELINE_CLASSES)}")
    return PIPELINE_CLASSES[name]


def load_image_model(folder: Path, device: torch.device, dtype: torch.dtype) -> ImageModel:
    """Load a pipeline from a local folder, exactly as for real weights."""
    import diffusers

    kind = pipeline_class_name(folder)
    cls = getattr(diffusers, kind)
    kwargs: dict[str, Any] = dict(local_files_only=True, torch_dtype=dtype, use_safetensors=True)
    if kind == "StableDiffusionPipeline":
        # Same output on every node; content filtering is the application's business.
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(str(folder), **kwargs)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return ImageModel(pipe=pipe, kind=kind, default_scheduler=pipe.scheduler)


def _scheduler(model: ImageModel, name: str | None) -> Any:
    if name is None:
        return model.default_scheduler
    sched = model.schedulers.get(name)
    if sched is None:
        import diffusers

        cls = getattr(diffusers, f"{name}Scheduler")
        sched = cls.from_config(model.default_scheduler.config)
        model.schedulers[name] = sched
    return sched


def lora_weight_file(folder: Path, weight_file_name: str | None) -> str:
    """The safetensors file of a LoRA folder: the named one, or the only/standard one."""
    if weight_file_name is not None:
        if not weight_file_name.endswith(".safetensors"):
            raise ArgsError(f"LoRA weight file {weight_file_name!r} is not .safetensors")
        if not (folder / weight_file_name).is_file():
            raise ArgsError(f"LoRA {folder.name} has no file {weight_file_name!r}")
        return weight_file_name
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    if "pytorch_lora_weights.safetensors" in files:
        return "pytorch_lora_weights.safetensors"
    if len(files) == 1:
        return files[0]
    raise ArgsError(f"LoRA {folder.name}: name the weight file, candidates {files}")


def generate_images(
    model: ImageModel,
    args: ImageTaskArgs,
    device: torch.device,
    lora_folder: Path | None = None,
) -> list[Image.Image]:
    """Run the pipeline for `args`; the seed drives a CPU generator, so the initial latents
    are the same on every device."""
    pipe = model.pipe
    cfg = args.task_config
    pipe.scheduler = _scheduler(model, args.scheduler)
    lora_loaded = False
    try:
        if lora_folder is not None and args.lora is not None:
            weight = lora_weight_file(lora_folder, args.lora.weight_file_name)
            lora_loaded = True  # from here on, clean up even after a partial load
            try:
                # use_safetensors=True: diffusers never falls back to torch.load (pickle),
                # even for a file named .safetensors that safetensors cannot read.
                pipe.load_lora_weights(
                    str(lora_folder), weight_name=weight, adapter_name=LORA_ADAPTER,
                    use_safetensors=True, local_files_only=True,
                )
            except Exception as e:
                if is_oom(e):
                    raise
                # The files are local and identical on every node: a LoRA that does not
                # load (shape mismatch, no UNet keys ...) does not fit this base model.
                raise ArgsError(
                    f"LoRA {args.lora.model} does not fit {args.base_model}: {e}"
                ) from e
            pipe.set_adapters([LORA_ADAPTER], adapter_weights=[args.lora.strength])
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        out = pipe(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt or None,
            width=cfg.image_width,
            height=cfg.image_height,
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.cfg,
            num_images_per_prompt=cfg.num_images,
            generator=generator,
            output_type="pil",
        )
        return list(out.images)
    finally:
        pipe.scheduler = model.default_scheduler
        if lora_loaded:
            _drop_lora(pipe)


def _drop_lora(pipe: Any) -> None:
    """Remove the task's LoRA so the next task sees the bare base model."""
    try:
        pipe.delete_adapters(LORA_ADAPTER)
    except (ValueError, KeyError, AttributeError):  # never (fully) loaded
        pipe.unload_lora_weights()


def png_bytes(image: Image.Image) -> bytes:
    """Lossless PNG without metadata: the relay recomputes the same pHash from it."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
