"""Breakout: everything vlmrl knows about the game, in one module.

- RAM layout and parsing (``parse_breakout_ram``, its inverse ``make_breakout_ram`` for tests);
- the oracle (``BreakoutOracle``): serves when the ball is out of play, otherwise predicts where the
  ball will come down to the paddle's row (folding its path at the side walls) and moves the paddle
  there, deciding on where the paddle will come to rest rather than where it is;
- the action classes (RIGHT moves the paddle right, LEFT left, FIRE serves) and the rules text;
- the playfield crop and background luminance of the motion encoding;
- the perception targets: what an observation shows (``scene_from_ram``), the caption of the
  perception pre-training (``caption_tokens``) and the vision probe's questions (``QUESTIONS``);
- the phase split of evaluation: the ball coming down toward the paddle, going up, or none.

RAM facts, each verified against the pixels of ALE/Breakout-v5 frames (the paddle and the ball are
both drawn in (200, 72, 72), like the bottom row of bricks; ~2,450 agent steps of three episodes of a
noisy tracking player, and ~24,000 single frames for the wall and paddle bounces):

- ``ram[72]`` paddle x: its left pixel column is ``ram[72] - 47`` (2,443 of 2,453 frames; the others
  are frames where the ball touches the paddle's rows). Range 55..191, i.e. columns 8..144; the paddle
  is 16 columns wide, its rows 189-192. From x 184 on, the right wall hides part of it (at 191 only 8
  columns show). Its middle is column ``ram[72] - 39.5``.
- ``ram[99]`` ball x: its left column is ``ram[99] - 49`` (2,183 of 2,194 frames with the ball drawn
  below the bricks; the rest ``- 48``). 2 columns wide. It turns at the side walls at x 56 and 200
  (columns 7 and 151, single frames).
- ``ram[101]`` ball y: its top row is ``ram[101] + 9`` (2,194 of 2,194). 4 rows tall. ``ram[101] == 0``
  while the ball waits to be served (FIRE); it is never 0 in play and the ball is never drawn then.
  It turns at the top wall at y 23 (row 32) and on the paddle at y 177-178 (bottom row 189-190, the
  paddle's top row); a missed ball falls on to y ~209, then the RAM resets it to 0 and a life is gone.
  Bricks turn it between y ~46 and ~84.
- ``ram[57]`` lives left: 5 at the start (``ale.lives()`` agrees), one fewer as each ball is lost.

So, in RAM units, the ball meets the paddle's middle when ``ball_x - paddle_x == 9`` and is returned
when ``ball_x - paddle_x`` is about 1..17 as it reaches y 178.

The paddle is ALE's paddle controller: RIGHT/LEFT accelerate it (about 3, 5, 4, 5, then 6 units a
frame, ~22 an agent step at full speed) and it coasts ~10 units after release. Held against a wall,
the controller winds up past the wall: a LEFT after 20 frames of RIGHT at x 191 moved it only after 9
frames. So the oracle never aims at the very edge.

Ball speeds per agent step (4 frames): x changes by 2-8, y by 4-16 (the game speeds the ball up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlmrl.games import register_game
from vlmrl.games.base import (
    BUCKETS,
    CAPTION_TOKENS,
    NO_BALL,
    RAM,
    RAM_SIZE,
    Game,
    OracleDecision,
    Question,
    caption_bucket,
    check_ram,
    decide_batch,
)
from vlmrl.prompts import option_text

GAME_ID = "ALE/Breakout-v5"
# Breakout's minimal action set (ALE), in ALE's order.
ACTIONS = ["NOOP", "FIRE", "RIGHT", "LEFT"]
RULES = (
    "You are the red paddle at the bottom: keep the ball in play by moving under it, and press FIRE to "
    "serve a new ball; each brick it breaks scores, and a missed ball costs one of your five lives."
)

ACTION_CLASSES: dict[str, str] = {"NOOP": "stay", "FIRE": "serve", "RIGHT": "right", "LEFT": "left"}
CLASS_ACTIONS: dict[str, str] = {"stay": "NOOP", "serve": "FIRE", "right": "RIGHT", "left": "LEFT"}

# RAM addresses, verified against pixels (module docstring).
_PADDLE_X, _BALL_X, _BALL_Y, _LIVES = 72, 99, 101, 57

# Geometry in RAM units (module docstring).
WALL_LEFT_X, WALL_RIGHT_X = 56, 200  # the ball turns here
PADDLE_HIT_Y = 178  # the ball's y when the paddle returns it
PADDLE_MIN_X, PADDLE_MAX_X = 55, 191
PADDLE_CENTRE_OFFSET = 9  # ball_x - paddle_x with the ball over the paddle's middle
PADDLE_COL_OFFSET = 47  # paddle's left column = ram - 47
BALL_COL_OFFSET, BALL_ROW_OFFSET = 49, -9  # ball's left column = ram - 49, top row = ram + 9


@dataclass(frozen=True)
class BreakoutState:
    """The positions a Breakout frame shows, read from RAM."""

    paddle_x: int
    ball_x: int
    ball_y: int
    lives: int

    @property
    def ball_in_play(self) -> bool:
        """False while the ball waits to be served (the RAM holds y 0 then)."""
        return self.ball_y != 0


def make_breakout_ram(paddle_x: int = 120, ball_x: int = 0, ball_y: int = 0, lives: int = 5) -> np.ndarray:
    """A 128-byte RAM holding these values and zeros elsewhere (the inverse of ``parse_breakout_ram``)."""
    ram = np.zeros(RAM_SIZE, dtype=np.uint8)
    ram[_PADDLE_X], ram[_BALL_X], ram[_BALL_Y], ram[_LIVES] = paddle_x, ball_x, ball_y, lives
    return ram


def parse_breakout_ram(ram: RAM) -> BreakoutState:
    """Read the paddle, the ball and the lives from Breakout's 128-byte RAM."""
    check_ram(ram, "Breakout")
    # int() because numpy uint8 differences wrap around.
    return BreakoutState(
        paddle_x=int(ram[_PADDLE_X]), ball_x=int(ram[_BALL_X]), ball_y=int(ram[_BALL_Y]), lives=int(ram[_LIVES])
    )


BALL_PHASES = ("down", "up", "none")


def _ball_velocity(state: BreakoutState, prev: BreakoutState | None) -> tuple[int, int] | None:
    """The ball's (vx, vy) over the last step, or None when it is unknown (no history, not in play,
    or a jump: the RAM re-places the ball when it is served)."""
    if prev is None or not (state.ball_in_play and prev.ball_in_play):
        return None
    vx, vy = state.ball_x - prev.ball_x, state.ball_y - prev.ball_y
    # A served ball appears far from where the lost one was: no step moves it more than ~16.
    if abs(vx) > 24 or abs(vy) > 24:
        return None
    return vx, vy


def ball_phase(ram: RAM, prev_ram: RAM | None) -> str:
    """Where a step sits in a rally: the ball coming "down" toward the paddle, going "up", or "none".

    "none" is a ball out of play, one already past the paddle, or one whose direction two frames
    cannot tell yet. "down" is where the oracle aims at the landing column: what wins or loses a life.
    """
    state = parse_breakout_ram(ram)
    prev = parse_breakout_ram(prev_ram) if prev_ram is not None else None
    velocity = _ball_velocity(state, prev)
    if velocity is None or velocity[1] == 0 or state.ball_y > PADDLE_HIT_Y:
        return "none"
    return "down" if velocity[1] > 0 else "up"


def fold_x(x: float) -> float:
    """A ball x on the unfolded line -> its x between the side walls (the path mirrored at each wall)."""
    span = WALL_RIGHT_X - WALL_LEFT_X
    x = (x - WALL_LEFT_X) % (2 * span)
    if x > span:
        x = 2 * span - x
    return WALL_LEFT_X + x


def predict_landing_x(ball_x: float, ball_y: float, vx: float, vy: float, y: float = PADDLE_HIT_Y) -> float:
    """The ball's x when it comes down to row ``y`` (RAM units), folding its path at the side walls.

    Only meaningful for a falling ball (``vy > 0``); otherwise the ball's x is returned."""
    if vy <= 0:
        return float(ball_x)
    return fold_x(ball_x + vx * (y - ball_y) / vy)


def _side(dx: float) -> str:
    return "right" if dx > 0 else "left" if dx < 0 else "level"


@dataclass(frozen=True)
class BreakoutOracle:
    """The RAM policy: serve, landing-column prediction, dead band and momentum look-ahead."""

    # Aim the ball this far right of the paddle's middle (RAM units; < 0: left).
    aim_offset: int = 0
    # No move while the paddle's predicted resting place is within this of the target (the paddle
    # returns the ball within ~8 either side of its middle); beyond it, the action whose resting place
    # is nearest the target, so a press that would swing the paddle further past it is not taken.
    dead_band: int = 4
    # Where the paddle comes to rest (measured over 9,000 agent steps of random presses, sticky actions):
    # released, it coasts on by about half this step's velocity (12 after a step of 24); one press from
    # rest moves it ~28 in all (14 this step, 14 coasting); a press with the motion adds ~0.3 times the
    # velocity, one against it loses ~0.8 times it (a paddle moving 24 the other way ends ~8 past where
    # it was). In play, a smaller ``momentum`` and ``press`` (0.4, 24) than measured (0.5, 28) scored
    # more: mean 167 against 76 over 20 tuning seeds (20-39; 166 against 112 on seeds 0-9); press 32
    # scored 29. Being slightly eager to press costs less than arriving late.
    momentum: float = 0.4
    press: float = 24.0
    press_with: float = 0.3
    press_against: float = 0.8
    # Targets are kept this far inside the paddle's range: pressed into a wall, the controller
    # winds up and answers the next opposite press late.
    edge_margin: int = 3

    def rest_after(self, paddle_x: float, paddle_v: float, cls: str) -> float:
        """Where the paddle comes to rest if this step plays ``cls`` ("stay"/"right"/"left") and then none."""
        if cls == "stay":
            return paddle_x + self.momentum * paddle_v
        sign = 1 if cls == "right" else -1
        along = sign * paddle_v  # > 0: the press goes with the motion
        gain = self.press + (self.press_with if along >= 0 else self.press_against) * along
        return paddle_x + sign * max(gain, 0.0)

    def decide(self, ram: RAM, prev_ram: RAM | None = None) -> OracleDecision:
        """The action for this frame; ``prev_ram`` is the previous step's RAM (None at the start)."""
        state = parse_breakout_ram(ram)
        prev = parse_breakout_ram(prev_ram) if prev_ram is not None else None
        if not state.ball_in_play:
            return OracleDecision(
                action=CLASS_ACTIONS["serve"],
                action_class="serve",
                analysis=f"The ball is not in play. My paddle is at x={state.paddle_x}.",
                reasoning="The ball is waiting to be served, so I press FIRE.",
            )
        paddle_v = state.paddle_x - prev.paddle_x if prev is not None else 0
        velocity = _ball_velocity(state, prev)
        landing = None
        if velocity is not None and velocity[1] > 0 and state.ball_y <= PADDLE_HIT_Y:
            landing = predict_landing_x(state.ball_x, state.ball_y, *velocity)
            target_ball_x = landing
        else:
            # Going up (or not yet seen moving): stay under the ball, from where its return is nearest.
            target_ball_x = state.ball_x
        target = target_ball_x - PADDLE_CENTRE_OFFSET + self.aim_offset
        target = min(max(target, PADDLE_MIN_X + self.edge_margin), PADDLE_MAX_X - self.edge_margin)
        # Decide on where the paddle will come to rest, not where it is: a press moves it ~28 in all,
        # so "move toward the target" would swing it past a target closer than that, back and forth.
        miss = {c: abs(target - self.rest_after(state.paddle_x, paddle_v, c)) for c in ("stay", "right", "left")}
        cls = "stay" if miss["stay"] <= self.dead_band else min(miss, key=miss.__getitem__)
        analysis = self._analysis(state, velocity, landing, paddle_v)
        reasoning = self._reasoning(cls, landing is not None, target - state.paddle_x, paddle_v)
        return OracleDecision(action=CLASS_ACTIONS[cls], action_class=cls, analysis=analysis, reasoning=reasoning)

    def decide_batch(self, rams: Sequence[RAM], prev_rams: Sequence[RAM | None] | None = None) -> list[OracleDecision]:
        """``decide`` for each (ram, prev_ram) pair; ``prev_rams`` None means no history for any."""
        return decide_batch(self, rams, prev_rams)

    @staticmethod
    def _analysis(
        state: BreakoutState, velocity: tuple[int, int] | None, landing: float | None, paddle_v: int
    ) -> str:
        paddle = f"My paddle is at x={state.paddle_x}"
        if paddle_v:
            paddle += f", moving {_side(paddle_v)} by {abs(paddle_v)}"
        ball = f"The ball is at x={state.ball_x}, y={state.ball_y}"
        if velocity is None or velocity == (0, 0):
            return f"{ball}, direction not yet known. {paddle}."
        vx, vy = velocity
        vertical = "down toward me" if vy > 0 else "up" if vy < 0 else "level"
        sideways = "" if vx == 0 else f" and {_side(vx)}"
        if landing is not None:
            return f"{ball}, moving {vertical}{sideways}; it should come down at x={round(landing)}. {paddle}."
        return f"{ball}, moving {vertical}{sideways}. {paddle}."

    def _reasoning(self, cls: str, landing_known: bool, offset_now: float, paddle_v: int) -> str:
        """Why, in one sentence; ``offset_now`` is target minus paddle x (> 0: target to the right)."""
        where = "where the ball will come down" if landing_known else "under the ball"
        if cls == "stay":
            if abs(offset_now) > self.dead_band:
                return f"My paddle is already sliding toward {where}, so I stay."
            return f"My paddle is {where}, so I stay."
        direction = 1 if cls == "right" else -1
        if offset_now * direction <= self.dead_band:
            # The target is not (far) that way: the press is a brake against momentum.
            return f"My paddle is sliding {_side(paddle_v)} past {where}, so I move {cls}."
        target = "The place where the ball will come down" if landing_known else "The ball"
        return f"{target} is to the {cls} of my paddle, so I move {cls}."


# --- what the frames show ----------------------------------------------------------------------

# Rows 32-195: below the top wall (rows 17-31) and the score, down to the wall's coloured feet
# (rows 189-195) that flank the paddle's rows 189-192; the side walls (columns 0-7, 152-159) stay.
PLAYFIELD_ROWS = (32, 196)
# The playfield is black; the walls (142) and bricks are constant and show as steady contrast.
BACKGROUND_LUMINANCE = 0.0
PLAYFIELD_HEIGHT = PLAYFIELD_ROWS[1] - PLAYFIELD_ROWS[0]  # 164 rows
PLAYFIELD_WIDTH = 160
# RAM value minus these = centre row / column in the cropped playfield (module docstring: the ball's
# top row is ram + 9, 4 tall, its left column ram - 49, 2 wide; the paddle's left column ram - 47, 16 wide).
_BALL_ROW_OFFSET = PLAYFIELD_ROWS[0] - 9 - 2  # 21
_BALL_COL_OFFSET = 48
_PADDLE_COL_OFFSET = 40  # its middle is column ram - 39.5


@dataclass(frozen=True)
class BreakoutScene:
    """What one observation (this frame and the previous one) shows, from the RAM."""

    ball_visible: bool
    ball_row: int | None  # centre row of the ball in the cropped playfield (0..163)
    ball_col: int | None  # centre column (0..159)
    paddle_col: int  # centre column of the paddle
    ball_side: str | None  # "left" / "right" of the paddle's middle (the oracle's threshold)
    vertical: str | None  # "up" / "down"; None out of play, level, or unknown (no history, a serve's jump)
    horizontal: str | None  # "left" / "right"; None likewise


def scene_from_ram(ram: RAM, prev_ram: RAM | None = None) -> BreakoutScene:
    """The answer key of one observation, from the RAM alone.

    The ball counts as visible while it is in play with its top row inside the crop (a missed ball
    falls below it). Breakout draws the ball in the colour of the paddle and the bottom bricks, so a
    pixel test cannot tell it apart; the RAM agreed with the pixels on 2,629 of 2,630 frames of varied
    play where the ball was in the crop below the bricks' rows."""
    state = parse_breakout_ram(ram)
    prev = parse_breakout_ram(prev_ram) if prev_ram is not None else None
    paddle_col = state.paddle_x - _PADDLE_COL_OFFSET
    top_row = state.ball_y - BALL_ROW_OFFSET - PLAYFIELD_ROWS[0]
    if not (state.ball_in_play and top_row < PLAYFIELD_HEIGHT):
        return BreakoutScene(False, None, None, paddle_col, None, None, None)
    velocity = _ball_velocity(state, prev)
    vertical = horizontal = None
    if velocity is not None:
        vx, vy = velocity
        vertical = "up" if vy < 0 else "down" if vy > 0 else None
        horizontal = "left" if vx < 0 else "right" if vx > 0 else None
    return BreakoutScene(
        ball_visible=True,
        ball_row=state.ball_y - _BALL_ROW_OFFSET,
        ball_col=state.ball_x - _BALL_COL_OFFSET,
        paddle_col=paddle_col,
        ball_side="left" if state.ball_x - state.paddle_x < PADDLE_CENTRE_OFFSET else "right",
        vertical=vertical,
        horizontal=horizontal,
    )


# The caption's tokens are every game's (``vlmrl.games.base.CAPTION_TOKENS``): here the ball's row and
# column buckets, the paddle's place along its track, no ball, no direction.
CAPTION_PROMPT = "Describe the ball and your paddle (Breakout)."
# The caption's six slots and the pieces each may hold, in ``caption_tokens``' order.
CAPTION_SLOTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("left_right", (option_text("left"), option_text("right"), NO_BALL)),
    ("ball_row", (*[f"<y{i}>" for i in range(BUCKETS)], NO_BALL)),
    ("ball_col", (*[f"<x{i}>" for i in range(BUCKETS)], NO_BALL)),
    ("paddle_col", tuple(f"<p{i}>" for i in range(BUCKETS))),
    ("vertical", (option_text("up"), option_text("down"), "<vnone>", NO_BALL)),
    ("horizontal", (option_text("left"), option_text("right"), "<hnone>", NO_BALL)),
)


def caption_tokens(scene: BreakoutScene, physics: bool = False) -> list[str]:
    """Six one-token pieces: the ball left/right of the paddle's middle, ball row, ball column, paddle
    column, vertical and horizontal direction; left/right first, as Pong's above/below (after the
    position tokens it would leak under teacher forcing). The side and the directions are the probe's
    answer words (" left", " up"): lower-case words, never the action tokens "LEFT" and "RIGHT", and
    where the ball is rather than what to do. ``physics`` is Pong's (no Breakout physics caption)."""
    if physics:
        raise ValueError("the physics caption is Pong's; Breakout has none")
    paddle = f"<p{caption_bucket(scene.paddle_col, PLAYFIELD_WIDTH)}>"
    if not scene.ball_visible:
        return [NO_BALL, NO_BALL, NO_BALL, paddle, NO_BALL, NO_BALL]
    return [
        option_text(scene.ball_side),
        f"<y{caption_bucket(scene.ball_row, PLAYFIELD_HEIGHT)}>",
        f"<x{caption_bucket(scene.ball_col, PLAYFIELD_WIDTH)}>",
        paddle,
        option_text(scene.vertical) if scene.vertical else "<vnone>",
        option_text(scene.horizontal) if scene.horizontal else "<hnone>",
    ]


def _third(scene: BreakoutScene) -> str | None:
    if not scene.ball_visible:
        return None
    return ("top", "middle", "bottom")[min(max(scene.ball_row * 3 // PLAYFIELD_HEIGHT, 0), 2)]


QUESTIONS: tuple[Question, ...] = (
    # No longer than Pong's above/below question: a batch is padded to its longest prompt, so in a two-game
    # pre-training a longer one would lengthen nearly every batch.
    Question("left_right", "Is the ball to the left or right of your paddle?", ("left", "right"),
             lambda s: s.ball_side),
    Question("vertical", "Is the ball moving up or down?", ("up", "down"), lambda s: s.vertical),
    Question("horizontal", "Is the ball moving left or right?", ("left", "right"), lambda s: s.horizontal),
    Question("ball_third", "Is the ball in the top, middle or bottom third?", ("top", "middle", "bottom"), _third),
    Question("ball_visible", "Is the ball in play?", ("yes", "no"), lambda s: "yes" if s.ball_visible else "no"),
)
QUESTIONS_BY_NAME: dict[str, Question] = {q.name: q for q in QUESTIONS}


@register_game
class Breakout(Game):
    """ALE/Breakout-v5 and its other ids (BreakoutNoFrameskip-v4, ALE/Breakout-ram-v5, ...)."""

    name = "Breakout"
    default_id = GAME_ID
    rules = RULES
    action_classes = ACTION_CLASSES
    class_actions = CLASS_ACTIONS
    actions = ACTIONS
    playfield_rows = PLAYFIELD_ROWS
    background_luminance = BACKGROUND_LUMINANCE
    # Three times the random policy's published 1.7, a third of the human's, the human's 30.5.
    return_thresholds = (5.0, 10.0, 30.5)
    phases = BALL_PHASES
    # Its answer key is the phase, bar a ball already past the paddle (the phase says "none").
    phase_question = "vertical"
    questions = QUESTIONS
    key_question = "left_right"
    caption_prompt = CAPTION_PROMPT
    caption_slots = CAPTION_SLOTS
    caption_vocabulary = tuple(CAPTION_TOKENS)

    def make_oracle(self) -> BreakoutOracle:
        return BreakoutOracle()

    def phase(self, ram: RAM, prev_ram: RAM | None) -> str:
        return ball_phase(ram, prev_ram)

    def scene(self, ram: RAM, prev_ram: RAM | None, frame: np.ndarray | None = None) -> BreakoutScene:
        """The answer key (from the RAM alone: ``frame`` is not needed, see ``scene_from_ram``)."""
        return scene_from_ram(ram, prev_ram)

    def caption_tokens(self, scene: BreakoutScene, physics: bool = False) -> list[str]:
        return caption_tokens(scene, physics)
