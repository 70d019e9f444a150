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
        return "Magenta: now, green: before. Your move?"
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


# --- the answer parser ----------------------------------------------------------------------
#
# The text is read as prose holding JSON spans. A span opens at a ``{`` or ``[`` met in the
# prose that JSON could follow (after optional whitespace: ``"`` or ``}`` for an object, the
# start of a value (``NaN`` and ``Infinity`` too: ``json`` writes and reads them) or ``]`` for an
# array, or the end of the text); other brackets are prose
# ("{like this}", "[note]"). A span runs to its matching bracket, counted over JSON strings (a
# bracket inside a string does not count, nor does a closer of the other kind: ``{ ]`` does not
# close); a span that never closes runs to the end of the text.
# Nothing inside a span is top level, so a span that never closes (a truncated answer) hides
# all that follows it. The rules are spelled out in ``parse_answer``.

MAX_JSON_DEPTH = 64  # deeper spans are never decoded: no answer nests so deep, and json recurses per level

_STRING = r'"([^"\\]*(?:\\.[^"\\]*)*)"'
# One token inside a span: a closed string (with, when a colon follows, the string value after
# it, if that value is a closed string), the quote of a string that never closes, or a bracket.
_TOKEN_RE = re.compile(_STRING + r"(\s*:\s*(?:" + _STRING + r")?)?" + r'|"|[{}\[\]]', re.S)
_OPEN_RE = re.compile(r'\{(?=[ \t\n\r]*(?:["}]|\Z))|\[(?=[ \t\n\r]*(?:["{\[\]\-0-9]|true|false|null|NaN|Infinity|\Z))')
_DECODER = json.JSONDecoder()
_LENIENT_DECODER = json.JSONDecoder(strict=False)
_NOT_A_STRING = object()  # the salvaged value of a key followed by something other than a closed string


@dataclass
class _Span:
    """One top-level span: ``[start, end)``, whether it closed, and its deepest nesting.

    ``fields`` holds the top-level ``"key": value`` pairs of an object span as read leniently
    (keys and string values unescaped, a later duplicate replacing an earlier one); ``obj`` the
    decoded object when the span is an object that is valid JSON and at most ``MAX_JSON_DEPTH`` deep.
    """

    start: int
    end: int
    closed: bool
    depth: int
    fields: dict
    obj: dict | None = None


def _unescape(raw: str) -> str:
    """A JSON string's body with its escapes resolved; the raw body when they do not resolve."""
    if "\\" not in raw:
        return raw
    try:
        value = _LENIENT_DECODER.decode(f'"{raw}"')
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


def _scan(text: str, start: int) -> _Span:
    """The span opening at ``text[start]`` (a ``{`` or ``[``): one linear pass, no recursion."""
    stack: list[str] = []
    fields: dict = {}
    depth = 0
    for match in _TOKEN_RE.finditer(text, start):
        first = match.group(0)[0]
        if first == '"':
            if match.group(1) is None:  # a string that never closes: the rest of the text is inside it
                break
            if match.group(2) is not None and stack == ["{"]:  # a key of the span's own object
                value = match.group(3)
                fields[_unescape(match.group(1))] = _NOT_A_STRING if value is None else _unescape(value)
        elif first in "{[":
            stack.append(first)
            depth = max(depth, len(stack))
        elif stack[-1] == ("{" if first == "}" else "["):  # a closer of the other kind closes nothing
            stack.pop()
            if not stack:
                return _Span(start, match.end(), True, depth, fields)
    return _Span(start, len(text), False, depth, fields)


def _spans(text: str):
    """Yields the top-level spans of ``text`` in order of appearance, decoding the objects that are valid JSON."""
    opening = _OPEN_RE.search(text)
    while opening is not None:
        span = _scan(text, opening.start())
        if text[span.start] == "{" and span.closed and span.depth <= MAX_JSON_DEPTH:
            try:
                obj, end = _DECODER.raw_decode(text, span.start)
            except (ValueError, RecursionError):
                pass
            else:
                if isinstance(obj, dict) and end == span.end:
                    span.obj = obj
        yield span
        opening = _OPEN_RE.search(text, span.end)


def json_objects(text: str):
    """Yields each top-level JSON object that decodes, in order of appearance; never raises.

    Top level as ``parse_answer`` reads it: an object nested in another object or in an array
    is not yielded, nor is anything after a bracket that never closes.
    """
    if not isinstance(text, str):
        return
    for span in _spans(text):
        if span.obj is not None:
            yield span.obj


def _legal_action(value: str, legal: dict[str, str]) -> str | None:
    """The legal action ``value`` names: ASCII only, case-insensitive, surrounding whitespace ignored."""
    return legal.get(value.strip().upper()) if value.isascii() else None


def parse_answer(text: str, legal_actions: list[str], keys: tuple[str, str] = ("action", "reasoning")) -> ParsedAnswer:
    """Parses ``{"action": ..., "reasoning": ...}`` (or other ``keys``); never raises.

    The rules (the comment above ``MAX_JSON_DEPTH`` says how the text splits into prose and spans):

    * Only the first ``MAX_ANSWER_CHARS`` characters are read; anything else than a ``str``
      (None, bytes) is an invalid answer.
    * Only a top-level JSON object counts: one that stands in the prose, not nested inside
      another object or an array, and not inside a span that never closes (a truncated
      ``{"a": {"action": "LEFT"}``). Of it, only its own top-level keys count: an action key
      nested deeper is not the answer.
    * A duplicate key: the last occurrence wins (as ``json.loads`` reads it).
    * The top-level objects that decode are read in order of appearance; the first holding the
      action key decides, valid or not. Objects deeper than ``MAX_JSON_DEPTH`` are not decoded.
    * The action must be a string naming a legal action exactly: ASCII only, compared
      case-insensitively after stripping surrounding whitespace. Unicode look-alikes (the ``ﬁ``
      ligature, a dotless ``ı``, fullwidth letters, Cyrillic homoglyphs) are illegal.
    * Salvage, when no decoded object holds the action key: small models often get the JSON almost
      right (a missing brace, an unterminated reasoning). The top-level spans that do not decode
      are read in order of appearance by the same rules (top-level keys of the span's own object,
      the last duplicate wins, the same action check, only closed strings as values); the first
      holding the action key gives its action, but the answer stays invalid ("malformed JSON").
    """
    try:
        return _parse(text, legal_actions, keys)
    except Exception as error:  # a safety net: nothing in _parse is known to raise
        return ParsedAnswer(None, "", False, f"parser error: {type(error).__name__}")


def _parse(text: str, legal_actions: list[str], keys: tuple[str, str]) -> ParsedAnswer:
    if not isinstance(text, str):
        return ParsedAnswer(None, "", False, f"answer is not text but {type(text).__name__}")
    action_key, reasoning_key = keys
    text = text[:MAX_ANSWER_CHARS]
    legal = {a.upper(): a for a in legal_actions if isinstance(a, str) and a.isascii()}
    spans = list(_spans(text))
    for span in spans:
        obj = span.obj
        if obj is None or action_key not in obj:
            continue
        value = obj[action_key]
        reasoning = obj.get(reasoning_key, "")
        reasoning = reasoning if isinstance(reasoning, str) else json.dumps(reasoning)
        if not isinstance(value, str):
            return ParsedAnswer(None, reasoning, False, f"{action_key} is not a string: {value!r}"[:200])
        action = _legal_action(value, legal)
        if action is None:
            return ParsedAnswer(None, reasoning, False, f"illegal action {value!r}"[:200])
        return ParsedAnswer(action, reasoning, True)
    for span in spans:
        if span.obj is not None or action_key not in span.fields:
            continue
        value = span.fields[action_key]
        reasoning = span.fields.get(reasoning_key, "")
        reasoning = reasoning if isinstance(reasoning, str) else ""
        if not isinstance(value, str):
            return ParsedAnswer(None, reasoning, False, f"malformed JSON: {action_key} is not a closed string")
        action = _legal_action(value, legal)
        if action is None:
            return ParsedAnswer(None, reasoning, False, f"malformed JSON: illegal action {value!r}"[:200])
        return ParsedAnswer(action, reasoning, False, "malformed JSON")
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
    num_images_outcome: int = 0,
    outcome_description: str | None = None,
    outcome_steps: int | None = None,
) -> list[dict]:
    """The self/teacher reflection prompt: the frame(s), the move, its outcome and the next frame(s).

    With ``num_images_outcome`` (hindsight) the outcome's frame(s) follow the next frame(s), said to
    be ``outcome_description`` (e.g. the ball reaching your paddle's column), ``outcome_steps`` later.
    Without it the prompt is the one the tiny model's tokenizer was trained on, word for word.
    """
    rules = game.rules or f"The Atari game {game.name}."
    listed = _listed_actions(game, actions, ", ")
    before = [{"type": "image"} for _ in range(num_images_now)]
    after = [{"type": "image"} for _ in range(num_images_next)]
    outcome = [{"type": "image"} for _ in range(num_images_outcome)]
    if num_images_outcome:
        when = f", {outcome_steps} steps later" if outcome_steps else ""
        follows = (f"The next frame follows, then the outcome: {outcome_description or 'a later frame'}{when}. "
                   "What should you have done, and why?")
    else:
        follows = "The next frame follows. What should you have done, and why?"
    text = (
        f"You played {action_taken} here, saying: {reasoning or '(nothing)'}. "
        f"Reward {reward:+g}; this move led toward a lost point (discounted return {return_to_go:+.2f}). "
        + follows
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
        {"role": "user", "content": [*before, {"type": "text", "text": text}, *after, *outcome]},
    ]


# --- questions about an observation (the vision probe and the perception pre-training) ---------


def observation_preamble(observation: ObservationConfig) -> str:
    """What the image(s) are, said before a question."""
    if observation.encoding == "motion":
        return "Magenta: now, green: before. "
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
