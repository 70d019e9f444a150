import json

import pytest

from vlmrl.games import get_game
from vlmrl.prompts import acting_messages, format_answer, parse_answer, system_prompt

ACTIONS = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]


def test_system_prompt_names_every_action_and_its_effect():
    text = system_prompt(get_game("ALE/Pong-v5"), ACTIONS)
    for action in ACTIONS:
        assert action in text
    assert "RIGHT (up)" in text and "LEFT (down)" in text


def test_acting_messages_have_one_image_placeholder_per_image():
    msgs = acting_messages(get_game("ALE/Pong-v5"), ACTIONS, 2, "rgb")
    assert [c["type"] for c in msgs[1]["content"]].count("image") == 2


@pytest.mark.parametrize(
    "text, action",
    [
        ('{"action": "LEFT", "reasoning": "ball below"}', "LEFT"),
        ('{"reasoning": "ball above", "action": "RIGHT"}', "RIGHT"),
        ('Sure! {"action": "rightfire", "reasoning": "x"} done', "RIGHTFIRE"),
        ('{"a": {"b": 1}} then {"action": "NOOP"}', "NOOP"),
        (format_answer("FIRE", 'quotes " and \\ inside'), "FIRE"),
    ],
)
def test_parse_valid_answers(text, action):
    parsed = parse_answer(text, ACTIONS)
    assert parsed.valid and parsed.action == action


@pytest.mark.parametrize(
    "text, error",
    [
        ("", "no JSON"),
        ("LEFT", "no JSON"),
        ('{"action": "JUMP", "reasoning": "x"}', "illegal action"),
        ('{"action": ["LEFT"], "reasoning": "x"}', "not a string"),
        ('{"action": null}', "not a string"),
        ('{"reasoning": "no action key"}', "no JSON"),
        ("{" * 10000, "no JSON"),
        ('{"action": "LEFT", "reasoning": "unterminated', "malformed"),
        ("\x00\xff" + json.dumps({"action": 3}), "not a string"),
    ],
)
def test_parse_invalid_answers_never_raise(text, error):
    parsed = parse_answer(text, ACTIONS)
    assert not parsed.valid
    assert error in parsed.error


def test_runaway_output_is_cut_before_parsing():
    text = "x" * 10_000 + '{"action": "LEFT"}'
    assert not parse_answer(text, ACTIONS).valid


def test_reflection_keys():
    text = json.dumps({"analysis": "a", "correct_action": "LEFT", "correct_reasoning": "down"})
    parsed = parse_answer(text, ACTIONS, keys=("correct_action", "correct_reasoning"))
    assert parsed.valid and parsed.action == "LEFT" and parsed.reasoning == "down"
