import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmrl.averaging import RECORD, average_checkpoints, average_window, parse_average
from vlmrl.experiment import phase_command

ROOT = Path(__file__).resolve().parent.parent


def _checkpoint(folder: Path, scale: float, steps: int = 7) -> Path:
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3) * scale,
               "h": torch.full((4,), scale, dtype=torch.bfloat16),
               "steps": torch.tensor([steps], dtype=torch.int64)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"scale": scale}))
    (folder / "README.md").write_text("---\nlibrary_name: transformers\n---\n\n# a card\n")
    (folder / "train_metrics.json").write_text("{}")
    (folder / "evaluation.gif").write_bytes(b"GIF89a")
    (folder / "checkpoint-5").mkdir()
    (folder / ".vlmrl").mkdir()
    return folder


def test_the_mean_of_checkpoints_keeps_the_last_ones_files_and_names_its_sources(tmp_path):
    sources = [_checkpoint(tmp_path / f"iteration_{k}" / "checkpoint", scale, steps=k)
               for k, scale in ((1, 1.0), (2, 2.0), (3, 4.5))]
    from vlmrl.cards import add_eval_results_to_card
    from vlmrl.results import build_results

    add_eval_results_to_card(sources[-1], build_results(
        model=str(sources[-1]), game="ALE/Pong-v5", policy="model", seeds=[0], returns=[-3.0], oracle_agreement=0.8,
        invalid_rate=0.0, env_steps=10, steps_per_s=1.0, video=None))
    assert "mean_reward" in (sources[-1] / "README.md").read_text()
    out = average_checkpoints(sources, tmp_path / "policy")
    mean = load_file(out / "model.safetensors")
    expected = torch.arange(6, dtype=torch.float64).reshape(2, 3) * (1.0 + 2.0 + 4.5) / 3
    assert torch.equal(mean["w"], expected.to(torch.float32))
    assert mean["h"].dtype == torch.bfloat16 and torch.equal(mean["h"], torch.full((4,), 2.5, dtype=torch.bfloat16))
    assert mean["steps"].tolist() == [3]  # not a float: the last checkpoint's
    assert json.loads((out / "config.json").read_text()) == {"scale": 4.5}
    assert not any((out / name).exists() for name in ("train_metrics.json", "evaluation.gif", "checkpoint-5", ".vlmrl"))
    record = json.loads((out / RECORD).read_text())
    assert record["sources"] == [str(s) for s in sources] and len(set(record["weights_sha256"])) == 3
    card = (out / "README.md").read_text()
    assert "mean of 3 checkpoints" in card and "`iteration_1`" in card and "library_name: transformers" in card
    # The last checkpoint's evaluation was another model's: not in the mean's card until the mean is evaluated.
    assert "mean_reward" not in card and "vlmrl:begin evaluation" not in card and "# a card" in card
    # The same sources again: kept as it is. A source that changed: made again.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert average_checkpoints(sources, out) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp
    shutil.rmtree(sources[0])
    _checkpoint(sources[0], 10.0)
    average_checkpoints(sources, out)
    assert load_file(out / "model.safetensors")["w"][0, 1].item() == pytest.approx((10.0 + 2.0 + 4.5) / 3)
    assert not (tmp_path / "policy.partial").exists()


def test_checkpoints_that_cannot_be_averaged_are_refused_and_leave_nothing(tmp_path):
    a = _checkpoint(tmp_path / "a", 1.0)
    b = tmp_path / "b"
    b.mkdir()
    save_file({"w": torch.zeros(3, 2)}, b / "model.safetensors")
    with pytest.raises(ValueError, match="not the same architecture"):
        average_checkpoints([a, b], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        average_checkpoints([a, tmp_path / "missing"], tmp_path / "out")
    with pytest.raises(ValueError, match="no checkpoint"):
        average_checkpoints([], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_which_checkpoints_each_iteration_is_evaluated_as():
    assert [average_window(k, 3, 11) for k in (1, 10, 11, 12, 13, 14, 20)] == \
        [[1], [10], [11], [11, 12], [11, 12, 13], [12, 13, 14], [18, 19, 20]]
    assert average_window(2, 3) == [1, 2] and average_window(5, 1, 1) == [5]
    assert [parse_average(raw) for raw in ("11:3", " 11:3 ", "3", 2, "none", "1")] == \
        [(11, 3), (11, 3), (1, 3), (1, 2), (1, 1), (1, 1)]
    for bad in ("0", "11:0", "0:3", "a:3", "11:3:2", "011:3", "", True, "3.5"):
        with pytest.raises(ValueError, match="START:COUNT"):
            parse_average(bad)


def _recipe(tmp_path, extra=""):
    recipe = tmp_path / "recipe"
    shutil.copytree(ROOT / "recipes" / "tiny-smolvlm" / "pong", recipe)
    (recipe / "experiment.yaml").write_text(f"base_model: base-model-path\ngame: ALE/Pong-v5\n{extra}")
    return recipe


def test_the_evaluation_phase_evaluates_the_mean_where_the_window_holds_several(tmp_path):
    from vlmrl.experiment import check, recipe_settings

    recipe = _recipe(tmp_path)
    exp = tmp_path / "exp"

    def model(k, **knobs):
        cmd = phase_command("evaluate", exp_dir=exp, recipe=recipe, k=k, overrides=knobs)
        return Path(cmd[cmd.index("--model") + 1]).relative_to(exp).as_posix()

    assert [model(k, average="11:3") for k in (10, 11, 12, 20)] == \
        ["iteration_10/checkpoint", "iteration_11/checkpoint", "iteration_12/policy", "iteration_20/policy"]
    assert model(12) == "iteration_12/checkpoint" and model(12, average="none") == "iteration_12/checkpoint"
    # Collection and training never read the mean.
    for phase in ("collect", "train"):
        assert phase_command(phase, exp_dir=exp, recipe=recipe, k=13, overrides={"average": "11:3"}) == \
            phase_command(phase, exp_dir=exp, recipe=recipe, k=13, overrides={})
    recipe = _recipe(tmp_path / "r2", "average_checkpoints: '11:3'\n")
    assert recipe_settings(recipe)["average_checkpoints"] == "11:3"
    assert model(12) == "iteration_12/policy" and model(12, average="none") == "iteration_12/checkpoint"
    for bad in ("0", "abc", "11:0"):
        with pytest.raises(ValueError, match="AVERAGE"):
            check(exp_dir=exp, recipe=recipe, overrides={"average": bad}, iterations="2")
    bad_recipe = _recipe(tmp_path / "r3", "average_checkpoints: 0\n")
    with pytest.raises(ValueError, match="average_checkpoints"):
        recipe_settings(bad_recipe)
    cli = subprocess.run([sys.executable, "-m", "vlmrl.experiment", "check", "--exp", "x", "--root", str(tmp_path),
                          "--recipe", str(recipe), "--iterations", "2", "--average", "11:x"],
                         capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 2 and "AVERAGE" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1


def test_the_evaluation_phase_writes_the_mean_before_it_evaluates(tmp_path, monkeypatch):
    import vlmrl.experiment as experiment

    recipe = _recipe(tmp_path)
    exp = tmp_path / "exp"
    for k, scale in ((11, 1.0), (12, 2.0), (13, 3.0), (14, 7.0)):
        _checkpoint(exp / f"iteration_{k}" / "checkpoint", scale)
    seen = []

    def fake_run(cmd, **kwargs):
        model = Path(cmd[cmd.index("--model") + 1])
        seen.append((model.relative_to(exp).as_posix(), load_file(model / "model.safetensors")["w"][0, 1].item()))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(experiment.subprocess, "run", fake_run)
    for k in (11, 14):
        experiment.run_phase("evaluate", exp_dir=exp, recipe=recipe, k=k, overrides={"average": "11:3"})
    assert seen == [("iteration_11/checkpoint", 1.0), ("iteration_14/policy", 4.0)]  # (2 + 3 + 7) / 3
    record = json.loads((exp / "iteration_14" / "policy" / RECORD).read_text())
    assert record["sources"] == [str(exp / f"iteration_{k}" / "checkpoint") for k in (12, 13, 14)]
    assert record["average"] == "11:3"  # what `make compare` tells this method by


def test_a_mean_of_tiny_models_loads_and_plays_like_them(tiny_model, tmp_path):
    from vlmrl.models import load_vlm

    out = average_checkpoints([tiny_model, tiny_model], tmp_path / "policy")
    a, b = load_vlm(tiny_model), load_vlm(str(out))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_the_command_line_writes_the_mean_and_refuses_mistakes_in_one_line(tmp_path):
    a, b = _checkpoint(tmp_path / "a", 1.0), _checkpoint(tmp_path / "b", 3.0)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "vlmrl.averaging", *map(str, args)], capture_output=True,
                              text=True, cwd=ROOT)

    done = cli("--output-dir", tmp_path / "mean", a, b)
    assert done.returncode == 0 and load_file(tmp_path / "mean" / "model.safetensors")["w"][0, 1].item() == 2.0
    for args in (("--output-dir", tmp_path / "m2", a, tmp_path / "missing"), ("--output-dir", a, a, b)):
        refused = cli(*args)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (tmp_path / "m2").exists() and (a / "model.safetensors").exists()


def test_the_table_says_which_checkpoints_an_iteration_was_evaluated_as(tmp_path):
    from vlmrl.report import build_summary, format_table
    from vlmrl.results import build_results, write_results

    exp = tmp_path / "exp"
    for k in (1, 2):
        it = exp / f"iteration_{k}"
        model = it / ("policy" if k == 2 else "checkpoint")
        (it / "checkpoint").mkdir(parents=True)
        (it / "checkpoint" / "train_metrics.json").write_text("{}")
        results = build_results(model=str(model), game="ALE/Pong-v5", policy="model", seeds=[0, 1],
                                returns=[-3.0, -5.0], oracle_agreement=0.8, invalid_rate=0.0, env_steps=10,
                                steps_per_s=1.0, video=None)
        write_results(it / "results.json", results)
    (exp / "iteration_2" / "policy").mkdir()
    (exp / "iteration_2" / "policy" / RECORD).write_text(json.dumps(
        {"average": "1:2", "sources": [str(exp / f"iteration_{k}" / "checkpoint") for k in (1, 2)]}))
    summary = build_summary(exp, ROOT / "recipes" / "tiny-smolvlm" / "pong")
    assert "evaluated_as" not in summary["iterations"][0] and summary["iterations"][1]["evaluated_as"] == [1, 2]
    rows = format_table(summary).splitlines()
    assert "mean of" not in rows[2] and "mean of 1-2)" in rows[3]


def test_an_evaluation_writes_into_the_card_of_a_checkpoint_or_a_mean_never_another(tmp_path):
    from vlmrl.data import meta_path
    from vlmrl.evaluation import writes_card
    from vlmrl.training import MANIFEST

    trained, mean, other = (_checkpoint(tmp_path / name, 1.0) for name in ("trained", "mean", "other"))
    meta_path(trained, MANIFEST).write_text("{}")
    (mean / RECORD).write_text("{}")
    assert writes_card(trained) and writes_card(mean) and not writes_card(other)
    (mean / "README.md").unlink()
    assert not writes_card(mean)
