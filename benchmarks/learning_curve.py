"""The learning curve over seeds: eval return and oracle agreement against agent steps collected.

Runs (or resumes) ``make experiment`` once per seed (experiment ``<exp>-s<seed>``, ``SEED=<seed>``)
until each has collected ``--steps`` agent steps, then prints one JSON object: per seed and as the
mean over seeds, at each iteration, the agent steps, eval return with its interval (over episodes
for one seed, a bootstrap over seeds for the mean), oracle agreement overall and by phase, and the
iteration's wall time (collection + reflection + training + evaluation), and each seed's total (the
iterations ``--eval-every`` leaves unevaluated included). It also plots the mean
curve against the random and oracle policies, our PPO baseline and the published DreamerV3 and
PPO Atari-100k curves at equal agent steps (``docs/anchors_pong_atari100k.json``).

    python benchmarks/learning_curve.py --exp curve --seeds 3 --steps 100000
    python benchmarks/learning_curve.py --exp curve --seeds 3 --no-run      # read what has run so far
    python benchmarks/learning_curve.py --exp cost --seeds 1 --eval-every 2  # evaluate every other iteration
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from vlmrl.cli import ArgumentParser, run

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT / "docs" / "anchors_pong_atari100k.json"


def eval_wall_s(ev: dict | None) -> float:
    """Seconds an evaluation played (its agent steps at its speed); 0 for none."""
    return ev["env_steps"] / ev["steps_per_s"] if ev and ev.get("steps_per_s") else 0.0


def iteration_wall_s(entry: dict) -> float | None:
    """Seconds an iteration's phases took, from their own records (its evaluation's, where it was evaluated)."""
    trial, refl, train = (entry.get(k) or {} for k in ("trial", "reflection", "train"))
    parts = [trial.get("wall_s"), refl.get("wall_s"), train.get("wall_s")]
    return None if any(p is None for p in parts) else round(sum(parts) + eval_wall_s(entry.get("eval")), 1)


def total_wall_s(summary: dict) -> float | None:
    """Seconds every phase of the experiment took, the base model's evaluation and the iterations not evaluated
    (EVAL_EVERY) included: the sum of the phases' own records, without the processes' start-up."""
    total = 0.0
    for e in summary["iterations"]:
        if e["iteration"] == 0:
            total += eval_wall_s(e.get("eval"))
            continue
        wall = iteration_wall_s(e)
        if wall is None:
            return None
        total += wall
    return round(total, 1)


def curve(summary: dict) -> dict:
    points = []
    for e in summary["iterations"]:
        ev = e["eval"]
        if ev is None:
            continue  # trained, not evaluated (EVAL_EVERY)
        split = ev.get("oracle_agreement_by_phase") or {}
        points.append({
            "iteration": e["iteration"],
            "env_steps_total": e.get("env_steps_total", 0),
            "mean_return": ev["mean_return"],
            "ci95": ev["ci95"],
            "oracle_agreement": ev["oracle_agreement"],
            "agreement_by_phase": {p: v.get("agreement") for p, v in split.items()},
            "eval_episodes": ev["episodes"],
            "reflection_accuracy": (e.get("reflection") or {}).get("accuracy"),
            "train_samples": (e.get("train") or {}).get("samples"),
            "train_loss": (e.get("train") or {}).get("train_loss"),
            "wall_s": iteration_wall_s(e) if e["iteration"] else None,
        })
    out = {"experiment": summary["experiment"], "recipe": summary["recipe"], "seed": summary.get("seed"),
           "iterations_trained": max((e["iteration"] for e in summary["iterations"]), default=0),
           "wall_s_total": total_wall_s(summary), "points": points}
    if len(points) > 1 and points[0]["iteration"] == 0:
        base, last = points[0], points[-1]
        out["return_gain_over_base"] = round(last["mean_return"] - base["mean_return"], 3)
        if base["oracle_agreement"] is not None and last["oracle_agreement"] is not None:
            out["agreement_gain_over_base"] = round(last["oracle_agreement"] - base["oracle_agreement"], 4)
    return out


def mean_curve(curves: list[dict]) -> list[dict]:
    """Iterations every seed has evaluated: means over seeds, and a bootstrap interval over seeds."""
    from vlmrl.results import bootstrap_ci

    common = set.intersection(*({p["iteration"] for p in c["points"]} for c in curves))
    out = []
    for k in sorted(common):
        pts = [next(p for p in c["points"] if p["iteration"] == k) for c in curves]
        returns = [p["mean_return"] for p in pts]
        agreement = [p["oracle_agreement"] for p in pts if p["oracle_agreement"] is not None]
        phases = {ph for p in pts for ph in p["agreement_by_phase"]}
        walls = [p["wall_s"] for p in pts if p["wall_s"] is not None]
        out.append({
            "iteration": pts[0]["iteration"],
            "env_steps_total": round(float(np.mean([p["env_steps_total"] for p in pts]))),
            "mean_return": round(float(np.mean(returns)), 3),
            "ci95_over_seeds": [round(v, 3) for v in bootstrap_ci(returns)] if len(returns) > 1 else None,
            "seeds": len(pts),
            "oracle_agreement": round(float(np.mean(agreement)), 4) if agreement else None,
            "agreement_by_phase": {
                ph: round(float(np.mean(vals)), 4) if (vals := [p["agreement_by_phase"].get(ph) for p in pts
                                                                if p["agreement_by_phase"].get(ph) is not None])
                else None
                for ph in sorted(phases)
            },
            "wall_s": round(float(np.mean(walls)), 1) if walls else None,
        })
    return out


def plot(mean: list[dict], curves: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlmrl.report import reference_results

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for c in curves:
        ax.plot([p["env_steps_total"] for p in c["points"]], [p["mean_return"] for p in c["points"]],
                color="C0", alpha=0.25, linewidth=1)
        ax2.plot([p["env_steps_total"] for p in c["points"]], [p["oracle_agreement"] for p in c["points"]],
                 color="C0", alpha=0.25, linewidth=1)
    xs = [p["env_steps_total"] for p in mean]
    ys = [p["mean_return"] for p in mean]
    ax.plot(xs, ys, "o-", color="C0", label=f"vlmrl, mean of {mean[0]['seeds']} seed(s)")
    if all(p["ci95_over_seeds"] for p in mean):
        ax.fill_between(xs, [p["ci95_over_seeds"][0] for p in mean], [p["ci95_over_seeds"][1] for p in mean],
                        color="C0", alpha=0.2)
    ax2.plot(xs, [p["oracle_agreement"] for p in mean], "o-", color="C0", label="overall")
    ax2.plot(xs, [p["agreement_by_phase"].get("toward") for p in mean], "s--", color="C3",
             label="ball coming toward you")
    if ANCHORS.exists():
        anchors = json.loads(ANCHORS.read_text())
        for (name, pts), color in zip(anchors["curves"].items(), ("C2", "C4"), strict=False):
            ax.plot([p["agent_steps"] for p in pts], [p["mean_return"] for p in pts], "^:", color=color,
                    label=f"{name}, Atari-100k training returns")
    baselines = sorted((ROOT / "data" / "baselines" / "ppo" / "pong-v5").glob("seed_*/budget_*/results.json"))
    if baselines:
        by_budget: dict[int, list[float]] = {}
        for f in baselines:
            by_budget.setdefault(int(f.parent.name.split("_")[1]), []).append(json.loads(f.read_text())["mean_return"])
        budgets = sorted(by_budget)
        ax.plot(budgets, [np.mean(by_budget[b]) for b in budgets], "v-", color="C5", label="PPO, ours (eval)")
    for policy, style in (("random", ":"), ("oracle", "--")):
        ref = reference_results("ALE/Pong-v5").get(policy)
        if ref:
            ax.axhline(ref["mean_return"], linestyle=style, color="grey",
                       label=f"{policy} policy ({ref['mean_return']:+.1f})")
    ax.set_xlabel("agent steps collected")
    ax.set_ylabel("eval return (seeds' mean, 95% CI)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax2.set_xlabel("agent steps collected")
    ax2.set_ylabel("agreement with the oracle")
    ax2.set_ylim(0, 1)
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def steps_per_iteration(recipe: Path, make_args: list[str]) -> int:
    collect = yaml.safe_load((recipe / "collect.yaml").read_text()) or {}
    knobs = dict(a.split("=", 1) for a in make_args if "=" in a)
    return int(knobs.get("EPISODES", collect.get("episodes", 10))) * int(knobs.get("MAX_STEPS",
                                                                                  collect.get("max_steps", 500)))


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exp", default="curve", help="experiment prefix: seed s runs as data/experiments/<exp>-s<s>")
    parser.add_argument("--recipe", default="recipes/tiny-smolvlm/pong", help="recipe folder")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1")
    parser.add_argument("--steps", type=int, default=100_000, help="agent steps each seed collects")
    parser.add_argument("--make-args", default="", help="extra Make variables, e.g. 'SAMPLE_BUDGET=8000'")
    parser.add_argument("--eval-every", type=int, default=1,
                        help="evaluate every k-th iteration and the last (EVAL_EVERY); the others train only")
    parser.add_argument("--no-run", action="store_true", help="only read what has run so far")
    parser.add_argument("--plot", default=None, help="where to save the plot (default: data/experiments/<exp>.png)")
    args = parser.parse_args()
    if args.seeds < 1 or args.steps < 1 or args.eval_every < 1:
        parser.error("--seeds, --steps and --eval-every must be positive")
    make_args = args.make_args.split() + ([f"EVAL_EVERY={args.eval_every}"] if args.eval_every > 1 else [])
    iterations = math.ceil(args.steps / steps_per_iteration(ROOT / args.recipe, make_args))
    curves, walls = [], {}
    for seed in range(args.seeds):
        exp = f"{args.exp}-s{seed}"
        if not args.no_run:
            start = time.perf_counter()
            subprocess.run(["make", "--no-print-directory", "experiment", f"EXP={exp}", f"RECIPE={args.recipe}",
                            f"ITERATIONS={iterations}", f"SEED={seed}", *make_args], cwd=ROOT, check=True,
                            stdout=sys.stderr)  # the runs' output to stderr: stdout holds the one JSON object
            walls[exp] = round(time.perf_counter() - start, 1)
        path = ROOT / "data" / "experiments" / exp / "experiment_summary.json"
        if path.exists():
            curves.append(curve(json.loads(path.read_text())))
    if not curves:
        raise FileNotFoundError(f"no experiment {args.exp}-s<seed> has a summary yet: run without --no-run first")
    mean = mean_curve(curves)
    plot_path = Path(args.plot) if args.plot else ROOT / "data" / "experiments" / f"{args.exp}.png"
    plot(mean, curves, plot_path)
    print(json.dumps({"exp": args.exp, "recipe": args.recipe, "iterations_per_seed": iterations,
                      "steps_per_iteration": steps_per_iteration(ROOT / args.recipe, make_args),
                      "wall_s_this_call": walls, "mean": mean, "per_seed": curves, "plot": str(plot_path)}))


if __name__ == "__main__":
    run(main)
