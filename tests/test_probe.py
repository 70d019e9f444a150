"""The vision probe: answer keys from RAM, accuracy beside chance, likelihood scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlmrl.games import get_game
from vlmrl.games.pong import QUESTIONS_BY_NAME, make_pong_ram, scene_from_ram
from vlmrl.probe import (
    DEFAULT_OBSERVATION,
    accuracy_and_chance,
    answer_key,
    collect_probe_frames,
    observation_for,
    probe_model,
)
from vlmrl.prompts import option_text, question_messages
from vlmrl.rollout import PlayFrame
from vlmrl.scoring import score_continuations

ram = make_pong_ram

PONG = get_game("ALE/Pong-v5")


def ask(name: str, now: np.ndarray, before: np.ndarray | None = None, drawn: bool = True) -> str | None:
    return QUESTIONS_BY_NAME[name].answer(scene_from_ram(now, before, drawn=drawn))


def test_above_below_key():
    assert ask("above_below", ram(120, 60, 100)) == "above"
    assert ask("above_below", ram(120, 150, 100)) == "below"
    assert ask("above_below", ram(0, 0, 100)) is None  # no ball: not asked
    assert ask("above_below", ram(120, 60, 100), drawn=False) is None


def test_direction_keys_need_two_frames():
    assert ask("vertical", ram(120, 90)) is None
    assert ask("vertical", ram(120, 90), ram(124, 94)) == "up"
    assert ask("vertical", ram(120, 98), ram(124, 94)) == "down"
    assert ask("horizontal", ram(120, 98), ram(124, 94)) == "away"
    assert ask("horizontal", ram(128, 98), ram(124, 94)) == "toward"
    assert ask("horizontal", ram(128, 98), ram(0, 0)) is None


def test_third_and_visible_keys():
    assert ask("ball_third", ram(120, 60)) == "top"  # playfield row 14 of 160
    assert ask("ball_third", ram(120, 126)) == "middle"  # row 80
    assert ask("ball_third", ram(120, 200)) == "bottom"  # row 154
    assert ask("ball_third", ram(0, 0)) is None
    assert ask("ball_visible", ram(0, 0)) == "no"
    assert ask("ball_visible", ram(120, 90)) == "yes"


def test_answer_key_reads_each_sample():
    blank = np.zeros((210, 160, 3), np.uint8)
    ball = blank.copy()
    ball[100:104, 70:72] = 236
    samples = [
        PlayFrame([ball, ball], ram(120, 90), ram(124, 94), 0),
        PlayFrame([blank, blank], ram(0, 0), ram(0, 0), 0),
    ]
    assert answer_key(QUESTIONS_BY_NAME["vertical"], samples, PONG) == ["up", None]
    # RAM in play but nothing drawn: not visible (FACTS: presence needs both).
    samples[1] = PlayFrame([blank, blank], ram(120, 90), ram(124, 94), 0)
    assert answer_key(QUESTIONS_BY_NAME["ball_visible"], samples, PONG) == ["yes", "no"]


def test_accuracy_beside_majority_chance():
    result = accuracy_and_chance(["above", "above", "below", "above"], ["above", "below", "below", None])
    assert result == {"accuracy": round(2 / 3, 4), "chance": round(2 / 3, 4), "n": 3}
    assert accuracy_and_chance(["up"], [None]) == {"accuracy": None, "chance": None, "n": 0}


def test_observation_for_reads_the_tiny_recipe(tmp_path):
    assert observation_for(tmp_path) == DEFAULT_OBSERVATION
    (tmp_path / "tiny_config.json").write_text(
        json.dumps({"observation": {"frames": 2, "encoding": "motion", "crop": True, "image_size": 128}})
    )
    assert observation_for(tmp_path).encoding == "motion"


@pytest.fixture(scope="module")
def tiny():
    from vlmrl.games.pong import CAPTION_TOKENS
    from vlmrl.perception import perception_texts
    from vlmrl.tiny_model import TinyModelConfig, build_model, build_processor, build_tokenizer, observation_config

    config = TinyModelConfig()
    tokenizer = build_tokenizer(config.vocab_size, perception_texts(PONG) * 20, CAPTION_TOKENS)
    model = build_model(config, tokenizer).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads crawl on a CPU shared with other jobs (FACTS)
    yield model, build_processor(config, tokenizer), observation_config(config)
    torch.set_num_threads(threads)


def test_first_token_scoring_matches_full_sequence_scoring(tiny):
    model, processor, observation = tiny
    samples = collect_probe_frames(PONG, frames=3, seed=99)
    from vlmrl.observation import encode_observation

    images = [encode_observation(s.frames, observation, PONG) for s in samples]
    question = QUESTIONS_BY_NAME["ball_third"]
    prompt = processor.apply_chat_template(question_messages(question.text, observation), add_generation_prompt=True)
    options = [option_text(o) for o in question.options]
    fast = score_continuations(model, processor, prompt, images, options)
    full = score_continuations(model, processor, prompt, images, options, full_sequence=True)
    assert fast.shape == (3, 3)
    torch.testing.assert_close(fast, full, atol=1e-4, rtol=1e-4)
    # Options sharing a first token are scored in full: the longer one adds a negative log-prob.
    shared = score_continuations(model, processor, prompt, images, [" top", " top middle"])
    assert (shared[:, 1] < shared[:, 0]).all()


def test_probe_model_reports_accuracy_beside_chance(tiny):
    model, processor, observation = tiny
    samples = collect_probe_frames(PONG, frames=12, seed=7)
    results = probe_model(model, processor, samples, observation, game=PONG, batch_size=8)
    assert set(results) == set(QUESTIONS_BY_NAME)
    for r in results.values():
        assert r["n"] == 0 or (0 <= r["accuracy"] <= 1 and 0 < r["chance"] <= 1)
    assert results["ball_visible"]["n"] == 12


def test_probe_model_with_two_rgb_images(tiny):
    """SmolVLM's default observation: two RGB frames as two images in the prompt."""
    from vlmrl.observation import ObservationConfig

    model, processor, _ = tiny
    samples = collect_probe_frames(PONG, frames=4, seed=8)
    rgb = ObservationConfig(frames=2, encoding="rgb", crop=False, image_size=128)
    results = probe_model(model, processor, samples, rgb, game=PONG, batch_size=4,
                          questions=[QUESTIONS_BY_NAME["vertical"]])
    assert set(results) == {"vertical"}
