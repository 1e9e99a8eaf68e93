"""The inference engine on tiny seeded models: agreement between nodes, error scores,
failures that must not become error scores, warm models."""
from __future__ import annotations

import json

import pytest
import torch

from crynux_common.schemas import TaskType, canonical_json
from crynux_common.scores import ERROR_SCORE, hamming, score_for, scores_match
from node_client.inference import InferenceFailure, ModelUnavailable, OutOfMemory
from node_client.inference.engine import TEXT_RESULT_NAME

from .tasks import SECOND_NODE_TASKS, encode, image_args, make_engine, text_args

IMAGE, TEXT = TaskType.IMAGE, TaskType.TEXT


# --- two nodes agree; another seed does not ------------------------------------------


@pytest.mark.parametrize("name", ["image2", "llama", "gpt2"])
def test_run_twoProcessesSameArgs_scoresMatch(engine, second_node, name):
    tt, raw = SECOND_NODE_TASKS[name]
    mine, theirs = engine.run(tt, raw), second_node[name]
    assert mine.error is None and theirs["error"] is None
    assert scores_match(mine.score, bytes.fromhex(theirs["score"]), tt)
    # Same code, same thread count: even the bytes agree.
    assert [[n, b.hex()] for n, b in mine.files] == theirs["files"]
    assert len(mine.score) == (16 if tt == IMAGE else 32)


def test_run_twoProcessesOtherSeed_scoresDoNotMatch(engine, second_node):
    mine = engine.run(*SECOND_NODE_TASKS["image2"])
    theirs = bytes.fromhex(second_node["image2_seed3"]["score"])
    assert not scores_match(mine.score, theirs, IMAGE)


def test_run_imageOtherSeed_scoresDoNotMatch(engine):
    a = engine.run(IMAGE, encode(image_args()))
    b = engine.run(IMAGE, encode(image_args(task_config={"seed": 2})))
    assert a.error is None and b.error is None
    assert not scores_match(a.score, b.score, IMAGE)
    assert hamming(a.score, b.score) > 5


def test_run_textOtherSeed_scoresDiffer(engine):
    a = engine.run(TEXT, encode(text_args()))
    b = engine.run(TEXT, encode(text_args(seed=8)))
    assert a.files[0][1] != b.files[0][1]
    assert not scores_match(a.score, b.score, TEXT)


def test_run_imageSameEngineTwice_identicalBytes(engine):
    a = engine.run(IMAGE, encode(image_args()))
    b = engine.run(IMAGE, encode(image_args()))
    assert a.files == b.files and a.score == b.score


def test_run_textGreedyIgnoresSamplingKnobs(engine):
    greedy = {"do_sample": False, "temperature": 0.5}
    a = engine.run(TEXT, encode(text_args(generation_config=greedy)))
    b = engine.run(TEXT, encode(text_args(generation_config={**greedy, "top_k": 3}, seed=99)))
    assert a.score == b.score


# --- result shape: what the relay recomputes -------------------------------------------


def test_run_image_filesArePngsScoredLikeTheRelay(engine):
    r = engine.run(IMAGE, encode(image_args(task_config={"num_images": 3})))
    assert [n for n, _ in r.files] == ["0.png", "1.png", "2.png"]
    assert all(b.startswith(b"\x89PNG\r\n\x1a\n") for _, b in r.files)
    assert len(r.score) == 24
    assert r.score == score_for(IMAGE, [b for _, b in r.files])


def test_run_text_responseIsCanonicalChatCompletion(engine):
    r = engine.run(TEXT, encode(text_args()))
    assert [n for n, _ in r.files] == [TEXT_RESULT_NAME]
    body = r.files[0][1]
    resp = json.loads(body)
    assert canonical_json(resp) == body
    assert resp["model"] == "base:tiny-llama"
    choice = resp["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in {"stop", "length"}
    assert resp["usage"]["completion_tokens"] == 16  # min_new_tokens = max_new_tokens
    assert resp["usage"]["total_tokens"] == resp["usage"]["prompt_tokens"] + 16
    assert r.score == score_for(TEXT, [body])


def test_run_textChatTemplateShapesThePrompt(engine):
    """tiny-llama has a chat template, tiny-gpt2 uses the fallback; both take the roles."""
    for model in ("base:tiny-llama", "base:tiny-gpt2"):
        a = engine.run(TEXT, encode(text_args(model=model)))
        short = [{"role": "user", "content": "Hi"}]
        b = engine.run(TEXT, encode(text_args(model=model, messages=short)))
        pa = json.loads(a.files[0][1])["usage"]["prompt_tokens"]
        pb = json.loads(b.files[0][1])["usage"]["prompt_tokens"]
        assert pa > pb


def test_run_sdxl_generatesAndAgrees(engine):
    a = engine.run(IMAGE, encode(image_args(base_model="base:tiny-sdxl")))
    b = engine.run(IMAGE, encode(image_args(base_model="base:tiny-sdxl")))
    assert a.error is None and len(a.score) == 8 and a.files == b.files


def test_run_schedulerChoice_changesResultThenRestoresDefault(engine):
    base = engine.run(IMAGE, encode(image_args()))
    euler = engine.run(IMAGE, encode(image_args(scheduler="EulerAncestralDiscrete")))
    again = engine.run(IMAGE, encode(image_args()))
    assert euler.error is None and euler.files != base.files
    assert again.files == base.files


def test_run_lora_changesResultThenUnloads(engine):
    base = engine.run(IMAGE, encode(image_args()))
    lora = {"model": "lora:tiny-sd-lora", "strength": 1.0}
    with_lora = engine.run(IMAGE, encode(image_args(lora=lora)))
    assert with_lora.error is None and with_lora.files != base.files
    weaker = engine.run(IMAGE, encode(image_args(lora={**lora, "strength": 0.5})))
    assert weaker.files not in (base.files, with_lora.files)
    assert engine.run(IMAGE, encode(image_args())).files == base.files


# --- invalid arguments: the error score, never an exception ----------------------------


@pytest.mark.parametrize(
    "task_type, raw, fragment",
    [
        (IMAGE, b"{not json", "not JSON"),
        (IMAGE, encode(image_args(task_config={"image_width": 100})), "multiple of 8"),
        (IMAGE, encode(image_args(task_config={"num_images": 11})), "num_images"),
        (IMAGE, encode(image_args(base_model="base:../no-such-model")), "file path"),
        (IMAGE, encode(image_args(base_model="base:tiny-gpt2")), "not a diffusers pipeline"),
        (TEXT, encode(text_args(model="base:tiny-sd")), "not a language model"),
        (IMAGE, encode(image_args(lora={"model": "lora:nope/../../x"})), "file path"),
        (IMAGE, encode(text_args()), "invalid image task arguments"),
        (TEXT, encode(text_args(generation_config={"max_new_tokens": 512, "min_new_tokens": 1})),
         "context"),
    ],
)
def test_run_failsIfArgsInvalid_errorScore(engine, task_type, raw, fragment):
    r = engine.run(task_type, raw)
    assert r.score == ERROR_SCORE and r.files == []
    assert r.error is not None and fragment in r.error


def test_run_failsIfArgsDisagreeWithTask_errorScore(engine):
    raw = encode(image_args(task_config={"num_images": 2}))
    r = engine.run(IMAGE, raw, task_model_ids=["base:tiny-sdxl"])
    assert r.score == ERROR_SCORE and "declares" in (r.error or "")
    r = engine.run(IMAGE, raw, num_images=1)
    assert r.score == ERROR_SCORE and "2 images" in (r.error or "")
    ok = engine.run(IMAGE, raw, task_model_ids=["base:tiny-sd"], num_images=2)
    assert ok.error is None and len(ok.score) == 16


def test_run_errorScoresOfTwoNodesMatch(engine, second_node):
    mine = engine.run(*SECOND_NODE_TASKS["invalid"])
    theirs = bytes.fromhex(second_node["invalid"]["score"])
    assert mine.score == ERROR_SCORE and scores_match(mine.score, theirs, IMAGE)


# --- node failures: raised, never an error score ---------------------------------------


@pytest.mark.parametrize(
    "over",
    [{"base_model": "base:some-org/some-model"}, {"base_model": "base:no-such-model"},
     {"lora": {"model": "lora:nope"}}],
)
def test_run_failsIfModelNotHeldNorAllowed_raisesModelUnavailable(engine, over):
    """Well-formed names another node may hold: never an error score (an auditor holding the
    model would compute a real result), never a download (not configured, not allow-listed)."""
    with pytest.raises(ModelUnavailable, match="not held by this node"):
        engine.run(IMAGE, encode(image_args(**over)))


def test_run_failsIfOutOfMemory_raisesAndUnloads(fresh_engine, monkeypatch):
    raw = encode(image_args())
    fresh_engine.run(IMAGE, raw)
    unet = fresh_engine.cache.get("image:base:tiny-sd", lambda: (None, 0)).pipe.unet

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(unet, "forward", oom)
    with pytest.raises(OutOfMemory) as exc:
        fresh_engine.run(IMAGE, raw)
    assert isinstance(exc.value, InferenceFailure)
    assert fresh_engine.loaded_models() == []
    # The next task loads the model again and works.
    assert fresh_engine.run(IMAGE, raw).error is None
    assert fresh_engine.load_count("image:base:tiny-sd") == 2


def test_run_failsIfTorchCrashes_raisesInferenceFailure(fresh_engine, monkeypatch):
    raw = encode(text_args())
    fresh_engine.run(TEXT, raw)
    tm = fresh_engine.cache.get("text:base:tiny-llama", lambda: (None, 0))

    def boom(*a, **k):
        raise RuntimeError("illegal memory access")

    monkeypatch.setattr(tm.model, "generate", boom)
    with pytest.raises(InferenceFailure, match="illegal memory access"):
        fresh_engine.run(TEXT, raw)
    assert fresh_engine.loaded_models() == ["text:base:tiny-llama"]  # only OOM unloads


# --- warm models ------------------------------------------------------------------------


def test_run_secondTaskSameModel_doesNotLoadAgain(fresh_engine):
    assert fresh_engine.loaded_models() == []
    first = fresh_engine.run(IMAGE, encode(image_args()))
    other = image_args(prompt="a blue bird", task_config={"seed": 5})
    second = fresh_engine.run(IMAGE, encode(other))
    assert first.error is None and second.error is None
    assert fresh_engine.load_count("image:base:tiny-sd") == 1
    assert second.timings["load_s"] < first.timings["load_s"]
    fresh_engine.run(TEXT, encode(text_args()))
    fresh_engine.run(TEXT, encode(text_args(seed=1)))
    assert fresh_engine.load_count("text:base:tiny-llama") == 1
    assert fresh_engine.cache.stats.hits == 2


def test_run_secondTaskInOtherProcess_loadsOnce(second_node):
    # The second node ran two image tasks and two text tasks on tiny-sd, llama, gpt2.
    assert second_node["loads"] == {
        "image:base:tiny-sd": 1,
        "text:base:tiny-llama": 1,
        "text:base:tiny-gpt2": 1,
    }


def test_cache_memoryBudget_evictsLeastRecentlyUsed(registry):
    sd_bytes = 7 * 2**20  # tiny SD is ~6.3 MB, tiny SDXL ~6.6 MB: only one fits
    small = make_engine(registry, memory_budget_bytes=sd_bytes + 2**20)
    small.run(IMAGE, encode(image_args()))
    small.run(TEXT, encode(text_args()))
    assert small.loaded_models() == ["image:base:tiny-sd", "text:base:tiny-llama"]
    small.run(IMAGE, encode(image_args(base_model="base:tiny-sdxl")))
    assert "image:base:tiny-sd" not in small.loaded_models()
    assert small.cache.used_bytes <= small.cache.budget_bytes
    small.run(IMAGE, encode(image_args()))
    assert small.load_count("image:base:tiny-sd") == 2
    assert small.cache.stats.evictions >= 2


def test_run_failsIfLoraDoesNotFitBaseModel_errorScoreAndCleanModel(engine):
    base = engine.run(IMAGE, encode(image_args(base_model="base:tiny-sdxl")))
    bad = engine.run(
        IMAGE, encode(image_args(base_model="base:tiny-sdxl", lora={"model": "lora:tiny-sd-lora"}))
    )
    assert bad.score == ERROR_SCORE and "does not fit" in (bad.error or "")
    assert engine.run(IMAGE, encode(image_args(base_model="base:tiny-sdxl"))).files == base.files
