"""Which of the model's Pong mistakes cost points? One JSON object on stdout.

    python benchmarks/plateau_errors.py --episodes <episodes folder> [<episodes folder> ...]
        [--reflections <reflections folder> ...]

Reads episodes datasets (the trial phase's ``episodes/`` of a loop iteration, or a model-only collection,
``collect.py --teacher_mix 0``) and replays the oracle on their RAM. For the steps the model played with
the ball coming toward it:

- ``confusion_toward``: the oracle's class against the model's (``stay->up``: the oracle stays, the model
  moves up), and, where the oracle stays and the model moves, whether the move goes the way the oracle's
  target lies (``stay_but_moved``: a narrower dead band than the oracle's) or the other way;
- ``approaches``: each run of "toward" steps the model played alone, from the ball turning toward the player
  until it turns back (``returned``) or a point is lost (``lost``), with the mean number of steps, of the
  oracle's move calls (up or down), of those the model missed (it stayed or moved the other way) and of
  its moves where the oracle stayed. ``return_rate`` is returned / (returned + lost).

With ``--reflections``, ``label_prior`` is the share of each corrected class in those datasets (what the
draw's class balancing evens out) and ``logit_adjustment`` the ``--action-bias`` that adds the log of that
prior back to the scores (classes relative to the commonest), for ``evaluate.py --action-bias``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections import Counter

import numpy as np

from vlmrl.data import shard_dir
from vlmrl.games import get_game

GAME = "ALE/Pong-v5"


def parquet_files(folder: str, columns: list[str], what: str) -> list[str]:
    """The folder's shards, each checked to hold ``columns`` (one line naming what is missing, not Arrow's dump)."""
    import pyarrow.parquet as pq

    files = sorted(str(p) for p in shard_dir(folder).glob("*.parquet"))
    if not files:
        raise ValueError(f"{folder} holds no dataset shards (no {shard_dir(folder)}/*.parquet)")
    for path in files:
        missing = [c for c in columns if c not in pq.read_schema(path).names]
        if missing:
            raise ValueError(f"{path} is not {what}: it has no {', '.join(missing)} column")
    return files


def mistakes(folders: list[str]) -> dict:
    import pyarrow.parquet as pq

    game = get_game(GAME)
    oracle = game.make_oracle()
    no_band = dataclasses.replace(oracle, dead_band=0)  # which way the target lies, however near
    confusion: Counter = Counter()
    stay_moved: Counter = Counter()
    approaches: dict[str, list[dict]] = {"returned": [], "lost": []}
    for folder in folders:
        columns = ["action", "teacher", "reward", "ram"]
        for path in parquet_files(folder, columns, "an episodes dataset"):
            table = pq.read_table(path, columns=columns)
            prev = None
            run: list[tuple[str, str]] = []
            alone = True  # every step of the current approach played by the model
            for row in table.to_pylist():
                ram = np.asarray(row["ram"], dtype=np.uint8)
                phase = game.phase(ram, prev) if prev is not None else "none"
                if phase == "toward":
                    called = oracle.decide(ram, prev).action_class
                    played = game.action_class(row["action"])
                    alone = alone and not row["teacher"]
                    run.append((called, played))
                    if not row["teacher"]:
                        confusion[f"{called}->{played}"] += 1
                        if called == "stay" and played != "stay":
                            side = no_band.decide(ram, prev).action_class
                            stay_moved["toward the target" if side == played else "away from the target"] += 1
                end = "lost" if row["reward"] < 0 else None
                if end is None and phase != "toward" and run:
                    end = "returned"
                if row["reward"] > 0:
                    run, alone = [], True
                if end and run:
                    if alone:
                        approaches[end].append(_approach(run))
                    run, alone = [], True
                prev = ram
    summary = {}
    for end, runs in approaches.items():
        keys = ("toward_steps", "move_calls", "missed_moves", "extra_moves")
        summary[end] = {"count": len(runs), **{k: round(float(np.mean([r[k] for r in runs])), 2) if runs else None
                                                for k in keys}}
    counted = len(approaches["returned"]) + len(approaches["lost"])
    return {
        "model_steps_toward": sum(confusion.values()),
        "confusion_toward": dict(sorted(confusion.items())),
        "stay_but_moved": dict(stay_moved),
        "approaches": summary,
        "return_rate": round(len(approaches["returned"]) / counted, 4) if counted else None,
    }


def _approach(run: list[tuple[str, str]]) -> dict:
    moves = [(c, p) for c, p in run if c != "stay"]
    return {
        "toward_steps": len(run),
        "move_calls": len(moves),
        "missed_moves": sum(1 for c, p in moves if p != c),
        "extra_moves": sum(1 for c, p in run if c == "stay" and p != "stay"),
    }


def label_prior(folders: list[str]) -> dict:
    import pyarrow.parquet as pq

    game = get_game(GAME)
    counts: Counter = Counter()
    for folder in folders:
        for path in parquet_files(folder, ["correct_action"], "a reflections dataset"):
            for action in pq.read_table(path, columns=["correct_action"]).column(0).to_pylist():
                counts[game.action_class(action)] += 1
    total = sum(counts.values())
    prior = {k: counts[k] / total for k in sorted(counts)}
    top = max(prior.values())
    return {"label_prior": {k: round(v, 4) for k, v in prior.items()},
            "labels": total,
            "logit_adjustment": ",".join(f"{k}={math.log(v / top):.3f}" for k, v in prior.items())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", nargs="+", required=True,
                        help="episodes datasets (folders) with the RAM and who played each step")
    parser.add_argument("--reflections", nargs="*", default=[],
                        help="reflections datasets whose corrected classes give the label prior")
    args = parser.parse_args(argv)
    try:
        out = {"episodes": args.episodes, **mistakes(args.episodes)}
        if args.reflections:
            out.update({"reflections": args.reflections, **label_prior(args.reflections)})
    except (ValueError, KeyError) as err:
        print(f"plateau_errors.py: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
