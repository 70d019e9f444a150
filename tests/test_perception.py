"""The RAM answer key, the caption targets, varied play and a smoke run of perception pre-training."""

from __future__ import annotations

import re
from itertools import islice

import numpy as np
import pytest

from vlmrl.games import get_game
from vlmrl.games.pong import (
    ACTIONS,
    CAPTION_PROMPT,
    CAPTION_TOKENS,
    NO_BALL,
    QUESTIONS,
    caption_tokens,
    make_pong_ram,
    scene_from_ram,
)
from vlmrl.perception import (
    PerceptionData,
    PretrainConfig,
    collect_perception_data,
    perception_texts,
    pretrain_perception,
)
from vlmrl.rollout import varied_play

PONG = get_game("ALE/Pong-v5")

ram = make_pong_ram


def test_scene_ball_above_and_below_the_paddle_centre():
    # The paddle's middle is 7 RAM units below its y (the oracle's PADDLE_CENTRE_OFFSET).
    assert scene_from_ram(ram(120, 106, 100)).ball_above_paddle is True
    assert scene_from_ram(ram(120, 107, 100)).ball_above_paddle is False
    assert scene_from_ram(ram(120, 60, 150)).ball_above_paddle is True


def test_scene_pixel_rows_of_ball_and_paddle():
    scene = scene_from_ram(ram(ball_x=100, ball_y=80, player_y=90))
    assert (scene.ball_row, scene.ball_col, scene.paddle_row) == (34, 52, 50)


def test_scene_without_ball_has_no_ball_facts():
    for scene in (scene_from_ram(ram(0, 0)), scene_from_ram(ram(120, 0)), scene_from_ram(ram(120, 90), drawn=False)):
        assert not scene.ball_visible
        assert scene.ball_above_paddle is scene.vertical is scene.horizontal is scene.ball_row is None


def test_scene_directions_need_two_rams():
    assert scene_from_ram(ram(120, 90)).vertical is None
    moving = scene_from_ram(ram(120, 90), ram(116, 94))
    assert (moving.vertical, moving.horizontal) == ("up", "toward")
    moving = scene_from_ram(ram(116, 94), ram(120, 90))
    assert (moving.vertical, moving.horizontal) == ("down", "away")
    assert scene_from_ram(ram(120, 90), ram(116, 90)).vertical is None  # level
    assert scene_from_ram(ram(120, 90), ram(0, 0)).vertical is None  # just served


def test_caption_targets():
    assert caption_tokens(scene_from_ram(ram(120, 90, 100), ram(116, 94, 100))) == [
        " above", "<y4>", "<x7>", "<p6>", " up", " toward",
    ]
    assert caption_tokens(scene_from_ram(ram(0, 0, 100))) == [NO_BALL, NO_BALL, NO_BALL, "<p6>", NO_BALL, NO_BALL]
    # Rows clamp into the 16 buckets at the playfield's edges.
    assert caption_tokens(scene_from_ram(ram(205, 206, 30)))[1:4] == ["<y15>", "<x15>", "<p0>"]


def test_physics_caption_reads_the_teachers_aim_and_the_paddle_rest():
    # Toward the player and up: it meets the top wall and crosses the paddle's column at RAM y 67
    # (90 - 68 folded at 44.5), playfield row 21; the teacher aims where it will be two steps on,
    # RAM y 90 - 2 * 4 = 82, row 36, bucket 3; the paddle moved down 10 since the previous frame,
    # so it would come to rest 7.5 further down (momentum 0.75): row 68, bucket 6.
    scene = scene_from_ram(ram(120, 90, 100), ram(116, 94, 90))
    assert scene.crossing_row == 21 and scene.aim_row == 36 and scene.paddle_rest_row == 68
    assert caption_tokens(scene, physics=True) == ["<y3>", "<p6>", *caption_tokens(scene)]
    # Two steps on past a wall: held at the wall (RAM y 50 - 2 * 6 = 38 -> 44.5, row -1, bucket 0).
    assert scene_from_ram(ram(120, 50, 100), ram(116, 56, 100)).aim_row == round(44.5) - 46
    # Going away: no crossing; a still paddle rests where it is; no previous frame: no crossing.
    away = scene_from_ram(ram(150, 120, 30), ram(154, 120, 30))
    assert away.crossing_row is None and away.aim_row is None
    assert caption_tokens(away, physics=True)[:2] == ["<hnone>", "<p0>"]
    assert scene_from_ram(ram(150, 120)).crossing_row is None
    # A bounce off the bottom wall folds back: y 200 + 3 * (188 - 180) / 2 = 212 -> 201, row 155.
    assert scene_from_ram(ram(180, 200), ram(178, 197)).crossing_row == 155
    # Out of play, the paddle's rest is still read; the pieces are existing tokens only.
    out = caption_tokens(scene_from_ram(ram(0, 0, 100), ram(0, 0, 120)), physics=True)
    assert out[:2] == ["<hnone>", "<p4>"] and set(out) <= set(CAPTION_TOKENS)


def test_no_action_names_in_targets_or_prompts():
    # Case-insensitive: in Pong "RIGHT" and "LEFT" are actions (paddle up/down), so the
    # perception vocabulary avoids even the plain words.
    texts = CAPTION_TOKENS + perception_texts(PONG) + [CAPTION_PROMPT] + [q.text for q in QUESTIONS]
    words = set(re.findall(r"[a-z]+", " ".join(texts).lower()))
    assert not words & {a.lower() for a in ACTIONS}
    assert all(len(caption_tokens(scene_from_ram(ram(x, y), ram(x + 4, y + 2)))) == 6
               for x, y in [(0, 0), (100, 100)])


def test_varied_play_is_deterministic_and_varied():
    first = list(islice(varied_play(PONG, seed=5, num_envs=2, keep_prob=0.5), 40))
    again = list(islice(varied_play(PONG, seed=5, num_envs=2, keep_prob=0.5), 40))
    assert all(np.array_equal(a.ram, b.ram) and np.array_equal(a.frames[-1], b.frames[-1])
               for a, b in zip(first, again, strict=True))
    assert len({a.episode_seed for a in first}) == 2
    assert len(first[0].frames) == 2


@pytest.fixture(scope="module")
def tiny():
    import torch

    from vlmrl.tiny_model import TinyModelConfig, build_model, build_processor, build_tokenizer, observation_config

    config = TinyModelConfig()
    tokenizer = build_tokenizer(config.vocab_size, perception_texts(PONG) * 20, CAPTION_TOKENS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads crawl on a CPU shared with other jobs (FACTS)
    yield build_model(config, tokenizer), build_processor(config, tokenizer), observation_config(config)
    torch.set_num_threads(threads)


def test_pretraining_smoke_lowers_the_loss(tiny):
    model, processor, observation = tiny
    data = collect_perception_data(24, observation, game=PONG, seed=3)
    assert data.images.shape == (24, 1, 128, 128, 3)
    config = PretrainConfig(frames=24, epochs=4, batch_size=8, learning_rate=3e-3, warmup_steps=0, seed=0)
    result = pretrain_perception(model, processor, data, observation, config)
    assert result.steps == 12
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3]) - 1.0


def test_pretraining_rejects_a_tokenizer_without_caption_tokens(tiny):
    from vlmrl.tiny_model import TinyModelConfig, build_processor, build_tokenizer

    _, _, observation = tiny
    plain = build_processor(TinyModelConfig(), build_tokenizer(1000))
    data = PerceptionData(np.ones((1, 1, 128, 128, 3), np.uint8), [scene_from_ram(ram())], PONG)
    with pytest.raises(ValueError, match="caption piece"):
        pretrain_perception(tiny[0], plain, data, observation, PretrainConfig(frames=1, epochs=1))


def test_answer_loss_matches_the_full_sequence_loss(tiny):
    """Left padding and last-positions-only logits give the same loss as the plain labelled forward."""
    import torch

    from vlmrl.perception import _answer_loss

    model, processor, _ = tiny
    pad = processor.tokenizer.pad_token_id
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    prompt_a = [5, 6, *[image_id] * 16, 7, 8, 9]
    prompt_b = [5, *[image_id] * 16, 7]
    seqs = [prompt_a + [40, 41, 42], prompt_b + [43]]
    pixel_values = torch.rand(2, 1, 3, 128, 128) + 0.01
    with torch.no_grad():
        fast = _answer_loss(model, seqs, [len(prompt_a), len(prompt_b)], pixel_values, pad)
        length = max(map(len, seqs))
        input_ids = torch.full((2, length), pad)
        labels = torch.full((2, length), -100)
        mask = torch.zeros((2, length), dtype=torch.long)
        for row, (seq, n) in enumerate(zip(seqs, [len(prompt_a), len(prompt_b)], strict=True)):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, n : len(seq)] = torch.tensor(seq[n:])
            mask[row, : len(seq)] = 1
        full = model(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, labels=labels).loss
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_vision_warmup_teaches_the_tower_alone(tiny):
    """The warm-up moves the vision tower and nothing else; its answers skip questions without an answer."""
    import copy

    import torch

    from vlmrl.perception import _TowerAnswers

    model, processor, observation = tiny
    model = copy.deepcopy(model)
    data = collect_perception_data(16, observation, game=PONG, seed=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = PretrainConfig(frames=16, epochs=2, batch_size=8, vision_warmup_steps=3, seed=0)
    from vlmrl.perception import PixelPath, _warm_up_vision

    owner, local = np.zeros(16, np.int64), np.arange(16)
    losses = _warm_up_vision(model, [data], lambda idx: data.images[idx], PixelPath(processor, data.images[:2]),
                             owner, local, config, np.random.default_rng(0))
    assert len(losses) == 3 and all(np.isfinite(losses))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("model.vision_model.") for n in moved)

    answers = _TowerAnswers(8, [data])
    features = torch.randn(16, 4, 8)
    # A question no sample answers adds nothing to the loss.
    without = copy.deepcopy(answers)
    without.keys = [k for k in answers.keys if k[1] != "horizontal"]
    answers.keys = [(p, n, np.full_like(labels, -1) if n == "horizontal" else labels) for p, n, labels in answers.keys]
    torch.testing.assert_close(answers.loss(features, owner, local), without.loss(features, owner, local))
    # The paddle's position alone, or every position, beside the questions.
    questions = {n for _, n, _ in _TowerAnswers(8, [data]).keys}
    paddle = {n for _, n, _ in _TowerAnswers(8, [data], "questions+paddle").keys}
    every = {n for _, n, _ in _TowerAnswers(8, [data], "questions+positions").keys}
    assert paddle - questions == {"paddle_row"} and {"paddle_row", "ball_row"} <= every - questions


def test_vision_warmup_steps_must_not_be_negative():
    with pytest.raises(ValueError, match="vision_warmup_steps"):
        PretrainConfig(vision_warmup_steps=-1)


def test_vision_warmup_is_never_longer_than_the_pretraining():
    assert PretrainConfig(frames=64, epochs=1, batch_size=32).warmup_steps_run == 2
    assert PretrainConfig().warmup_steps_run == PretrainConfig().vision_warmup_steps == 1000
    assert PretrainConfig(vision_warmup_steps=0).warmup_steps_run == 0


def test_warmup_positions_are_the_scenes_whole_numbers_standardised():
    from vlmrl.perception import _positions

    scenes = [scene_from_ram(ram(ball_y=y, ball_x=x, player_y=60), ram(ball_y=y - 2, ball_x=x - 2, player_y=60))
              for y, x in ((40, 100), (80, 110), (120, 120))]
    scenes.append(scene_from_ram(ram(player_y=60)))  # the ball out of play
    positions = _positions(scenes)
    # bools and words are not positions; a field equal everywhere (the paddle) teaches nothing
    assert {"ball_row", "ball_col"} <= set(positions) and "paddle_row" not in positions
    assert not {"ball_visible", "vertical", "horizontal"} & set(positions)
    rows = positions["ball_row"]
    assert np.isnan(rows[3]) and np.isclose(np.nanmean(rows), 0) and np.isclose(np.nanstd(rows), 1)
    assert rows[0] < rows[1] < rows[2]


def test_warmup_targets_must_be_known():
    with pytest.raises(ValueError, match="vision_warmup_targets"):
        PretrainConfig(vision_warmup_targets="actions")
