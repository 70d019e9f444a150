"""Collection throughput on the tiny model, all figures measured in this one run.

- env_steps_per_s: the N environments stepped with random actions, no model;
- forward_frames_per_s: the forward of constrained decoding alone, at batch N on pre-encoded inputs:
  the same forward collect.py runs (the prompt's text prefix cached, see ``VLMPolicy``); measured
  before and after collect.py's run and the faster kept, so the bound is not flattered by a slow spell;
- forward_uncached_frames_per_s: the plain forward of the whole prompt, for comparison;
- collect_steps_per_s: collect.py's own loop (constrained decoding, N envs, motion images, shards
  written), from its first step to its last shard on disk (loading the model is setup_s, apart);
- seed_steps_per_s: the seed's way: one env, the current frame only (one rgb image at the model's
  image size), one free ``generate`` call per step answering ``{"reasoning": ..., "action": ...}``
  with the reasoning first. A random or tiny model's own generations are arbitrary in length, so
  each answer is made exactly ``seed_answer_tokens`` long (min = max new tokens): the token count of
  a representative seed-format answer, built from the oracle's own reasoning sentences in one episode
  it plays (the median), in the model's tokenizer, plus the end-of-turn token.

    python benchmarks/collect_throughput.py [--model data/models/tiny-smolvlm] [--num-envs 16] [--torch-threads 1]

Defaults: 16 envs (the tiny model's forward is cheapest per frame near batch 16 on 2 cores), 16
episodes of 500 steps (the tiny recipe's cap: a seeded env reset costs ~0.15 s, so the episode
length sets its share). On a CPU shared with other jobs, two torch threads can crawl (each op waits
for the other thread to be scheduled): ``--torch-threads 1`` gives steadier figures there.

Prints one JSON object (keys include speedup_vs_seed = collect / seed and
fraction_of_forward_bound = collect / forward), with the 1-minute load average at the start and end.
"""

# ruff: noqa: I001  (vlmrl is imported before torch on purpose)
from __future__ import annotations

import vlmrl  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlmrl.cli import ArgumentParser, run
from vlmrl.collection import collect
from vlmrl.configs import CollectArguments
from vlmrl.env import AtariBatch
from vlmrl.games import get_game
from vlmrl.models import load_processor, load_vlm
from vlmrl.observation import ObservationConfig
from vlmrl.policies import Observation
from vlmrl.policies.vlm import VLMPolicy
from vlmrl.prompts import ANSWER_PREFIX

GAME = "ALE/Pong-v5"
ACTIONS = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
MOTION = dict(frames=2, encoding="motion", crop=True, image_size=128)  # the tiny recipe's observation
SEED_OBSERVATION = dict(frames=1, encoding="rgb", crop=False)  # image size: the model's own


def ensure_model(path: str) -> str:
    if Path(path, "config.json").exists():
        return path
    from vlmrl.tiny_model import main as build

    out = Path(tempfile.mkdtemp()) / "tiny-smolvlm"
    build(["--output-dir", str(out), "--no-pretrain"])  # speed does not depend on the weights
    return str(out)


def env_steps_per_s(num_envs: int, steps: int) -> float:
    batch = AtariBatch(GAME, num_envs)
    rng = np.random.default_rng(0)
    for slot in range(num_envs):
        batch.reset(slot, seed=slot)
    start = time.perf_counter()
    for _ in range(steps // num_envs):
        results = batch.step({s: batch.action_names[rng.integers(6)] for s in range(num_envs)})
        for slot, r in results.items():
            if r.terminated or r.truncated:
                batch.reset(slot, seed=slot)
    batch.close()
    return (steps // num_envs) * num_envs / (time.perf_counter() - start)


def forward_frames_per_s(model_path: str, num_envs: int, repeats: int, *, prefix_cache: bool) -> float:
    """Constrained decoding's forward (``VLMPolicy.next_token_logits``) alone, on pre-encoded inputs."""
    observation = ObservationConfig(**MOTION)
    model, processor = load_vlm(model_path), load_processor(model_path, observation)
    policy = VLMPolicy(model, processor, get_game(GAME), ACTIONS, observation, prefix_cache=prefix_cache)
    batch = AtariBatch(GAME, 1)
    frame, ram = batch.reset(0, seed=0)
    batch.close()
    inputs = policy._to_device(policy.encoder.encode([Observation([frame, frame], ram)] * num_envs,
                                                     " " + ANSWER_PREFIX))
    policy.next_token_logits(inputs)  # warm-up (and, cached, the prefix built and checked)
    start = time.perf_counter()
    for _ in range(repeats):
        policy.next_token_logits(inputs)
    return repeats * num_envs / (time.perf_counter() - start)


def seed_answer_tokens(model_path: str, steps: int = 300) -> tuple[int, str]:
    """Token count of a representative seed-format answer, and that answer: the median length of
    ``{"reasoning": <the oracle's sentence>, "action": <its action>}`` over ``steps`` steps the oracle
    plays, in the model's tokenizer, plus one for the end-of-turn token that closes an answer."""
    tokenizer = load_processor(model_path).tokenizer
    oracle = get_game(GAME).oracle()
    batch = AtariBatch(GAME, 1)
    _, ram = batch.reset(0, seed=0)
    prev, answers = None, []
    for _ in range(steps):
        decision = oracle.decide(ram, prev)
        text = json.dumps({"reasoning": decision.reasoning, "action": decision.action})
        answers.append((len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1, text))
        result = batch.step({0: decision.action})[0]
        if result.terminated or result.truncated:
            break
        prev, ram = ram, result.ram
    batch.close()
    answers.sort()
    return answers[len(answers) // 2]


def collect_run(model_path: str, out: Path, **settings) -> dict:
    args = CollectArguments(model=model_path, output_dir=str(out), progress=False, **settings)
    return collect(args)


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="data/models/tiny-smolvlm", help="tiny model (built random-init if absent)")
    parser.add_argument("--num-envs", type=int, default=16, help="environments stepped as a batch")
    parser.add_argument("--episodes", type=int, default=16, help="episodes for collect.py's figure")
    parser.add_argument("--max-steps", type=int, default=500,
                        help="steps per episode for collect.py's figure (the tiny recipe's cap)")
    parser.add_argument("--seed-steps", type=int, default=100, help="steps played the seed's way")
    parser.add_argument("--forward-repeats", type=int, default=30, help="timed forwards per forward figure")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    model = ensure_model(args.model)
    n = args.num_envs
    figures: dict = {"num_envs": n, "episodes": args.episodes, "max_steps": args.max_steps,
                     "torch_threads": torch.get_num_threads(), "load_average_1m": os.getloadavg()[0]}
    tokens, answer = seed_answer_tokens(model)
    with tempfile.TemporaryDirectory() as tmp:
        figures["env_steps_per_s"] = env_steps_per_s(n, 4000)
        forward = [forward_frames_per_s(model, n, args.forward_repeats, prefix_cache=True)]
        figures["forward_uncached_frames_per_s"] = forward_frames_per_s(model, n, args.forward_repeats,
                                                                         prefix_cache=False)
        ours = collect_run(model, Path(tmp) / "ours", episodes=args.episodes, max_steps=args.max_steps, num_envs=n,
                           decode="constrained", **MOTION)
        forward.append(forward_frames_per_s(model, n, args.forward_repeats, prefix_cache=True))
        seed = collect_run(model, Path(tmp) / "seed", episodes=1, max_steps=args.seed_steps, num_envs=1,
                           decode="generate", max_new_tokens=tokens, min_new_tokens=tokens, **SEED_OBSERVATION)
    figures.update({
        "forward_frames_per_s": max(forward),
        "forward_frames_per_s_runs": forward,
        "collect_steps_per_s": ours["steps_per_s"],
        "collect_setup_s": ours["setup_s"],
        "collect_wall_s": ours["wall_s"],
        "collect_steps": ours["new_steps"],
        "seed_steps_per_s": seed["steps_per_s"],
        "seed_answer_tokens": tokens,
        "seed_answer": answer,
    })
    figures["speedup_vs_seed"] = figures["collect_steps_per_s"] / figures["seed_steps_per_s"]
    figures["fraction_of_forward_bound"] = figures["collect_steps_per_s"] / figures["forward_frames_per_s"]
    figures["load_average_1m_end"] = os.getloadavg()[0]

    def rounded(v):
        return round(v, 3) if isinstance(v, float) else [rounded(x) for x in v] if isinstance(v, list) else v

    print(json.dumps({k: rounded(v) for k, v in figures.items()}))


if __name__ == "__main__":
    run(main)
