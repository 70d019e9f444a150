"""How learnable is the teacher's decision, and how much data does it take? One JSON object on stdout.

    python benchmarks/teacher_learnability.py --sizes 3000,12000,48000

The oracle's decision is a deterministic function of two frames' positions (ball x, y and paddle y,
now and before), so a perfect learner could agree with it on every step. This measures how close a
learner that reads those positions *exactly* gets: a small MLP trained on n labelled states of varied
play (the oracle with random actions mixed in, as in the perception data), scored on held-out
states overall and with the ball coming toward the player, for growing n, with and without ±1 RAM
units of jitter on each frame's positions (about what a 128-pixel view of the 160-pixel playfield
resolves). If exact positions and many labels are needed to reach high agreement, the tiny VLM's
limit is the data and the learner, not its eyes.

With ``--play N`` each exact-position MLP also plays N evaluation episodes (the held-out seeds of
``evaluate.py``, full v5 games, greedy): the return a student with perfect eyes reaches from n labels,
the most the loop could win from that many of this teacher's labels by imitation alone.
"""

from __future__ import annotations

import json
import os
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from supervised_ceiling import (  # noqa: E402
    CLASSES,
    GAME,
    add_teacher_argument,
    features,
    fit_mlp,
    mlp_classes,
    ram_mlp,
    score,
    use_teacher,
)

from vlmrl.cli import ArgumentParser, run  # noqa: E402
from vlmrl.env import AtariBatch  # noqa: E402
from vlmrl.games.base import decide_batch  # noqa: E402
from vlmrl.policies.base import Decision  # noqa: E402
from vlmrl.results import bootstrap_ci, eval_seeds  # noqa: E402
from vlmrl.rollout import play_episodes, varied_play  # noqa: E402


class MLPPolicy:
    """The position MLP as a player: reads the RAM's positions, plays its class's action."""

    name = model_name = "position-mlp"
    history = 1

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net

    def act(self, observations) -> list[Decision]:
        picks = mlp_classes(self.net, features([o.ram for o in observations], [o.prev_ram for o in observations]))
        return [Decision(GAME.class_actions[CLASSES[i]]) for i in picks]


def play(net: torch.nn.Module, episodes: int) -> dict:
    """Mean return (95% interval) of the MLP over the evaluation seeds."""
    batch = AtariBatch(GAME.id, min(8, episodes))
    try:
        played = list(play_episodes(MLPPolicy(net), batch, list(enumerate(eval_seeds(episodes))),
                                    keep_frames=False, progress=False))
    finally:
        batch.close()
    returns = [e.episode_return for _, e in sorted((e.episode_id, e) for e in played)]
    low, high = bootstrap_ci(returns)
    return {"mean_return": round(float(np.mean(returns)), 2), "interval": [round(low, 2), round(high, 2)],
            "returns": returns, "steps": sum(len(e.steps) for e in played)}


def states(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n kept steps of varied play: position features, the oracle's class, the phase."""
    rams, prevs = [], []
    for item in islice(varied_play(GAME, seed=seed, history=1, keep_prob=0.25, num_envs=4), n):
        rams.append(item.ram)
        prevs.append(item.prev_ram)
    decisions = decide_batch(GAME.oracle(), rams, prevs)
    return (features(rams, prevs), np.array([CLASSES.index(d.action_class) for d in decisions]),
            [GAME.phase(r, p) for r, p in zip(rams, prevs, strict=True)])


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3000,12000,48000", help="training set sizes (states)")
    parser.add_argument("--test", type=int, default=5000, help="held-out states")
    parser.add_argument("--epochs", type=int, default=40, help="passes of the MLP over its data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--play", type=int, default=0,
                        help="evaluation episodes each exact-position MLP plays (0: agreement only)")
    add_teacher_argument(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    args = parser.parse_args()
    if args.play < 0:
        parser.error(f"--play must be >= 0, got {args.play}")
    try:
        use_teacher(args.teacher)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(args.threads)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    start = time.perf_counter()
    train_x, train_y, _ = states(sizes[-1], seed=2_000_000 + 10_000 * args.seed)
    test_x, test_y, test_phases = states(args.test, seed=3_000_000 + 10_000 * args.seed)
    report = {"teacher": args.teacher or "the game's oracle", "data_s": round(time.perf_counter() - start, 1),
              "test_states": args.test,
              "label_share": {c: round(float(np.mean(test_y == i)), 3) for i, c in enumerate(CLASSES)},
              "by_size": []}
    for n in sizes:
        entry = {"train_states": n}
        net = fit_mlp(train_x[:n], train_y[:n], 0, args.seed, args.epochs)
        entry["exact"] = score(mlp_classes(net, test_x), test_y, test_phases)
        entry["jitter1"] = score(ram_mlp(train_x[:n], train_y[:n], test_x, 1, args.seed, args.epochs),
                                 test_y, test_phases)
        if args.play:
            entry["play"] = play(net, args.play)
        report["by_size"].append(entry)
        print(json.dumps(entry), file=sys.stderr, flush=True)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["load_average_1m"] = os.getloadavg()[0]
    print(json.dumps(report))


if __name__ == "__main__":
    run(main)
