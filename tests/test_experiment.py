import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlmrl.experiment import phase_command
from vlmrl.report import build_summary, format_table, plot_learning_curve
from vlmrl.results import build_results, write_results

ROOT = Path(__file__).resolve().parent.parent


def _results(returns, agreement, toward=None):
    split = None if toward is None else {"toward": {"agreement": toward, "steps": 10}}
    return build_results(model="m", game="ALE/Pong-v5", policy="model", seeds=list(range(len(returns))),
                         returns=returns, oracle_agreement=agreement, invalid_rate=0.0, env_steps=100,
                         steps_per_s=10.0, video=None, oracle_agreement_by_phase=split)


def _recipe(tmp_path, base_model):
    recipe = tmp_path / "recipe"
    shutil.copytree(ROOT / "recipes" / "tiny-smolvlm" / "pong", recipe)
    (recipe / "experiment.yaml").write_text(f"base_model: {base_model}\ngame: ALE/Pong-v5\nreflections_window: 2\n")
    return recipe


def test_summary_with_two_iterations(tmp_path):
    exp = tmp_path / "exp"
    write_results(exp / "iteration_0" / "results.json", _results([-21, -20], 0.3))
    for k, (ret, steps) in enumerate([([-15, -13], 500), ([-8, -6], 700)], start=1):
        it = exp / f"iteration_{k}"
        write_results(it / "results.json", _results(ret, 0.3 + 0.2 * k, toward=0.25 * k))
        (it / "episodes" / ".vlmrl").mkdir(parents=True)
        (it / "episodes" / ".vlmrl" / "summary.json").write_text(json.dumps({"steps": steps, "mean_return": -20}))
        (it / "reflections" / ".vlmrl").mkdir(parents=True)
        (it / "reflections" / ".vlmrl" / "summary.json").write_text(json.dumps({"reflected": steps, "accuracy": 1.0}))
        (it / "checkpoint").mkdir()
        (it / "checkpoint" / "train_metrics.json").write_text(json.dumps({"train_loss": 1.0 / k}))
    summary = build_summary(exp, "recipes/x")
    its = summary["iterations"]
    assert [e["iteration"] for e in its] == [0, 1, 2]
    assert set(its[0]) == {"iteration", "eval"}
    assert set(its[1]) == {"iteration", "trial", "reflection", "train", "eval", "env_steps_total"}
    assert [e.get("env_steps_total") for e in its[1:]] == [500, 1200]
    assert its[2]["eval"]["mean_return"] == -7.0 and its[2]["train"]["train_loss"] == 0.5
    table = format_table(summary)
    assert table.count("\n") == 4 and "| 2 | 1,200 |" in table
    assert "| 0.700 | 0.500 | 0.0% |" in table and "| 0.300 | - | 0.0% |" in table  # the base: no split
    png = plot_learning_curve(summary, {"random": _results([-20.7], None)}, tmp_path / "curve.png")
    assert png.stat().st_size > 1000



def test_an_iteration_not_evaluated_is_trained_in_the_summary_and_skipped_by_every_reader(tmp_path):
    """Under EVAL_EVERY=2 iteration 1 has a checkpoint and no results.json: the summary keeps it (its agent steps
    count) with "eval": null, the table says so, and the plot, the report page, compare and the learning-curve
    benchmark read the evaluated iterations only; the benchmark's total wall time still counts iteration 1."""
    import importlib.util

    from vlmrl.compare import load_experiment
    from vlmrl.report import summarize

    exp = tmp_path / "exp"
    write_results(exp / "iteration_0" / "results.json", _results([-21, -20], 0.3))
    for k in (1, 2):
        it = exp / f"iteration_{k}"
        (it / "episodes" / ".vlmrl").mkdir(parents=True)
        (it / "episodes" / ".vlmrl" / "summary.json").write_text(json.dumps({"steps": 500, "wall_s": 10.0}))
        (it / "reflections" / ".vlmrl").mkdir(parents=True)
        (it / "reflections" / ".vlmrl" / "summary.json").write_text(json.dumps({"reflected": 500, "wall_s": 5.0}))
        (it / "checkpoint").mkdir()
        (it / "checkpoint" / "train_metrics.json").write_text(json.dumps({"train_loss": 0.5, "wall_s": 100.0}))
    write_results(exp / "iteration_2" / "results.json", _results([-9, -7], 0.7, toward=0.5))
    summary = summarize(exp, ROOT / "recipes" / "tiny-smolvlm" / "pong")
    its = summary["iterations"]
    assert [e["iteration"] for e in its] == [0, 1, 2] and its[1]["eval"] is None
    assert [e["env_steps_total"] for e in its[1:]] == [500, 1000]
    table = format_table(summary)
    assert "| 1 | 500 |" in table and "not evaluated" in table and "| 2 | 1,000 |" in table
    page = (exp / "report.html").read_text()
    assert (exp / "learning_curve.png").exists() and "iteration 2: mean return -8.00" in page
    run = load_experiment(exp)
    assert run.steps == [0, 1000] and [r["mean_return"] for r in run.results] == [-20.5, -8.0]
    spec = importlib.util.spec_from_file_location("learning_curve", ROOT / "benchmarks" / "learning_curve.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    c = bench.curve(summary)
    assert [p["iteration"] for p in c["points"]] == [0, 2] and c["iterations_trained"] == 2
    assert c["wall_s_total"] == 100 / 10 + 2 * (10 + 5 + 100) + 100 / 10  # the base, two iterations, eval 2
    assert [p["iteration"] for p in bench.mean_curve([c, c])] == [0, 2]

def test_phase_commands_chain_the_iterations(tmp_path):
    recipe = _recipe(tmp_path, "base-model-path")
    exp = tmp_path / "exp"
    collect1 = phase_command("collect", exp_dir=exp, recipe=recipe, k=1, overrides={"episodes": "3"})
    assert collect1[collect1.index("--model") + 1] == "base-model-path" and "--episodes" in collect1
    collect2 = phase_command("collect", exp_dir=exp, recipe=recipe, k=2, overrides={})
    assert collect2[collect2.index("--model") + 1] == str(exp / "iteration_1" / "checkpoint")
    assert collect1[collect1.index("--seed") + 1] != collect2[collect2.index("--seed") + 1]
    train3 = phase_command("train", exp_dir=exp, recipe=recipe, k=3, overrides={"lr": "1e-3", "hub": "u/p"})
    assert train3[train3.index("--reflections") + 1] == ",".join(
        str(exp / f"iteration_{j}" / "reflections") for j in (2, 3))  # the window of 2
    assert train3[train3.index("--learning_rate") + 1] == "1e-3" and "u/p" in train3
    base_eval = phase_command("evaluate", exp_dir=exp, recipe=recipe, k=0, overrides={})
    assert base_eval[base_eval.index("--model") + 1] == "base-model-path"
    # BASE=... (--base-model) replaces the recipe's base for entry 0 and iteration 1 only.
    other = {"base_model": "other-base"}
    for phase, k in (("evaluate", 0), ("collect", 1), ("train", 1)):
        cmd = phase_command(phase, exp_dir=exp, recipe=recipe, k=k, overrides=other)
        flag = "--model_name_or_path" if phase == "train" else "--model"
        assert cmd[cmd.index(flag) + 1] == "other-base"
    assert phase_command("collect", exp_dir=exp, recipe=recipe, k=2, overrides=other)[
        collect2.index("--model") + 1] == str(exp / "iteration_1" / "checkpoint")


def test_every_phase_is_told_the_recipes_game(tmp_path):
    # A Breakout recipe whose train.yaml leaves the game out once trained with Pong's action classes.
    recipe = tmp_path / "recipe"
    shutil.copytree(ROOT / "recipes" / "tiny-smolvlm" / "breakout", recipe)
    train_yaml = recipe / "train.yaml"
    train_yaml.write_text("\n".join(line for line in train_yaml.read_text().splitlines()
                                     if not line.startswith("game:")))
    exp = tmp_path / "exp"
    for phase, k in (("collect", 1), ("reflect", 1), ("train", 1), ("evaluate", 0), ("evaluate", 1)):
        cmd = phase_command(phase, exp_dir=exp, recipe=recipe, k=k, overrides={})
        assert cmd[cmd.index("--game") + 1] == "ALE/Breakout-v5", phase


def test_a_phase_naming_another_game_is_refused(tmp_path):
    from vlmrl.experiment import recipe_settings

    recipe = _recipe(tmp_path, "base-model-path")
    (recipe / "train.yaml").write_text((recipe / "train.yaml").read_text().replace("ALE/Pong-v5", "ALE/Breakout-v5"))
    with pytest.raises(ValueError, match="train.yaml names game 'ALE/Breakout-v5'"):
        recipe_settings(recipe)
    cli = subprocess.run([sys.executable, "-m", "vlmrl.experiment", "check", "--exp", "x", "--root", str(tmp_path),
                          "--recipe", str(recipe), "--iterations", "1"], capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 2 and "one recipe plays one game" in cli.stderr


def test_reflector_outcome_and_rehearsal_knobs_reach_their_phases(tmp_path):
    recipe = _recipe(tmp_path, "base-model-path")
    exp = tmp_path / "exp"
    knobs = {"reflector": "grounded", "outcome": "point", "rehearsal_share": "0.2"}
    reflect = phase_command("reflect", exp_dir=exp, recipe=recipe, k=1, overrides=knobs)
    assert reflect[reflect.index("--reflector") + 1] == "grounded"
    assert reflect[reflect.index("--outcome") + 1] == "point" and "--rehearsal-share" not in reflect
    train = phase_command("train", exp_dir=exp, recipe=recipe, k=1, overrides=knobs)
    assert train[train.index("--rehearsal-share") + 1] == "0.2" and "--reflector" not in train
    assert "--reflector" not in phase_command("reflect", exp_dir=exp, recipe=recipe, k=1, overrides={})


def test_a_reflector_other_than_the_oracle_collects_without_oracle_play(tmp_path):
    recipe = _recipe(tmp_path, "base-model-path")
    exp = tmp_path / "exp"

    def mix(**knobs):
        cmd = phase_command("collect", exp_dir=exp, recipe=recipe, k=1, overrides=knobs)
        return cmd[cmd.index("--teacher-mix") + 1] if "--teacher-mix" in cmd else None

    assert mix() is None and mix(reflector="oracle") is None  # the recipe's mixture
    assert mix(reflector="grounded") == "0" and mix(reflector="self-imitation") == "0"
    assert mix(reflector="grounded", teacher_mix="0.3") == "0.3"  # said outright: kept
    reflect = phase_command("reflect", exp_dir=exp, recipe=recipe, k=1,
                            overrides={"reflector": "self-imitation", "advantage": "1"})
    assert reflect[reflect.index("--advantage") + 1] == "1"
    train = phase_command("train", exp_dir=exp, recipe=recipe, k=1, overrides={"lora": "1"})
    assert train[train.index("--use_peft") + 1] == "1"
    assert "--use_peft" not in phase_command("train", exp_dir=exp, recipe=recipe, k=1, overrides={})
    train = phase_command("train", exp_dir=exp, recipe=recipe, k=1, overrides={"vision_head": "0.5",
                                                                               "vision_head_at": "connector"})
    assert train[train.index("--vision-head-weight") + 1] == "0.5"
    assert train[train.index("--vision-head-at") + 1] == "connector"


def test_a_learning_rate_schedule_sets_each_iterations_rate(tmp_path):
    from vlmrl.experiment import check, recipe_settings

    recipe = _recipe(tmp_path, "base-model-path")
    exp = tmp_path / "exp"

    def rate(k, **knobs):
        cmd = phase_command("train", exp_dir=exp, recipe=recipe, k=k, overrides=knobs)
        return cmd[cmd.index("--learning_rate") + 1] if "--learning_rate" in cmd else None

    steps = {"lr_schedule": "6:5e-4,11:3e-4"}
    assert [rate(k, **steps) for k in (1, 5, 6, 10, 11, 20)] == [None, None, "0.0005", "0.0005", "0.0003", "0.0003"]
    assert [rate(k, lr="2e-3", **steps) for k in (5, 6)] == ["2e-3", "0.0005"]  # LR holds until the first step
    # The iterations before the first step run exactly as without a schedule: extending a run needs no FORCE.
    assert phase_command("train", exp_dir=exp, recipe=recipe, k=10, overrides={"lr_schedule": "11:3e-4"}) == \
        phase_command("train", exp_dir=exp, recipe=recipe, k=10, overrides={})
    (recipe / "experiment.yaml").write_text((recipe / "experiment.yaml").read_text() + "lr_schedule: {3: 1.0e-4}\n")
    assert recipe_settings(recipe)["lr_schedule"] == {3: 1e-4}
    assert [rate(k) for k in (2, 3)] == [None, "0.0001"] and rate(3, lr_schedule="none") is None
    for bad in ("abc", "1:3e-4", "5:0", "5:2", "5:3e-4,5:1e-4", "5.5:3e-4", "5"):
        with pytest.raises(ValueError, match="LR_SCHEDULE"):
            check(exp_dir=exp, recipe=recipe, overrides={"lr_schedule": bad}, iterations="6")
    cli = subprocess.run([sys.executable, "-m", "vlmrl.experiment", "check", "--exp", "x", "--root", str(tmp_path),
                          "--recipe", str(recipe), "--iterations", "2", "--lr-schedule", "2:abc"],
                         capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 2 and "iteration:rate" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1


def test_a_teacher_mix_schedule_sets_each_iterations_mix(tmp_path):
    from vlmrl.experiment import check, recipe_settings

    recipe = _recipe(tmp_path, "base-model-path")
    exp = tmp_path / "exp"

    def mix(k, **knobs):
        cmd = phase_command("collect", exp_dir=exp, recipe=recipe, k=k, overrides=knobs)
        return cmd[cmd.index("--teacher-mix") + 1] if "--teacher-mix" in cmd else None

    steps = {"teacher_mix_schedule": "6:0.25,11:0"}
    assert [mix(k, **steps) for k in (1, 5, 6, 10, 11, 20)] == [None, None, "0.25", "0.25", "0.0", "0.0"]
    assert [mix(k, teacher_mix="0.8", **steps) for k in (5, 6)] == ["0.8", "0.25"]  # the constant holds until then
    # Only collection changes, and the iterations before the first step run exactly as without a schedule.
    for phase in ("reflect", "train", "evaluate"):
        assert phase_command(phase, exp_dir=exp, recipe=recipe, k=12, overrides=steps) == \
            phase_command(phase, exp_dir=exp, recipe=recipe, k=12, overrides={})
    assert phase_command("collect", exp_dir=exp, recipe=recipe, k=10, overrides={"teacher_mix_schedule": "11:0"}) \
        == phase_command("collect", exp_dir=exp, recipe=recipe, k=10, overrides={})
    (recipe / "experiment.yaml").write_text((recipe / "experiment.yaml").read_text() +
                                            "teacher_mix_schedule: {3: 0.0}\n")
    assert recipe_settings(recipe)["teacher_mix_schedule"] == {3: 0.0}
    assert [mix(k) for k in (2, 3)] == [None, "0.0"] and mix(3, teacher_mix_schedule="none") is None
    for bad in ("abc", "1:0", "5:-0.1", "5:1.5", "5:0,5:0.5", "5"):
        with pytest.raises(ValueError, match="TEACHER_MIX_SCHEDULE"):
            check(exp_dir=exp, recipe=recipe, overrides={"teacher_mix_schedule": bad}, iterations="6")
    cli = subprocess.run([sys.executable, "-m", "vlmrl.experiment", "check", "--exp", "x", "--root", str(tmp_path),
                          "--recipe", str(recipe), "--iterations", "2", "--teacher-mix-schedule", "2:abc"],
                         capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 2 and "iteration:share" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1


def test_a_branch_keeps_the_iterations_up_to_its_point_and_names_its_own_folders(tmp_path):
    from vlmrl.experiment import branch

    src, new = tmp_path / "src", tmp_path / "new"
    for k in (0, 1, 2):
        (src / f"iteration_{k}" / "checkpoint" / ".vlmrl").mkdir(parents=True)
    (src / "iteration_0" / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="iteration 1 .* has not finished"):
        branch(src, new, 1)
    (src / "iteration_1" / "results.json").write_text("{}")
    (src / "iteration_1" / "checkpoint" / "train_metrics.json").write_text("{}")
    record = src / "iteration_1" / "checkpoint" / ".vlmrl" / "vlmrl_train.json"
    record.write_text(json.dumps({"reflections": [f"{src}/iteration_1/reflections"], "base_model": "base"}))
    os.utime(record, ns=(1_000_000_000, 1_000_000_000))
    (src / "iteration_2" / "checkpoint" / ".vlmrl" / "vlmrl_train.json").write_text(f"{src}/iteration_2")  # started
    with pytest.raises(ValueError, match="iteration 2 .* has not finished"):
        branch(src, new, 2)
    assert not new.exists()
    rewritten = branch(src, new, 1)
    assert sorted(p.name for p in new.iterdir()) == ["iteration_0", "iteration_1"]
    copied = new / "iteration_1" / "checkpoint" / ".vlmrl" / "vlmrl_train.json"
    assert rewritten == [copied] and copied.stat().st_mtime_ns == 1_000_000_000
    assert json.loads(copied.read_text())["reflections"] == [f"{new}/iteration_1/reflections"]
    assert str(src) in record.read_text()  # the source is untouched
    with pytest.raises(ValueError, match="already exists"):
        branch(src, new, 1)
    shutil.rmtree(src / "iteration_0")  # `make iteration` runs no base evaluation
    branch(src, tmp_path / "from-iterations", 1)
    assert sorted(p.name for p in (tmp_path / "from-iterations").iterdir()) == ["iteration_1"]
    cli = subprocess.run([sys.executable, "-m", "vlmrl.experiment", "branch", "--exp", "b", "--from", "src", "--at",
                          "5", "--root", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 2 and "iteration 5" in cli.stderr and not (tmp_path / "b").exists()
    (src / "iteration_1" / "results.json").unlink()  # trained, not evaluated (EVAL_EVERY)
    with pytest.raises(ValueError, match="was not evaluated"):
        branch(src, tmp_path / "c", 1)
    assert not (tmp_path / "c").exists()


def _make(tmp_path, recipe, *targets, **variables):
    venv_python = Path(sys.executable)
    args = ["make", "--no-print-directory", *targets, f"PY={venv_python}", "BASE_DEP=",
            f"EXPERIMENTS={tmp_path / 'experiments'}", f"RECIPE={recipe}", "EXP=t", "EPISODES=2", "MAX_STEPS=12",
            "EPOCHS=1", "EVAL_EPISODES=2", "EVAL_MAX_STEPS=12", *[f"{k}={v}" for k, v in variables.items()]]
    return args


needs_venv = pytest.mark.skipif(not (ROOT / ".venv" / ".vlmrl-installed").exists(), reason="make install first")


@pytest.mark.slow
@needs_venv
def test_make_iteration_one_and_two_end_to_end(tmp_path, tiny_model):
    recipe = _recipe(tmp_path, tiny_model)
    for n in (1, 2):
        result = subprocess.run(_make(tmp_path, recipe, "iteration", N=n), cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    exp = tmp_path / "experiments" / "t"
    summary = json.loads((exp / "experiment_summary.json").read_text())
    assert [e["iteration"] for e in summary["iterations"]] == [1, 2]
    assert summary["iterations"][1]["env_steps_total"] == 48
    ckpt2 = exp / "iteration_2" / "checkpoint"
    assert "iteration_1/checkpoint" in (ckpt2 / ".vlmrl" / "vlmrl_train.json").read_text()
    # A branch at iteration 1 goes on with the same knobs without FORCE: nothing it kept is redone.
    branched = subprocess.run(_make(tmp_path, recipe, "branch", EXP="b", FROM="t", AT=1), cwd=ROOT,
                              capture_output=True, text=True)
    assert branched.returncode == 0, branched.stdout[-3000:] + branched.stderr[-3000:]
    again = subprocess.run(_make(tmp_path, recipe, "iteration", EXP="b", N=1), cwd=ROOT, capture_output=True,
                           text=True)
    assert again.returncode == 0 and "--iteration 1" not in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]


@pytest.mark.slow
@needs_venv
def test_killed_iteration_resumes_where_it_stopped(tmp_path, tiny_model):
    recipe = _recipe(tmp_path, tiny_model)
    exp = tmp_path / "experiments" / "t"
    proc = subprocess.Popen(_make(tmp_path, recipe, "iteration", N=1), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    reflections = exp / "iteration_1" / "reflections" / ".vlmrl" / "summary.json"
    deadline = time.time() + 300
    while not reflections.exists() and time.time() < deadline:
        time.sleep(0.5)
    assert reflections.exists(), "reflection never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # killed while training
    proc.wait()
    assert not (exp / "iteration_1" / "results.json").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (exp / "iteration_1").glob("*/.vlmrl/summary.json")}
    result = subprocess.run(_make(tmp_path, recipe, "iteration", N=1), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "collect --iteration" not in result.stdout and "reflect --iteration" not in result.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished phases untouched
    assert (exp / "iteration_1" / "results.json").exists()


def test_seed_moves_every_random_source_of_an_experiment(tmp_path):
    recipe, exp = ROOT / "recipes" / "tiny-smolvlm" / "pong", tmp_path / "exp"

    def seeds(phase: str, overrides: dict, k: int = 2) -> str:
        cmd = phase_command(phase, exp_dir=exp, recipe=recipe, k=k, overrides=overrides)
        return cmd[cmd.index("--seed") + 1]

    assert [seeds(p, {}) for p in ("collect", "reflect", "train", "evaluate")] == ["2000", "0", "0", "0"]
    assert [seeds(p, {"seed": "3"}) for p in ("collect", "reflect", "train", "evaluate")] == ["302000", "3", "3", "3"]
    for bad in ("abc", "10", "-1", "1.5"):
        with pytest.raises(ValueError, match="SEED must be a whole number"):
            phase_command("collect", exp_dir=exp, recipe=recipe, k=1, overrides={"seed": bad})


def test_another_seed_collects_other_data(tmp_path):
    from datasets import load_dataset

    import collect
    from vlmrl.cli import parse
    from vlmrl.configs import CollectArguments

    rows = {}
    for seed in (1000, 101_000):  # iteration 1 of SEED=0 and of SEED=1
        out = str(tmp_path / str(seed))
        collect.main(*parse((CollectArguments,), ["--policy", "random", "--episodes", "1", "--max-steps", "30",
                                                   "--seed", str(seed), "--output-dir", out, "--no-progress"]))
        rows[seed] = load_dataset(out, split="train")
    assert rows[1000]["seed"][0] == 1000 and rows[101_000]["seed"][0] == 101_000
    assert rows[1000]["action"] != rows[101_000]["action"]


_STUB_PYTHON = """#!{python}
# Stands in for the venv's python in the Makefile: `check` runs for real, a phase only writes its output file
# and logs what ran, summarize/report only log.
import subprocess, sys
from pathlib import Path
args = sys.argv[1:]
if args[:3] == ["-m", "vlmrl.experiment", "check"]:
    sys.exit(subprocess.run([{python!r}, *args]).returncode)
outputs = {{"collect": "episodes/.vlmrl/summary.json", "reflect": "reflections/.vlmrl/summary.json",
           "train": "checkpoint/train_metrics.json", "evaluate": "results.json"}}
command = args[2]
phase = next((a for a in args if a in outputs), "") if command == "phase" else ""
k = args[args.index("--iteration") + 1] if "--iteration" in args else ""
with open({log!r}, "a") as log:
    log.write(f"{{command}} {{phase}} k={{k}}\\n" if phase else command + "\\n")
if phase:
    it = Path(args[args.index("--root") + 1]) / args[args.index("--exp") + 1] / f"iteration_{{k}}"
    out = outputs[phase]
    (it / out).parent.mkdir(parents=True, exist_ok=True)
    (it / out).write_text("{{}}")
"""


def test_eval_every_evaluates_every_kth_iteration_and_the_last(tmp_path):
    """`make experiment ITERATIONS=5 EVAL_EVERY=2` trains all five iterations and evaluates 2, 4 and 5 (and the
    base); a later EVAL_EVERY=1 evaluates the skipped ones and redoes nothing else; a bad value is refused first."""
    log = tmp_path / "ran.log"
    stub = tmp_path / "python"
    stub.write_text(_STUB_PYTHON.format(python=sys.executable, log=str(log)))
    stub.chmod(0o755)
    (tmp_path / "base").mkdir()
    recipe = _recipe(tmp_path, tmp_path / "base")

    def make(**variables):
        return subprocess.run(["make", "--no-print-directory", "experiment", f"PY={stub}", "BASE_DEP=", "STAMP=",
                               f"EXPERIMENTS={tmp_path / 'experiments'}", f"RECIPE={recipe}", "EXP=t",
                               *[f"{k}={v}" for k, v in variables.items()]],
                              cwd=ROOT, capture_output=True, text=True)

    result = make(ITERATIONS=5, EVAL_EVERY=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ran = log.read_text().splitlines()
    assert sorted(line for line in ran if line.startswith("phase evaluate")) == [
        "phase evaluate k=0", "phase evaluate k=2", "phase evaluate k=4", "phase evaluate k=5"]
    assert sum(line.startswith("phase train") for line in ran) == 5
    log.unlink()
    result = make(ITERATIONS=5, EVAL_EVERY=1, FORCE=1)  # FORCE: the stub's phases record no settings to compare
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(line for line in log.read_text().splitlines() if line.startswith("phase")) == [
        "phase evaluate k=1", "phase evaluate k=3"]
    for knob, bad in (("EVAL_EVERY", "0"), ("EVAL_EVERY", "two"), ("EVAL_EVERY", ""), ("LOOP_JOBS", "x")):
        log.unlink(missing_ok=True)
        refused = make(ITERATIONS=5, EXP="u", **{knob: bad})
        assert refused.returncode != 0 and knob in refused.stderr, refused.stderr[-2000:]
        assert not log.exists()  # nothing but the check ran
        assert not (tmp_path / "experiments" / "u").exists()
