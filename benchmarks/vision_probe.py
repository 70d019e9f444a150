"""Probe what a model sees in Pong frames; optionally check how it plays. Prints one JSON object.

    python benchmarks/vision_probe.py --model data/models/tiny-smolvlm
    python benchmarks/vision_probe.py --model HuggingFaceTB/SmolVLM-Instruct --encoding rgb --image-size 384
    python benchmarks/vision_probe.py --model data/models/tiny-smolvlm --play-episodes 3

The probe asks each of the game's questions (``Game.questions``) on ``--frames`` held-out
frames of varied play and reports accuracy beside chance (the majority answer's rate).
``--play-episodes`` also plays Pong greedily with constrained decoding (the six action
names scored after the acting prompt and ``{"action": "``, one forward a step) against
uniform random play on the same seeds: a model that sees but was never taught to act
should play no better than random.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from vlmrl.cli import ArgumentParser, run
from vlmrl.env import AtariBatch
from vlmrl.games import Game, get_game
from vlmrl.observation import ObservationConfig
from vlmrl.policies.random import RandomPolicy
from vlmrl.policies.vlm import VLMPolicy
from vlmrl.probe import DEFAULT_PROBE_SEED, collect_probe_frames, load_model, observation_for, probe_model
from vlmrl.rollout import play_episodes


def _play(policy, game: Game, seeds: list[int], max_steps: int) -> tuple[list[float], dict[str, int], float]:
    batch = AtariBatch(game.id, len(seeds))
    counts: dict[str, int] = {a: 0 for a in batch.action_names}
    start = time.perf_counter()
    try:
        episodes = sorted(play_episodes(policy, batch, list(enumerate(seeds)), max_steps=max_steps,
                                        keep_frames=False, progress=False), key=lambda e: e.episode_id)
    finally:
        batch.close()
    for episode in episodes:
        for step in episode.steps:
            counts[step.decision.action] += 1
    return [e.episode_return for e in episodes], counts, time.perf_counter() - start


def play(model, processor, observation: ObservationConfig, game: Game, seeds: list[int], max_steps: int) -> dict:
    """Greedy constrained play, one env per seed stepped together; random play on the same seeds."""
    actions = AtariBatch(game.id, 1).action_names
    policy = VLMPolicy(model, processor, game, actions, observation)
    returns, counts, seconds = _play(policy, game, seeds, max_steps)
    random_returns, _, _ = _play(RandomPolicy(actions, seed=0), game, seeds, max_steps)
    total = sum(counts.values())
    return {
        "returns": returns,
        "mean_return": float(np.mean(returns)),
        "action_share": {a: round(c / total, 3) for a, c in counts.items()},
        "steps_per_s": round(total / seconds, 1),
        "random": {"returns": random_returns, "mean_return": float(np.mean(random_returns))},
    }


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/models/tiny-smolvlm", help="local path or Hub id")
    parser.add_argument("--game-id", default="ALE/Pong-v5")
    parser.add_argument("--frames", type=int, default=500, help="held-out frames to probe")
    parser.add_argument("--seed", type=int, default=DEFAULT_PROBE_SEED, help="first episode seed of the probe")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--encoding", choices=["rgb", "motion"], help="override the model's observation encoding")
    parser.add_argument("--obs-frames", type=int, help="override the frames per observation")
    parser.add_argument("--image-size", type=int, help="override the observation's image size")
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, help="override the playfield crop")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--play-episodes", type=int, default=0, help="also play this many episodes vs random")
    parser.add_argument("--play-max-steps", type=int, default=2000, help="step cap of each played episode")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0: torch's default; 2 crawl on a shared CPU)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    observation = observation_for(args.model)
    overrides = {k: v for k, v in (("encoding", args.encoding), ("frames", args.obs_frames),
                                   ("image_size", args.image_size), ("crop", args.crop)) if v is not None}
    if overrides:
        fields = {**observation.__dict__, **overrides}
        if fields["encoding"] == "motion":
            fields["frames"] = 2
        observation = ObservationConfig(**fields)

    start = time.perf_counter()
    model, processor = load_model(args.model, args.device)
    game = get_game(args.game_id)
    samples = collect_probe_frames(game, args.frames, args.seed, history=observation.frames)
    frames_s = time.perf_counter() - start
    probe = probe_model(model, processor, samples, observation, game=game, batch_size=args.batch_size,
                        progress=True)
    report = {
        "model": args.model,
        "game": args.game_id,
        "frames": args.frames,
        "seed": args.seed,
        "observation": observation.__dict__,
        "probe": probe,
        "seconds": round(time.perf_counter() - start, 1),
        "frames_seconds": round(frames_s, 1),
        "load_average": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
    }
    if args.play_episodes:
        seeds = [args.seed + 100_000 + i for i in range(args.play_episodes)]
        report["play"] = {"seeds": seeds, "max_steps": args.play_max_steps,
                          **play(model, processor, observation, game, seeds, args.play_max_steps)}
    print(json.dumps(report))


if __name__ == "__main__":
    run(main)
