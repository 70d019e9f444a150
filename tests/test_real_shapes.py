"""Random-init models with SmolVLM's published shapes: the config builder (fast, at reduced widths), the
benchmark at a reduced size, and the seed's SmolVLM-Instruct recipe end to end at the 256M shapes (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmrl.real_shapes import (
    PONG_ACTIONS,
    SHAPES,
    action_token_counts,
    build_model,
    build_processor,
    build_tokenizer,
    get_shape,
    memory_model,
    parameter_count,
    reduced_shape,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "SmolVLM-Instruct" / "pong"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _frame(seed: int = 0) -> np.ndarray:
    # Never all zeros: Idefics3 drops an all-zero image as padding (FACTS).
    return np.random.default_rng(seed).integers(0, 256, (210, 160, 3), dtype=np.uint8)


def test_published_image_token_arithmetic():
    # Each checkpoint's native tile gives its published image tokens: (tile // patch)² / scale².
    for shape in SHAPES.values():
        assert shape.tile_tokens(shape.image_size) == shape.image_seq_len
    assert get_shape("2B").tile_tokens(384) == 81  # 27 patches a side, folded by 3
    assert get_shape("256M").tile_tokens(384) == 36  # the recipe's tile on a 512-px tower: 24 a side, by 4
    assert get_shape("500m").tile_tokens(384) == 36
    with pytest.raises(ValueError, match="multiple of the pixel-shuffle"):
        get_shape("256M").tile_tokens(400)  # 25 patches a side
    with pytest.raises(ValueError, match="takes 1..384"):
        get_shape("2B").tile_tokens(512)
    with pytest.raises(ValueError, match="unknown size"):
        get_shape("7B")


def test_parameter_counts_match_the_published_checkpoints():
    # SmolVLM-256M-Instruct's model.safetensors is 513 MB in bf16: 256.5 M parameters.
    assert parameter_count(get_shape("256M"))["total"] == 256_484_928
    assert 2.24e9 < parameter_count(get_shape("2B"))["total"] < 2.25e9  # "SmolVLM 2.2B"
    assert 0.50e9 < parameter_count(get_shape("500M"))["total"] < 0.51e9


def test_tokenizer_has_multi_token_action_names(tokenizer):
    counts = action_token_counts(tokenizer)
    assert set(counts) == set(PONG_ACTIONS)
    assert counts["RIGHTFIRE"] >= 2 and counts["LEFTFIRE"] >= 2 and counts["NOOP"] >= 2
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Your move?"}]}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>User:<image>Your move?<end_of_utterance>") and text.endswith("Assistant:")


@pytest.mark.parametrize("size", ["256M", "2B"])
def test_reduced_model_matches_its_processor(tokenizer, size):
    """The processor writes exactly as many <image> tokens as the vision tower and connector make."""
    shape = reduced_shape(size)
    processor = build_processor(shape, tokenizer)
    model = build_model(shape, tokenizer, dtype=torch.float32)
    assert model.config.text_config.vocab_size == get_shape(size).vocab_size  # the published embedding size
    inputs = processor(text=["<image>Your move?"], images=[[_frame()]], return_tensors="pt")
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"] == image_token).sum()) == shape.tile_tokens(384)
    assert inputs["pixel_values"].shape[-2:] == (384, 384)
    with torch.inference_mode():
        logits = model(**inputs, logits_to_keep=1).logits
    assert logits.shape == (1, 1, get_shape(size).vocab_size) and torch.isfinite(logits).all()


def test_multi_token_action_names_are_scored_in_constrained_mode(tokenizer):
    """VLMPolicy's multi-token path scores each full action name (plus the closing quote), as a single
    unpadded forward of that one answer would."""
    from vlmrl.games import get_game
    from vlmrl.observation import ObservationConfig
    from vlmrl.policies import Observation
    from vlmrl.policies.vlm import VLMPolicy
    from vlmrl.prompts import ANSWER_PREFIX

    shape = reduced_shape("256M")
    processor = build_processor(shape, tokenizer)
    model = build_model(shape, tokenizer, dtype=torch.float32)
    observation = ObservationConfig(frames=1, encoding="rgb", image_size=384)
    policy = VLMPolicy(model, processor, get_game("ALE/Pong-v5"), PONG_ACTIONS, observation, decode="constrained")
    assert not policy._single_token
    observations = [Observation([_frame(i)], np.zeros(128, np.uint8)) for i in range(2)]
    scores = policy.action_logprobs(observations)
    assert scores.shape == (2, len(PONG_ACTIONS)) and torch.isfinite(scores).all()

    prefix = policy.encoder.prompt + " " + ANSWER_PREFIX
    images = policy.encoder.images(observations[:1])
    for index, action in enumerate(PONG_ACTIONS):
        text = prefix + action + '"'
        inputs = processor(text=[text], images=images, return_tensors="pt")
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        k = n - len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(**inputs).logits[0, :-1].float(), -1)
        targets = inputs["input_ids"][0, 1:]
        expected = logprobs[-k:].gather(-1, targets[-k:, None]).sum()
        assert torch.allclose(scores[0, index], expected, atol=1e-4), action
    assert {d.action for d in policy.act(observations)} <= set(PONG_ACTIONS)


def test_recipe_tile_on_a_512px_tower_loads_with_matching_image_tokens(tokenizer, tmp_path):
    """A processor saved for the native 512-px tile (64 image tokens, as SmolVLM-256M publishes it), loaded for
    the recipe's 384-px tile: load_processor makes the prompt's image tokens match the 36 features."""
    from vlmrl.models import load_processor, load_vlm
    from vlmrl.observation import ObservationConfig

    shape = reduced_shape("256M")
    model = build_model(shape, tokenizer, dtype=torch.float32)
    model.save_pretrained(tmp_path)
    build_processor(shape, tokenizer, tile=512).save_pretrained(tmp_path)
    processor = load_processor(str(tmp_path), ObservationConfig(frames=1, encoding="rgb", image_size=384))
    assert processor.image_seq_len == 36
    inputs = processor(text=["<image>Your move?"], images=[[_frame()]], return_tensors="pt")
    with torch.inference_mode():
        assert torch.isfinite(load_vlm(str(tmp_path))(**inputs, logits_to_keep=1).logits).all()


def test_memory_model_parts_add_up():
    model = memory_model(get_shape("2B"))
    p = model["parameters"]
    full = model["train_full_bf16_ckpt"]
    assert full["weights"] == pytest.approx(2 * p / 1024**3, abs=0.01)
    assert full["adamw_states"] == pytest.approx(4 * p / 1024**3, abs=0.01)
    parts = sum(v for k, v in full.items() if k not in ("batch", "sequence", "total_gib", "fits"))
    assert full["total_gib"] == pytest.approx(parts, abs=0.05)
    # Checkpointing shrinks activations; fp32 masters double the optimizer's share.
    assert model["train_full_bf16_ckpt"]["total_gib"] < model["train_full_bf16_no_ckpt"]["total_gib"]
    assert model["train_full_mixed_no_ckpt"]["adamw_states"] == pytest.approx(2 * full["adamw_states"], abs=0.01)
    assert model["tokens"]["image_per_frame"] == 81 + 3
    assert set(model["act_generate"]["fits"]) == {"A100-40GB", "H100-80GB"}


def _python(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # PYTHONPATH: benchmarks/ scripts import the package from this checkout, not an installed copy.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)


def test_cli_help_and_user_errors(tmp_path):
    help_text = _python("-m", "vlmrl.real_shapes", "--help").stdout
    for flag in ("--size", "--output-dir", "--tile", "--dtype", "--seed"):
        assert flag in help_text
    unknown = _python("-m", "vlmrl.real_shapes", "--size", "7B", "--output-dir", str(tmp_path / "m"))
    assert unknown.returncode == 2 and unknown.stderr.strip().count("\n") == 0
    assert "unknown size '7B'" in unknown.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = _python("-m", "vlmrl.real_shapes", "--size", "256M", "--output-dir", str(blocker / "model"))
    assert unwritable.returncode == 2 and unwritable.stderr.strip().count("\n") == 0
    assert unwritable.stderr.startswith("error: cannot create")
    bad_tile = _python("-m", "vlmrl.real_shapes", "--size", "256M", "--tile", "400",
                       "--output-dir", str(tmp_path / "m"))
    assert bad_tile.returncode == 2 and "pixel-shuffle" in bad_tile.stderr


def test_benchmark_runs_at_a_reduced_size():
    result = _python("benchmarks/real_shapes.py", "--size", "256M", "--reduced", "--batch-sizes", "1,2",
                     "--reflect-batch-sizes", "1", "--repeats", "1", "--warmup", "0", "--train-steps", "1",
                     "--train-batch", "2", "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)  # one JSON object, nothing else on stdout
    phases = [(r["phase"], r["batch"]) for r in figures["rows"]]
    assert phases == [("act", 1), ("act", 2), ("generate", 1), ("generate", 2), ("reflect", 1), ("train", 2),
                      ("lora", 2)]
    assert all(r["s_per_step"] > 0 and r["peak_gib"] > 0 for r in figures["rows"])
    assert figures["rows"][0]["multi_token_path"] is True
    lora, full = figures["rows"][-1], figures["rows"][-2]
    assert 0 < lora["trainable_parameters"] < full["trainable_parameters"]
    arithmetic = json.loads(_python("benchmarks/real_shapes.py", "--size", "2B", "--model-memory").stdout)
    assert arithmetic["size"] == "2B" and "train_lora_ckpt" in arithmetic


@pytest.mark.slow
def test_seed_recipe_end_to_end_at_256m_shapes(tmp_path):
    """The SmolVLM-Instruct recipe's four phases through the project's entry points, at SmolVLM-256M's shapes:
    a 384-px tile, free JSON generation, self-reflection, a full fine-tune (fp32 on CPU), evaluation."""
    start = time.perf_counter()
    model = tmp_path / "smolvlm-256m-random"
    built = _python("-m", "vlmrl.real_shapes", "--size", "256M", "--output-dir", str(model))
    assert built.returncode == 0, built.stderr[-2000:]
    assert json.loads(built.stdout)["parameters"] == 256_484_928

    def phase(script: str, config: str, *flags: str) -> subprocess.CompletedProcess:
        result = _python(script, "--config", str(RECIPE / config), *flags)
        assert result.returncode == 0, f"{script}: {result.stderr[-3000:]}"
        return result

    episodes, self_reflections = tmp_path / "episodes", tmp_path / "reflections-self"
    phase("collect.py", "collect.yaml", "--model", str(model), "--episodes", "1", "--max-steps", "4", "--num-envs",
          "1", "--max-new-tokens", "16", "--output-dir", str(episodes), "--progress", "false")
    from datasets import load_dataset

    steps = load_dataset(str(episodes), split="train")
    assert len(steps) == 4 and set(steps["action"]) <= set(PONG_ACTIONS)

    phase("reflect.py", "reflect.yaml", "--episodes", str(episodes), "--reflector", "self",
                      "--reflect-on", "all", "--reflection-rate", "1.0", "--max-reflections", "2",
                      "--max-new-tokens", "16", "--output-dir", str(self_reflections), "--progress", "false")
    summary = json.loads((self_reflections / ".vlmrl" / "summary.json").read_text())
    # Random weights write no valid JSON: the self-reflector's two answers are generated, counted invalid, dropped.
    assert summary["selected"] == 2 and summary["reflected"] + summary["invalid"] == 2
    # So the fine-tune trains on the oracle's reflections of the same steps (same format, same images).
    oracle_reflections = tmp_path / "reflections-oracle"
    phase("reflect.py", "reflect.yaml", "--episodes", str(episodes), "--reflector", "oracle", "--reflect-on", "all",
          "--reflection-rate", "1.0", "--max-reflections", "4", "--output-dir", str(oracle_reflections),
          "--progress", "false")
    checkpoint = tmp_path / "checkpoint"
    trained = phase("train.py", "train.yaml", "--model_name_or_path", str(model), "--reflections",
                    str(oracle_reflections), "--output_dir", str(checkpoint), "--max_steps", "2", "--bf16", "false",
                    "--report_to", "none", "--save_strategy", "no")
    assert "samples 4" in trained.stdout and (checkpoint / "model.safetensors").is_file()
    phase("evaluate.py", "evaluate.yaml", "--model", str(checkpoint), "--episodes", "1", "--max-steps", "4",
          "--num_envs", "1", "--max-new-tokens", "16", "--output-dir", str(tmp_path / "eval"), "--progress", "false")
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["env_steps"] == 4 and len(results["returns"]) == 1
    print(f"end to end at 256M shapes: {time.perf_counter() - start:.0f} s")
