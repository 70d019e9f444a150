"""vlmrl.games: the registry, and Pong's module (the RAM oracle's decisions on constructed states, action
classes, the phase split, and a short real game)."""

from __future__ import annotations

import numpy as np
import pytest

from vlmrl.games import Game, get_game
from vlmrl.games.base import OracleDecision
from vlmrl.games.pong import (
    ACTION_CLASSES,
    BALL_PHASES,
    CENTRE_BALL_Y,
    PADDLE_CENTRE_OFFSET,
    PLAYER_HIT_X,
    WALL_BOTTOM_Y,
    WALL_TOP_Y,
    PongOracle,
    ball_phase,
    make_pong_ram,
    parse_pong_ram,
    predict_intercept_y,
)
from vlmrl.results import agreement_by_phase

GAME = get_game("ALE/Pong-v5")
# The paddle y that puts the middle of the paddle on a ball arriving at ball_y.
CENTRE_PADDLE_Y = round(CENTRE_BALL_Y) - PADDLE_CENTRE_OFFSET


def pong_ram(player_y: int, ball_x: int, ball_y: int, cpu_y: int = 100) -> np.ndarray:
    """A RAM with only the bytes the oracle reads set; uint8 like the emulator's."""
    ram = np.zeros(128, dtype=np.uint8)
    ram[51], ram[50], ram[49], ram[54] = player_y, cpu_y, ball_x, ball_y
    return ram


def step_pair(
    player_y: int, ball_x: int, ball_y: int, vx: int, vy: int, paddle_v: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(ram, prev_ram) for a ball and paddle moving by (vx, vy) and paddle_v since the last step."""
    return (
        pong_ram(player_y, ball_x, ball_y),
        pong_ram(player_y - paddle_v, ball_x - vx, ball_y - vy),
    )


def test_parse_pong_ram_reads_positions_and_ball_in_play():
    state = parse_pong_ram(pong_ram(player_y=120, ball_x=90, ball_y=70, cpu_y=66))
    assert (state.player_y, state.cpu_y, state.ball_x, state.ball_y) == (120, 66, 90, 70)
    assert state.ball_in_play
    assert not parse_pong_ram(pong_ram(120, 0, 0)).ball_in_play
    # Between points the RAM parks the ball's x at ~205 (or ~50) with y zeroed.
    assert not parse_pong_ram(pong_ram(120, 205, 0)).ball_in_play


def test_parse_pong_ram_rejects_wrong_size():
    with pytest.raises(ValueError, match="128 bytes"):
        parse_pong_ram(np.zeros(64, dtype=np.uint8))


def test_ball_coming_above_paddle_moves_up():
    ram, prev = step_pair(player_y=150, ball_x=120, ball_y=80, vx=4, vy=0)
    decision = PongOracle().decide(ram, prev)
    assert (decision.action, decision.action_class) == ("RIGHT", "up")


def test_ball_coming_below_paddle_moves_down():
    ram, prev = step_pair(player_y=60, ball_x=120, ball_y=160, vx=4, vy=0)
    decision = PongOracle().decide(ram, prev)
    assert (decision.action, decision.action_class) == ("LEFT", "down")


def test_ball_coming_level_with_paddle_stays():
    ram, prev = step_pair(player_y=93, ball_x=120, ball_y=100, vx=4, vy=0)
    decision = PongOracle().decide(ram, prev)
    assert (decision.action, decision.action_class) == ("NOOP", "stay")


def test_aims_where_the_ball_will_be_not_where_it_is():
    # The ball is level with the paddle now but falls 8 a step for 14 more steps.
    ram, prev = step_pair(player_y=63, ball_x=132, ball_y=70, vx=4, vy=8)
    assert PongOracle().decide(ram, prev).action_class == "down"


def test_predict_intercept_folds_at_the_walls():
    # Straight line: 60 - 2 * (188 - 148) = -20, i.e. 64.5 past the top wall.
    assert predict_intercept_y(148, 60, 4, -8) == pytest.approx(WALL_TOP_Y + 64.5)
    # Straight line: 200 + 2 * 40 = 280, i.e. 73.5 past the bottom wall.
    assert predict_intercept_y(148, 200, 4, 8) == pytest.approx(WALL_BOTTOM_Y - 73.5)
    # No bounce: plain extrapolation; and already at the paddle: where it is.
    assert predict_intercept_y(148, 100, 4, 4) == pytest.approx(140)
    assert predict_intercept_y(PLAYER_HIT_X, 100, 4, 8) == pytest.approx(100)


def test_a_lookahead_oracle_aims_where_the_ball_will_be_k_steps_on():
    # Far from the player, falling 8 a step: in 2 steps at y=86 (paddle target 79, the paddle at 75:
    # within the dead band), but it crosses the player's column after a bounce near y=167.
    ram, prev = step_pair(player_y=75, ball_x=100, ball_y=70, vx=4, vy=8)
    assert PongOracle(lookahead=2).decide(ram, prev).action_class == "stay"
    assert PongOracle(lookahead=None).decide(ram, prev).action_class == "down"
    assert "in 2 steps it will be at y=86" in PongOracle(lookahead=2).decide(ram, prev).analysis
    # Held inside the walls: rising fast near the top, the aim is the top wall, not above it.
    ram, prev = step_pair(player_y=120, ball_x=100, ball_y=50, vx=4, vy=-20)
    decision = PongOracle(lookahead=2).decide(ram, prev)
    assert decision.action_class == "up" and f"y={round(WALL_TOP_Y)}" in decision.analysis


def test_wall_bounce_changes_the_decision():
    # The ball flies upward, but bounces off the top wall and arrives near y=109.
    ram, prev = step_pair(player_y=100, ball_x=148, ball_y=60, vx=4, vy=-8)
    assert PongOracle().decide(ram, prev).action_class == "stay"
    ram, prev = step_pair(player_y=45, ball_x=148, ball_y=60, vx=4, vy=-8)
    assert PongOracle().decide(ram, prev).action_class == "down"


def test_momentum_coasting_paddle_stays_and_overshooting_paddle_brakes():
    # Target paddle y is 93 for a flat ball at 100. The paddle is 15 short but moving
    # 22 a step toward it: it will coast there, so pressing on would overshoot.
    ram, prev = step_pair(player_y=78, ball_x=120, ball_y=100, vx=4, vy=0, paddle_v=22)
    assert PongOracle().decide(ram, prev).action_class == "stay"
    # On target but still sliding down fast: brake by pressing up.
    ram, prev = step_pair(player_y=95, ball_x=120, ball_y=100, vx=4, vy=0, paddle_v=22)
    decision = PongOracle().decide(ram, prev)
    assert decision.action_class == "up"
    assert decision.reasoning == "My paddle is sliding down past where the ball will arrive, so I move up."
    # A paddle at rest the same 15 short does move.
    ram, prev = step_pair(player_y=78, ball_x=120, ball_y=100, vx=4, vy=0)
    assert PongOracle().decide(ram, prev).action_class == "down"


def test_ball_out_of_play_or_going_away_returns_to_the_middle():
    oracle = PongOracle()
    for ball in [(0, 0), (205, 0)]:
        assert oracle.decide(pong_ram(200, *ball), pong_ram(200, *ball)).action_class == "up"
        assert oracle.decide(pong_ram(40, *ball), pong_ram(40, *ball)).action_class == "down"
        mid = pong_ram(CENTRE_PADDLE_Y, *ball)
        assert oracle.decide(mid, mid).action_class == "stay"
    # Going away (x falls; uint8 RAM must not wrap round to "coming"), ball far above.
    ram, prev = step_pair(player_y=CENTRE_PADDLE_Y, ball_x=150, ball_y=50, vx=-4, vy=0)
    assert oracle.decide(ram, prev).action_class == "stay"


def test_first_frame_without_history_does_not_guess_a_direction():
    decision = PongOracle().decide(pong_ram(CENTRE_PADDLE_Y, 120, 50))
    assert decision.action_class == "stay"
    assert "not yet known" in decision.analysis


def test_analysis_mentions_the_positions_used():
    ram, prev = step_pair(player_y=150, ball_x=120, ball_y=80, vx=4, vy=-4, paddle_v=-5)
    decision = PongOracle().decide(ram, prev)
    intercept = round(predict_intercept_y(120, 80, 4, -4))
    for number in ("x=120", "y=80", f"y={intercept}", "y=150"):
        assert number in decision.analysis
    assert "toward me" in decision.analysis and "up" in decision.analysis
    assert 1 <= decision.analysis.count(".") <= 2
    assert decision.reasoning.endswith("so I move up.")
    assert decision.reasoning.count(".") == 1


def test_out_of_play_analysis_says_so():
    decision = PongOracle().decide(pong_ram(80, 0, 0), pong_ram(80, 0, 0))
    assert "out of play" in decision.analysis and "y=80" in decision.analysis
    assert "middle" in decision.reasoning


def test_decide_is_pure_and_batch_matches():
    oracle = PongOracle()
    pairs = [
        step_pair(150, 120, 80, 4, 0),
        step_pair(60, 120, 160, 4, 0),
        step_pair(78, 120, 100, 4, 0, 22),
    ]
    rams = [ram for ram, _ in pairs]
    prevs = [prev for _, prev in pairs]
    copies = [ram.copy() for ram in rams]
    single = [oracle.decide(ram, prev) for ram, prev in pairs]
    assert oracle.decide_batch(rams, prevs) == single
    assert oracle.decide_batch(np.stack(rams), np.stack(prevs)) == single
    assert all((ram == copy).all() for ram, copy in zip(rams, copies, strict=True))
    assert oracle.decide_batch(rams) == [oracle.decide(ram) for ram in rams]
    with pytest.raises(ValueError, match="one per RAM"):
        oracle.decide_batch(rams, prevs[:2])


def test_action_classes():
    assert ACTION_CLASSES == {
        "NOOP": "stay",
        "FIRE": "stay",
        "RIGHT": "up",
        "LEFT": "down",
        "RIGHTFIRE": "up",
        "LEFTFIRE": "down",
    }
    assert GAME.action_class("RIGHTFIRE") == "up"
    assert get_game("PongNoFrameskip-v4").action_class("left") == "down"
    assert GAME.same_class("RIGHT", "RIGHTFIRE")
    assert GAME.same_class("NOOP", "FIRE")
    assert not GAME.same_class("RIGHT", "LEFT")
    assert not GAME.same_class("LEFTFIRE", "NOOP")
    with pytest.raises(ValueError, match="unknown action 'UP'.*legal actions are: NOOP"):
        GAME.action_class("UP")
    with pytest.raises(ValueError, match="unknown action"):
        GAME.same_class("RIGHT", "JUMP")
    with pytest.raises(ValueError, match="no oracle for game"):
        get_game("ALE/Pooyan-v5").action_class("FIRE")


def test_decisions_use_the_plain_action_of_their_class():
    for ram, prev in [step_pair(150, 120, 80, 4, 0), step_pair(60, 120, 160, 4, 0), step_pair(93, 120, 100, 4, 0)]:
        decision = PongOracle().decide(ram, prev)
        assert isinstance(decision, OracleDecision)
        assert GAME.action_class(decision.action) == decision.action_class
        assert "FIRE" not in decision.action


@pytest.mark.parametrize("game_id", ["ALE/Pong-v5", "PongNoFrameskip-v4", "Pong-v4", "ALE/Pong-ram-v5"])
def test_has_oracle_for_pong_ids(game_id):
    game = get_game(game_id)
    assert game.has_oracle and game.name == "Pong" and game.id == game_id
    assert isinstance(game.oracle(), PongOracle)


@pytest.mark.parametrize("game_id", ["ALE/Pooyan-v5", "ALE/Freeway-v5", "FreewayNoFrameskip-v4"])
def test_no_oracle_for_other_games(game_id):
    game = get_game(game_id)
    assert type(game) is Game and not game.has_oracle
    with pytest.raises(ValueError, match=r"no oracle for game .*oracles exist for: Breakout, Pong"):
        game.oracle()


def _play(policy: str, steps: int, seed: int) -> tuple[float, set[str]]:
    gym = pytest.importorskip("gymnasium")
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    env = gym.make(GAME.id)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    names = env.unwrapped.get_action_meanings()
    ale = env.unwrapped.ale
    oracle = GAME.oracle()
    prev_ram, ram = None, ale.getRAM().copy()
    total, actions = 0.0, set()
    for _ in range(steps):
        if policy == "oracle":
            name = oracle.decide(ram, prev_ram).action
            assert name in names
            action = names.index(name)
        else:
            action = int(env.action_space.sample())
        actions.add(names[action])
        _, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        prev_ram, ram = ram, ale.getRAM().copy()
        if terminated or truncated:
            break
    env.close()
    return total, actions


def test_oracle_beats_random_in_the_real_game():
    # 600 steps: a random player has lost several points by then; the oracle returns
    # the ball and must use all three of its actions to do so.
    oracle_return, oracle_actions = _play("oracle", 600, seed=0)
    random_return, _ = _play("random", 600, seed=0)
    assert random_return < 0
    assert oracle_return >= 0
    assert oracle_return > random_return
    assert oracle_actions == {"NOOP", "RIGHT", "LEFT"}


def test_make_pong_ram_is_the_inverse_of_parsing():
    state = parse_pong_ram(make_pong_ram(ball_x=120, ball_y=90, player_y=70, cpu_y=60))
    assert (state.ball_x, state.ball_y, state.player_y, state.cpu_y) == (120, 90, 70, 60)
    assert state.ball_in_play and not parse_pong_ram(make_pong_ram()).ball_in_play


def test_ball_phase_follows_the_ball_across_the_court():
    ram = make_pong_ram
    assert ball_phase(ram(150, 100, 100), ram(146, 98, 100)) == "toward"  # x grows toward the player
    assert ball_phase(ram(140, 100, 100), ram(146, 98, 100)) == "away"
    assert ball_phase(ram(150, 100, 100), None) == "none"  # one frame: no direction yet
    assert ball_phase(ram(150, 100, 100), ram(150, 96, 100)) == "none"  # no horizontal motion
    assert ball_phase(ram(0, 0, 100), ram(146, 98, 100)) == "none"  # point over: ball out of play
    assert ball_phase(ram(150, 100, 100), ram(0, 0, 100)) == "none"  # served this step


def test_agreement_by_phase_counts_each_phase():
    split = agreement_by_phase([True, False, True, True], ["toward", "toward", "away", "toward"], BALL_PHASES)
    assert split == {"toward": {"agreement": 2 / 3, "steps": 3}, "away": {"agreement": 1.0, "steps": 1},
                     "none": {"agreement": None, "steps": 0}}
    with pytest.raises(ValueError, match="one phase per step"):
        agreement_by_phase([True], [], BALL_PHASES)
