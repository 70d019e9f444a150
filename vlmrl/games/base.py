"""What a game is to the rest of vlmrl: its actions, rules text, crop, oracle and perception targets.

``Game`` itself is any ALE game the project knows nothing special about: it can be played,
collected, reflected on by a model and evaluated, but it has no oracle, no crop and no
perception targets. A game module subclasses it, fills in what it knows and registers itself
(``vlmrl.games.register_game``); everything else in the package takes the resolved ``Game``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vlmrl.env import game_name

RAM = Sequence[int] | np.ndarray


@dataclass(frozen=True)
class OracleDecision:
    """What an oracle would do in a frame, with the words a model should learn to say."""

    action: str
    action_class: str
    analysis: str
    reasoning: str


class Oracle(Protocol):
    """A scripted expert that reads the RAM: this step's and the previous step's (None at the start)."""

    def decide(self, ram: RAM, prev_ram: RAM | None = None) -> OracleDecision: ...


RAM_SIZE = 128  # every Atari 2600 game's RAM

# The perception caption's vocabulary, one for every game: row and column buckets of the ball and the
# paddle, no ball, no direction. A model taught several games learns no more new tokens than one taught
# one game; what a bucket means is said by the image and the game's caption prompt.
BUCKETS = 16  # rows and columns of the caption (~10 pixels each on a 160-pixel playfield)
NO_BALL = "<noball>"
# Tokens added to the tokenizer for the caption; its other pieces are the probe's answer words.
CAPTION_TOKENS: list[str] = [
    NO_BALL,
    *[f"<y{i}>" for i in range(BUCKETS)],
    *[f"<x{i}>" for i in range(BUCKETS)],
    *[f"<p{i}>" for i in range(BUCKETS)],
    "<vnone>",
    "<hnone>",
]


def caption_bucket(value: int, size: int) -> int:
    """The caption bucket (0..BUCKETS-1) of a position ``value`` along ``size`` pixels, held at the edges."""
    return min(max(value * BUCKETS // size, 0), BUCKETS - 1)


def check_ram(ram: RAM, game: str) -> None:
    """A clear error for something that is not a 128-byte console RAM."""
    if len(ram) != RAM_SIZE:
        raise ValueError(f"{game} RAM must have {RAM_SIZE} bytes, got {len(ram)}; pass env.unwrapped.ale.getRAM()")


def decide_batch(oracle: Oracle, rams: Sequence[RAM], prev_rams: Sequence[RAM | None] | None = None) -> list:
    """``oracle.decide`` for each (ram, prev_ram) pair; ``prev_rams`` None means no history for any."""
    if prev_rams is None:
        prev_rams = [None] * len(rams)
    if len(prev_rams) != len(rams):
        raise ValueError(f"got {len(rams)} RAMs but {len(prev_rams)} previous RAMs; pass one per RAM")
    return [oracle.decide(ram, prev) for ram, prev in zip(rams, prev_rams, strict=True)]


@dataclass(frozen=True)
class Question:
    """A question about an observation, its answer options and its answer key (None: not asked)."""

    name: str
    text: str
    options: tuple[str, ...]
    answer: Callable[[Any], str | None] = field(compare=False)


class Game:
    """An ALE game: ``Game("ALE/Breakout-v5")`` is a game with nothing but its name known."""

    #: ALE's name of the game ("Pong" in "ALE/Pong-v5"); subclasses set it, the base reads it off the id.
    name: str = ""
    #: The id used where the game is named without one (tests, the tiny model's build).
    default_id: str = ""
    #: The rules in one or two sentences for the prompts; None: a generic sentence.
    rules: str | None = None
    #: What each action does to the player, in words the model can tie to the picture (the oracle's classes).
    action_classes: dict[str, str] = {}
    #: The action an oracle plays for each class: the plain one, never a FIRE twin.
    class_actions: dict[str, str] = {}
    #: The game's minimal action set, in ALE's order (None: read it from an env).
    actions: list[str] | None = None
    #: Rows of the playfield (below the score, between the walls), for ``crop``; None: no crop known.
    playfield_rows: tuple[int, int] | None = None
    #: Luminance of the empty playfield, subtracted by the motion encoding.
    background_luminance: float = 0.0
    #: Returns whose first-reaching agent step ``compare`` reports (milestones on this game's scale);
    #: empty: none known, and the comparison reports no milestones unless it is given some.
    return_thresholds: tuple[float, ...] = ()
    #: Where a step sits in the game, for the agreement split (e.g. Pong's ball toward / away / none).
    phases: tuple[str, ...] = ()
    #: The question whose answer key names a step's phase (an answer not in ``phases``: "none"), so a
    #: reflections row's phase can be read back from its ``perception_answers``; None: it cannot.
    phase_question: str | None = None
    #: The probe's questions about an observation and the pre-training's caption prompt (perception).
    questions: tuple[Question, ...] = ()
    #: The question the agent needs most (Pong: is the ball above or below your paddle), weighed double in
    #: a pre-training that names no weights of its own; None: all weigh the same.
    key_question: str | None = None
    #: A built base whose held-out answer to the key question is below this did not learn to see what the
    #: game turns on (Pong: a build that never learned where the paddle is); the build warns. None: no check.
    key_question_floor: float | None = None
    caption_prompt: str | None = None
    #: The caption read back slot by slot (``vlmrl.grounding.read_captions``): (slot name, its pieces).
    caption_slots: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __init__(self, game_id: str | None = None) -> None:
        self.id = game_id or self.default_id
        if not self.name:
            self.name = game_name(self.id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r})"

    # --- the oracle ------------------------------------------------------------------------------

    def make_oracle(self) -> Oracle | None:
        """A new oracle for this game, or None where the game has none."""
        return None

    @property
    def has_oracle(self) -> bool:
        return bool(self.action_classes) and type(self).make_oracle is not Game.make_oracle

    def oracle(self) -> Oracle:
        """The oracle, or a ValueError naming the games that have one."""
        oracle = self.make_oracle() if self.action_classes else None
        if oracle is None:
            from vlmrl.games import games_with_oracle

            known = ", ".join(g.name for g in games_with_oracle())
            example = next((g.default_id for g in games_with_oracle()), "ALE/Pong-v5")
            raise ValueError(f"no oracle for game {self.id!r}; oracles exist for: {known} (e.g. {example!r})")
        return oracle

    def action_class(self, action: str) -> str:
        """The class of an action name of this game (e.g. "up", "down", "stay"); case-insensitive."""
        if not self.action_classes:
            self.oracle()  # raises: no classes without an oracle
        try:
            return self.action_classes[action.strip().upper()]
        except KeyError:
            raise ValueError(
                f"unknown action {action!r} for {self.id}; legal actions are: {', '.join(self.action_classes)}"
            ) from None

    def same_class(self, a: str, b: str) -> bool:
        """Whether two action names do the same thing to the player (e.g. Pong's RIGHT and RIGHTFIRE)."""
        return self.action_class(a) == self.action_class(b)

    def phase(self, ram: RAM, prev_ram: RAM | None) -> str:
        """The phase of a step (one of ``phases``); only games with phases answer."""
        raise ValueError(f"{self.name} has no phase split")

    def phase_of_answers(self, answers: dict) -> str:
        """The phase a step's perception answer key records (``phase_question``'s answer; "none" otherwise)."""
        if self.phase_question is None:
            raise ValueError(f"{self.name} has no phase its perception answers record")
        answer = answers.get(self.phase_question)
        return answer if answer in self.phases else "none"

    # --- what the frames show ------------------------------------------------------------------

    def crop_rows(self) -> tuple[int, int]:
        if self.playfield_rows is None:
            from vlmrl.games import registered_games

            known = sorted(g.name for g in registered_games() if g.playfield_rows is not None)
            raise ValueError(f"no playfield crop is known for {self.id}; known: {known}. Set crop: false")
        return self.playfield_rows

    def scene(self, ram: RAM, prev_ram: RAM | None, frame: np.ndarray | None = None) -> Any:
        """The answer key of one observation, read from the RAM (games with perception targets)."""
        raise ValueError(f"no perception targets are known for {self.name}; they are read from a game's RAM")

    def caption_tokens(self, scene: Any, physics: bool = False) -> list[str]:
        """The pre-training's caption of a scene, one token per piece (games with perception targets)."""
        raise ValueError(f"no perception captions are known for {self.name}")

    #: Tokens the caption adds to a tokenizer.
    caption_vocabulary: tuple[str, ...] = ()

    # --- hindsight: the later frame where a decision's consequence shows --------------------------

    #: The outcomes ``outcome_step`` can find; "next" (the next frame), "ahead" (a fixed number of steps
    #: later) and "point" (a reward) work for any game.
    outcomes: tuple[str, ...] = ("point", "next", "ahead")
    #: The outcome a hindsight reflector is shown unless told otherwise.
    default_outcome: str = "point"
    #: How many steps on the "ahead" outcome looks unless told (Pong: its teacher's lookahead).
    ahead_steps: int = 1
    _OUTCOME_TEXT = {
        "next": "the next frame",
        "point": "the frame after the next point was decided (or the last frame, if none was)",
        "ahead": "a later frame",
    }

    def outcome_reached(self, outcome: str, ram: RAM, reward_before: float) -> bool:
        """Whether a step (its RAM, and the reward of the step before it) shows ``outcome``.

        The generic outcome is a point decided: any nonzero reward. A game adds its own outcomes
        (Pong: the ball at the player's column) by overriding this and ``outcomes``.
        """
        return reward_before != 0

    def outcome_step(
        self, rams: Sequence[RAM], rewards: Sequence[float], t: int, *, outcome: str | None = None,
        max_lookahead: int | None = None,
    ) -> int:
        """Index (into one episode's steps) of the step whose frame shows how step ``t`` turned out.

        ``next``: step t + 1; ``ahead``: step t + ``max_lookahead`` (default: the game's
        ``ahead_steps``). Otherwise the first later step where ``outcome_reached`` holds (the
        reward of step s is earned by acting at s, so its frame is step s + 1's); the episode's last
        step, or ``t + max_lookahead``, if that comes first. The last step of an episode is its own outcome.
        """
        outcome = outcome or self.default_outcome
        if outcome not in self.outcomes:
            raise ValueError(f"unknown outcome {outcome!r} for {self.name}: use one of {', '.join(self.outcomes)}")
        if max_lookahead is not None and max_lookahead < 1:
            raise ValueError(f"the outcome's lookahead must be at least 1 step, got {max_lookahead}")
        last = len(rams) - 1
        if outcome == "ahead" and max_lookahead is None:
            max_lookahead = self.ahead_steps
        if max_lookahead is not None:
            last = min(last, t + max_lookahead)
        if t >= last:
            return t
        if outcome == "next":
            return t + 1
        if outcome == "ahead":
            return last
        for s in range(t + 1, last + 1):
            if self.outcome_reached(outcome, rams[s], float(rewards[s - 1])):
                return s
        return last

    def outcome_description(self, outcome: str | None = None) -> str:
        """What the outcome frame is, in words for the reflection prompt."""
        outcome = outcome or self.default_outcome
        return self._OUTCOME_TEXT.get(outcome, outcome)

    # --- grounded reflection: the model's answers, the game's rules ----------------------------

    #: Settings of the game's answers-to-action mapping (Pong: ``GroundedRules``); None: no grounded reflection.
    grounded_rules: Any = None

    def grounded_correction(self, answers: GroundedAnswers) -> tuple[str, str]:
        """The corrected action class and an analysis quoting the answers (games that define the mapping)."""
        raise ValueError(
            f"no grounded reflection is known for {self.name}: it needs the game's questions, caption and a "
            "mapping from answers to actions (Pong has one); use the oracle, self or model: reflector"
        )


@dataclass
class GroundedAnswers:
    """What a model answered about one step, for ``Game.grounded_correction``.

    Captions are ``{slot name: piece}`` (``Game.caption_slots``): ``now`` of the step's observation,
    ``before`` of the previous step's, ``outcome`` of the outcome step's and the step before it (in
    that order); ``directions`` are the answers to the game's direction question on the step and
    the next ones (hindsight: later frames of the same episode).
    """

    now: dict[str, str]
    before: dict[str, str]
    outcome: list[dict[str, str]]
    directions: list[str]
    action_taken: str
