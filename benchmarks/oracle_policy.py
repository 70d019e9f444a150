"""Play ALE/Pong-v5 with the RAM oracle and print one JSON line of returns and speed.

    python benchmarks/oracle_policy.py --episodes 10
    python benchmarks/oracle_policy.py --episodes 10 --lookahead intercept

Episode ``i`` is seeded ``seed + i``; v5 defaults (frameskip 4, sticky actions 0.25).
"""

from __future__ import annotations

import json
import time

import ale_py
import gymnasium as gym
import numpy as np

from vlmrl.cli import ArgumentParser, run
from vlmrl.games.pong import TEACHER_LOOKAHEAD, PongOracle


def play_episode(oracle: PongOracle, game_id: str, seed: int) -> tuple[float, int]:
    """One episode under the oracle: (return, steps)."""
    env = gym.make(game_id)
    env.reset(seed=seed)
    ale = env.unwrapped.ale
    actions = env.unwrapped.get_action_meanings()
    prev_ram, ram = None, ale.getRAM().copy()
    total, steps, done = 0.0, 0, False
    while not done:
        action = actions.index(oracle.decide(ram, prev_ram).action)
        _, reward, terminated, truncated, _ = env.step(action)
        prev_ram, ram = ram, ale.getRAM().copy()
        total += float(reward)
        steps += 1
        done = terminated or truncated
    env.close()
    return total, steps


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=10, help="episodes to play")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument("--game-id", default="ALE/Pong-v5")
    parser.add_argument("--aim-offset", type=int, default=PongOracle.aim_offset)
    parser.add_argument("--dead-band", type=int, default=PongOracle.dead_band)
    parser.add_argument("--momentum", type=float, default=PongOracle.momentum)
    parser.add_argument("--lookahead", default=str(TEACHER_LOOKAHEAD),
                        help="aim where the ball will be this many agent steps on, or intercept: where it crosses "
                        "your column (default %(default)s, the game's teacher)")
    args = parser.parse_args()
    if args.lookahead != "intercept" and not args.lookahead.isdigit():
        parser.error(f"--lookahead must be a whole number of steps or intercept, got {args.lookahead!r}")

    gym.register_envs(ale_py)
    oracle = PongOracle(
        aim_offset=args.aim_offset, dead_band=args.dead_band, momentum=args.momentum,
        lookahead=None if args.lookahead == "intercept" else int(args.lookahead),
    )
    start = time.perf_counter()
    results = [play_episode(oracle, args.game_id, args.seed + i) for i in range(args.episodes)]
    seconds = time.perf_counter() - start
    returns = [r for r, _ in results]
    steps = sum(s for _, s in results)
    print(
        json.dumps(
            {
                "episodes": args.episodes,
                "returns": returns,
                "mean_return": float(np.mean(returns)),
                "std_return": float(np.std(returns)),
                "steps": steps,
                "steps_per_s": round(steps / seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    run(main)
