"""Fuzz the answer parser and print one JSON line: inputs, raises, valid/invalid counts, seconds.

    python benchmarks/parser_fuzz.py --inputs 100000 --seed 0

The inputs mix six kinds, drawn in turn: random Unicode text (weighted toward JSON's own
characters), random JSON-like structures with the action key at a random depth, deep nesting,
truncated valid answers, Unicode look-alikes of the action names, and valid answers with random
edits. Besides raises (the goal is 0), it counts ``violations``: an action that is not legal, a
valid answer without an action, the safety net firing ("parser error"), a look-alike or a nested
action accepted, or a truncated answer naming another action than the one written.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter

from vlmrl.prompts import format_answer, parse_answer

ACTIONS = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
# Look-alikes: str.upper() maps some of these onto an action name; none is ASCII.
LOOK_ALIKES = [
    "\ufb01re",  # the fi ligature
    "r\u0131ght",  # dotless i
    "R\u0130GHT",  # dotted capital I
    "\uff2c\uff25\uff26\uff34",  # fullwidth LEFT
    "\u041d\u041e\u041e\u0420",  # Cyrillic NOOP
    "LEFT\u200b",  # zero-width space
    "\u00a0LEFT",  # no-break space
    "LE\u0301FT",  # combining accent
    "\u0280\u026a\u0262\u029c\u1d1b",  # small capitals RIGHT
    "le\ufb00t",  # the ff ligature (no action)
    "NOOP\u3000",  # ideographic space
]
JSONISH = '{}[]":,\\ \n' + "actionreasoningLEFTRIGHTFIRENOOP0123456789truefalsenull"


def random_text(rng: random.Random) -> str:
    n = rng.choice([0, 1, 5, 20, 100, 500, 3000, 5000])
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            out.append(rng.choice(JSONISH))
        elif r < 0.8:
            out.append(chr(rng.randrange(0x20, 0x80)))
        elif r < 0.95:
            out.append(chr(rng.randrange(0x80, 0x3000)))
        else:
            out.append(chr(rng.randrange(0, 0x110000)))  # surrogates included
    return "".join(out)


def action_value(rng: random.Random):
    r = rng.random()
    if r < 0.5:
        action = rng.choice(ACTIONS)
        return rng.choice([action, action.lower(), f" {action} ", action.title()])
    if r < 0.75:
        return rng.choice(LOOK_ALIKES)
    return rng.choice([None, 3, 1.5, True, [], ["LEFT"], {"action": "LEFT"}, "JUMP", "", "LEFT RIGHT"])


def random_json(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 4 or r < 0.4:
        return rng.choice([None, True, 0, -7, 2.5, "", "x", "LEFT", random_text(rng)[:20]])
    if r < 0.7:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["action", "reasoning", "a", "plan", "Action"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def json_like(rng: random.Random) -> tuple[str, dict]:
    """A random structure with ``{"action": value}`` at depth 0..5; only depth 0 may be accepted."""
    value = action_value(rng)
    node = {"action": value}
    if rng.random() < 0.5:
        node["reasoning"] = random_json(rng)
    depth = rng.randrange(6)
    for _ in range(depth):
        filler = [random_json(rng) for _ in range(rng.randrange(3))]
        if rng.random() < 0.5:
            keys = ["reasoning", "a", "plan", "Action", "x", "y"]
            rng.shuffle(keys)
            node = dict(zip(keys, [*filler, node], strict=False))
        else:
            node = [*filler, node]
    text = json.dumps(node, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.3:
        text = random_text(rng)[:30] + text + random_text(rng)[:30]
    return text, {"value": value, "nested": depth > 0}


def deep(rng: random.Random) -> str:
    n = rng.choice([10, 63, 64, 65, 100, 999, 1000, 1001, 5000, 50_000])
    unit = rng.choice(["[", "{", '{"a":', '{"action": "LEFT", "a":', '[{"a":', '{"a": [', '"'])
    inner = rng.choice(["", '"x"', '{"action": "LEFT"}', "1"])
    close = "".join("]" if c == "[" else "}" for c in reversed(unit) if c in "[{")
    return unit * n + inner + (close * n if rng.random() < 0.5 else "")


def truncated(rng: random.Random) -> tuple[str, dict]:
    action = rng.choice(ACTIONS)
    text = format_answer(action, rng.choice([None, "ball below", random_text(rng)[:60]]))
    return text[: rng.randrange(len(text) + 1)], {"action": action}


def look_alike(rng: random.Random) -> tuple[str, dict]:
    value = rng.choice(LOOK_ALIKES)
    text = json.dumps({"action": value, "reasoning": "x"}, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.5:
        text = text[:-3]  # through the salvage path
    return text, {"look_alike": True}


def mutated(rng: random.Random) -> str:
    chars = list(format_answer(rng.choice(ACTIONS), rng.choice([None, "why", random_text(rng)[:40]])))
    for _ in range(rng.randrange(1, 6)):
        i = rng.randrange(len(chars) + 1)
        op = rng.random()
        if op < 0.4 and i < len(chars):
            del chars[i]
        elif op < 0.8:
            chars.insert(i, rng.choice(JSONISH))
        elif i < len(chars):
            chars[i] = rng.choice(LOOK_ALIKES)[0]
    return "".join(chars)


def draw(rng: random.Random, kind: str) -> tuple[str, dict]:
    if kind == "text":
        return random_text(rng), {}
    if kind == "json_like":
        return json_like(rng)
    if kind == "deep":
        return deep(rng), {}
    if kind == "truncated":
        return truncated(rng)
    if kind == "look_alike":
        return look_alike(rng)
    return mutated(rng), {}


def violations(parsed, meta: dict) -> list[str]:
    found = []
    if parsed.action is not None and parsed.action not in ACTIONS:
        found.append("action not legal")
    if parsed.valid and parsed.action is None:
        found.append("valid without action")
    if parsed.error.startswith("parser error"):
        found.append("safety net")
    value = meta.get("value")
    if meta.get("look_alike") or (isinstance(value, str) and not value.isascii()):
        if parsed.action is not None:
            found.append("look-alike accepted")
    if meta.get("nested") and parsed.action is not None:
        found.append("nested action accepted")
    if "action" in meta and parsed.action not in (None, meta["action"]):
        found.append("truncation named another action")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    kinds = ["text", "json_like", "deep", "truncated", "look_alike", "mutated"]
    cases = [(kinds[i % len(kinds)], *draw(rng, kinds[i % len(kinds)])) for i in range(args.inputs)]
    counts, by_kind, broken = Counter(), Counter(), Counter()
    first_raise = None
    start = time.perf_counter()
    for kind, text, meta in cases:
        by_kind[kind] += 1
        try:
            parsed = parse_answer(text, ACTIONS)
        except Exception as error:  # the parser is documented never to raise: count it
            counts["raises"] += 1
            first_raise = first_raise or f"{type(error).__name__} on {text[:80]!r}"
            continue
        counts["valid" if parsed.valid else "invalid"] += 1
        if parsed.action is not None and not parsed.valid:
            counts["salvaged"] += 1
        for problem in violations(parsed, meta):
            broken[problem] += 1
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "inputs": len(cases),
                "raises": counts["raises"],
                "violations": sum(broken.values()),
                "valid": counts["valid"],
                "invalid": counts["invalid"],
                "salvaged_invalid_with_action": counts["salvaged"],
                "seconds": round(seconds, 2),
                "per_input_us": round(1e6 * seconds / max(1, len(cases)), 1),
                "longest_input_chars": max(len(text) for _, text, _ in cases),
                "by_kind": dict(by_kind),
                "violations_by_rule": dict(broken),
                "first_raise": first_raise,
                "seed": args.seed,
            }
        )
    )


if __name__ == "__main__":
    main()
