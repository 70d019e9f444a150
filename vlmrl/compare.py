"""Sample efficiency, ours vs classic RL: eval return against agent steps collected, one plot and one table.

Inputs are the records the runs already write: each experiment's experiment_summary.json
(one curve per experiment; experiments of one recipe whose settings differ only in their seed are seeds
of one method) and the baselines' results.json files under <baselines>/<algo>/<game-slug>/seed_<s>/budget_<n>/.
A method's score at a budget is the evaluation of its last checkpoint that had collected no
more than that many agent steps. Intervals are 95% percentile-bootstrap intervals of the
mean over seeds, which is what rliable's stratified bootstrap reduces to for a single game
(rliable itself is not used: its pinned arch<8 does not import next to pandas 3). With one
seed the interval is that run's own interval over its evaluation episodes, and says so.

    python -m vlmrl.compare --experiment data/experiments/<name> --baselines data/baselines \
        --output-dir data/compare/<name> [--random results.json] [--oracle results.json]
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl import cli
from vlmrl.games import get_game
from vlmrl.results import (
    bootstrap_ci,
    game_slug,
    human_normalized,
    load_results,
    validate_results,
)

NOT_REACHED = "not reached"
_BUDGET_DIR = re.compile(r"^budget_(\d+)$")
_SEED_DIR = re.compile(r"^seed_(\d+)$")


@dataclass
class Run:
    """One seed of one method: its evaluations at increasing agent steps collected."""

    method: str
    seed: str
    steps: list[int] = field(default_factory=list)
    settings: dict[str, Any] | None = None  # an experiment's run settings (None: not recorded)
    results: list[dict[str, Any]] = field(default_factory=list)

    def at_budget(self, budget: int) -> dict[str, Any] | None:
        """The evaluation of the last checkpoint that had collected at most `budget` agent steps."""
        best = None
        for steps, results in zip(self.steps, self.results, strict=True):
            if steps <= budget:
                best = results
        return best

    def reaches(self, budget: int) -> bool:
        """Whether the run went as far as `budget` agent steps: its last checkpoint is at least there, or
        short of it by under half its usual stride (iterations collect a few steps fewer than planned). A
        seed stopped earlier has no score there: its last checkpoint is not what it would have scored."""
        if not self.steps:
            return False
        strides = np.diff(self.steps)
        stride = float(np.median(strides)) if len(strides) else 0.0
        return self.steps[-1] >= budget - stride / 2


def load_experiment(experiment_dir: str | Path) -> Run:
    """Read an experiment_summary.json into a Run, with a clear error for a malformed one."""
    path = Path(experiment_dir)
    if path.is_dir():
        path = path / "experiment_summary.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no experiment summary at {path}: pass the experiment folder "
            "(data/experiments/<name>) after its iterations have run"
        )
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    missing = [key for key in ("experiment", "recipe", "iterations") if key not in summary]
    if missing:
        raise ValueError(f"{path}: not an experiment summary, missing keys {missing}")
    iterations = summary["iterations"]
    if not isinstance(iterations, list) or not iterations:
        raise ValueError(f"{path}: 'iterations' must be a non-empty list (entry 0 is the base model's eval)")
    ordered = sorted(enumerate(iterations), key=lambda pair: pair[1].get("iteration", pair[0]))
    run = Run(method=_method_name(summary["recipe"], summary.get("settings")), seed=str(summary["experiment"]),
              settings=summary.get("settings"))
    for position, (index, entry) in enumerate(ordered):
        iteration = entry.get("iteration", index)
        if "eval" not in entry:
            raise ValueError(f"{path}: iteration {iteration} has no 'eval' results")
        if entry["eval"] is None:
            continue  # trained, not evaluated (EVAL_EVERY)
        if position == 0:
            steps = int(entry.get("env_steps_total", 0))
        elif "env_steps_total" not in entry:
            raise ValueError(f"{path}: iteration {iteration} has no 'env_steps_total' (agent steps so far)")
        else:
            steps = int(entry["env_steps_total"])
        run.steps.append(steps)
        run.results.append(validate_results(entry["eval"], f"{path} iteration {iteration} eval"))
    return run


def refuse_identical_seeds(runs: Sequence[Run]) -> None:
    """Two experiments run with the same settings, seed included, are one run twice, not two seeds."""
    seen: dict[str, str] = {}
    for run in runs:
        if run.settings is None:
            continue
        key = json.dumps(run.settings, sort_keys=True, default=str)
        if key in seen:
            raise ValueError(
                f"experiments {seen[key]!r} and {run.seed!r} ran with identical settings (seed included): they are "
                "one run twice, not two seeds; run another seed with SEED=<n> and a new EXP"
            )
        seen[key] = run.seed


# What tells one seed of a method from another: never a reason to call two runs two methods.
SEED_SETTINGS = ("collect.seed", "reflect.seed", "train.seed")
# Where a method starts from: labelled "from <model>".
START_SETTINGS = ("train.base_model", "collect.model")


def _setting_text(key: str, value: Any) -> str:
    """One setting as a method label shows it: a model path by its last folder (a checkpoint by its
    experiment and iteration), any other by its short key and value."""
    if key in START_SETTINGS and isinstance(value, str):
        path = Path(value)
        name = f"{path.parent.parent.name}/{path.parent.name}" if path.name == "checkpoint" else path.name
        return f"from {name}"
    return f"{key.split('.', 1)[-1]}={value}"


def split_methods(runs: Sequence[Run]) -> None:
    """Runs of one recipe and reflector whose recorded settings differ in anything but their seed (another
    base model, another knob) are other methods, not more seeds: each run's label gets the settings that
    set it apart. Runs that recorded no settings keep the recipe's label."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.settings is not None:
            groups.setdefault(run.method, []).append(run)
    for method, group in groups.items():
        keys = sorted({key for run in group for key in run.settings} - set(SEED_SETTINGS))
        differ = [key for key in keys
                  if len({json.dumps(run.settings.get(key), sort_keys=True, default=str) for run in group}) > 1]
        if not differ:
            continue
        for run in group:
            parts = list(dict.fromkeys(_setting_text(key, run.settings.get(key)) for key in differ))
            extra = ", ".join(parts)
            run.method = f"{method[:-1]}, {extra})" if method.endswith(")") else f"{method} ({extra})"


def _method_name(recipe: Any, settings: dict | None = None) -> str:
    """A short label for a method: 'vlmrl' plus the recipe's name where it has one, plus who reflected
    when the run recorded it (``reflect.reflector``, with self-imitation's ``advantage``): runs of one recipe
    with another reflector are another method, not more seeds."""
    if isinstance(recipe, dict):
        recipe = recipe.get("name") or recipe.get("path") or ""
    recipe = str(recipe).strip()
    # recipes/<model>/<game>/... -> <model>/<game>: the part that tells recipes apart.
    parts = [p for p in Path(recipe).parts if p not in ("recipes", ".")]
    parts = [p for p in parts if not p.endswith((".yaml", ".yml"))]
    label = "/".join(parts) or recipe
    settings = settings or {}
    if settings.get("reflect.reflector"):
        label = f"{label}, {settings['reflect.reflector']}".lstrip(", ")
        if settings.get("reflect.advantage"):
            label += " --advantage"
    return f"vlmrl ({label})" if label else "vlmrl"


def load_baselines(baselines_dir: str | Path, game: str | None) -> list[Run]:
    """Every baseline run under <baselines>/<algo>/<game-slug>/seed_<s>/budget_<n>/results.json."""
    root = Path(baselines_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no baselines folder at {root}: run `python baselines.py` first")
    runs: dict[tuple[str, str], Run] = {}
    slugs = {game_slug(game)} if game is not None else None
    for path in sorted(root.glob("*/*/seed_*/budget_*/results.json")):
        budget_dir, seed_dir, slug_dir, algo_dir = path.parents[0], path.parents[1], path.parents[2], path.parents[3]
        budget_match, seed_match = _BUDGET_DIR.match(budget_dir.name), _SEED_DIR.match(seed_dir.name)
        if not budget_match or not seed_match or (slugs is not None and slug_dir.name not in slugs):
            continue
        run = runs.setdefault((algo_dir.name, seed_match.group(1)), Run(algo_dir.name, seed_match.group(1)))
        run.steps.append(int(budget_match.group(1)))
        run.results.append(load_results(path))
    for run in runs.values():
        order = np.argsort(run.steps, kind="stable")
        run.steps = [run.steps[i] for i in order]
        run.results = [run.results[i] for i in order]
    return list(runs.values())


def _aggregate(values: list[float], single_run_ci: Sequence[float] | None) -> tuple[float, list[float], str]:
    """Mean over seeds, its 95% interval, and what the interval is over."""
    mean = float(np.mean(values))
    if len(values) > 1:
        low, high = bootstrap_ci(values)
        return mean, [low, high], "seeds"
    if single_run_ci is not None:
        return mean, [float(single_run_ci[0]), float(single_run_ci[1])], "episodes"
    return mean, [mean, mean], "none"


def method_curve(runs: list[Run]) -> list[dict[str, Any]]:
    """A method's mean return over seeds at each checkpoint (the i-th checkpoint of every seed)."""
    points = []
    for index in range(max(len(run.steps) for run in runs)):
        present = [run for run in runs if index < len(run.steps)]
        returns = [run.results[index]["mean_return"] for run in present]
        mean, interval, over = _aggregate(returns, present[0].results[index]["ci95"] if len(present) == 1 else None)
        points.append(
            {
                # Our iterations collect a varying number of steps per seed: plot at their mean.
                "agent_steps": float(np.mean([run.steps[index] for run in present])),
                "mean_return": mean,
                "interval": interval,
                "interval_over": over,
                "n_seeds": len(present),
                "per_seed": {run.seed: run.results[index]["mean_return"] for run in present},
            }
        )
    return points


def split_by_seeds(curve: list[dict[str, Any]], n_seeds: int) -> tuple[list[dict], list[dict]]:
    """A curve's checkpoints that every seed reached, and those after the first that only some did (a
    seed run longer than the others: their mean is not the method's)."""
    cut = next((i for i, point in enumerate(curve) if point["n_seeds"] < n_seeds), len(curve))
    return curve[:cut], curve[cut:]


def steps_to_threshold(curve: list[dict[str, Any]], threshold: float) -> float | str:
    """Agent steps at the first checkpoint whose mean return reaches `threshold`, or 'not reached'."""
    for point in curve:
        if point["mean_return"] >= threshold:
            return point["agent_steps"]
    return NOT_REACHED


def at_budget(runs: list[Run], budget: int, game: str) -> dict[str, Any] | None:
    """A method's score at a budget: mean over seeds of each seed's last evaluation within it, over the seeds
    that ran that far (``n_seeds`` of ``of_seeds``)."""
    chosen = [(run, run.at_budget(budget)) for run in runs if run.reaches(budget)]
    chosen = [(run, results) for run, results in chosen if results is not None]
    if not chosen:
        return None
    returns = [results["mean_return"] for _, results in chosen]
    mean, interval, over = _aggregate(returns, chosen[0][1]["ci95"] if len(chosen) == 1 else None)
    agreements = [results.get("oracle_agreement") for _, results in chosen]
    return {
        "mean_return": mean,
        "interval": interval,
        "interval_over": over,
        "n_seeds": len(chosen),
        "of_seeds": len(runs),
        "human_normalized": human_normalized(game, mean),
        # The mean over the same seeds of how often the policy played the oracle's action (None where a
        # seed's results do not record it).
        "oracle_agreement": None if None in agreements else float(np.mean(agreements)),
    }


def _reference(paths: Sequence[str | Path] | None, game: str) -> dict[str, Any] | None:
    """A reference policy's level (random, oracle): the mean of its results files' mean returns."""
    if not paths:
        return None
    results = [load_results(path) for path in paths]
    mean = float(np.mean([r["mean_return"] for r in results]))
    return {
        "mean_return": mean,
        "human_normalized": human_normalized(game, mean),
        "episodes": int(sum(r["episodes"] for r in results)),
        "files": [str(path) for path in paths],
    }


def _format_steps(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:,.0f}"


def _format_score(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    low, high = entry["interval"]
    hns = entry["human_normalized"]
    hns_text = "" if hns is None else f", HNS {hns:.3f}"
    agreement = entry.get("oracle_agreement")
    agreement_text = "" if agreement is None else f", agreement {agreement:.3f}"
    part = f" ({entry['n_seeds']} of {entry['of_seeds']} seeds)" if entry["n_seeds"] < entry["of_seeds"] else ""
    return f"{entry['mean_return']:.2f} [{low:.2f}, {high:.2f}]{hns_text}{agreement_text}{part}"


def to_markdown(report: dict[str, Any]) -> str:
    """The comparison as markdown: scores per budget, then agent steps to reach each threshold."""
    methods = list(report["methods"])
    lines = [f"# {report['game']}: eval return vs agent steps collected", ""]
    lines.append(
        "Mean return over seeds [95% interval], human-normalised score (HNS, 1 = human) and agreement with the "
        "oracle's action (the mean over the same seeds); a method's score at a budget is its last checkpoint "
        "within that many agent steps, over the seeds that ran that far."
    )
    lines += ["", "| agent steps | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for row in report["table"]:
        cells = [_format_score(row["methods"].get(method)) for method in methods]
        lines.append(f"| {row['budget']:,} | " + " | ".join(cells) + " |")
    intervals = {
        entry["interval_over"] for row in report["table"] for entry in row["methods"].values() if entry is not None
    }
    if "episodes" in intervals:
        lines += ["", "With a single seed the interval is over that run's evaluation episodes, not over seeds."]
    if report.get("capped"):
        lines += ["", "**Capped evaluations** (episodes cut at --max-steps, not the full protocol; not comparable): "
                  + ", ".join(report["capped"])]
    thresholds = report["thresholds"]
    lines += ["", "Agent steps to first reach a mean eval return of:", ""]
    lines += ["| method | " + " | ".join(f"{t:g}" for t in thresholds) + " |", "|---" * (len(thresholds) + 1) + "|"]
    for method, data in report["methods"].items():
        cells = [_format_steps(data["steps_to_threshold"][f"{t:g}"]) for t in thresholds]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    references = report["references"]
    if references:
        lines += [
            "",
            "References: " + "; ".join(f"{name} {ref['mean_return']:.2f}" for name, ref in references.items()),
        ]
    return "\n".join(lines) + "\n"


def far_references(report: dict[str, Any]) -> set[str]:
    """The reference lines too far from every curve to draw on its scale: those that would leave the curves
    (their intervals included) less than a third of the plot's height (Breakout's oracle, 176.5, against
    curves at 0-10). Where the curves span nothing, a span of 1 stands in."""
    values = [
        v
        for data in report["methods"].values()
        for point in data["curve"]
        for v in (point["mean_return"], *point["interval"])
    ]
    if not values:
        return set()
    low, high = min(values), max(values)
    span = max(high - low, 1.0)
    return {
        name
        for name, ref in report["references"].items()
        if ref["mean_return"] > high + 2 * span or ref["mean_return"] < low - 2 * span
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Eval mean return vs agent steps, 95% intervals shaded, reference policies as lines."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on the machines this runs on
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for method, data in report["methods"].items():
        full, partial = split_by_seeds(data["curve"], data["n_seeds"])
        steps = [p["agent_steps"] for p in full]
        (line,) = axes.plot(steps, [p["mean_return"] for p in full], marker="o",
                            label=f"{method} (n={data['n_seeds']})")
        axes.fill_between(
            steps,
            [p["interval"][0] for p in full],
            [p["interval"][1] for p in full],
            color=line.get_color(),
            alpha=0.2,
        )
        if partial:  # checkpoints only some seeds reached: not the method's mean, drawn apart and unshaded
            joined = full[-1:] + partial
            axes.plot([p["agent_steps"] for p in joined], [p["mean_return"] for p in joined], marker="o",
                      markerfacecolor="none", linestyle="--", color=line.get_color(),
                      label=f"{method}, fewer seeds (n={min(p['n_seeds'] for p in partial)}..)")
    styles = {"random": ("grey", ":"), "oracle": ("black", "--")}
    far = far_references(report)
    for name, ref in report["references"].items():
        color, style = styles.get(name, ("black", "-."))
        if name in far:  # named in the legend, not drawn: its line would squash every curve into a band
            axes.plot([], [], color=color, linestyle=style, label=f"{name} ({ref['mean_return']:.1f}, off the scale)")
        else:
            axes.axhline(ref["mean_return"], color=color, linestyle=style, label=f"{name} ({ref['mean_return']:.1f})")
    axes.set_xlabel("agent steps collected (1 step = 4 frames)")
    axes.set_ylabel("eval mean return")
    axes.set_title(f"{report['game']}: return vs agent steps (95% intervals)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def compare(
    experiment_dirs: Sequence[str | Path],
    baselines_dir: str | Path | None,
    output_dir: str | Path,
    *,
    random_results: Sequence[str | Path] | None = None,
    oracle_results: Sequence[str | Path] | None = None,
    budgets: Sequence[int] | None = None,
    thresholds: Sequence[float] | None = None,
    game: str | None = None,
) -> dict[str, Any]:
    """Write comparison.png, comparison.json and comparison.md to output_dir; return the report.

    ``thresholds`` default to the game's own milestones (``Game.return_thresholds``)."""
    experiments = [load_experiment(d) for d in experiment_dirs]
    games = {results["game"] for run in experiments for results in run.results}
    if game is None:
        if len(games) > 1:
            raise ValueError(f"the experiments evaluate different games {sorted(games)}: compare one game at a time")
        game = next(iter(games), None)
    baselines = load_baselines(baselines_dir, game) if baselines_dir is not None else []
    games |= {results["game"] for run in baselines for results in run.results}
    if game is None:
        if len(games) != 1:
            raise ValueError(f"baselines for several games {sorted(games)}: pass game='ALE/Pong-v5' (--game)")
        game = next(iter(games))
    if thresholds is None:
        thresholds = get_game(game).return_thresholds
    runs = experiments + baselines
    if not runs:
        raise ValueError(
            f"nothing to compare: no experiment given and no baseline results under {baselines_dir} for {game}"
        )

    split_methods(experiments)
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    for method_runs in by_method.values():
        refuse_identical_seeds(method_runs)
    if budgets is None:
        # The baselines' checkpoints are the natural grid; without baselines, the largest step count.
        budgets = sorted({s for run in baselines for s in run.steps}) or [max(s for run in runs for s in run.steps)]

    methods = {}
    for method, method_runs in by_method.items():
        curve = method_curve(method_runs)
        # a threshold is reached by the method's mean over all its seeds, not by the one seed that ran longest
        every_seed, _ = split_by_seeds(curve, len(method_runs))
        methods[method] = {
            "n_seeds": len(method_runs),
            "seeds": [run.seed for run in method_runs],
            "curve": curve,
            "steps_to_threshold": {f"{t:g}": steps_to_threshold(every_seed, t) for t in thresholds},
        }
    table = [
        {"budget": int(b), "methods": {m: at_budget(method_runs, int(b), game) for m, method_runs in by_method.items()}}
        for b in budgets
    ]
    references = {
        name: ref
        for name, ref in (("random", _reference(random_results, game)), ("oracle", _reference(oracle_results, game)))
        if ref is not None
    }
    # A capped evaluation (max_steps in its results) is shorter games than the protocol's: flagged, never silent.
    capped = sorted({f"{run.method} seed {run.seed}" for run in runs for r in run.results
                     if r.get("max_steps") is not None})
    report = {
        "capped": capped,
        "game": game,
        "thresholds": [float(t) for t in thresholds],
        "budgets": [int(b) for b in budgets],
        "methods": methods,
        "table": table,
        "references": references,
    }
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "comparison.md").write_text(to_markdown(report))
    plot(report, output / "comparison.png")
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of `python -m vlmrl.compare`."""
    parser = cli.ArgumentParser(prog="python -m vlmrl.compare", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--experiment",
        nargs="*",
        default=[],
        help="Experiment folders (data/experiments/<name>) or their experiment_summary.json; "
        "experiments whose recipe and recorded settings differ only in their seed count as seeds of one method "
        "(another base model or knob is another method).",
    )
    parser.add_argument(
        "--baselines", default="data/baselines", help="Baselines root (<algo>/<game-slug>/seed_<s>/budget_<n>)."
    )
    parser.add_argument("--no-baselines", action="store_true", help="Ignore --baselines (compare experiments only).")
    parser.add_argument("--output-dir", required=True, help="Where comparison.{png,json,md} are written.")
    parser.add_argument("--random", nargs="*", default=None, help="results.json file(s) of the random policy.")
    parser.add_argument("--oracle", nargs="*", default=None, help="results.json file(s) of the oracle policy.")
    parser.add_argument(
        "--budgets", default=None, help="Comma-separated agent-step budgets for the table (default: the baselines')."
    )
    parser.add_argument(
        "--thresholds",
        default=None,
        help="Comma-separated returns whose first-reaching step counts are reported (default: the game's "
        "milestones, Pong -15,-10,0 and Breakout 5,10,30.5).",
    )
    parser.add_argument("--game", default=None, help="Game id when the inputs do not settle it (e.g. ALE/Pong-v5).")
    return parser.parse_args(argv)


def _numbers(text: str | None, kind: type, flag: str) -> list | None:
    if text is None:
        return None
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag} must be comma-separated numbers, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: run the comparison and print where its files went."""
    args = parse_args(argv)
    try:
        report = compare(
            args.experiment,
            None if args.no_baselines else args.baselines,
            args.output_dir,
            random_results=args.random,
            oracle_results=args.oracle,
            budgets=_numbers(args.budgets, int, "--budgets"),
            thresholds=_numbers(args.thresholds, float, "--thresholds"),
            game=args.game,
        )
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"compare: {error}") from None
    output = Path(args.output_dir)
    print(f"wrote {output / 'comparison.png'}, {output / 'comparison.json'}, {output / 'comparison.md'}")
    print((output / "comparison.md").read_text())
    return report


if __name__ == "__main__":
    cli.run(main)
