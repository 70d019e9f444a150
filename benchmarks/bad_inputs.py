"""Bad inputs a user can give, each run as the user would (a subprocess), classified by outcome.

    python benchmarks/bad_inputs.py [--repo PATH] [--only collect,make]

Each case is a mistake (a flag, a recipe value, a damaged folder) and, where a mistake could leave
the output folder unusable, the corrected command run next in the same folder. Outcomes:
``ok`` (exit 2, one line on stderr, no traceback, and the corrected command then succeeds),
``traceback``, ``silent`` (exit 0: the mistake was accepted and a wrong or empty result written),
``late`` (refused, but only after earlier phases had run for minutes), ``multiline`` (refused in more
than one line) and ``poisoned`` (refused, but the corrected command is refused too). Prints one JSON line:
the counts per script and per outcome, and each case's outcome. ``--repo`` runs another checkout's
scripts (e.g. the code before this change) with this machine's tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
TINY = "data/models/tiny-smolvlm"


def _yaml(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def cases(tmp: Path, repo: Path) -> list[dict]:
    """The table: script, how to prepare, the bad command, and the corrected command (or None)."""
    tiny = str(repo / TINY)
    out = lambda name: str(tmp / name)  # noqa: E731 - a short local helper
    rnd = ["--policy", "random", "--num-envs", "1", "--no-progress"]
    c = []

    def add(script, name, argv, fix=None, prepare=None, expect="error"):
        c.append({"script": script, "name": name, "argv": argv, "fix": fix, "prepare": prepare, "expect": expect})

    # --- collect.py
    add("collect.py", "recipe episodes: 2.0", ["--config", _yaml(tmp / "c1.yaml", "policy: random\nepisodes: 2.0\n"),
                                               "--output-dir", out("c1")])
    c2 = _yaml(tmp / "c2.yaml", "policy: random\nepisodes: true\nmax_steps: 3\n")
    add("collect.py", "recipe episodes: true", ["--config", c2, "--output-dir", out("c2")])
    add("collect.py", "recipe episodes: null", ["--config", _yaml(tmp / "c3.yaml", "policy: random\nepisodes: null\n"),
                                                "--output-dir", out("c3")])
    add("collect.py", "malformed YAML", ["--config", _yaml(tmp / "c4.yaml", "policy: random\nepisodes: [1\n"),
                                         "--output-dir", out("c4")])
    add("collect.py", "recipe is a folder", ["--config", str(repo / "recipes/tiny-smolvlm/pong"),
                                             "--output-dir", out("c5")])
    add("collect.py", "missing recipe", ["--config", str(tmp / "nope.yaml"), "--output-dir", out("c6")])
    add("collect.py", "--episodes 2.0", [*rnd, "--episodes", "2.0", "--output-dir", out("c7")])
    add("collect.py", "missing model, then the right one",
        ["--model", "/nonexistent/model", "--episodes", "1", "--max-steps", "3", "--num-envs", "1", "--no-progress",
         "--output-dir", out("c8")],
        fix=["--model", tiny, "--episodes", "1", "--max-steps", "3", "--num-envs", "1", "--no-progress",
             "--output-dir", out("c8")])
    add("collect.py", "--teacher-mix 2", [*rnd, "--teacher-mix", "2", "--output-dir", out("c9")])
    add("collect.py", "corrupted shard, resumed",
        [*rnd, "--episodes", "2", "--max-steps", "5", "--output-dir", out("c10")],
        prepare=("corrupt", [*rnd, "--episodes", "2", "--max-steps", "5", "--output-dir", out("c10")]),
        fix=["repair", out("c10")])
    # --- reflect.py
    add("reflect.py", "unknown reflector, nothing selected", ["--episodes", out("ep"), "--reflector", "bogus",
                                                             "--no-progress", "--output-dir", out("r1")],
        prepare=("episodes", out("ep")))
    add("reflect.py", "missing reflector model, then oracle",
        ["--episodes", out("ep"), "--reflector", "model:/nonexistent/model", "--reflect-on", "all",
         "--no-progress", "--output-dir", out("r2")],
        fix=["--episodes", out("ep"), "--reflector", "oracle", "--reflect-on", "all", "--no-progress",
             "--output-dir", out("r2")], prepare=("episodes", out("ep")))
    add("reflect.py", "recipe reflection_rate: [0.3]",
        ["--config", _yaml(tmp / "r3.yaml", "reflection_rate: [0.3]\n"), "--episodes", out("ep"),
         "--output-dir", out("r3")], prepare=("episodes", out("ep")))
    add("reflect.py", "corrupted episodes shard", ["--episodes", out("epbad"), "--reflector", "oracle",
                                                   "--reflect-on", "all", "--output-dir", out("r4")],
        prepare=("corrupt", [*rnd, "--episodes", "2", "--max-steps", "5", "--output-dir", out("epbad")]))
    # --- train.py
    train = ["--model_name_or_path", tiny, "--reflections", out("refl"), "--per_device_train_batch_size", "4",
             "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"]
    add("train.py", "--num_train_epochs -1", [*train, "--num_train_epochs", "-1", "--output_dir", out("t1")],
        prepare=("reflections", out("refl")))
    add("train.py", "--learning_rate abc", [*train, "--learning_rate", "abc", "--output_dir", out("t2")],
        prepare=("reflections", out("refl")))
    add("train.py", "missing base model, then the right one",
        [*train[2:], "--model_name_or_path", "/nonexistent/model", "--max_steps", "1", "--output_dir", out("t3")],
        fix=[*train, "--max_steps", "1", "--output_dir", out("t3")], prepare=("reflections", out("refl")))
    add("train.py", "read-only output folder", [*train, "--max_steps", "1", "--output_dir", "/proc/vlmrl-ro"],
        prepare=("reflections", out("refl")))
    add("train.py", "malformed recipe", ["--config", _yaml(tmp / "t5.yaml", "learning_rate: : 1\n"), *train,
                                         "--output_dir", out("t5")], prepare=("reflections", out("refl")))
    add("train.py", "half-written checkpoint, rerun", [*train, "--max_steps", "1", "--output_dir", out("t6")],
        prepare=("half_checkpoint", out("t6")), expect="ok")
    # --- evaluate.py
    ev = ["--policy", "random", "--episodes", "1", "--num-envs", "1", "--no-video", "--no-progress"]
    add("evaluate.py", "another run's results in --output-dir",
        [*ev, "--policy", "oracle", "--max-steps", "20", "--output-dir", out("e1")],
        prepare=("evaluation", [*ev, "--max-steps", "30", "--output-dir", out("e1")]))
    add("evaluate.py", "recipe episodes: 2.5", ["--config", _yaml(tmp / "e2.yaml", "policy: random\nepisodes: 2.5\n"),
                                                "--output-dir", out("e2")])
    add("evaluate.py", "--episodes 0", [*ev[:2], "--episodes", "0", "--output-dir", out("e3")])
    # --- baselines.py
    add("baselines.py", "recipe algo: null", ["--config", _yaml(tmp / "b1.yaml", "algo: null\n"),
                                              "--output-dir", out("b1")])
    add("baselines.py", "recipe steps: 1.5", ["--config", _yaml(tmp / "b2.yaml", "steps: 1.5\n"),
                                              "--output-dir", out("b2")])
    add("baselines.py", "--algo dqn", ["--algo", "dqn", "--output-dir", out("b3")])
    add("baselines.py", "--budgets 10,x", ["--budgets", "10,x", "--output-dir", out("b4")])
    # --- python -m vlmrl.experiment and make
    recipe = tmp / "recipe"
    if not recipe.exists():
        shutil.copytree(repo / "recipes/tiny-smolvlm/pong", recipe)
        (recipe / "experiment.yaml").write_text(f"base_model: {tiny}\ngame: ALE/Pong-v5\nreflections_window: 2\n")
    bad_recipe = tmp / "badrecipe"
    if not bad_recipe.exists():
        shutil.copytree(recipe, bad_recipe)
        (bad_recipe / "experiment.yaml").write_text("base_model: [x\n")
    exp = ["--root", out("exps"), "--recipe", str(recipe)]
    add("-m vlmrl.experiment", "report on a missing experiment", ["report", "--exp", "nope", *exp])
    add("-m vlmrl.experiment", "missing recipe folder", ["phase", "collect", "--iteration", "1", "--exp", "x",
                                                         "--root", out("exps"), "--recipe", str(tmp / "norecipe")])
    add("-m vlmrl.experiment", "malformed experiment.yaml", ["phase", "collect", "--iteration", "1", "--exp", "x",
                                                             "--root", out("exps"), "--recipe", str(bad_recipe)])
    small = [f"EXPERIMENTS={out('mk')}", f"RECIPE={recipe}", "BASE_DEP=", "EPISODES=1", "MAX_STEPS=6",
             "EVAL_EPISODES=1", "EVAL_MAX_STEPS=6", "TEACHER_MIX=0.5"]
    add("make", "ITERATIONS=abc", ["experiment", "EXP=m1", "ITERATIONS=abc", *small])
    add("make", "EPOCHS=-1", ["iteration", "N=1", "EXP=m2", "EPOCHS=-1", *small])
    add("make", "LR=abc (a later phase's knob)", ["iteration", "N=1", "EXP=m3", "LR=abc", *small])
    add("make", "BASE=/nonexistent, then without", ["iteration", "N=1", "EXP=m4", "BASE=/nonexistent/model", *small],
        fix=["iteration", "N=1", "EXP=m4", *small])
    add("make", "changed knob on a finished iteration", ["iteration", "N=1", "EXP=m5", "EVAL_EPISODES=2",
                                                         *[s for s in small if not s.startswith("EVAL_EPISODES")]],
        prepare=("make", ["iteration", "N=1", "EXP=m5", *small]))
    return c


def _run(repo: Path, script: str, argv: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo), "TOKENIZERS_PARALLELISM": "false"}
    py = str(repo / ".venv" / "bin" / "python") if (repo / ".venv").exists() else sys.executable
    if script == "make":
        cmd = ["make", "--no-print-directory", *argv, f"PY={py}"]
    elif script == "-m vlmrl.experiment":
        cmd = [py, "-m", "vlmrl.experiment", *argv]
    elif argv and argv[0] == "repair":
        cmd = [py, "-m", "vlmrl.data", *argv]
    else:
        cmd = [py, script, *argv]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env, timeout=timeout)
    result.wall_s = time.perf_counter() - start
    return result


def _prepare(repo: Path, prep, tmp: Path) -> None:
    if prep is None:
        return
    kind, arg = prep
    if kind == "episodes" and not Path(arg, "data").exists():
        _run(repo, "collect.py", ["--policy", "random", "--episodes", "1", "--max-steps", "8", "--num-envs", "1",
                                  "--no-progress", "--output-dir", arg])
    elif kind == "corrupt":
        _run(repo, "collect.py", arg)
        shard = sorted(Path(arg[-1], "data").glob("*.parquet"))[0]
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2] + b"\0" * 64 + data[len(data) // 2 + 64:])
    elif kind == "reflections" and not Path(arg, "data").exists():
        _prepare(repo, ("episodes", str(tmp / "ep")), tmp)
        _run(repo, "reflect.py", ["--episodes", str(tmp / "ep"), "--reflector", "oracle", "--reflect-on", "all",
                                  "--no-progress", "--output-dir", arg])
    elif kind == "half_checkpoint":
        ckpt = Path(arg, "checkpoint-3")
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"\0" * 100)  # a disk-full write: no trainer_state.json
    elif kind == "evaluation":
        _run(repo, "evaluate.py", arg)
    elif kind == "make":
        _run(repo, "make", arg)


def classify(case: dict, result, fix_result) -> str:
    """The case's outcome (see the module docstring)."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(("make", "+ "))]
    errors = [line for line in lines if "error" in line.lower() or "Traceback" in line]
    if "Traceback" in result.stderr:
        return "traceback"
    if case["expect"] == "ok":
        return "ok" if result.returncode == 0 else "poisoned"
    if result.returncode == 0:
        return "silent"
    if case["script"] == "make" and ("+ " in result.stdout and "collect.py" in result.stdout):
        return "late"  # a phase had started before the mistake was found
    if len(errors) != 1:
        return "multiline"
    if fix_result is not None and fix_result.returncode != 0:
        return "poisoned"
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=str(HERE), help="the checkout whose scripts run")
    parser.add_argument("--only", default=None, help="comma-separated scripts to run (collect.py,make,...)")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="vlmrl-bad-"))
    report: dict = {"repo": str(repo), "cases": [], "by_script": {}, "totals": {}}
    for case in cases(tmp, repo):
        if args.only and case["script"] not in args.only.split(","):
            continue
        _prepare(repo, case["prepare"], tmp)
        result = _run(repo, case["script"], case["argv"])
        fix = None
        if case["fix"] is not None and result.returncode != 0 and "Traceback" not in result.stderr:
            if case["fix"][0] == "repair":
                fix = _run(repo, "collect.py", ["repair", *case["fix"][1:]])
                if fix.returncode == 0:
                    fix = _run(repo, case["script"], case["argv"])
            else:
                fix = _run(repo, case["script"], case["fix"])
        outcome = classify(case, result, fix)
        last = (result.stderr.strip().splitlines() or [""])[-1][:200]
        report["cases"].append({"script": case["script"], "case": case["name"], "outcome": outcome,
                                "rc": result.returncode, "wall_s": round(result.wall_s, 1), "stderr_last": last})
        by = report["by_script"].setdefault(case["script"], {})
        by[outcome] = by.get(outcome, 0) + 1
        report["totals"][outcome] = report["totals"].get(outcome, 0) + 1
        print(f"{case['script']:22s} {case['name']:42s} {outcome:10s} rc={result.returncode} {last[:90]}",
              file=sys.stderr, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
