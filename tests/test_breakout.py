"""Breakout: RAM parsing, the oracle's decisions on constructed states, the phase split, the RAM facts
against real frames, a short real game, and collect -> evaluate with the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from vlmrl.games import get_game
from vlmrl.games.breakout import (
    PADDLE_CENTRE_OFFSET,
    PADDLE_HIT_Y,
    WALL_LEFT_X,
    WALL_RIGHT_X,
    Breakout,
    BreakoutOracle,
    ball_phase,
    fold_x,
    make_breakout_ram,
    parse_breakout_ram,
    predict_landing_x,
)

ram = make_breakout_ram


def test_the_registry_resolves_breakout_with_its_oracle_and_classes():
    game = get_game("ALE/Breakout-v5")
    assert isinstance(game, Breakout) and game.has_oracle and game.phases == ("down", "up", "none")
    assert game.actions == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert game.action_class("fire") == "serve" and not game.same_class("RIGHT", "LEFT")
    assert isinstance(get_game("BreakoutNoFrameskip-v4"), Breakout)
    assert game.crop_rows() == (32, 196)


def test_parse_reads_what_make_writes_and_rejects_a_wrong_size():
    state = parse_breakout_ram(ram(paddle_x=100, ball_x=150, ball_y=120, lives=3))
    assert (state.paddle_x, state.ball_x, state.ball_y, state.lives) == (100, 150, 120, 3) and state.ball_in_play
    assert not parse_breakout_ram(ram(ball_x=135, ball_y=0)).ball_in_play  # y 0: waiting to be served
    with pytest.raises(ValueError, match="128 bytes"):
        parse_breakout_ram(np.zeros(64, dtype=np.uint8))


def test_wall_folding():
    assert fold_x(100) == 100
    assert fold_x(WALL_LEFT_X - 10) == WALL_LEFT_X + 10
    assert fold_x(WALL_RIGHT_X + 10) == WALL_RIGHT_X - 10
    assert fold_x(WALL_RIGHT_X + (WALL_RIGHT_X - WALL_LEFT_X) + 5) == WALL_LEFT_X + 5  # two walls
    # Straight down-right from (100, 138) at (+4, +8): 40 rows to go -> 20 columns.
    assert predict_landing_x(100, PADDLE_HIT_Y - 40, 4, 8) == 120
    # Down-left: 80 columns left of x 80 is x 0, 56 past the left wall (56): folded back to 112.
    assert predict_landing_x(80, PADDLE_HIT_Y - 80, -8, 8) == 112
    assert predict_landing_x(90, 100, 3, -6) == 90  # going up: no landing


def test_phase_split():
    assert ball_phase(ram(ball_x=100, ball_y=120), ram(ball_x=96, ball_y=112)) == "down"
    assert ball_phase(ram(ball_x=100, ball_y=112), ram(ball_x=96, ball_y=120)) == "up"
    assert ball_phase(ram(ball_x=100, ball_y=120), None) == "none"  # no history
    assert ball_phase(ram(ball_x=100, ball_y=0), ram(ball_x=100, ball_y=0)) == "none"  # not in play
    assert ball_phase(ram(ball_x=100, ball_y=200), ram(ball_x=96, ball_y=192)) == "none"  # past the paddle
    assert ball_phase(ram(ball_x=100, ball_y=120), ram(ball_x=40, ball_y=200)) == "none"  # a serve's jump
    assert get_game("ALE/Breakout-v5").phase(ram(ball_x=100, ball_y=120), ram(ball_x=96, ball_y=112)) == "down"


def test_oracle_serves_when_the_ball_is_out_of_play():
    d = BreakoutOracle().decide(ram(paddle_x=100, ball_y=0), None)
    assert (d.action, d.action_class) == ("FIRE", "serve") and "not in play" in d.analysis


def test_oracle_moves_toward_the_predicted_landing_column():
    oracle = BreakoutOracle()
    # Falling to the right from 40 rows above the paddle at (+4, +8): lands at x 140, aim 131.
    prev, now = ram(paddle_x=80, ball_x=116, ball_y=130), ram(paddle_x=80, ball_x=120, ball_y=138)
    d = oracle.decide(now, prev)
    assert d.action == "RIGHT" and "come down at x=140" in d.analysis
    # The mirror image: lands at x 100, aim 91.
    prev, now = ram(paddle_x=150, ball_x=124, ball_y=130), ram(paddle_x=150, ball_x=120, ball_y=138)
    assert oracle.decide(now, prev).action == "LEFT"


def test_oracle_stays_within_the_dead_band():
    oracle = BreakoutOracle()
    landing = 120 + 4 * (PADDLE_HIT_Y - 138) / 8  # 140
    paddle = round(landing) - PADDLE_CENTRE_OFFSET + 2  # 2 off its aim, at rest
    prev, now = ram(paddle_x=paddle, ball_x=116, ball_y=130), ram(paddle_x=paddle, ball_x=120, ball_y=138)
    d = oracle.decide(now, prev)
    assert (d.action, d.action_class) == ("NOOP", "stay") and "so I stay" in d.reasoning


def test_oracle_brakes_a_sliding_paddle_instead_of_chasing():
    oracle = BreakoutOracle()
    # The paddle sits 10 left of its aim but slides right by 24 a step: it will coast ~12 on its own,
    # so no RIGHT; a press toward a target that near would swing it far past.
    aim = 140 - PADDLE_CENTRE_OFFSET
    prev = ram(paddle_x=aim - 34, ball_x=116, ball_y=130)
    now = ram(paddle_x=aim - 10, ball_x=120, ball_y=138)
    assert oracle.decide(now, prev).action == "NOOP"
    # At rest 10 left of its aim a press (~28 in all) would overshoot more than staying misses.
    still = ram(paddle_x=aim - 10, ball_x=116, ball_y=130)
    assert oracle.decide(ram(paddle_x=aim - 10, ball_x=120, ball_y=138), still).action == "NOOP"


def test_oracle_folds_the_side_wall_into_its_aim():
    oracle = BreakoutOracle()
    # Falling left at (-8, +8) from x 70, 40 rows above the paddle: unfolded it would land at x 30, past
    # the left wall (56); folded, at 82, to the right of where the ball is now. A paddle at the far left
    # (at rest, aim 82 - 9 = 73) moves right; aiming at the unfolded 30 it would have stayed at the wall.
    prev, now = ram(paddle_x=55, ball_x=78, ball_y=130), ram(paddle_x=55, ball_x=70, ball_y=138)
    assert predict_landing_x(70, 138, -8, 8) == 82
    d = oracle.decide(now, prev)
    assert "come down at x=82" in d.analysis and d.action == "RIGHT"


def test_ram_addresses_match_the_pixels_of_real_frames():
    """The module's RAM facts on a real game: paddle and ball found by colour agree with the RAM."""
    from vlmrl.env import make_env, ram_of

    env = make_env("ALE/Breakout-v5")
    oracle, names = BreakoutOracle(), None
    try:
        names = {n: i for i, n in enumerate(env.unwrapped.get_action_meanings())}
        frame, _ = env.reset(seed=3)
        now, prev = ram_of(env), None
        paddles = balls = 0
        for _ in range(300):
            frame, *_ = env.step(names[oracle.decide(now, prev).action])
            prev, now = now, ram_of(env)
            state = parse_breakout_ram(now)
            red = (frame == (200, 72, 72)).all(-1)
            red[:, :8] = red[:, 152:] = False  # the walls' red feet
            ball_rows, ball_cols = np.nonzero(red[93:189])  # below the bricks, above the paddle
            if len(ball_rows) and 0 < ball_rows.min() < 185 - 93:  # wholly clear of the bricks and the paddle
                assert ball_cols.min() in (state.ball_x - 49, state.ball_x - 48)
                assert ball_rows.min() + 93 == state.ball_y + 9
                balls += 1
            # The paddle where the ball is not in its rows and the right wall does not hide part of it.
            if not 180 <= state.ball_y + 9 <= 193 and state.paddle_x <= 183:
                cols = np.nonzero(red[191:193].any(0))[0]
                assert (cols.min(), cols.max()) == (state.paddle_x - 47, state.paddle_x - 32)
                paddles += 1
        assert balls > 50 and paddles > 50
    finally:
        env.close()


def _play(policy, seed: int, steps: int) -> float:
    from vlmrl.env import make_env, ram_of

    env = make_env("ALE/Breakout-v5")
    rng = np.random.default_rng(seed)
    try:
        names = {n: i for i, n in enumerate(env.unwrapped.get_action_meanings())}
        env.reset(seed=seed)
        now, prev, total = ram_of(env), None, 0.0
        for _ in range(steps):
            action = names[policy.decide(now, prev).action] if policy else int(rng.integers(4))
            _, reward, terminated, truncated, _ = env.step(action)
            total += reward
            prev, now = now, ram_of(env)
            if terminated or truncated:
                break
        return total
    finally:
        env.close()


def test_a_short_real_game_the_oracle_beats_random():
    oracle = sum(_play(BreakoutOracle(), seed, 400) for seed in (11, 12))
    random = sum(_play(None, seed, 400) for seed in (11, 12))
    assert oracle > random + 10


def test_collect_then_evaluate_breakout_with_the_tiny_model(tiny_model, tmp_path):
    import collect
    import evaluate
    from vlmrl.cli import parse
    from vlmrl.configs import CollectArguments, EvaluateArguments

    game = ["--game", "ALE/Breakout-v5"]  # the tiny model's record says crop: Breakout's own rows are used
    episodes, evaluation = str(tmp_path / "ep"), str(tmp_path / "eval")
    summary = collect.main(*parse((CollectArguments,), [
        "--model", tiny_model, "--episodes", "2", "--max-steps", "6", "--num-envs", "2", "--teacher-mix", "0.5",
        "--output-dir", episodes, "--no-progress", *game]))
    assert summary["episodes"] == 2 and summary["steps"] == 12

    results = evaluate.main(*parse((EvaluateArguments,), [
        "--model", tiny_model, "--episodes", "1", "--max-steps", "5", "--num-envs", "1", "--output-dir", evaluation,
        "--no-video", "--no-progress", *game]))
    assert results["game"] == "ALE/Breakout-v5" and results["env_steps"] == 5
    split = results["oracle_agreement_by_phase"]
    assert set(split) == {"down", "up", "none"} and sum(p["steps"] for p in split.values()) == 5


@pytest.mark.parametrize("model", ["tiny-smolvlm", "SmolVLM-Instruct"])
def test_the_breakout_recipes_name_breakout_in_every_phase(model, tmp_path):
    from pathlib import Path

    from vlmrl.cli import parse
    from vlmrl.configs import CollectArguments, EvaluateArguments, ReflectArguments
    from vlmrl.experiment import phase_command, recipe_settings

    recipe = Path(__file__).resolve().parent.parent / "recipes" / model / "breakout"
    settings = recipe_settings(recipe)
    assert settings["game"] == "ALE/Breakout-v5"
    # The recipe's model is built by `make tiny-model`; a fresh clone has none, so collection plays randomly here.
    phases = (("collect", CollectArguments, ["--policy", "random"]), ("reflect", ReflectArguments, ["--episodes", "e"]),
              ("evaluate", EvaluateArguments, ["--policy", "random"]))
    for phase, types, required in phases:
        (args,) = parse((types,), ["--config", str(recipe / f"{phase}.yaml"), *required])
        assert args.game == "ALE/Breakout-v5", phase
        cmd = phase_command(phase, exp_dir=tmp_path, recipe=recipe, k=1, overrides={})
        assert str(recipe / f"{phase}.yaml") in cmd
    if model == "tiny-smolvlm":  # two frames in one motion image of Breakout's own crop, size from the model
        cmd = phase_command("collect", exp_dir=tmp_path, recipe=recipe, k=1, overrides={})
        assert cmd[-6:] == ["--frames", "2", "--encoding", "motion", "--crop", "true"]


# --- perception targets: what an observation shows, from the RAM --------------------------------------------------


def test_scene_reads_ball_paddle_side_and_directions_off_the_ram():
    from vlmrl.games.breakout import scene_from_ram

    # Ball x 100 (column 52), y 120 (row 99 of the crop), falling left; paddle x 120 (middle column 80).
    scene = scene_from_ram(ram(paddle_x=120, ball_x=100, ball_y=120), ram(paddle_x=120, ball_x=104, ball_y=112))
    assert (scene.ball_row, scene.ball_col, scene.paddle_col) == (99, 52, 80)
    assert (scene.ball_side, scene.vertical, scene.horizontal) == ("left", "down", "left")
    # Over the paddle's middle (ball_x - paddle_x == 9) counts as right, as the oracle's aim does.
    assert scene_from_ram(ram(paddle_x=100, ball_x=100 + PADDLE_CENTRE_OFFSET, ball_y=120)).ball_side == "right"
    assert scene_from_ram(ram(paddle_x=100, ball_x=99 + PADDLE_CENTRE_OFFSET, ball_y=120)).ball_side == "left"
    # No history, a serve's jump: no direction. Waiting to be served, or fallen below the crop: no ball.
    assert scene_from_ram(ram(ball_x=100, ball_y=120)).vertical is None
    assert scene_from_ram(ram(ball_x=100, ball_y=120), ram(ball_x=40, ball_y=200)).horizontal is None
    for gone in (ram(ball_x=100, ball_y=0), ram(ball_x=100, ball_y=190)):
        scene = scene_from_ram(gone)
        assert not scene.ball_visible and scene.ball_side is scene.ball_row is scene.vertical is None


def test_caption_and_question_keys():
    from vlmrl.games.breakout import CAPTION_TOKENS, NO_BALL, QUESTIONS_BY_NAME, caption_tokens, scene_from_ram

    game = get_game("ALE/Breakout-v5")
    scene = scene_from_ram(ram(paddle_x=120, ball_x=100, ball_y=120), ram(paddle_x=120, ball_x=104, ball_y=112))
    assert game.caption_tokens(scene) == caption_tokens(scene) == [" left", "<y9>", "<x5>", "<p8>", " down", " left"]
    assert caption_tokens(scene_from_ram(ram(paddle_x=191))) == [NO_BALL, NO_BALL, NO_BALL, "<p15>", NO_BALL, NO_BALL]
    assert set(game.caption_vocabulary) == set(CAPTION_TOKENS) == set(get_game("ALE/Pong-v5").caption_vocabulary)
    answers = {name: q.answer(scene) for name, q in QUESTIONS_BY_NAME.items()}
    assert answers == {"left_right": "left", "vertical": "down", "horizontal": "left", "ball_third": "middle",
                       "ball_visible": "yes"}
    assert game.key_question == "left_right" and game.key_question in QUESTIONS_BY_NAME
    with pytest.raises(ValueError, match="Pong's"):
        caption_tokens(scene, physics=True)


def test_perception_never_says_an_action_token():
    """Breakout's side and directions are lower-case words ("left"), never the action tokens ("LEFT")."""
    from vlmrl.perception import perception_texts

    game = get_game("ALE/Breakout-v5")
    pieces = {p for _, slot in game.caption_slots for p in slot}
    words = set(" ".join([*perception_texts(game), *pieces]).replace("?", " ").replace(".", " ").split())
    assert not words & set(game.actions)


def test_varied_play_gives_breakout_scenes_with_every_answer():
    from itertools import islice

    from vlmrl.rollout import varied_play

    game = get_game("ALE/Breakout-v5")
    play = varied_play(game, seed=3, num_envs=2, keep_prob=0.5)
    scenes = [item.scene(game) for item in islice(play, 150)]
    play.close()
    answers = {q.name: {q.answer(s) for s in scenes} for q in game.questions}
    assert {"left", "right"} <= answers["left_right"] and {"up", "down"} <= answers["vertical"]
    assert {"yes", "no"} <= answers["ball_visible"]
