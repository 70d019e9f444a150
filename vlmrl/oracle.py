"""A scripted expert for Pong that reads the console RAM: the teacher that labels frames.

The policy predicts where the ball will cross the player's paddle (bouncing off the walls),
aims the paddle's middle (or ``aim_offset`` off it) there, and decides on where the paddle
will come to rest rather than where it is: the paddle has momentum (ALE drives Pong's paddle
controller, and the game smooths it), so "move toward the ball" overshoots and loses
(FACTS.md: -14 with sticky actions). Every decision is a pure function of this step's RAM
and the previous step's, so labels can be recomputed from stored RAM alone.

Coordinates are the RAM's own: y grows downward, x grows toward the player (right side).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vlmrl.env import game_name

# Pong's minimal action set (ALE): RIGHT moves the player's paddle up, LEFT down.
ACTION_CLASSES: dict[str, str] = {
    "NOOP": "stay",
    "FIRE": "stay",
    "RIGHT": "up",
    "LEFT": "down",
    "RIGHTFIRE": "up",
    "LEFTFIRE": "down",
}
_ACTION_CLASSES_BY_GAME: dict[str, dict[str, str]] = {"pong": ACTION_CLASSES}
# The action the oracle emits for each class: the plain one, never its FIRE twin.
_CLASS_ACTIONS: dict[str, str] = {"up": "RIGHT", "down": "LEFT", "stay": "NOOP"}

RAM_SIZE = 128
# RAM addresses (verified against pixels, FACTS.md).
_CPU_Y, _BALL_X, _PLAYER_Y, _BALL_Y = 50, 49, 51, 54

# Geometry, measured frame by frame in ALE/Pong-v5 (RAM units).
PLAYER_HIT_X = 188  # ball x at which the player's paddle sends it back
WALL_TOP_Y = 44.5  # the ball turns between y 44 and 45 ...
WALL_BOTTOM_Y = 206.5  # ... and between 206 and 207
PADDLE_MIN_Y, PADDLE_MAX_Y = 38, 203  # the paddle's RAM y stops here
# Hits land with ball_y - paddle_y in [-2, 16]; 7 is the middle of the paddle.
PADDLE_CENTRE_OFFSET = 7
CENTRE_BALL_Y = (WALL_TOP_Y + WALL_BOTTOM_Y) / 2


def _game_of(game_id: str) -> str:
    """'ALE/Pong-v5', 'PongNoFrameskip-v4', 'ALE/Pong-ram-v5' -> 'pong'."""
    return game_name(game_id).lower()


def _no_oracle_error(game_id: str) -> ValueError:
    known = ", ".join(g.capitalize() for g in _ACTION_CLASSES_BY_GAME)
    return ValueError(f"no oracle for game {game_id!r}; oracles exist for: {known} (e.g. 'ALE/Pong-v5')")


def has_oracle(game_id: str) -> bool:
    """True when an oracle (and its action classes) exists for this game id."""
    return _game_of(game_id) in _ACTION_CLASSES_BY_GAME


def action_class(game_id: str, action: str) -> str:
    """The class ("up", "down", "stay") of an action name of this game; case-insensitive."""
    classes = _ACTION_CLASSES_BY_GAME.get(_game_of(game_id))
    if classes is None:
        raise _no_oracle_error(game_id)
    try:
        return classes[action.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown action {action!r} for {game_id}; legal actions are: {', '.join(classes)}") from None


def same_class(game_id: str, a: str, b: str) -> bool:
    """Whether two action names do the same thing to the paddle (e.g. RIGHT and RIGHTFIRE)."""
    return action_class(game_id, a) == action_class(game_id, b)


@dataclass(frozen=True)
class PongState:
    """The positions a Pong frame shows, read from RAM."""

    player_y: int
    cpu_y: int
    ball_x: int
    ball_y: int
    # The RAM zeroes the ball's y between points (x rests at 0, ~50 or ~205): in play needs both.
    ball_in_play: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ball_in_play", self.ball_x != 0 and self.ball_y != 0)


def make_pong_ram(ball_x: int = 0, ball_y: int = 0, player_y: int = 100, cpu_y: int = 0) -> np.ndarray:
    """A 128-byte RAM holding these positions and zeros elsewhere (the inverse of ``parse_pong_ram``)."""
    ram = np.zeros(128, dtype=np.uint8)
    ram[_BALL_X], ram[_BALL_Y], ram[_PLAYER_Y], ram[_CPU_Y] = ball_x, ball_y, player_y, cpu_y
    return ram


def parse_pong_ram(ram: Sequence[int] | np.ndarray) -> PongState:
    """Read the paddles and the ball from Pong's 128-byte RAM."""
    if len(ram) != RAM_SIZE:
        raise ValueError(f"Pong RAM must have {RAM_SIZE} bytes, got {len(ram)}; pass env.unwrapped.ale.getRAM()")
    # int() because numpy uint8 differences wrap around.
    return PongState(
        player_y=int(ram[_PLAYER_Y]), cpu_y=int(ram[_CPU_Y]), ball_x=int(ram[_BALL_X]), ball_y=int(ram[_BALL_Y])
    )


BALL_PHASES = ("toward", "away", "none")


def ball_phase(ram: Sequence[int] | np.ndarray, prev_ram: Sequence[int] | np.ndarray | None) -> str:
    """Where a step sits in a rally: the ball coming "toward" the player, going "away", or "none".

    "none" is a ball out of play, or one whose direction two frames cannot tell yet (no previous
    step, or no horizontal motion). The oracle aims at the crossing point only when "toward".
    """
    state = parse_pong_ram(ram)
    prev = parse_pong_ram(prev_ram) if prev_ram is not None else None
    if prev is None or not (state.ball_in_play and prev.ball_in_play) or state.ball_x == prev.ball_x:
        return "none"
    return "toward" if state.ball_x > prev.ball_x else "away"


def agreement_by_phase(agrees: Sequence[bool], phases: Sequence[str]) -> dict[str, dict]:
    """Per ``BALL_PHASES`` entry: the share of its steps that agree (None without steps) and their count."""
    if len(agrees) != len(phases):
        raise ValueError(f"one phase per step: got {len(agrees)} steps and {len(phases)} phases")
    split = {}
    for phase in BALL_PHASES:
        hits = [agree for agree, p in zip(agrees, phases, strict=True) if p == phase]
        split[phase] = {"agreement": sum(hits) / len(hits) if hits else None, "steps": len(hits)}
    return split


def predict_intercept_y(ball_x: float, ball_y: float, vx: float, vy: float, x: float = PLAYER_HIT_X) -> float:
    """The ball's y when it reaches column ``x``, folding its path at the top and bottom walls."""
    if vx == 0:
        return float(ball_y)
    y = ball_y + vy * (x - ball_x) / vx
    span = WALL_BOTTOM_Y - WALL_TOP_Y
    # Unfold: the path is a straight line in a mirror-tiled court.
    y = (y - WALL_TOP_Y) % (2 * span)
    if y > span:
        y = 2 * span - y
    return WALL_TOP_Y + y


@dataclass(frozen=True)
class OracleDecision:
    """What the oracle would do in a frame, with the words a model should learn to say."""

    action: str
    action_class: str
    analysis: str
    reasoning: str


def _vertical(dy: float) -> str:
    return "up" if dy < 0 else "down" if dy > 0 else "level"


@dataclass(frozen=True)
class PongOracle:
    """The RAM policy: intercept prediction, aim, dead band and momentum look-ahead."""

    # Aim so the ball meets the paddle this far below its middle (above when negative).
    # Hits near the paddle's top edge send the ball back steeply and win ~half the time,
    # middle hits never do; but hits land up to a dead band either side of the aim, and
    # off-centre aims (-5, -3, +4, +8) missed more than they won in play.
    aim_offset: int = 0
    # No move while the paddle's predicted resting place is within this of the target:
    # one press moves it ~22, so half of that is as close as pressing can get.
    dead_band: int = 11
    # Fraction of this step's paddle velocity still to come once the buttons are released
    # (measured: a paddle moving 22 a step coasts ~16 more).
    momentum: float = 0.75

    game_id: str = "ALE/Pong-v5"

    def decide(
        self, ram: Sequence[int] | np.ndarray, prev_ram: Sequence[int] | np.ndarray | None = None
    ) -> OracleDecision:
        """The action for this frame; ``prev_ram`` is the previous step's RAM (None at the start)."""
        state = parse_pong_ram(ram)
        prev = parse_pong_ram(prev_ram) if prev_ram is not None else None
        paddle_v = state.player_y - prev.player_y if prev is not None else 0
        paddle_rest = state.player_y + self.momentum * paddle_v

        ball_known = state.ball_in_play and prev is not None and prev.ball_in_play
        vx = state.ball_x - prev.ball_x if ball_known else 0
        vy = state.ball_y - prev.ball_y if ball_known else 0
        if ball_known and vx > 0:
            intercept = predict_intercept_y(state.ball_x, state.ball_y, vx, vy)
            target_ball_y = intercept
        else:
            intercept = None
            # Ball going away or not yet seen moving: wait in the middle, from where any
            # return is reachable.
            target_ball_y = CENTRE_BALL_Y
        target = target_ball_y - PADDLE_CENTRE_OFFSET + self.aim_offset
        target = min(max(target, PADDLE_MIN_Y), PADDLE_MAX_Y)
        error = target - paddle_rest  # > 0: the paddle must go down
        if error > self.dead_band:
            cls = "down"
        elif error < -self.dead_band:
            cls = "up"
        else:
            cls = "stay"

        analysis = self._analysis(state, prev is not None, vx, vy, intercept, paddle_v)
        reasoning = self._reasoning(cls, intercept is not None, target - state.player_y, paddle_v)
        return OracleDecision(action=_CLASS_ACTIONS[cls], action_class=cls, analysis=analysis, reasoning=reasoning)

    def decide_batch(
        self,
        rams: Sequence[Sequence[int] | np.ndarray] | np.ndarray,
        prev_rams: Sequence[Sequence[int] | np.ndarray | None] | np.ndarray | None = None,
    ) -> list[OracleDecision]:
        """``decide`` for each (ram, prev_ram) pair; ``prev_rams`` None means no history for any."""
        if prev_rams is None:
            prev_rams = [None] * len(rams)
        if len(prev_rams) != len(rams):
            raise ValueError(f"got {len(rams)} RAMs but {len(prev_rams)} previous RAMs; pass one per RAM")
        return [self.decide(ram, prev) for ram, prev in zip(rams, prev_rams, strict=True)]

    @staticmethod
    def _analysis(state: PongState, has_prev: bool, vx: int, vy: int, intercept: float | None, paddle_v: int) -> str:
        paddle = f"My paddle is at y={state.player_y}"
        if paddle_v:
            paddle += f", moving {_vertical(paddle_v)} by {abs(paddle_v)}"
        if not state.ball_in_play:
            return f"The ball is out of play. {paddle}."
        ball = f"The ball is at x={state.ball_x}, y={state.ball_y}"
        if not has_prev or (vx == 0 and vy == 0):
            return f"{ball}, direction not yet known. {paddle}."
        going = "toward me" if vx > 0 else "away from me" if vx < 0 else "neither way"
        vertical = "" if vy == 0 else f" and {_vertical(vy)}"
        if intercept is not None:
            return f"{ball}, moving {going}{vertical}; it should reach me at y={round(intercept)}. {paddle}."
        return f"{ball}, moving {going}{vertical}. {paddle}."

    def _reasoning(self, cls: str, intercept_known: bool, offset_now: float, paddle_v: int) -> str:
        """Why, in one sentence; ``offset_now`` is target minus paddle y (> 0: target below)."""
        where = "where the ball will arrive" if intercept_known else "the middle"
        if cls == "stay":
            if abs(offset_now) > self.dead_band:
                return f"My paddle is already sliding toward {where}, so I stay."
            return f"My paddle is at {where}, so I stay."
        direction = -1 if cls == "up" else 1
        if offset_now * direction <= self.dead_band:
            # The target is not (far) that way: the press is a brake against momentum.
            return f"My paddle is sliding {_vertical(paddle_v)} past {where}, so I move {cls}."
        side = "above" if cls == "up" else "below"
        return f"{where[0].upper()}{where[1:]} is {side} my paddle, so I move {cls}."


def get_oracle(game_id: str) -> PongOracle:
    """The oracle for a game id, or a ValueError naming the games that have one."""
    if not has_oracle(game_id):
        raise _no_oracle_error(game_id)
    return PongOracle(game_id=game_id)
