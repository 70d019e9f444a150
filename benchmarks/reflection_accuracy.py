"""How right is each reflector? Accuracy against the RAM oracle on the same steps. Prints one JSON object.

    python benchmarks/reflection_accuracy.py                       # collects 4 x 500 steps first
    python benchmarks/reflection_accuracy.py --episodes data/bench/episodes --steps 400 --variants

Every reflector runs through the reflection phase itself (``vlmrl.reflection.reflect``) on the same
sampled steps of the same episodes (collected by the tiny base with the oracle playing half the steps,
as the tiny recipe collects): the oracle, ``self`` with and without hindsight, ``grounded`` (hindsight),
the frozen base (``grounded:<base>``), ``self-imitation`` (on the steps it selects itself: those with a
positive return-to-go) and a uniformly random class. For each: accuracy (the corrected action in the
oracle's up/down/stay class), the same with the ball coming toward the player (``ball_phase``) and on
the model's own steps (not the teacher's: there the action taken is the oracle's), the invalid rate
and reflections/s. ``--variants`` also runs the grounded reflector's mapping variants (outcome frame,
margin, keeping the action when the ball met the paddle, direction looks). Baselines on the same
steps: always "stay", and keeping the action taken.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from datasets import load_dataset

from vlmrl.cli import ArgumentParser, run
from vlmrl.configs import CollectArguments, ReflectArguments
from vlmrl.errors import UsageError
from vlmrl.games import get_game
from vlmrl.games.pong import GroundedRules, Pong, ball_phase
from vlmrl.reflection import reflect


def _collect(model: str, output_dir: str, episodes: int, max_steps: int, teacher_mix: float) -> None:
    from vlmrl.collection import collect

    collect(CollectArguments(policy="model", model=model, episodes=episodes, max_steps=max_steps,
                             num_envs=episodes, teacher_mix=teacher_mix, seed=0, output_dir=output_dir,
                             progress=False))


def _step_facts(episodes_dir: str) -> dict[tuple[int, int], dict]:
    """Per (episode, step): the ball's phase, whether the teacher played it, the action class taken."""
    ds = load_dataset(episodes_dir, split="train").select_columns(["episode_id", "step", "ram", "teacher", "action"])
    rams = {(int(e), int(s)): np.asarray(r, np.uint8) for e, s, r in zip(ds["episode_id"], ds["step"], ds["ram"],
                                                                          strict=True)}
    game = get_game("ALE/Pong-v5")
    facts = {}
    for e, s, teacher, action in zip(ds["episode_id"], ds["step"], ds["teacher"], ds["action"], strict=True):
        key = (int(e), int(s))
        facts[key] = {"phase": ball_phase(rams[key], rams.get((key[0], key[1] - 1))), "teacher": bool(teacher),
                      "taken": game.action_class(action)}
    return facts


def _score(pairs: list[tuple[str, str, dict]]) -> dict:
    """Accuracy overall, ball toward the player, and on the model's own steps, from (corrected, oracle class, facts)."""
    def acc(rows):
        return round(float(np.mean([c == o for c, o, _ in rows])), 4) if rows else None
    return {"accuracy": acc(pairs), "accuracy_toward": acc([p for p in pairs if p[2]["phase"] == "toward"]),
            "accuracy_model_steps": acc([p for p in pairs if not p[2]["teacher"]]), "n": len(pairs),
            "n_toward": sum(p[2]["phase"] == "toward" for p in pairs)}


def reflector_plan(model: str) -> dict[str, tuple[str, dict]]:
    """Each reflector measured: its name in the output -> (the reflector spec, reflect options)."""
    return {
        "oracle": ("oracle", {}),
        "self": ("self", {"outcome": "next"}),
        "self_hindsight": ("self", {"outcome": "ball_at_paddle"}),
        "grounded_hindsight": ("grounded", {}),
        "grounded_frozen_base": (f"grounded:{model}", {}),
        # The two-step teacher's own hindsight: the ball's row two steps on.
        "grounded_ahead_2": ("grounded", {"outcome": "ahead", "outcome_max_steps": 2}),
        "self_imitation": ("self-imitation", {}),
        "self_imitation_advantage": ("self-imitation", {"advantage": True}),
    }


def _run(spec: str, episodes_dir: str, work: Path, rate: float, seed: int, facts: dict, **extra) -> dict:
    game = get_game("ALE/Pong-v5")
    out = work / f"{spec.replace(':', '_').replace('/', '_')}-{len(list(work.iterdir()))}"
    summary = reflect(ReflectArguments(episodes=episodes_dir, reflector=spec, reflect_on="all", reflection_rate=rate,
                                       seed=seed, output_dir=str(out), progress=False, max_new_tokens=64, **extra))
    pairs = []
    if summary["reflected"]:  # a reflector whose every answer was unusable wrote no rows
        ds = load_dataset(str(out), split="train")
        pairs = [(game.action_class(c), game.action_class(o), facts[(int(e), int(s))])
                 for c, o, e, s in zip(ds["correct_action"], ds["oracle_action"], ds["source_episode_id"],
                                       ds["source_step"], strict=True)]
    result = _score(pairs)
    result.update({"invalid_rate": round(summary["invalid"] / max(summary["selected"], 1), 4),
                   "reflections_per_s": round(summary["selected"] / summary["wall_s"], 2),
                   "selected": summary["selected"]})
    return result


def _baselines(oracle_dir: Path, facts: dict, seed: int) -> dict:
    """Random class, always stay and the action taken, on the oracle run's steps (the common sample)."""
    game = get_game("ALE/Pong-v5")
    ds = load_dataset(str(oracle_dir), split="train")
    rows = [(game.action_class(o), facts[(int(e), int(s))])
            for o, e, s in zip(ds["oracle_action"], ds["source_episode_id"], ds["source_step"], strict=True)]
    rng = np.random.default_rng(seed)
    classes = sorted(set(game.action_classes.values()))
    return {
        "random": _score([(classes[rng.integers(len(classes))], o, f) for o, f in rows]),
        "always_stay": _score([("stay", o, f) for o, f in rows]),
        "action_taken": _score([(f["taken"], o, f) for o, f in rows]),
    }


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/models/tiny-smolvlm", help="the acting model and the frozen base")
    parser.add_argument("--episodes", default="data/bench/episodes", help="episodes dataset (collected if absent)")
    parser.add_argument("--collect-episodes", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--teacher-mix", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=400, help="steps reflected on (the same sample for all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="?", const="all", default=None,
                        help="also run the grounded mapping variants: all, or a comma-separated list of their names")
    parser.add_argument("--reflectors", default=None,
                        help="comma-separated reflectors to run (names as in the output, e.g. "
                             "grounded_frozen_base; default: all); the oracle always runs (the baselines' sample)")
    parser.add_argument("--variant-reflector", default="grounded",
                        help="the reflector the variants vary: grounded (the model that played) or grounded:<path>, "
                             "e.g. the frozen base, as the loop's grounded runs reflect")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a loaded 2-core machine two threads ran a forward ~10x slower)")
    args = parser.parse_args()
    if args.variants:
        variant_plan(Pong.grounded_rules, args.variants)  # an unknown name is refused before anything runs
    plan = reflector_plan(args.model)
    if args.reflectors is not None:
        unknown = [n for n in args.reflectors.split(",") if n not in plan]
        if unknown:
            raise UsageError(f"--reflectors: unknown {', '.join(unknown)}; known: {', '.join(plan)}")
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not (Path(args.episodes) / "README.md").exists():
        _collect(args.model, args.episodes, args.collect_episodes, args.max_steps, args.teacher_mix)
    facts = _step_facts(args.episodes)
    rate = min(1.0, args.steps / len(facts))
    results: dict = {"episodes": args.episodes, "model": args.model, "steps_total": len(facts), "steps": args.steps,
                     "teacher_share": round(float(np.mean([f["teacher"] for f in facts.values()])), 3)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        common = dict(episodes_dir=args.episodes, work=work, rate=rate, seed=args.seed, facts=facts)
        chosen = list(plan) if args.reflectors is None else ["oracle", *args.reflectors.split(",")]
        reflectors = {name: _run(plan[name][0], **common, **plan[name][1]) for name in dict.fromkeys(chosen)}
        oracle_dir = next(p for p in work.iterdir() if p.name.startswith("oracle"))
        reflectors.update(_baselines(oracle_dir, facts, args.seed))
        results["reflectors"] = reflectors
        if args.variants:
            variants = {}
            default = Pong.grounded_rules
            try:
                for name, rules, extra in variant_plan(default, args.variants):
                    Pong.grounded_rules = rules  # every phase's get_game makes a new Pong: set it on the class
                    variants[name] = _run(args.variant_reflector, **common, **extra)
            finally:
                Pong.grounded_rules = default
            results["grounded_variants"] = variants
        results["grounded_rules"] = dataclasses.asdict(GroundedRules())
    print(json.dumps(results))


def variant_plan(default: GroundedRules, names: str) -> list[tuple[str, GroundedRules, dict]]:
    """The grounded mapping variants (name, rules, reflect options): ``all`` or the named ones."""
    plan = [
        ("outcome_point", default, {"outcome": "point"}),
        ("outcome_next", default, {"outcome": "next"}),
        ("margin_6", dataclasses.replace(default, margin=6.0), {}),
        ("margin_14", dataclasses.replace(default, margin=14.0), {}),
        ("margin_16", dataclasses.replace(default, margin=16.0), {}),
        ("margin_21", dataclasses.replace(default, margin=21.0), {}),
        ("no_momentum", dataclasses.replace(default, momentum=0.0), {}),
        ("keep_when_met", dataclasses.replace(default, keep_when_met=True), {}),
        ("margin_21_keep_when_met", dataclasses.replace(default, margin=21.0, keep_when_met=True), {}),
        ("one_direction_look", dataclasses.replace(default, direction_looks=1), {}),
        ("one_outcome_look", dataclasses.replace(default, outcome_looks=1), {}),
        ("expected_rows", dataclasses.replace(default, expected_rows=True), {}),
        ("hard_rows", dataclasses.replace(default, expected_rows=False), {}),
    ]
    if names == "all":
        return plan
    known = {name for name, _, _ in plan}
    wanted = names.split(",")
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UsageError(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [v for v in plan if v[0] in wanted]


if __name__ == "__main__":
    run(main)
