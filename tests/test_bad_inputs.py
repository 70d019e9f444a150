"""Bad inputs per script: each is refused with exit 2 and one line on stderr, no traceback, and the output
folder stays usable for the corrected command. In-process calls of each script's ``cli`` (fast)."""

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import baselines
import collect
import evaluate
import reflect
import train
from vlmrl import experiment
from vlmrl.cli import run

ROOT = Path(__file__).resolve().parent.parent


def _call(entry, argv, capsys) -> tuple[int, str]:
    """Runs a script's command line in-process: (exit code, stderr). A traceback fails the test itself."""
    try:
        entry(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    return code, capsys.readouterr().err


def _refused(entry, argv, capsys, match: str) -> str:
    code, err = _call(entry, argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and match in err, err
    return lines[0]


def _yaml(tmp_path, text: str, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("episodes") / "ep")
    collect.main(*collect.parse((collect.CollectArguments,), ["--policy", "random", "--episodes", "1", "--max-steps",
                                                             "6", "--num-envs", "1", "--no-progress",
                                                             "--output-dir", out]))
    return out


RANDOM = ["--policy", "random", "--num-envs", "1", "--no-progress"]


@pytest.mark.parametrize("recipe, argv, match", [
    ("policy: random\nepisodes: 2.0\n", [], "episodes must be a whole number, got 2.0"),
    ("policy: random\nepisodes: true\n", [], "episodes must be a whole number, got true"),
    ("policy: random\nepisodes: null\n", [], "episodes must be a value, got null"),
    ("policy: random\nepisodes: [1\n", [], "is not valid YAML"),
    ("policy: random\nepisodez: 1\n", [], "unknown settings ['episodez']"),
    ("- a list\n", [], "must be a mapping"),
    (None, ["--config", "recipes/tiny-smolvlm/pong"], "is a folder"),
    (None, ["--config", "recipes/none/collect.yaml"], "does not exist"),
    (None, [*RANDOM, "--episodes", "2.0"], "invalid int value: '2.0'"),
    (None, [*RANDOM, "--teacher-mix", "2"], "--teacher-mix must be in [0, 1]"),
    (None, [*RANDOM, "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (None, ["--model", "/nonexistent/model", "--episodes", "1"], "does not exist"),
])
def test_collect(tmp_path, capsys, recipe, argv, match):
    out = tmp_path / "out"
    config = ["--config", _yaml(tmp_path, recipe)] if recipe else []
    _refused(collect.cli, [*config, *argv, "--output-dir", str(out)], capsys, match)
    # Nothing was recorded: the corrected command runs in the same folder.
    fixed = [*RANDOM, "--episodes", "1", "--max-steps", "3", "--output-dir", str(out)]
    assert _call(collect.cli, fixed, capsys)[0] == 0


def test_collect_names_a_damaged_shard_and_repair_fixes_it(tmp_path, capsys, episodes):
    from vlmrl.data import main as data_main

    out = tmp_path / "ep"
    shutil.copytree(episodes, out)
    shard = next((out / "data").glob("*.parquet"))
    data = shard.read_bytes()
    shard.write_bytes(data[:100] + bytes(8) + data[108:])
    argv = [*RANDOM, "--episodes", "1", "--max-steps", "6", "--output-dir", str(out)]
    line = _refused(collect.cli, argv, capsys, shard.name)
    assert f"python -m vlmrl.data repair {out}" in line
    _refused(reflect.cli, ["--episodes", str(out), "--reflector", "oracle", "--output-dir", str(tmp_path / "r")],
             capsys, shard.name)  # the next phase names the file too
    data_main(["repair", str(out)])
    assert _call(collect.cli, argv, capsys)[0] == 0


@pytest.mark.parametrize("argv, match", [
    (["--reflector", "bogus"], "unknown reflector 'bogus'"),  # even with no poor step to reflect on
    (["--reflector", "model:"], "unknown reflector"),
    (["--outcome", "ball_at_paddle", "--game", "ALE/Breakout-v5"], "not known for ALE/Breakout-v5"),
    (["--reflector", "model:/nonexistent/model", "--reflect-on", "all"], "does not exist"),
    (["--reflection-rate", "0"], "--reflection-rate must be in (0, 1]"),
    (["--config", "RECIPE:reflection_rate: [0.3]\n"], "reflection_rate must be a number, got [0.3]"),
    (["--episodes", "/nonexistent/episodes"], "does not exist"),
])
def test_reflect(tmp_path, capsys, episodes, argv, match):
    if argv[0] == "--config":
        argv = ["--config", _yaml(tmp_path, argv[1].removeprefix("RECIPE:"))]
    out = str(tmp_path / "refl")
    base = ["--episodes", episodes, "--no-progress", "--output-dir", out]
    _refused(reflect.cli, [*base, *argv] if argv[0] != "--episodes" else [*base[2:], *argv], capsys, match)
    assert _call(reflect.cli, [*base, "--reflector", "oracle", "--reflect-on", "all"], capsys)[0] == 0


@pytest.fixture(scope="module")
def reflections(tmp_path_factory, episodes) -> str:
    out = str(tmp_path_factory.mktemp("refl") / "refl")
    reflect.cli(["--episodes", episodes, "--reflector", "oracle", "--reflect-on", "all", "--no-progress",
                 "--output-dir", out])
    return out


@pytest.mark.parametrize("argv, match", [
    (["--num_train_epochs", "-1"], "--num_train_epochs must be > 0"),
    (["--learning_rate", "abc"], "invalid float value: 'abc'"),
    (["--learning_rate", "-1"], "--learning_rate must be >= 0"),
    (["--per_device_train_batch_size", "0"], "must be >= 1"),
    (["--config", "RECIPE:learning_rate: : 1\n"], "is not valid YAML"),
    (["--config", "RECIPE:num_train_epochs: one\n"], "invalid float value: 'one'"),
    (["--output_dir", "/proc/vlmrl-cannot-write"], "not writable"),
])
def test_train_refuses_before_anything_is_written(tmp_path, capsys, tiny_model, reflections, argv, match):
    if argv[0] == "--config":
        argv = ["--config", _yaml(tmp_path, argv[1].removeprefix("RECIPE:"))]
    out = tmp_path / "ckpt"
    base = ["--model_name_or_path", tiny_model, "--reflections", reflections, "--report_to", "none",
            "--output_dir", str(out)]
    _refused(train.cli, [*base, *argv], capsys, match)
    assert not (out / ".vlmrl").exists()


def test_train_missing_base_then_the_right_one(tmp_path, capsys, tiny_model, reflections):
    out = str(tmp_path / "ckpt")
    rest = ["--reflections", reflections, "--report_to", "none", "--max_steps", "1", "--save_strategy", "no",
            "--per_device_train_batch_size", "2", "--disable_tqdm", "true", "--output_dir", out]
    _refused(train.cli, ["--model_name_or_path", "/nonexistent/model", *rest], capsys, "does not exist")
    assert _call(train.cli, ["--model_name_or_path", tiny_model, *rest], capsys)[0] == 0


def test_an_incomplete_newest_checkpoint_is_moved_aside(tmp_path, capsys):
    from vlmrl.training import complete_checkpoint

    good, bad = tmp_path / "checkpoint-2", tmp_path / "checkpoint-10"
    for path in (good, bad):
        path.mkdir()
    (good / "trainer_state.json").write_text("{}")
    (good / "pytorch_model.bin").write_bytes(b"x")
    (bad / "trainer_state.json").write_text("{}")
    (bad / "model.safetensors").write_bytes(b"\0" * 100)  # the disk filled up while it was written
    assert complete_checkpoint(tmp_path) == str(good)
    assert not bad.exists() and (tmp_path / "checkpoint-10.incomplete").exists()
    assert "incomplete" in capsys.readouterr().out


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device", "/data/x/model.safetensors"),
    RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
    Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"),
])
def test_a_full_disk_is_one_line(capsys, error):
    def fails():
        raise error

    with pytest.raises(SystemExit) as stop:
        run(fails)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and "free space" in err


def test_evaluate_never_overwrites_another_runs_results(tmp_path, capsys):
    out = str(tmp_path / "eval")
    first = ["--policy", "random", "--episodes", "1", "--max-steps", "5", "--num-envs", "1", "--no-video",
             "--no-progress", "--output-dir", out]
    assert _call(evaluate.cli, first, capsys)[0] == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["max_steps"] == 5  # the cap is recorded
    assert _call(evaluate.cli, first, capsys)[0] == 0  # the same run again may overwrite
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    _refused(evaluate.cli, [*first[:8], "--policy", "oracle", *first[8:]], capsys, "another evaluation's results")
    _refused(evaluate.cli, [*first[:5], "20", *first[6:]], capsys, "max_steps: 5 -> 20")
    assert json.loads((tmp_path / "eval" / "results.json").read_text()) == results


def test_a_capped_evaluation_is_never_published_in_a_card():
    from vlmrl.cards import empty_card, merge_eval_results
    from vlmrl.results import build_results

    results = build_results(model="m", game="ALE/Pong-v5", policy="model", seeds=[1], returns=[-21.0],
                            oracle_agreement=None, invalid_rate=0.0, env_steps=20, steps_per_s=1.0, video=None)
    from huggingface_hub import ModelCard

    with pytest.raises(ValueError, match="capped at 20 steps"):
        merge_eval_results(empty_card(ModelCard), {**results, "max_steps": 20})


@pytest.mark.parametrize("argv, match", [
    (["--episodes", "0"], "--episodes must be >= 1"),
    (["--config", "RECIPE:policy: random\nepisodes: 2.5\n"], "episodes must be a whole number, got 2.5"),
    (["--probe", "vision"], "--probe vision needs a model"),
    (["--probe", "sound"], "--probe must be vision"),
    (["--action-bias", "stay"], "--action-bias takes class=number pairs separated by commas, e.g. stay=1.5; got"),
    (["--action-bias", "stay=x"], "got 'stay=x'"),
    (["--action-bias", "stay=1,stay=2"], "--action-bias: 'stay' is given twice"),
    (["--action-bias", "stay=1", "--decode", "generate"], "--action-bias applies to constrained decoding only"),
])
def test_evaluate(tmp_path, capsys, argv, match):
    if argv[0] == "--config":
        argv = ["--config", _yaml(tmp_path, argv[1].removeprefix("RECIPE:"))]
    _refused(evaluate.cli, ["--policy", "random", *argv, "--output-dir", str(tmp_path / "e")], capsys, match)


@pytest.mark.parametrize("argv, match", [
    (["--config", "RECIPE:algo: null\n"], "algo must be a value, got null"),
    (["--config", "RECIPE:steps: 1.5\n"], "steps must be a whole number, got 1.5"),
    (["--config", "RECIPE:steps: [1\n"], "is not valid YAML"),
    (["--algo", "dqn"], "--algo 'dqn' is not supported"),
    (["--steps", "0"], "--steps must be positive"),
    (["--steps", "1e5"], "invalid int value: '1e5'"),
    (["--budgets", "10,x"], "--budgets must be comma-separated integers"),
])
def test_baselines(tmp_path, capsys, argv, match):
    if argv[0] == "--config":
        argv = ["--config", _yaml(tmp_path, argv[1].removeprefix("RECIPE:"))]
    _refused(baselines.cli, [*argv, "--output-dir", str(tmp_path / "b")], capsys, match)
    assert not (tmp_path / "b").exists()


@pytest.fixture()
def recipe(tmp_path, tiny_model) -> Path:
    recipe = tmp_path / "recipe"
    shutil.copytree(ROOT / "recipes" / "tiny-smolvlm" / "pong", recipe)
    (recipe / "experiment.yaml").write_text(f"base_model: {tiny_model}\ngame: ALE/Pong-v5\nreflections_window: 2\n")
    return recipe


def _experiment(capsys, *argv):
    return _call(lambda a: run(lambda: experiment.main(a)), list(argv), capsys)


@pytest.mark.parametrize("argv, match", [
    (["--iterations", "abc"], "must be a whole number >= 1, got 'abc'"),
    (["--iterations", "0"], "must be a whole number >= 1"),
    (["--iterations", "2", "--lr", "abc"], "iteration 1 train (train.py): argument --learning_rate"),
    (["--iterations", "1", "--epochs", "-1"], "--num_train_epochs must be > 0"),
    (["--iterations", "1", "--eval-episodes", "0"], "iteration 1 evaluate (evaluate.py): --episodes must be >= 1"),
    (["--iterations", "1", "--base-model", "/nonexistent/model"], "iteration 1 collect (collect.py): model path"),
    (["--iterations", "1", "--teacher-mix", "abc"], "invalid float value: 'abc'"),
    (["--iterations", "1", "--seed", "12"], "SEED must be a whole number"),
])
def test_experiment_check_refuses_every_phases_bad_knob_up_front(tmp_path, capsys, recipe, argv, match):
    _refused(lambda a: run(lambda: experiment.main(a)),
             ["check", "--exp", "x", "--root", str(tmp_path / "exps"), "--recipe", str(recipe), *argv], capsys, match)
    assert not (tmp_path / "exps").exists()


def test_experiment_check_names_the_settings_a_finished_phase_ran_with(tmp_path, capsys, recipe, tiny_model):
    from vlmrl.results import build_results, evaluation_settings, record_results_owner, write_results

    root = tmp_path / "exps"
    base = ["check", "--exp", "x", "--root", str(root), "--recipe", str(recipe), "--iterations", "1", "--base-eval"]
    assert _experiment(capsys, *base, "--eval-episodes", "1")[0] == 0
    # The base model's evaluation ran with 1 episode (as evaluate.py records it).
    parsed = experiment.parse_phase("evaluate", exp_dir=root / "x", recipe=recipe, k=0,
                                    overrides={"eval_episodes": "1"}, base_model=tiny_model)
    it0 = root / "x" / "iteration_0"
    write_results(it0 / "results.json", build_results(
        model=tiny_model, game="ALE/Pong-v5", policy="model", seeds=[1_000_000], returns=[-21.0],
        oracle_agreement=None, invalid_rate=0.0, env_steps=10, steps_per_s=1.0, video=None))
    record_results_owner(it0, evaluation_settings(parsed[0]))
    assert _experiment(capsys, *base, "--eval-episodes", "1")[0] == 0  # the same settings: fine
    line = _refused(lambda a: run(lambda: experiment.main(a)), [*base, "--eval-episodes", "2"], capsys,
                    "iteration 0 evaluate: episodes 1 -> 2")
    assert "new EXP=" in line and "FORCE=1" in line
    experiment.main([*base, "--eval-episodes", "2", "--force"])  # reported, not refused
    assert "kept as it ran: iteration 0 evaluate: episodes 1 -> 2" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["report", "--exp", "none"], "no experiment at"),
    (["phase", "collect", "--iteration", "1", "--exp", "x", "--recipe", "/nonexistent/recipe"],
     "recipe folder '/nonexistent/recipe' does not exist"),
    (["phase", "collect", "--iteration", "1", "--exp", "x", "--recipe", "BAD"], "is not valid YAML"),
])
def test_experiment_commands(tmp_path, capsys, recipe, argv, match):
    if "BAD" in argv:
        (recipe / "experiment.yaml").write_text("base_model: [x\n")
        argv = [str(recipe) if a == "BAD" else a for a in argv]
    _refused(lambda a: run(lambda: experiment.main(a)), [*argv, "--root", str(tmp_path / "exps")], capsys, match)


needs_venv = pytest.mark.skipif(not (ROOT / ".venv" / ".vlmrl-installed").exists(), reason="make install first")


@needs_venv
@pytest.mark.parametrize("target, variables, match", [
    ("experiment", ["ITERATIONS=abc"], "must be a whole number >= 1, got 'abc'"),
    ("iteration", ["N=x"], "must be a whole number >= 1, got 'x'"),
])
def test_make_targets_refuse_a_bad_count(tmp_path, target, variables, match):
    result = subprocess.run(["make", "--no-print-directory", target, f"PY={sys.executable}", "BASE_DEP=",
                             f"EXPERIMENTS={tmp_path}", *variables], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and match in result.stderr and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error")] == [
        line for line in result.stderr.splitlines() if match in line]
