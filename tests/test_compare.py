"""The comparison report on small synthetic result sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmrl.compare import (
    NOT_REACHED,
    compare,
    far_references,
    load_experiment,
    main,
    split_by_seeds,
    steps_to_threshold,
)
from vlmrl.results import bootstrap_ci, build_results, eval_seeds, human_normalized, write_results

GAME = "ALE/Pong-v5"


def _results(returns: list[float], policy: str = "greedy", agreement: float = 0.5) -> dict:
    return build_results(
        model="m",
        game=GAME,
        policy=policy,
        seeds=eval_seeds(len(returns)),
        returns=returns,
        oracle_agreement=agreement,
        invalid_rate=0.0,
        env_steps=1000 * len(returns),
        steps_per_s=100.0,
        video=None,
    )


def _experiment(root: Path, name: str, points: list[tuple[int, list[float]]]) -> Path:
    """An experiment folder whose iteration k has collected points[k][0] agent steps."""
    iterations = []
    for k, (steps, returns) in enumerate(points):
        entry = {"iteration": k, "eval": _results(returns)}
        if k:
            entry.update(trial={}, reflection={}, train={}, env_steps_total=steps)
        iterations.append(entry)
    folder = root / "experiments" / name
    folder.mkdir(parents=True)
    summary = {"experiment": name, "recipe": "recipes/tiny/pong", "iterations": iterations[::-1]}
    (folder / "experiment_summary.json").write_text(json.dumps(summary))
    return folder


def _baselines(root: Path, per_seed: dict[int, dict[int, list[float]]]) -> Path:
    base = root / "baselines"
    for seed, budgets in per_seed.items():
        for budget, returns in budgets.items():
            write_results(
                base / "ppo" / "pong-v5" / f"seed_{seed}" / f"budget_{budget}" / "results.json", _results(returns)
            )
    return base


@pytest.fixture
def synthetic(tmp_path):
    # vlmrl, two seeds: base model, then two iterations collecting ~5k agent steps each.
    exp_a = _experiment(tmp_path, "a", [(0, [-21.0, -21.0]), (5000, [-16.0, -14.0]), (10000, [-9.0, -11.0])])
    exp_b = _experiment(tmp_path, "b", [(0, [-20.0, -20.0]), (5200, [-12.0, -12.0]), (10400, [-6.0, -8.0])])
    # PPO, two seeds at three budgets: reaches -15 on average only at 20000, never -10.
    base = _baselines(
        tmp_path,
        {
            0: {5000: [-21.0], 10000: [-20.0], 20000: [-16.0]},
            1: {5000: [-20.0], 10000: [-18.0], 20000: [-12.0]},
        },
    )
    random_path = write_results(tmp_path / "random" / "results.json", _results([-20.0, -21.0], policy="random"))
    oracle_path = write_results(tmp_path / "oracle" / "results.json", _results([14.0, 15.0], policy="oracle"))
    return tmp_path, [exp_a, exp_b], base, random_path, oracle_path


def test_report_intervals_thresholds_and_files(synthetic):
    root, experiments, base, random_path, oracle_path = synthetic
    out = root / "report"
    report = compare(experiments, base, out, random_results=[random_path], oracle_results=[oracle_path])

    assert report["game"] == GAME and report["budgets"] == [5000, 10000, 20000]
    assert set(report["methods"]) == {"vlmrl (tiny/pong)", "ppo"}
    ppo, ours = report["methods"]["ppo"], report["methods"]["vlmrl (tiny/pong)"]

    # PPO at 10000: seed means -20 and -18 -> mean -19, bootstrap interval over the two seeds.
    row = {r["budget"]: r["methods"] for r in report["table"]}
    at_10k = row[10000]["ppo"]
    assert at_10k["mean_return"] == pytest.approx(-19.0)
    assert at_10k["interval"] == pytest.approx([-20.0, -18.0])
    assert at_10k["interval"] == pytest.approx(list(bootstrap_ci([-20.0, -18.0])))
    assert at_10k["interval_over"] == "seeds" and at_10k["n_seeds"] == 2
    assert at_10k["human_normalized"] == pytest.approx(human_normalized(GAME, -19.0))

    # Ours at 10000: seed a's iteration 2 (10000 steps, -10) but seed b's iteration 1
    # (10400 > 10000 steps, so its last checkpoint within budget is 5200 steps, -12).
    assert row[10000]["vlmrl (tiny/pong)"]["mean_return"] == pytest.approx(-11.0)
    # At 5000 seed b has only its base model (-20); seed a its first iteration (-15).
    assert row[5000]["vlmrl (tiny/pong)"]["mean_return"] == pytest.approx(-17.5)

    # Curves: our iterations sit at the seeds' mean agent steps.
    assert [p["agent_steps"] for p in ours["curve"]] == [0, 5100, 10200]
    assert [p["mean_return"] for p in ours["curve"]] == pytest.approx([-20.5, -13.5, -8.5])
    assert ours["steps_to_threshold"] == {"-15": 5100, "-10": 10200, "0": NOT_REACHED}
    assert ppo["steps_to_threshold"] == {"-15": 20000, "-10": NOT_REACHED, "0": NOT_REACHED}

    assert report["references"]["random"]["mean_return"] == pytest.approx(-20.5)
    assert report["references"]["oracle"]["mean_return"] == pytest.approx(14.5)

    assert (out / "comparison.png").stat().st_size > 0
    assert json.loads((out / "comparison.json").read_text()) == report
    markdown = (out / "comparison.md").read_text()
    assert "| 10,000 |" in markdown and "not reached" in markdown
    assert "-19.00 [-20.00, -18.00]" in markdown


def test_the_table_gives_each_methods_agreement_over_the_same_seeds(tmp_path):
    # Seed 0 agrees 0.2, then 0.6; seed 1 0.4 at its only budget. At 2000 both seeds count: (0.6 + 0.4) / 2.
    base = tmp_path / "baselines"
    for seed, budgets in {0: {1000: 0.2, 2000: 0.6}, 1: {2000: 0.4}}.items():
        for budget, agreement in budgets.items():
            write_results(
                base / "ppo" / "pong-v5" / f"seed_{seed}" / f"budget_{budget}" / "results.json",
                _results([-20.0, -19.0], agreement=agreement),
            )
    report = compare([], base, tmp_path / "out")
    row = {r["budget"]: r["methods"]["ppo"] for r in report["table"]}
    assert row[2000]["oracle_agreement"] == pytest.approx(0.5)
    assert row[1000]["oracle_agreement"] == pytest.approx(0.2) and row[1000]["n_seeds"] == 1
    assert "agreement 0.500" in (tmp_path / "out" / "comparison.md").read_text()


def test_a_reference_far_off_the_curves_is_named_not_drawn():
    def report(curve_returns, references):
        curve = [{"mean_return": r, "interval": [r - 1, r + 1]} for r in curve_returns]
        levels = {name: {"mean_return": value} for name, value in references.items()}
        return {"methods": {"m": {"curve": curve}}, "references": levels}

    # Breakout: curves 0-5, oracle 176.5 (far above), random 1.3 (among them).
    assert far_references(report([0.0, 2.5, 4.0], {"random": 1.3, "oracle": 176.5})) == {"oracle"}
    # Pong: curves -21..-5, oracle +15.7 is within twice their span above them: drawn.
    assert far_references(report([-21.0, -12.0, -5.0], {"random": -20.5, "oracle": 15.7})) == set()
    assert far_references(report([], {"oracle": 176.5})) == set()


def test_single_seed_interval_is_over_episodes(tmp_path):
    base = _baselines(tmp_path, {0: {1000: [-21.0, -19.0, -20.0]}})
    report = compare([], base, tmp_path / "out")
    entry = report["table"][0]["methods"]["ppo"]
    assert entry["interval_over"] == "episodes"
    assert entry["interval"] == pytest.approx(list(bootstrap_ci([-21.0, -19.0, -20.0])))
    assert "evaluation episodes" in (tmp_path / "out" / "comparison.md").read_text()


def test_steps_to_threshold_uses_the_first_crossing():
    curve = [{"agent_steps": s, "mean_return": r} for s, r in [(0, -21), (10, -14), (20, -16), (30, 1)]]
    assert steps_to_threshold(curve, -15) == 10
    assert steps_to_threshold(curve, 0) == 30
    assert steps_to_threshold(curve, 5) == NOT_REACHED


def test_malformed_inputs_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no experiment summary"):
        load_experiment(tmp_path / "nowhere")
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "experiment_summary.json").write_text(json.dumps({"experiment": "bad", "iterations": []}))
    with pytest.raises(ValueError, match=r"missing keys \['recipe'\]"):
        load_experiment(folder)
    iterations = [{"iteration": 0, "eval": _results([-21.0])}, {"iteration": 1, "eval": _results([-20.0])}]
    (folder / "experiment_summary.json").write_text(
        json.dumps({"experiment": "bad", "recipe": "r", "iterations": iterations})
    )
    with pytest.raises(ValueError, match="env_steps_total"):
        load_experiment(folder)
    with pytest.raises(FileNotFoundError, match="no baselines folder"):
        compare([], tmp_path / "no-baselines", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="nothing to compare"):
        compare([], tmp_path / "empty", tmp_path / "out", game=GAME)


def test_command_line(synthetic, capsys):
    root, experiments, base, random_path, _ = synthetic
    main(
        [
            "--experiment",
            *map(str, experiments),
            "--baselines",
            str(base),
            "--output-dir",
            str(root / "cli"),
            "--random",
            str(random_path),
            "--budgets",
            "10000",
        ]
    )
    assert "| 10,000 |" in capsys.readouterr().out
    assert json.loads((root / "cli" / "comparison.json").read_text())["budgets"] == [10000]
    with pytest.raises(SystemExit, match="compare: no experiment summary"):
        main(["--experiment", str(root / "missing"), "--output-dir", str(root / "cli")])


def test_identical_runs_are_refused_as_two_seeds(tmp_path):
    points = [(0, [-21.0, -21.0]), (5000, [-16.0, -14.0])]
    runs = [_experiment(tmp_path, name, points) for name in ("s0", "s0-again", "s1")]
    for folder, seed in zip(runs, (0, 0, 1), strict=True):
        summary = json.loads((folder / "experiment_summary.json").read_text())
        summary.update(seed=seed, settings={"collect.seed": 100_000 * seed + 1000, "collect.teacher_mix": 0.5})
        (folder / "experiment_summary.json").write_text(json.dumps(summary))
    report = compare([runs[0], runs[2]], None, tmp_path / "ok")
    assert report["methods"]["vlmrl (tiny/pong)"]["n_seeds"] == 2
    with pytest.raises(ValueError, match="identical settings .* not two seeds"):
        compare(runs, None, tmp_path / "refused")


def test_thresholds_default_to_the_games_own_milestones(tmp_path, monkeypatch):
    # The same curve on Breakout's scale: Pong's -15/-10/0 would all count as reached at step 0.
    monkeypatch.setitem(globals(), "GAME", "ALE/Breakout-v5")
    exp = _experiment(tmp_path, "b", [(0, [1.0, 2.0]), (5000, [6.0, 8.0]), (10000, [12.0, 14.0])])
    report = compare([exp], None, tmp_path / "out")
    assert report["game"] == "ALE/Breakout-v5" and report["thresholds"] == [5.0, 10.0, 30.5]
    steps = next(iter(report["methods"].values()))["steps_to_threshold"]
    assert steps == {"5": 5000, "10": 10000, "30.5": NOT_REACHED}
    # Given explicitly, they win.
    assert compare([exp], None, tmp_path / "out2", thresholds=[1.0])["thresholds"] == [1.0]


def test_runs_with_another_reflector_are_another_method_not_another_seed(tmp_path):
    points = [(0, [-21.0, -21.0]), (5000, [-16.0, -14.0])]
    same = {"collect.seed": 1000, "collect.teacher_mix": 0.0}
    reflectors = {"oracle": {"reflect.reflector": "oracle"}, "grounded": {"reflect.reflector": "grounded"},
                  "imitation": {"reflect.reflector": "self-imitation", "reflect.advantage": True}}
    runs = []
    for name, reflect in reflectors.items():
        folder = _experiment(tmp_path, name, points)
        summary = json.loads((folder / "experiment_summary.json").read_text())
        summary.update(seed=0, settings={**same, **reflect})
        (folder / "experiment_summary.json").write_text(json.dumps(summary))
        runs.append(folder)
    report = compare(runs, None, tmp_path / "out")  # the same seed thrice, but three methods: not refused
    assert set(report["methods"]) == {"vlmrl (tiny/pong, oracle)", "vlmrl (tiny/pong, grounded)",
                                      "vlmrl (tiny/pong, self-imitation --advantage)"}
    assert all(m["n_seeds"] == 1 for m in report["methods"].values())


def test_an_experiments_settings_record_who_reflected(tmp_path):
    from vlmrl.data import meta_path
    from vlmrl.report import run_settings

    exp = tmp_path / "e"
    for part, name, record in (("episodes", "summary.json", {"settings": {"seed": 1000, "output_dir": "x"}}),
                               ("reflections", "reflection.json",
                                {"reflector": "grounded", "episodes": "x", "model": "m", "reflection_rate": 0.2}),
                               ("checkpoint", "vlmrl_train.json", {"seed": 0})):
        path = meta_path(exp / "iteration_1" / part, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    settings = run_settings(exp)["settings"]
    assert settings["reflect.reflector"] == "grounded" and settings["reflect.reflection_rate"] == 0.2
    assert "reflect.episodes" not in settings and "reflect.model" not in settings
    assert "collect.output_dir" not in settings and settings["train.seed"] == 0


def _seed_0_runs(root, settings: dict) -> list:
    """One small seed-0 experiment per entry of ``settings`` (name -> recorded settings)."""
    runs = []
    for name, recorded in settings.items():
        folder = _experiment(root, name, [(0, [-21.0, -21.0]), (5000, [-16.0, -14.0])])
        summary = json.loads((folder / "experiment_summary.json").read_text())
        summary.update(seed=0, settings=recorded)
        (folder / "experiment_summary.json").write_text(json.dumps(summary))
        runs.append(folder)
    return runs


def test_the_same_checkpoints_evaluated_as_means_are_another_method(tmp_path):
    from vlmrl.averaging import POLICY_DIR, RECORD
    from vlmrl.data import meta_path
    from vlmrl.report import run_settings

    settings = {}
    for name, average in (("each", None), ("mean", "2:3")):
        exp = tmp_path / name
        path = meta_path(exp / "iteration_1" / "episodes", "summary.json")
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"settings": {"seed": 1000}}))
        for k in (2, 3):
            (exp / f"iteration_{k}").mkdir(exist_ok=True)
            (exp / f"iteration_{k}" / "results.json").write_text("{}")
        if average:
            (exp / "iteration_3" / POLICY_DIR).mkdir()
            (exp / "iteration_3" / POLICY_DIR / RECORD).write_text(json.dumps({"average": average, "sources": []}))
        settings[name] = run_settings(exp)["settings"]
    assert "evaluate.average" not in settings["each"] and settings["mean"]["evaluate.average"] == "2:3"
    # The same seed twice, but two methods: not refused.
    report = compare(_seed_0_runs(tmp_path / "c", settings), None, tmp_path / "out")
    assert set(report["methods"]) == {"vlmrl (tiny/pong, average=None)", "vlmrl (tiny/pong, average=2:3)"}


def test_a_seed_run_longer_than_the_others_is_not_the_methods_mean(tmp_path):
    # seed a ran three iterations, seed b two: past 10,000 steps only a speaks, and says so
    exp_a = _experiment(tmp_path, "a", [(0, [-21.0]), (5000, [-18.0]), (10000, [-16.0]), (15000, [-5.0])])
    exp_b = _experiment(tmp_path, "b", [(0, [-21.0]), (5000, [-20.0]), (10000, [-14.0])])
    out = tmp_path / "report"
    report = compare([exp_a, exp_b], None, out, budgets=[10000, 15000, 20000])
    row = {r["budget"]: r["methods"]["vlmrl (tiny/pong)"] for r in report["table"]}
    assert row[10000]["mean_return"] == pytest.approx(-15.0) and row[10000]["n_seeds"] == 2
    assert row[15000]["mean_return"] == pytest.approx(-5.0)
    assert (row[15000]["n_seeds"], row[15000]["of_seeds"]) == (1, 2)
    assert row[20000] is None  # no seed ran that far: its last checkpoint is not a score there
    ours = report["methods"]["vlmrl (tiny/pong)"]
    assert ours["steps_to_threshold"]["-10"] == NOT_REACHED  # only seed a reached it, alone
    full, partial = split_by_seeds(ours["curve"], 2)
    assert [p["agent_steps"] for p in full] == [0, 5000, 10000] and [p["agent_steps"] for p in partial] == [15000]
    markdown = (out / "comparison.md").read_text()
    assert "(1 of 2 seeds)" in markdown and "| 20,000 | – |" in markdown
    assert (out / "comparison.png").stat().st_size > 0


def test_runs_from_another_base_model_are_another_method_not_more_seeds(tmp_path):
    # The transfer runs: one recipe, two starts, two seeds each. Averaging the starts as four seeds would
    # hide the comparison they exist for.
    points = [(0, [-21.0, -21.0]), (5000, [-16.0, -14.0])]
    starts = {"pong": "data/experiments/pong-s0/iteration_6/checkpoint", "base": "data/models/tiny-smolvlm"}
    runs = []
    for start, model in starts.items():
        for seed in (0, 1):
            folder = _experiment(tmp_path, f"{start}-s{seed}", points)
            summary = json.loads((folder / "experiment_summary.json").read_text())
            summary.update(seed=seed, settings={"collect.seed": 100_000 * seed + 1000, "collect.model": model,
                                                "train.base_model": model, "train.seed": seed})
            (folder / "experiment_summary.json").write_text(json.dumps(summary))
            runs.append(folder)
    report = compare(runs, None, tmp_path / "out")
    assert {name: m["seeds"] for name, m in report["methods"].items()} == {
        "vlmrl (tiny/pong, from pong-s0/iteration_6)": ["pong-s0", "pong-s1"],
        "vlmrl (tiny/pong, from tiny-smolvlm)": ["base-s0", "base-s1"],
    }


def test_runs_that_part_at_a_later_iteration_by_a_schedule_are_another_method(tmp_path):
    from vlmrl.data import meta_path
    from vlmrl.report import run_settings

    settings = {}
    for name, mix_from_3, rate_from_2 in (("plain", 0.5, 1e-3), ("mix", 0.0, 1e-3), ("rate", 0.5, 3e-4)):
        exp = tmp_path / name
        for k in (1, 2, 3):
            collect = meta_path(exp / f"iteration_{k}" / "episodes", "summary.json")
            collect.parent.mkdir(parents=True)
            collect.write_text(json.dumps({"settings": {"seed": 1000 * k, "teacher_mix": mix_from_3 if k >= 3
                                                        else 0.5}}))
            train = meta_path(exp / f"iteration_{k}" / "checkpoint", "vlmrl_train.json")
            train.parent.mkdir(parents=True)
            train.write_text(json.dumps({"seed": 0, "learning_rate": rate_from_2 if k >= 2 else 1e-3}))
        settings[name] = run_settings(exp)["settings"]
    assert not any(key.endswith(".schedule") for key in settings["plain"])
    assert settings["mix"]["collect.teacher_mix.schedule"] == "3:0.0"
    assert settings["rate"]["train.learning_rate.schedule"] == "2:0.0003"
    assert "train.learning_rate.schedule" not in settings["mix"]
    # The same seed thrice, but three methods: not refused.
    report = compare(_seed_0_runs(tmp_path / "c", settings), None, tmp_path / "out")
    assert len(report["methods"]) == 3 and all(m["n_seeds"] == 1 for m in report["methods"].values())
