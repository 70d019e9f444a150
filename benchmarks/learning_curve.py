"""The learning curve of an experiment: eval return and oracle agreement against agent steps collected.

Runs (or resumes) ``make experiment`` for the recipe, times it, and prints one JSON object with a
point per iteration (entry 0 is the base model) and the last iteration's gains over the base.

    python benchmarks/learning_curve.py --exp curve --iterations 5 [--recipe recipes/tiny-smolvlm/pong]
    python benchmarks/learning_curve.py --exp demo --no-run      # just read an existing experiment
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from vlmrl.cli import ArgumentParser, run

ROOT = Path(__file__).resolve().parent.parent


def curve(summary: dict) -> dict:
    points = [
        {
            "iteration": e["iteration"],
            "env_steps_total": e.get("env_steps_total", 0),
            "mean_return": e["eval"]["mean_return"],
            "ci95": e["eval"]["ci95"],
            "oracle_agreement": e["eval"]["oracle_agreement"],
            "eval_episodes": e["eval"]["episodes"],
            "reflection_accuracy": (e.get("reflection") or {}).get("accuracy"),
            "train_loss": (e.get("train") or {}).get("train_loss"),
        }
        for e in summary["iterations"]
    ]
    out = {"experiment": summary["experiment"], "recipe": summary["recipe"], "points": points}
    if len(points) > 1 and points[0]["iteration"] == 0:
        base, last = points[0], points[-1]
        out["return_gain_over_base"] = last["mean_return"] - base["mean_return"]
        if base["oracle_agreement"] is not None and last["oracle_agreement"] is not None:
            out["agreement_gain_over_base"] = last["oracle_agreement"] - base["oracle_agreement"]
    return out


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exp", default="curve", help="experiment name (data/experiments/<exp>)")
    parser.add_argument("--recipe", default="recipes/tiny-smolvlm/pong", help="recipe folder")
    parser.add_argument("--iterations", type=int, default=5, help="iterations to run")
    parser.add_argument("--make-args", default="", help="extra Make variables, e.g. 'EPISODES=20 EPOCHS=2'")
    parser.add_argument("--no-run", action="store_true", help="only read the experiment's summary")
    args = parser.parse_args()
    wall = None
    if not args.no_run:
        start = time.perf_counter()
        cmd = ["make", "--no-print-directory", "experiment", f"EXP={args.exp}", f"RECIPE={args.recipe}",
               f"ITERATIONS={args.iterations}", *args.make_args.split()]
        subprocess.run(cmd, cwd=ROOT, check=True)
        wall = time.perf_counter() - start
    summary_path = ROOT / "data" / "experiments" / args.exp / "experiment_summary.json"
    if not summary_path.exists():
        raise SystemExit(f"{summary_path} not found: run without --no-run first")
    out = curve(json.loads(summary_path.read_text()))
    out["wall_s"] = wall
    print(json.dumps(out))


if __name__ == "__main__":
    run(main)
