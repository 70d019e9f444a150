"""The loop: paths of an experiment, the command of each phase, and the experiment's summary.

The Makefile calls ``python -m vlmrl.experiment phase <name> ...`` for each file target, so
each phase is exactly the script a user would run by hand (the command is printed), and
``summarize`` / ``report`` build ``experiment_summary.json``, the plot and the table.

    data/experiments/<exp>/iteration_0/results.json           the base model's evaluation
    data/experiments/<exp>/iteration_<k>/{episodes,reflections,checkpoint,results.json}
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from vlmrl.data import meta_path, write_json
from vlmrl.hub import hub_repo_id
from vlmrl.results import game_slug, load_results

PHASES = ("collect", "reflect", "train", "evaluate")
ROOT = Path(__file__).resolve().parent.parent


def experiment_dir(exp: str, root: str | Path = "data/experiments") -> Path:
    return Path(root) / exp


def iteration_dir(exp_dir: Path, k: int) -> Path:
    return exp_dir / f"iteration_{k}"


def recipe_settings(recipe: str | Path) -> dict:
    """The recipe's experiment.yaml (base model, game, iterations, reflections window)."""
    path = Path(recipe) / "experiment.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a recipe folder holds experiment.yaml and one YAML per phase")
    settings = yaml.safe_load(path.read_text()) or {}
    if "base_model" not in settings:
        raise ValueError(f"{path} must name base_model")
    settings.setdefault("game", "ALE/Pong-v5")
    settings.setdefault("reflections_window", 1)
    return settings


def model_for(exp_dir: Path, k: int, base_model: str) -> str:
    """The model that plays iteration k: the base for k = 1, else iteration k-1's checkpoint."""
    return base_model if k <= 1 else str(iteration_dir(exp_dir, k - 1) / "checkpoint")


def phase_command(phase: str, *, exp_dir: Path, recipe: Path, k: int, overrides: dict) -> list[str]:
    """The command line of one phase of iteration k (k = 0: the base model's evaluation)."""
    settings = recipe_settings(recipe)
    o = {key: v for key, v in overrides.items() if v not in (None, "")}
    base = o.get("base_model") or settings["base_model"]
    it = iteration_dir(exp_dir, k)
    py = [sys.executable]
    config = ["--config", str(recipe / f"{phase}.yaml")]
    hub = o.get("hub")
    if phase == "collect":
        cmd = [*py, str(ROOT / "collect.py"), *config, "--model", model_for(exp_dir, k, base),
               "--output-dir", str(it / "episodes"), "--iteration", str(k), "--seed", str(1000 * k)]
        cmd += _flags(o, episodes="--episodes", max_steps="--max-steps", num_envs="--num-envs",
                      teacher_mix="--teacher-mix")
        if hub:
            cmd += ["--push-to-hub", hub_repo_id(hub, "episodes")]
    elif phase == "reflect":
        cmd = [*py, str(ROOT / "reflect.py"), *config, "--episodes", str(it / "episodes"),
               "--output-dir", str(it / "reflections"), "--model", model_for(exp_dir, k, base)]
        cmd += _flags(o, reflection_rate="--reflection-rate")
        if hub:
            cmd += ["--push-to-hub", hub_repo_id(hub, "reflections")]
    elif phase == "train":
        window = int(settings["reflections_window"])
        reflections = [str(iteration_dir(exp_dir, j) / "reflections") for j in range(max(1, k - window + 1), k + 1)]
        launch = shlex.split(o["launch"]) if o.get("launch") else py
        cmd = [*launch, str(ROOT / "train.py"), *config, "--model_name_or_path", model_for(exp_dir, k, base),
               "--reflections", ",".join(reflections), "--output_dir", str(it / "checkpoint"),
               "--iteration", str(k), "--recipe", str(recipe)]
        cmd += _flags(o, epochs="--num_train_epochs", batch_size="--per_device_train_batch_size", lr="--learning_rate")
        if hub:
            cmd += ["--push_to_hub_repo", hub_repo_id(hub, "model")]
    elif phase == "evaluate":
        model = base if k == 0 else str(it / "checkpoint")
        cmd = [*py, str(ROOT / "evaluate.py"), *config, "--model", model, "--output-dir", str(it)]
        cmd += _flags(o, eval_episodes="--episodes", eval_max_steps="--max-steps")
        if hub and k > 0:
            cmd += ["--push-to-hub", hub_repo_id(hub, "model"), "--hub-revision", f"iteration-{k}"]
        if o.get("probe"):
            cmd += ["--probe", "vision"]
    else:
        raise ValueError(f"unknown phase {phase!r}: one of {PHASES}")
    return cmd


def _flags(overrides: dict, **names: str) -> list[str]:
    out = []
    for key, flag in names.items():
        if key in overrides:
            out += [flag, str(overrides[key])]
    return out


def run_phase(phase: str, *, exp_dir: Path, recipe: Path, k: int, overrides: dict) -> None:
    cmd = phase_command(phase, exp_dir=exp_dir, recipe=recipe, k=k, overrides=overrides)
    env = dict(os.environ)
    if phase == "train":  # the Trainer's TensorBoard callback reads its folder from here
        env["TENSORBOARD_LOGGING_DIR"] = str(exp_dir / "tensorboard" / f"train_{k}")
    print("+ " + shlex.join(cmd), flush=True)
    result = subprocess.run(cmd, check=False, env=env)
    if result.returncode != 0:
        raise SystemExit(result.returncode)


# --- summary, plot, table -------------------------------------------------------------------------


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def reference_results(game: str, root: str | Path = "data/reference") -> dict[str, dict]:
    """The random and oracle policies' evaluations, the reference lines of every curve."""
    out = {}
    for policy in ("random", "oracle"):
        path = Path(root) / game_slug(game) / policy / "results.json"
        if path.exists():
            out[policy] = load_results(path)
    return out


def build_summary(exp_dir: Path, recipe: str | Path) -> dict:
    """experiment_summary.json: entry 0 the base model's eval, entry k the phases of iteration k."""
    iterations = []
    base_eval = iteration_dir(exp_dir, 0) / "results.json"
    if base_eval.exists():
        iterations.append({"iteration": 0, "eval": load_results(base_eval)})
    env_steps_total = 0
    k = 1
    while (iteration_dir(exp_dir, k) / "results.json").exists():
        it = iteration_dir(exp_dir, k)
        trial = _read(meta_path(it / "episodes", "summary.json")) or {}
        trial = {key: v for key, v in trial.items() if key != "settings"}
        env_steps_total += int(trial.get("steps", 0))
        iterations.append(
            {
                "iteration": k,
                "trial": trial,
                "reflection": _read(meta_path(it / "reflections", "summary.json")),
                "train": _read(it / "checkpoint" / "train_metrics.json"),
                "eval": load_results(it / "results.json"),
                "env_steps_total": env_steps_total,
            }
        )
        k += 1
    return {"experiment": exp_dir.name, "recipe": str(recipe), "iterations": iterations}


def summarize(exp_dir: Path, recipe: str | Path) -> dict:
    """Writes experiment_summary.json, the learning-curve PNG and TensorBoard scalars."""
    summary = build_summary(exp_dir, recipe)
    write_json(exp_dir / "experiment_summary.json", summary)
    game = recipe_settings(recipe)["game"]
    if summary["iterations"]:
        plot_learning_curve(summary, reference_results(game), exp_dir / "learning_curve.png")
        write_tensorboard(summary, exp_dir / "tensorboard" / "loop")
    return summary


def plot_learning_curve(summary: dict, references: dict[str, dict], path: Path) -> Path:
    """Mean eval return (95% CI) per iteration and against agent steps collected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = summary["iterations"]
    x_iter = [e["iteration"] for e in its]
    x_steps = [e.get("env_steps_total", 0) for e in its]
    mean = [e["eval"]["mean_return"] for e in its]
    low = [e["eval"]["mean_return"] - e["eval"]["ci95"][0] for e in its]
    high = [e["eval"]["ci95"][1] - e["eval"]["mean_return"] for e in its]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, xs, label in ((axes[0], x_iter, "iteration"), (axes[1], x_steps, "agent steps collected")):
        ax.errorbar(xs, mean, yerr=[low, high], marker="o", capsize=3, label=f"vlmrl ({summary['experiment']})")
        for policy, style in (("random", ":"), ("oracle", "--")):
            if policy in references:
                ax.axhline(references[policy]["mean_return"], linestyle=style, color="grey",
                           label=f"{policy} policy ({references[policy]['mean_return']:+.1f})")
        ax.set_xlabel(label)
        ax.set_ylabel("mean eval return (95% CI)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{summary['experiment']}: eval return")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_tensorboard(summary: dict, log_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for entry in summary["iterations"]:
            k = entry["iteration"]
            ev = entry["eval"]
            writer.add_scalar("eval/mean_return", ev["mean_return"], k)
            if ev.get("oracle_agreement") is not None:
                writer.add_scalar("eval/oracle_agreement", ev["oracle_agreement"], k)
            if _toward(ev) is not None:
                writer.add_scalar("eval/oracle_agreement_ball_toward", _toward(ev), k)
            if entry.get("trial") and entry["trial"].get("mean_return") is not None:
                writer.add_scalar("trial/mean_return", entry["trial"]["mean_return"], k)
            reflection = entry.get("reflection") or {}
            for key in ("reflected", "poor_steps", "invalid", "accuracy"):
                if reflection.get(key) is not None:
                    writer.add_scalar(f"reflection/{key}", reflection[key], k)
            train = entry.get("train") or {}
            if train.get("train_loss") is not None:
                writer.add_scalar("train/loss", train["train_loss"], k)


def format_table(summary: dict) -> str:
    """The per-iteration table ``make report`` prints (markdown)."""
    rows = [
        "| iteration | agent steps | trial return | reflected | reflection acc. | train loss | eval return (95% CI) "
        "| oracle agreement | agreement, ball toward you | invalid |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary["iterations"]:
        ev, trial = e["eval"], e.get("trial") or {}
        refl, train = e.get("reflection") or {}, e.get("train") or {}
        acc = refl.get("accuracy")
        agreement = ev.get("oracle_agreement")
        rows.append(
            f"| {e['iteration']} | {e.get('env_steps_total', 0)} | "
            f"{_fmt(trial.get('mean_return'), '+.2f')} | {refl.get('reflected', '-')} | {_fmt(acc, '.3f')} | "
            f"{_fmt(train.get('train_loss'), '.3f')} | "
            f"{ev['mean_return']:+.2f} ({ev['ci95'][0]:+.2f}..{ev['ci95'][1]:+.2f}) "
            f"| {_fmt(agreement, '.3f')} | {_fmt(_toward(ev), '.3f')} | {ev['invalid_rate']:.1%} |"
        )
    return "\n".join(rows)


def _toward(ev: dict) -> float | None:
    """Agreement while the ball comes toward the player (results written before it existed: None)."""
    return ((ev.get("oracle_agreement_by_phase") or {}).get("toward") or {}).get("agreement")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the loop's phases and report (used by the Makefile).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("phase", help="run one phase of one iteration")
    p.add_argument("phase", choices=PHASES)
    for name in ("summarize", "report"):
        s = sub.add_parser(name, help=f"{name} an experiment")
        s.add_argument("--exp", required=True, help="experiment name (data/experiments/<exp>)")
        s.add_argument("--recipe", default="recipes/tiny-smolvlm/pong", help="recipe folder")
        s.add_argument("--root", default="data/experiments", help="where experiments live")
    p.add_argument("--exp", required=True, help="experiment name (data/experiments/<exp>)")
    p.add_argument("--recipe", required=True, help="recipe folder, e.g. recipes/tiny-smolvlm/pong")
    p.add_argument("--root", default="data/experiments", help="where experiments live")
    p.add_argument("--iteration", type=int, required=True, help="iteration k (0: the base model's evaluation)")
    for flag, helptext in (
        ("--episodes", "episodes collected per iteration"), ("--max-steps", "cap on steps per collected episode"),
        ("--num-envs", "environments per batch in collection"), ("--reflection-rate", "share of steps reflected on"),
        ("--epochs", "training epochs"), ("--batch-size", "training batch size per device"),
        ("--lr", "learning rate"), ("--eval-episodes", "evaluation episodes"),
        ("--eval-max-steps", "cap on steps per evaluation episode"),
        ("--teacher-mix", "share of collection steps the oracle plays (DAgger's mixture)"),
        ("--hub", "publish to the Hub under this prefix (user/prefix)"),
        ("--base-model", "the base model of iteration 1 and of entry 0, instead of the recipe's base_model"),
        ("--launch", "launcher for train.py, e.g. 'accelerate launch --config_file ...'"),
    ):
        p.add_argument(flag, default=None, help=helptext)
    p.add_argument("--probe", action="store_true", help="run the vision probe in evaluation")
    args = parser.parse_args(argv)
    exp_dir = experiment_dir(args.exp, args.root)
    if args.command == "phase":
        overrides = {k: v for k, v in vars(args).items()
                     if k not in ("command", "phase", "exp", "recipe", "root", "iteration")}
        run_phase(args.phase, exp_dir=exp_dir, recipe=Path(args.recipe), k=args.iteration, overrides=overrides)
    elif args.command == "summarize":
        summary = summarize(exp_dir, args.recipe)
        print(f"{exp_dir / 'experiment_summary.json'}: {len(summary['iterations'])} entries")
    else:
        summary = summarize(exp_dir, args.recipe)
        print(format_table(summary))
        print(f"\nplot: {exp_dir / 'learning_curve.png'}")


if __name__ == "__main__":
    main()
