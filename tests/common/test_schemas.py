"""Task argument schemas: what is accepted, what is an ArgsError."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crynux_common.schemas import (
    MAX_ARGS_BYTES,
    ArgsError,
    DuplicateJsonKey,
    ImageTaskArgs,
    JsonRejected,
    JsonTooDeep,
    TaskType,
    TextTaskArgs,
    canonical_json,
    encode_task_args,
    json_depth,
    model_id,
    parse_image_args,
    parse_task_args,
    parse_text_args,
    split_model_id,
    strict_json_loads,
)


def image_doc(**overrides):
    doc = {
        "version": "1.0",
        "base_model": "runwayml/stable-diffusion-v1-5",
        "prompt": "a red fox in the snow",
        "negative_prompt": "blurry",
        "task_config": {
            "image_width": 512,
            "image_height": 768,
            "steps": 30,
            "seed": 42,
            "num_images": 2,
            "cfg": 7.5,
        },
    }
    doc.update(overrides)
    return doc


def text_doc(**overrides):
    doc = {
        "version": "1.0",
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a prime."},
        ],
        "generation_config": {
            "max_new_tokens": 30,
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.9,
            "top_k": 40,
        },
        "seed": 7,
    }
    doc.update(overrides)
    return doc


def raw(doc) -> bytes:
    return json.dumps(doc).encode()


def with_config(**cfg):
    doc = image_doc()
    doc["task_config"] = {**doc["task_config"], **cfg}
    return raw(doc)


# --- image ------------------------------------------------------------------------


def test_parseImage_acceptsValidArgs():
    args = parse_image_args(raw(image_doc()))
    assert isinstance(args, ImageTaskArgs)
    assert args.task_config.num_images == 2
    assert args.task_config.image_height == 768
    assert args.scheduler is None and args.lora is None
    assert args.task_type is TaskType.IMAGE


def test_parseImage_modelIdsBaseFirstThenLora():
    doc = image_doc(lora={"model": "lora:pixel-art", "strength": 0.8}, scheduler="EulerDiscrete")
    args = parse_image_args(raw(doc))
    assert args.model_ids() == ["base:runwayml/stable-diffusion-v1-5", "lora:pixel-art"]
    assert args.lora is not None and args.lora.model == "pixel-art"


def test_parseImage_acceptsPrefixedBaseModel():
    args = parse_image_args(raw(image_doc(base_model="base:tiny-sd")))
    assert args.base_model == "tiny-sd"
    assert args.model_ids() == ["base:tiny-sd"]


def test_parseImage_defaultsApply():
    doc = image_doc()
    del doc["version"], doc["negative_prompt"]
    doc["task_config"] = {"seed": 1}
    args = parse_image_args(raw(doc))
    assert args.version == "1.0" and args.negative_prompt == ""
    assert (args.task_config.image_width, args.task_config.num_images) == (512, 1)


@pytest.mark.parametrize(
    "cfg, fragment",
    [
        ({"image_width": 500}, "multiple of 8"),
        ({"image_height": 56}, "image_height"),
        ({"image_width": 2056}, "image_width"),
        ({"steps": 0}, "steps"),
        ({"steps": 201}, "steps"),
        ({"num_images": 0}, "num_images"),
        ({"num_images": 11}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"cfg": 31}, "cfg"),
        ({"steps": "20"}, "steps"),  # strict: no string coercion
        ({"steps": 20.0}, "steps"),  # strict: no float coercion
        ({"num_images": True}, "num_images"),  # strict: bools are not ints
        ({"unknown": 1}, "unknown"),
    ],
)
def test_parseImage_failsIfTaskConfigOutOfBounds(cfg, fragment):
    with pytest.raises(ArgsError, match=fragment):
        parse_image_args(with_config(**cfg))


def test_parseImage_failsIfSeedMissing():
    doc = image_doc()
    del doc["task_config"]["seed"]
    with pytest.raises(ArgsError, match="task_config.seed"):
        parse_image_args(raw(doc))


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"version": "2.0"}, "not supported"),
        ({"version": "one"}, "version"),
        ({"base_model": "has space"}, "base_model"),
        ({"base_model": ""}, "base_model"),
        ({"prompt": ""}, "prompt"),
        ({"scheduler": "MagicScheduler"}, "scheduler"),
        ({"lora": {"model": "x", "strength": 5}}, "strength"),
        ({"lora": {"model": "x", "weight_file_name": "../../etc/passwd"}}, "weight_file_name"),
        ({"extra": True}, "extra"),
    ],
)
def test_parseImage_failsIfArgsInvalid(overrides, fragment):
    with pytest.raises(ArgsError, match=fragment):
        parse_image_args(raw(image_doc(**overrides)))


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"\xff\xfe", "UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"x": NaN}', "NaN"),
        (b" " * (MAX_ARGS_BYTES + 1), "limit"),
    ],
)
def test_parse_failsIfNotAJsonObject(data, fragment):
    with pytest.raises(ArgsError, match=fragment):
        parse_task_args(data, TaskType.IMAGE)


def test_parse_failsIfTaskTypeUnknown():
    with pytest.raises(ArgsError, match="unknown task type"):
        parse_task_args(raw(image_doc()), 7)


def test_parse_failsIfImageArgsGivenForTextTask():
    with pytest.raises(ArgsError, match="text task"):
        parse_task_args(raw(image_doc()), TaskType.TEXT)


# --- text -------------------------------------------------------------------------


def test_parseText_acceptsValidArgs():
    args = parse_text_args(raw(text_doc()))
    assert isinstance(args, TextTaskArgs)
    assert args.model_ids() == ["base:Qwen/Qwen2.5-7B-Instruct"]
    assert args.messages[1].content == "Name a prime."
    assert args.generation_config.top_k == 40
    assert args.task_type is TaskType.TEXT


def test_parseText_generationConfigDefaults():
    doc = text_doc()
    del doc["generation_config"]
    args = parse_text_args(raw(doc))
    assert args.generation_config.do_sample is False
    assert args.generation_config.min_new_tokens is None


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user"}]}, "content"),
        ({"generation_config": {"max_new_tokens": 0}}, "max_new_tokens"),
        ({"generation_config": {"temperature": 0}}, "temperature"),
        ({"generation_config": {"top_p": 1.5}}, "top_p"),
        ({"generation_config": {"max_new_tokens": 5, "min_new_tokens": 6}}, "min_new_tokens"),
        ({"generation_config": {"do_sample": "yes"}}, "do_sample"),
        ({"seed": None}, "seed"),
        ({"model": "lora:x"}, "model"),
    ],
)
def test_parseText_failsIfArgsInvalid(overrides, fragment):
    with pytest.raises(ArgsError, match=fragment):
        parse_text_args(raw(text_doc(**overrides)))


# --- helpers ----------------------------------------------------------------------


def test_canonicalJson_sortsKeysWithoutSpacesKeepsUnicode():
    assert canonical_json({"b": 1, "a": ["é", {"d": None, "c": True}]}) == (
        '{"a":["é",{"c":true,"d":null}],"b":1}'.encode()
    )


def test_modelId_roundTrips():
    assert model_id("lora", "x/y") == "lora:x/y"
    assert split_model_id("base:a:b") == ("base", "a:b")
    for bad in ("x", "vae:x", "base:", ":x"):
        with pytest.raises(ValueError):
            split_model_id(bad)


@given(
    w=st.integers(8, 256).map(lambda k: k * 8),
    h=st.integers(8, 256).map(lambda k: k * 8),
    steps=st.integers(1, 200),
    seed=st.integers(0, 2**63 - 1),
    n=st.integers(1, 10),
    cfg=st.floats(0, 30, allow_nan=False),
    prompt=st.text(min_size=1, max_size=50),
)
def test_encodeImage_roundTripsThroughParse(w, h, steps, seed, n, cfg, prompt):
    doc = image_doc(prompt=prompt)
    doc["task_config"] = dict(
        image_width=w, image_height=h, steps=steps, seed=seed, num_images=n, cfg=cfg
    )
    args = parse_image_args(raw(doc))
    again = parse_image_args(encode_task_args(args))
    assert again == args
    assert encode_task_args(again) == encode_task_args(args)


# --- strict JSON: what both the relay and the node refuse to read ------------------------------


@pytest.mark.parametrize(
    "data, error, fragment",
    [
        (b'{"a": 1, "a": 2}', DuplicateJsonKey, "duplicate key 'a'"),
        (b'{"x": {"a": 1, "b": {"a": 2}, "b": 3}}', DuplicateJsonKey, "'b'"),
        (b"[" * 1000 + b"]" * 1000, JsonTooDeep, "1000 levels"),
        (b'{"a":' + b"[" * 32 + b"]" * 32 + b"}", JsonTooDeep, "33 levels"),
        (b'{"x": Infinity}', JsonRejected, "Infinity"),
        (b'{"x": 1', JsonRejected, "not JSON"),
    ],
)
def test_strictJson_refusesWhatParsersReadDifferently(data, error, fragment):
    with pytest.raises(error, match=fragment):
        strict_json_loads(data)


def test_strictJson_bracketsInsideStringsAreNotNesting():
    doc = {"a": "[[[[{{{{" * 40, "b": '\\"]]]]', "c": [[{"d": "}"}]]}
    assert strict_json_loads(json.dumps(doc)) == doc
    assert json_depth(json.dumps(doc)) == 4
    assert strict_json_loads(b'{"a":' + b"[" * 31 + b"]" * 31 + b"}")["a"] is not None


@pytest.mark.parametrize(
    "data, fragment",
    [(b'{"prompt": "a", "prompt": "b"}', "duplicate key"), (b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}", "deep")],
)
def test_parseArgs_failsOnDuplicateKeysAndDeepNesting(data, fragment):
    """An ArgsError (the node commits the error score), never a RecursionError."""
    with pytest.raises(ArgsError, match=fragment):
        parse_task_args(data, TaskType.IMAGE)
