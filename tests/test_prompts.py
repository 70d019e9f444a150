import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmrl.games import get_game
from vlmrl.prompts import (
    MAX_ANSWER_CHARS,
    MAX_JSON_DEPTH,
    ParsedAnswer,
    acting_messages,
    format_answer,
    json_objects,
    parse_answer,
    system_prompt,
)

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


# --- the parser's rules: exact ASCII action names, top-level keys, the last duplicate, no raise ---


def assert_well_formed(parsed, legal=ACTIONS):
    """What every answer satisfies, whatever the text: a ParsedAnswer whose action is None or legal."""
    assert isinstance(parsed, ParsedAnswer)
    assert parsed.action is None or parsed.action in legal
    assert not parsed.valid or parsed.action is not None
    assert isinstance(parsed.reasoning, str) and isinstance(parsed.error, str)
    assert not parsed.error.startswith("parser error"), parsed.error  # the safety net never fires


@pytest.mark.parametrize(
    "value",
    [
        "\ufb01re",  # the fi ligature: "ﬁre".upper() == "FIRE"
        "r\u0131ght",  # dotless i: "rıght".upper() == "RIGHT"
        "\uff2c\uff25\uff26\uff34",  # fullwidth LEFT
        "\u041d\u041e\u041e\u0420",  # Cyrillic look-alike of NOOP
        "LEFT\u200b",  # a zero-width space
        "\u00a0LEFT",  # a no-break space (str.strip would drop it)
        "LE\u0301FT",  # a combining accent
    ],
)
def test_unicode_look_alikes_are_illegal(value):
    parsed = parse_answer(json.dumps({"action": value}, ensure_ascii=False), ACTIONS)
    assert not parsed.valid and parsed.action is None and "illegal action" in parsed.error
    # The salvage path obeys the same rule.
    salvaged = parse_answer('{"action": "' + value + '", "reasoning": "cut', ACTIONS)
    assert salvaged.action is None and "illegal action" in salvaged.error


@pytest.mark.parametrize("value", ["left", " Left ", "LeFt\\n", "\\u004cEFT"])
def test_ascii_case_and_whitespace_are_accepted(value):
    parsed = parse_answer('{"action": "' + value + '"}', ACTIONS)
    assert parsed.valid and parsed.action == "LEFT"


@pytest.mark.parametrize(
    "text",
    [
        '{"answer": {"action": "LEFT"}}',
        '{"answer": {"action": "LEFT"}, "reasoning": "x"}',
        '[{"action": "LEFT"}]',
        '{"answer": {"action": "LEFT"}',  # nested in an object that never closes: salvage does not take it
        '[{"action": "LEFT", "reasoning": "cut',
        '{"answer": [{"action": "LEFT"}], "reasoning": "cut',
    ],
)
def test_an_action_nested_in_another_object_or_array_is_not_the_answer(text):
    parsed = parse_answer(text, ACTIONS)
    assert not parsed.valid and parsed.action is None and "no JSON" in parsed.error


@pytest.mark.parametrize(
    "text, action",
    [
        ('Use {braces} or [notes, then {"action": "LEFT"}', "LEFT"),  # brackets JSON cannot follow are prose
        ('{ok} "a quote {"action": "LEFT"}', "LEFT"),
        ('f[KFO "junk [[null, {"action": "left"}]', None),  # prose, then an array: its object is nested
        ('{%6G "x {"a": [{"action": "LEFT"}]}', None),
    ],
)
def test_brackets_in_prose(text, action):
    parsed = parse_answer(text, ACTIONS)
    assert parsed.action == action and parsed.valid == (action is not None)


def test_a_top_level_object_after_a_nested_action_decides():
    parsed = parse_answer('{"answer": {"action": "LEFT"}} {"action": "RIGHT"}', ACTIONS)
    assert parsed.valid and parsed.action == "RIGHT"


def test_the_first_top_level_object_holding_the_action_decides():
    assert parse_answer('{"action": "LEFT"} {"action": "RIGHT"}', ACTIONS).action == "LEFT"
    parsed = parse_answer('{"action": "JUMP"} {"action": "RIGHT"}', ACTIONS)
    assert not parsed.valid and "illegal action" in parsed.error


def test_a_decoded_object_beats_salvage():
    parsed = parse_answer('{"action": LEFT} {"action": "RIGHT"}', ACTIONS)
    assert parsed.valid and parsed.action == "RIGHT"


def test_the_last_duplicate_key_wins_in_json_and_in_salvage():
    text = '{"action": "LEFT", "reasoning": "a", "action": "RIGHT", "reasoning": "b"}'
    parsed = parse_answer(text, ACTIONS)
    assert parsed.valid and (parsed.action, parsed.reasoning) == ("RIGHT", "b")
    salvaged = parse_answer(text[:-1], ACTIONS)  # the closing brace lost
    assert not salvaged.valid and (salvaged.action, salvaged.reasoning) == ("RIGHT", "b")
    assert salvaged.error == "malformed JSON"
    # The last occurrence decides even when it is the illegal one.
    assert parse_answer('{"action": "LEFT", "action": "JUMP"}', ACTIONS).action is None
    assert parse_answer('{"action": "LEFT", "action": "JUMP"', ACTIONS).action is None


def test_salvage_reads_only_the_top_level_keys_of_its_object():
    text = '{"reasoning": "up", "plan": {"action": "LEFT", "reasoning": "no"}, "action": "RIGHT", "x": "cut'
    parsed = parse_answer(text, ACTIONS)
    assert not parsed.valid and (parsed.action, parsed.reasoning) == ("RIGHT", "up")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "{" * 100_000,
        '{"a":' * 20_000,
        '{"a": [' * 10_000,
        '[{"action": "LEFT"}, ' * 5_000,
        '{"a":' * 800 + '"x"' + "}" * 800,
        '{"action": "LEFT", "reasoning": ' + "[" * 900 + "]" * 900 + "}",
    ],
)
def test_deep_nesting_never_raises(text):
    assert_well_formed(parse_answer(text, ACTIONS))
    assert_well_formed(parse_answer(text[:MAX_ANSWER_CHARS], ACTIONS))
    assert list(json_objects(text)) == [] or all(isinstance(o, dict) for o in json_objects(text))


def test_an_object_deeper_than_the_limit_is_salvaged_not_decoded():
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    parsed = parse_answer('{"action": "LEFT", "reasoning": "x", "more": ' + deep + "}", ACTIONS)
    assert not parsed.valid and parsed.action == "LEFT" and parsed.error == "malformed JSON"
    shallow = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    assert parse_answer('{"action": "LEFT", "more": ' + shallow + "}", ACTIONS).valid


@pytest.mark.parametrize("text", [None, b'{"action": "LEFT"}', 3, ["LEFT"], {"action": "LEFT"}])
def test_non_text_is_an_invalid_answer(text):
    parsed = parse_answer(text, ACTIONS)
    assert_well_formed(parsed)
    assert not parsed.valid and parsed.action is None and "not text" in parsed.error
    assert list(json_objects(text)) == []


def test_json_objects_yields_top_level_objects_only():
    text = 'a {"x": 1} [{"y": 2}] {"z": {"w": 3}} {"bad": } {"v": "}"} {"cut": {"u": 4}'
    assert list(json_objects(text)) == [{"x": 1}, {"z": {"w": 3}}, {"v": "}"}]


# --- properties ---------------------------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None, database=None)
LOOK_ALIKES = ["\ufb01re", "r\u0131ght", "\uff2c\uff25\uff26\uff34", "NO\u041eP", "left", " FIRE ", "JUMP", ""]
KEYS = st.sampled_from(["action", "reasoning", "a", "plan", "Action"]) | st.text(max_size=8)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.sampled_from(
    ACTIONS + LOOK_ALIKES
)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=30,
)
WRAPPER_KEYS = st.sampled_from(["reasoning", "a", "plan", "Action"]) | st.text(max_size=8).filter(
    lambda k: k != "action"
)
FILLER = st.recursive(SCALARS, lambda children: st.lists(children, max_size=3), max_leaves=6)


@PROPERTY
@given(st.text(), st.lists(st.text(max_size=12), max_size=8))
def test_property_any_text_never_raises(text, legal):
    assert_well_formed(parse_answer(text, ACTIONS))
    assert_well_formed(parse_answer(text, legal), legal)
    assert_well_formed(parse_answer(text, ACTIONS, keys=("correct_action", "correct_reasoning")))


@PROPERTY
@given(JSON_LIKE, st.booleans(), st.text(max_size=10), st.text(max_size=10))
def test_property_json_like_structures(structure, ascii_only, before, after):
    text = json.dumps(structure, ensure_ascii=ascii_only)
    assert_well_formed(parse_answer(text, ACTIONS))
    assert_well_formed(parse_answer(before + text + after, ACTIONS))


@st.composite
def nested_answers(draw):
    """An answer ``{"action": value, ...}`` wrapped in ``depth`` objects or arrays with filler."""
    value = draw(st.sampled_from(ACTIONS + LOOK_ALIKES) | st.text(max_size=8))
    answer = {"action": value, **draw(st.dictionaries(st.sampled_from(["reasoning", "x"]), JSON_LIKE, max_size=2))}
    depth = draw(st.integers(0, 6))
    node = answer
    for _ in range(depth):
        filler = draw(st.lists(FILLER, max_size=2))
        if draw(st.booleans()):
            size = len(filler) + 1
            keys = draw(st.lists(WRAPPER_KEYS, min_size=size, max_size=size, unique=True))
            node = dict(zip(keys, [*filler, node], strict=True))
        else:
            node = [*filler, node]
    return value, depth, json.dumps(node, ensure_ascii=draw(st.booleans()))


@pytest.mark.parametrize("first", ["Infinity", "-Infinity", "NaN", "1", "null"])
def test_an_action_inside_an_array_is_not_the_answer_whatever_comes_first(first):
    # Found by the property below: an array opening with a non-finite number (json.dumps writes Infinity and
    # NaN for them) was read as prose, so the object inside it counted as a top-level answer.
    parsed = parse_answer(f'[{first}, {{"action": "NOOP"}}]', ACTIONS)
    assert not parsed.valid and parsed.action is None


@PROPERTY
@given(nested_answers())
def test_property_only_a_top_level_action_counts(case):
    value, depth, text = case
    parsed = parse_answer(text, ACTIONS)
    assert_well_formed(parsed)
    exact = value.isascii() and value.strip().upper() in ACTIONS
    if depth == 0:
        assert parsed.valid == exact
        assert parsed.action == (value.strip().upper() if exact else None)
    else:
        assert not parsed.valid and parsed.action is None
    # Truncated anywhere, the answer never names another action than the one written.
    cut = len(text) * 2 // 3
    truncated = parse_answer(text[:cut], ACTIONS)
    assert_well_formed(truncated)
    assert truncated.action in (None, value.strip().upper() if exact and depth == 0 else None)


@PROPERTY
@given(st.sampled_from(ACTIONS), st.text(max_size=40) | st.none(), st.integers(0, 200), st.text(max_size=5))
def test_property_truncated_and_mutated_answers(action, reasoning, cut, junk):
    text = format_answer(action, reasoning)
    cut = min(cut, len(text))
    for mutated in (text[:cut], text[:cut] + junk, text[:cut] + junk + text[cut:], text[:cut] + text[cut + 1 :]):
        parsed = parse_answer(mutated, ACTIONS)
        assert_well_formed(parsed)
    truncated = parse_answer(text[:cut], ACTIONS)
    assert truncated.action in (None, action)
    assert truncated.valid == (cut == len(text))


def test_salvage_follows_the_keys():
    text = '{"analysis": "a", "correct_action": "left", "correct_reasoning": "down"'
    parsed = parse_answer(text, ACTIONS, keys=("correct_action", "correct_reasoning"))
    assert not parsed.valid and (parsed.action, parsed.reasoning, parsed.error) == ("LEFT", "down", "malformed JSON")


def test_a_closer_of_the_other_kind_closes_nothing():
    parsed = parse_answer('{"action": "LEFT"] {"action": "RIGHT"}', ACTIONS)
    assert not parsed.valid and (parsed.action, parsed.error) == ("LEFT", "malformed JSON")
