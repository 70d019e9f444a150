"""Collection throughput on the tiny model, all figures measured in this one run.

- env_steps_per_s: the N environments stepped with random actions, no model;
- forward_frames_per_s: the model's forward alone on pre-encoded inputs at batch N;
- collect_steps_per_s: collect.py's own loop (constrained decoding, N envs, shards written);
- seed_steps_per_s: the seed's way: one env, one ``generate`` call per step.

    python benchmarks/collect_throughput.py [--model data/models/tiny-smolvlm] [--num-envs 10]

Prints one JSON object (keys include speedup_vs_seed and fraction_of_forward_bound).
"""

# ruff: noqa: I001  (vlmrl is imported before torch on purpose)
from __future__ import annotations

import vlmrl  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlmrl.agent import Observation, VLMPolicy
from vlmrl.collection import collect
from vlmrl.configs import CollectArguments
from vlmrl.env import AtariBatch
from vlmrl.models import load_processor, load_vlm
from vlmrl.observation import ObservationConfig
from vlmrl.prompts import ANSWER_PREFIX

GAME = "ALE/Pong-v5"
MOTION = dict(frames=2, encoding="motion", crop=True, image_size=128)


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
    return (steps // num_envs) * num_envs / (time.perf_counter() - start)


def forward_frames_per_s(model_path: str, num_envs: int, repeats: int) -> float:
    observation = ObservationConfig(**MOTION)
    model, processor = load_vlm(model_path), load_processor(model_path, observation)
    policy = VLMPolicy(model, processor, GAME, ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"], observation)
    batch = AtariBatch(GAME, 1)
    frame, ram = batch.reset(0, seed=0)
    inputs = policy.encoder.encode([Observation([frame, frame], ram)] * num_envs, " " + ANSWER_PREFIX)
    with torch.inference_mode():
        model(**inputs, logits_to_keep=1)
        start = time.perf_counter()
        for _ in range(repeats):
            model(**inputs, logits_to_keep=1)
    return repeats * num_envs / (time.perf_counter() - start)


def collect_steps_per_s(model_path: str, num_envs: int, episodes: int, max_steps: int, decode: str,
                        out: Path) -> float:
    args = CollectArguments(model=model_path, episodes=episodes, max_steps=max_steps, num_envs=num_envs,
                            decode=decode, max_new_tokens=24, output_dir=str(out), progress=False, **MOTION)
    summary = collect(args)
    return summary["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="data/models/tiny-smolvlm", help="tiny model (built random-init if absent)")
    parser.add_argument("--num-envs", type=int, default=10, help="environments stepped as a batch")
    parser.add_argument("--episodes", type=int, default=10, help="episodes for collect.py's figure")
    parser.add_argument("--max-steps", type=int, default=200, help="steps per episode for collect.py's figure")
    parser.add_argument("--seed-steps", type=int, default=200, help="steps played the seed's way")
    args = parser.parse_args()
    model = ensure_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        figures = {
            "num_envs": args.num_envs,
            "torch_threads": torch.get_num_threads(),
            "load_average_1m": os.getloadavg()[0],
            "env_steps_per_s": env_steps_per_s(args.num_envs, 4000),
            "forward_frames_per_s": forward_frames_per_s(model, args.num_envs, 30),
            "collect_steps_per_s": collect_steps_per_s(model, args.num_envs, args.episodes, args.max_steps,
                                                       "constrained", Path(tmp) / "ours"),
            "seed_steps_per_s": collect_steps_per_s(model, 1, 1, args.seed_steps, "generate", Path(tmp) / "seed"),
        }
    figures["speedup_vs_seed"] = figures["collect_steps_per_s"] / figures["seed_steps_per_s"]
    figures["fraction_of_forward_bound"] = figures["collect_steps_per_s"] / figures["forward_frames_per_s"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
