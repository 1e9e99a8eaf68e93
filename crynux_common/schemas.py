"""Versioned task arguments (the JSON an application uploads) as pydantic v2 models.

The relay validates uploads with these models and the node parses what it fetched with
them. The bytes on the wire are what `argsHash` covers; these models never re-encode
them for hashing. Unknown fields are rejected so that two nodes can never read the same
bytes differently.

Public API:
    TaskType                       IMAGE = 0, TEXT = 1 (mirrors the market's enum)
    ImageTaskArgs, TextTaskArgs    the argument models (`.model_ids()` -> on-chain IDs)
    parse_task_args(raw, task_type) -> ImageTaskArgs | TextTaskArgs, raises ArgsError
    parse_image_args(raw), parse_text_args(raw)
    canonical_json(obj) -> bytes   sorted keys, no spaces, UTF-8
    strict_json_loads(raw) -> Any  JSON without duplicate keys, NaN/Infinity or nesting deeper
                                   than MAX_JSON_DEPTH; raises JsonRejected (a ValueError)
    model_id(kind, name) / split_model_id(id)
    check_model_name(name), parse_model_id(id)   names that can exist (else ValueError)
"""
from __future__ import annotations

import json
import re
from enum import IntEnum
from itertools import accumulate
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

#: Major version of the argument format this code understands; minor versions only add
#: optional fields with defaults that keep old behaviour.
ARGS_MAJOR_VERSION = 1
ARGS_VERSION = "1.0"

#: Largest accepted argument document (bytes). The relay applies the same limit on upload.
MAX_ARGS_BYTES = 256 * 1024

MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 8_192
MAX_MESSAGE_CHARS = 65_536
MAX_MESSAGES = 256

#: Deepest nesting of objects/arrays accepted in argument and result JSON (ours nest 3 deep).
MAX_JSON_DEPTH = 32

#: Model names are Hugging Face style repository names: `name` or `org/name`. Each part is
#: 1 to MODEL_NAME_PART_MAX_CHARS ASCII letters, digits, '.', '_' or '-', starts and ends with
#: a letter, digit or '_', holds no '..' or '--' and does not end in '.git' (the Hub's own
#: rules). Anything else (path traversal, absolute paths, backslashes, empty parts, spaces,
#: over-long names) names no model that can exist anywhere: the task gets the error score.
MODEL_NAME_PART_MAX_CHARS = 96
MODEL_NAME_PART_PATTERN = r"^[A-Za-z0-9_](?:[A-Za-z0-9._\-]*[A-Za-z0-9_])?$"
_MODEL_NAME_PART = re.compile(MODEL_NAME_PART_PATTERN)

MODEL_KINDS = ("base", "lora")

#: Schedulers a node can be asked for (diffusers class name without "Scheduler").
SchedulerName = Literal[
    "DDIM",
    "DDPM",
    "PNDM",
    "LMSDiscrete",
    "EulerDiscrete",
    "EulerAncestralDiscrete",
    "HeunDiscrete",
    "DPMSolverMultistep",
    "UniPCMultistep",
]


class TaskType(IntEnum):
    """Task kinds; mirrors the task market's Solidity enum (IMAGE = 0, TEXT = 1)."""

    IMAGE = 0
    TEXT = 1


class ArgsError(ValueError):
    """The task arguments are invalid: a node commits the error score for them."""


class JsonRejected(ValueError):
    """A document that is not strict JSON; ``code`` names why (an API error code)."""

    code = "malformed_json"


class DuplicateJsonKey(JsonRejected):
    """An object names the same key twice (parsers disagree on which value wins)."""

    code = "duplicate_json_key"


class JsonTooDeep(JsonRejected):
    """Objects/arrays nested deeper than the bound (deep nesting exhausts recursive parsers)."""

    code = "json_too_deep"


#: A JSON string (with its escapes), matched without backtracking.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """The deepest nesting of objects/arrays in a JSON text, counted without parsing it (no
    recursion: brackets outside strings). Exact for valid JSON; malformed text is refused by
    the parser afterwards."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(_BRACKET_STEP[ch] for ch in brackets), default=0)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise DuplicateJsonKey(f"duplicate key {key!r} in a JSON object")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise JsonRejected(f"non-standard JSON constant {name}")


def strict_json_loads(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parses JSON that every parser reads the same way: UTF-8, no duplicate keys, no
    NaN/Infinity, nesting at most ``max_depth``. Raises JsonRejected (or a subclass)."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise JsonRejected(f"not UTF-8: {e}") from None
    else:
        text = raw
    depth = json_depth(text)
    if depth > max_depth:
        raise JsonTooDeep(f"JSON nested {depth} levels deep; the limit is {max_depth}")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except JsonRejected:
        raise
    except (ValueError, RecursionError) as e:
        raise JsonRejected(f"not JSON: {e}") from None


def canonical_json(obj: Any) -> bytes:
    """The one JSON encoding used for hashing: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def model_id(kind: str, name: str) -> str:
    """`model_id("base", "x")` -> `"base:x"`."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {MODEL_KINDS}")
    return f"{kind}:{name}"


def split_model_id(mid: str) -> tuple[str, str]:
    """`"lora:x"` -> `("lora", "x")`; raises ValueError for anything else."""
    kind, sep, name = mid.partition(":")
    if not sep or kind not in MODEL_KINDS or not name:
        raise ValueError(f"invalid model ID {mid!r}; expected 'base:<name>' or 'lora:<name>'")
    return kind, name


def _strip_kind(value: Any, kind: str) -> Any:
    """Accept `name` or `kind:name` and keep the bare name."""
    if isinstance(value, str) and value.startswith(kind + ":"):
        return value[len(kind) + 1 :]
    return value


def check_model_name(name: str) -> str:
    """`name` if it can name a model (see MODEL_NAME_PART_PATTERN); else ValueError saying why."""
    shown = repr(name if len(name) <= 80 else name[:80] + "...")
    if not name:
        raise ValueError("model name is empty")
    if name.startswith("/") or "\\" in name or ".." in name:
        raise ValueError(f"model name {shown} looks like a file path ('/' first, '\\' or '..')")
    parts = name.split("/")
    if len(parts) > 2:
        raise ValueError(f"model name {shown} has more than one '/' (expected 'name' or 'org/name')")
    for part in parts:
        if not part:
            raise ValueError(f"model name {shown} has an empty part")
        if len(part) > MODEL_NAME_PART_MAX_CHARS:
            raise ValueError(
                f"model name {shown}: a part is {len(part)} characters, limit {MODEL_NAME_PART_MAX_CHARS}"
            )
        if "--" in part:
            raise ValueError(f"model name {shown}: '--' is not allowed")
        if not _MODEL_NAME_PART.fullmatch(part):
            raise ValueError(
                f"model name {shown}: only ASCII letters, digits, '.', '_', '-' (a part starts and "
                "ends with a letter, digit or '_')"
            )
    if name.endswith(".git"):
        raise ValueError(f"model name {shown} ends in '.git'")
    return name


def parse_model_id(mid: str) -> tuple[str, str]:
    """split_model_id, and the name must be one that can exist (check_model_name)."""
    kind, name = split_model_id(mid)
    check_model_name(name)
    return kind, name


ModelName = Annotated[str, AfterValidator(check_model_name)]


class _Strict(BaseModel):
    # strict: no "5" -> 5 or true -> 1 coercions; two parsers must never disagree.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class _Versioned(_Strict):
    version: str = Field(default=ARGS_VERSION, pattern=r"^\d{1,3}\.\d{1,3}$")

    @field_validator("version")
    @classmethod
    def _major_supported(cls, v: str) -> str:
        major = int(v.split(".")[0])
        if major != ARGS_MAJOR_VERSION:
            raise ValueError(
                f"argument version {v} not supported (this node reads {ARGS_MAJOR_VERSION}.x)"
            )
        return v


class ImageTaskConfig(_Strict):
    image_width: int = Field(default=512, ge=64, le=2048)
    image_height: int = Field(default=512, ge=64, le=2048)
    steps: int = Field(default=25, ge=1, le=200)
    seed: int = Field(ge=0, le=MAX_SEED)
    num_images: int = Field(default=1, ge=1, le=10)
    cfg: float = Field(default=7.0, ge=0.0, le=30.0)

    @field_validator("image_width", "image_height")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"{v} is not a multiple of 8")
        return v


class LoraArgs(_Strict):
    """A LoRA applied on top of the base model."""

    model: ModelName
    #: Weight file inside the LoRA folder/repo; None lets diffusers pick the default name.
    weight_file_name: str | None = Field(default=None, max_length=200, pattern=r"^[^/\\]+$")
    strength: float = Field(default=1.0, ge=0.0, le=2.0)

    @field_validator("model", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return _strip_kind(v, "lora")


class ImageTaskArgs(_Versioned):
    """Arguments of an image (Stable Diffusion) task."""

    base_model: ModelName
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    task_config: ImageTaskConfig
    scheduler: SchedulerName | None = None
    lora: LoraArgs | None = None

    @field_validator("base_model", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return _strip_kind(v, "base")

    def model_ids(self) -> list[str]:
        """On-chain model IDs this task needs, base model first."""
        ids = [model_id("base", self.base_model)]
        if self.lora is not None:
            ids.append(model_id("lora", self.lora.model))
        return ids

    @property
    def task_type(self) -> TaskType:
        return TaskType.IMAGE


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(default=256, ge=1, le=4096)
    #: Optional lower bound (useful for small models that stop early); <= max_new_tokens.
    min_new_tokens: int | None = Field(default=None, ge=0, le=4096)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=50, ge=0, le=1000)

    @model_validator(mode="after")
    def _min_le_max(self) -> GenerationConfig:
        if self.min_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens {self.min_new_tokens} > max_new_tokens {self.max_new_tokens}"
            )
        return self


class TextTaskArgs(_Versioned):
    """Arguments of a text (chat completion) task."""

    model: ModelName
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    generation_config: GenerationConfig = Field(default_factory=GenerationConfig)
    seed: int = Field(ge=0, le=MAX_SEED)

    @field_validator("model", mode="before")
    @classmethod
    def _strip(cls, v: Any) -> Any:
        return _strip_kind(v, "base")

    def model_ids(self) -> list[str]:
        return [model_id("base", self.model)]

    @property
    def task_type(self) -> TaskType:
        return TaskType.TEXT


TaskArgs = ImageTaskArgs | TextTaskArgs

_MODELS: dict[TaskType, type[ImageTaskArgs] | type[TextTaskArgs]] = {
    TaskType.IMAGE: ImageTaskArgs,
    TaskType.TEXT: TextTaskArgs,
}


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def parse_task_args(raw: bytes | str, task_type: TaskType | int) -> TaskArgs:
    """Parse and validate raw argument bytes for a task of `task_type`.

    Raises ArgsError with a readable message for anything invalid: wrong size, not UTF-8,
    not JSON, not an object, schema violations, unknown task type.
    """
    try:
        tt = TaskType(int(task_type))
    except ValueError as e:
        raise ArgsError(f"unknown task type {task_type!r}") from e
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if len(raw) > MAX_ARGS_BYTES:
        raise ArgsError(f"arguments are {len(raw)} bytes, limit {MAX_ARGS_BYTES}")
    try:
        data = strict_json_loads(raw)
    except JsonRejected as e:
        raise ArgsError(f"invalid arguments: {e}") from e
    if not isinstance(data, dict):
        raise ArgsError(f"arguments must be a JSON object, got {type(data).__name__}")
    model = _MODELS[tt]
    try:
        return model.model_validate(data)
    except ValidationError as e:
        detail = _format_validation_error(e)
        raise ArgsError(f"invalid {tt.name.lower()} task arguments: {detail}") from e


def parse_image_args(raw: bytes | str) -> ImageTaskArgs:
    args = parse_task_args(raw, TaskType.IMAGE)
    assert isinstance(args, ImageTaskArgs)
    return args


def parse_text_args(raw: bytes | str) -> TextTaskArgs:
    args = parse_task_args(raw, TaskType.TEXT)
    assert isinstance(args, TextTaskArgs)
    return args


def encode_task_args(args: TaskArgs) -> bytes:
    """Canonical bytes for arguments built in Python (SDK side); `argsHash` is taken over these."""
    return canonical_json(args.model_dump(mode="json", exclude_none=True))
