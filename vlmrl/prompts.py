"""The acting and reflection prompts, the JSON answer format, and its parser.

The answer is a JSON object with ``action`` and ``reasoning``. The action comes first:
constrained decoding scores the legal action names at that fixed position with one
forward pass, and the training completions put it in the same place; the reasoning
follows as the model's explanation. The parser accepts either key order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vlmrl.games import Game
    from vlmrl.observation import ObservationConfig

ANSWER_PREFIX = '{"action": "'
MAX_ANSWER_CHARS = 4000  # longer outputs are cut before parsing: a runaway generation is not an answer


def _listed_actions(game: Game, actions: list[str], sep: str) -> str:
    """The legal actions, each with what it does to the player where the game says (its classes)."""
    effects = game.action_classes
    return sep.join(f"{a} ({effects[a]})" if a in effects else a for a in actions)


def system_prompt(game: Game, actions: list[str]) -> str:
    """Explains the game, its actions and the answer format."""
    rules = game.rules or f"You are playing the Atari game {game.name}. Score as many points as you can."
    listed = _listed_actions(game, actions, " ")
    return f"{game.name}. {rules} Actions: {listed}. " 'Answer JSON: {"action": ..., "reasoning": ...}.'


def user_prompt(num_images: int, encoding: str) -> str:
    if encoding == "motion":
        return "Red: now, green: before. Your move?"
    if num_images > 1:
        return f"The last {num_images} frames, oldest first. Your move?"
    return "Your move?"


def acting_messages(game: Game, actions: list[str], num_images: int, encoding: str) -> list[dict]:
    """The acting prompt as chat messages (TRL's conversational format, images as placeholders)."""
    content = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": user_prompt(num_images, encoding)})
    return [
        {"role": "system", "content": [{"type": "text", "text": system_prompt(game, actions)}]},
        {"role": "user", "content": content},
    ]


def format_answer(action: str, reasoning: str | None) -> str:
    """The answer JSON; ``reasoning=None`` gives the action alone."""
    return json.dumps({"action": action} if reasoning is None else {"action": action, "reasoning": reasoning})


def completion_messages(action: str, reasoning: str | None) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": format_answer(action, reasoning)}]}]


@dataclass
class ParsedAnswer:
    """An answer after parsing: ``action`` is None when it was not valid."""

    action: str | None
    reasoning: str
    valid: bool
    error: str = ""


_ACTION_RE = re.compile(r'"action"\s*:\s*"([A-Za-z_]+)"')
_REASONING_RE = re.compile(r'"reasoning"\s*:\s*"((?:[^"\\]|\\.)*)"')


def json_objects(text: str):
    """Yields each top-level JSON object that decodes, in order of appearance."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            yield obj
        start = text.find("{", end)


def parse_answer(text: str, legal_actions: list[str], keys: tuple[str, str] = ("action", "reasoning")) -> ParsedAnswer:
    """Parses ``{"action": ..., "reasoning": ...}`` (or other ``keys``); never raises."""
    action_key, reasoning_key = keys
    text = (text or "")[:MAX_ANSWER_CHARS]
    legal = {a.upper(): a for a in legal_actions}
    for obj in json_objects(text):
        if action_key not in obj:
            continue
        value = obj[action_key]
        reasoning = obj.get(reasoning_key, "")
        reasoning = reasoning if isinstance(reasoning, str) else json.dumps(reasoning)
        if not isinstance(value, str):
            return ParsedAnswer(None, reasoning, False, f"{action_key} is not a string: {value!r}"[:200])
        if value.strip().upper() not in legal:
            return ParsedAnswer(None, reasoning, False, f"illegal action {value!r}"[:200])
        return ParsedAnswer(legal[value.strip().upper()], reasoning, True)
    # Small models often get the JSON almost right (a missing brace): salvage the fields.
    if action_key == "action":
        match = _ACTION_RE.search(text)
        if match and match.group(1).upper() in legal:
            reasoning_match = _REASONING_RE.search(text)
            reasoning = reasoning_match.group(1) if reasoning_match else ""
            return ParsedAnswer(legal[match.group(1).upper()], reasoning, False, "malformed JSON")
    return ParsedAnswer(None, "", False, "no JSON object with an action")


# --- reflection ---------------------------------------------------------------------------

REFLECTION_KEYS = ("analysis", "correct_action", "correct_reasoning")


def reflection_messages(
    game: Game,
    actions: list[str],
    *,
    action_taken: str,
    reasoning: str,
    reward: float,
    return_to_go: float,
    num_images_now: int,
    num_images_next: int,
) -> list[dict]:
    """The self/teacher reflection prompt: the frame(s), the move, its outcome and the next frame(s)."""
    rules = game.rules or f"The Atari game {game.name}."
    listed = _listed_actions(game, actions, ", ")
    before = [{"type": "image"} for _ in range(num_images_now)]
    after = [{"type": "image"} for _ in range(num_images_next)]
    text = (
        f"You played {action_taken} here, saying: {reasoning or '(nothing)'}. "
        f"Reward {reward:+g}; this move led toward a lost point (discounted return {return_to_go:+.2f}). "
        "The next frame follows. What should you have done, and why?"
    )
    return [
        {
            "role": "system",
            "content": [
                {
                    "type": "text",
                    "text": f"{game.name}. {rules} Actions: {listed}. Answer JSON: "
                    '{"analysis": ..., "correct_action": ..., "correct_reasoning": ...}.',
                }
            ],
        },
        {"role": "user", "content": [*before, {"type": "text", "text": text}, *after]},
    ]


# --- questions about an observation (the vision probe and the perception pre-training) ---------


def observation_preamble(observation: ObservationConfig) -> str:
    """What the image(s) are, said before a question."""
    if observation.encoding == "motion":
        return "Red: now, green: before. "
    if observation.frames > 1:
        return f"The last {observation.frames} frames, oldest first. "
    return ""


def question_messages(text: str, observation: ObservationConfig) -> list[dict]:
    """A one-turn chat: the observation's image(s), then the question."""
    content = [{"type": "image"} for _ in range(observation.images_per_observation)]
    content.append({"type": "text", "text": observation_preamble(observation) + text})
    return [{"role": "user", "content": content}]


def option_text(option: str) -> str:
    """An answer option as it follows 'Assistant:' in the chat template (which renders 'Assistant: text')."""
    return " " + option
