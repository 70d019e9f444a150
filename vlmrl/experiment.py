"""The loop: paths of an experiment, the command of each phase, and the experiment's summary.

The Makefile calls ``python -m vlmrl.experiment phase <name> ...`` for each file target, so
each phase is exactly the script a user would run by hand (the command is printed), and
``summarize`` / ``report`` build ``experiment_summary.json``, the plot and the table
(``vlmrl.report``).

    data/experiments/<exp>/iteration_0/results.json           the base model's evaluation
    data/experiments/<exp>/iteration_<k>/{episodes,reflections,checkpoint,results.json}
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from vlmrl.cli import ArgumentParser, run
from vlmrl.references import hub_repo_id

PHASES = ("collect", "reflect", "train", "evaluate")
OBSERVATION_KEYS = ("frames", "encoding", "crop", "image_size", "resample")
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
    observation = settings.setdefault("observation", {}) or {}
    unknown = set(observation) - set(OBSERVATION_KEYS)
    if not isinstance(observation, dict) or unknown:
        raise ValueError(f"{path}: observation must be a mapping of {', '.join(OBSERVATION_KEYS)}; got {observation!r}")
    settings["observation"] = observation
    settings.setdefault("seed", 0)
    return settings


MAX_SEED = 9  # collection seeds are 100,000 x seed + 1,000 x iteration + episode: below evaluation's 1,000,000


def experiment_seed(settings: dict, overrides: dict) -> int:
    """The experiment's seed: SEED (a flag) or the recipe's ``seed``; it moves every random source."""
    raw = overrides.get("seed", settings.get("seed", 0))
    try:
        seed = int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"SEED must be a whole number from 0 to {MAX_SEED}, got {raw!r}") from None
    if not 0 <= seed <= MAX_SEED or str(raw).strip() != str(seed):
        raise ValueError(f"SEED must be a whole number from 0 to {MAX_SEED}, got {raw!r}")
    return seed


def observation_flags(settings: dict) -> list[str]:
    """The recipe's observation block as flags for every phase: one place says what the model sees
    (where the block is empty, each phase reads the model's own record)."""
    flags = []
    for key, value in settings["observation"].items():
        flags += [f"--{key.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def model_for(exp_dir: Path, k: int, base_model: str) -> str:
    """The model that plays iteration k: the base for k = 1, else iteration k-1's checkpoint."""
    return base_model if k <= 1 else str(iteration_dir(exp_dir, k - 1) / "checkpoint")


def phase_command(phase: str, *, exp_dir: Path, recipe: Path, k: int, overrides: dict) -> list[str]:
    """The command line of one phase of iteration k (k = 0: the base model's evaluation)."""
    settings = recipe_settings(recipe)
    o = {key: v for key, v in overrides.items() if v not in (None, "")}
    base = o.get("base_model") or settings["base_model"]
    it = iteration_dir(exp_dir, k)
    seed = experiment_seed(settings, o)
    py = [sys.executable]
    config = ["--config", str(recipe / f"{phase}.yaml")]
    hub = o.get("hub")
    if phase == "collect":
        cmd = [*py, str(ROOT / "collect.py"), *config, "--model", model_for(exp_dir, k, base),
               "--output-dir", str(it / "episodes"), "--iteration", str(k), "--seed", str(100_000 * seed + 1000 * k)]
        cmd += _flags(o, episodes="--episodes", max_steps="--max-steps", num_envs="--num-envs",
                      teacher_mix="--teacher-mix")
        if hub:
            cmd += ["--push-to-hub", hub_repo_id(hub, "episodes")]
    elif phase == "reflect":
        cmd = [*py, str(ROOT / "reflect.py"), *config, "--episodes", str(it / "episodes"),
               "--output-dir", str(it / "reflections"), "--model", model_for(exp_dir, k, base), "--seed", str(seed)]
        cmd += _flags(o, reflection_rate="--reflection-rate")
        if hub:
            cmd += ["--push-to-hub", hub_repo_id(hub, "reflections")]
    elif phase == "train":
        window = int(settings["reflections_window"])
        reflections = [str(iteration_dir(exp_dir, j) / "reflections") for j in range(max(1, k - window + 1), k + 1)]
        launch = shlex.split(o["launch"]) if o.get("launch") else py
        cmd = [*launch, str(ROOT / "train.py"), *config, "--model_name_or_path", model_for(exp_dir, k, base),
               "--reflections", ",".join(reflections), "--output_dir", str(it / "checkpoint"),
               "--iteration", str(k), "--recipe", str(recipe), "--seed", str(seed)]
        cmd += _flags(o, epochs="--num_train_epochs", batch_size="--per_device_train_batch_size", lr="--learning_rate",
                      sample_budget="--sample-budget")
        if hub:
            cmd += ["--push_to_hub_repo", hub_repo_id(hub, "model")]
    elif phase == "evaluate":
        model = base if k == 0 else str(it / "checkpoint")
        cmd = [*py, str(ROOT / "evaluate.py"), *config, "--model", model, "--output-dir", str(it), "--seed", str(seed)]
        cmd += _flags(o, eval_episodes="--episodes", eval_max_steps="--max-steps")
        if hub and k > 0:
            cmd += ["--push-to-hub", hub_repo_id(hub, "model"), "--hub-revision", f"iteration-{k}"]
        if o.get("probe"):
            cmd += ["--probe", "vision"]
    else:
        raise ValueError(f"unknown phase {phase!r}: one of {PHASES}")
    return cmd + observation_flags(settings)


def _flags(overrides: dict, **names: str) -> list[str]:
    out = []
    for key, flag in names.items():
        if key in overrides:
            out += [flag, str(overrides[key])]
    return out


def run_phase(phase: str, *, exp_dir: Path, recipe: Path, k: int, overrides: dict) -> None:
    cmd = phase_command(phase, exp_dir=exp_dir, recipe=recipe, k=k, overrides=overrides)
    env = dict(os.environ)
    if phase != "reflect":  # the Trainer's TensorBoard callback reads its folder from here, and so do collect/evaluate
        env["TENSORBOARD_LOGGING_DIR"] = str(exp_dir / "tensorboard" / f"{phase}_{k}")
    print("+ " + shlex.join(cmd), flush=True)
    result = subprocess.run(cmd, check=False, env=env)
    if result.returncode != 0:
        raise SystemExit(result.returncode)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Run the loop's phases and report (used by the Makefile).")
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
        ("--seed", "the experiment's seed (0-9; default: the recipe's): collection, reflection, training, evaluation"),
        ("--sample-budget", "training samples per iteration, drawn from all iterations' reflections"),
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
        from vlmrl.report import summarize

        summary = summarize(exp_dir, args.recipe)
        print(f"{exp_dir / 'experiment_summary.json'}: {len(summary['iterations'])} entries")
    else:
        from vlmrl.report import format_table, summarize

        summary = summarize(exp_dir, args.recipe)
        print(format_table(summary))
        print(f"\nplot: {exp_dir / 'learning_curve.png'}\nreport: {exp_dir / 'report.html'}")


if __name__ == "__main__":
    run(main)
